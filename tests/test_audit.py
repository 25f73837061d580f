"""``jc.check_grads`` / ``jc.check_layer``: a correct net passes, and a planted mistake is pinned
on the layer that makes it."""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn as jc
from jaxcnn import audit
from jaxcnn.core import Layer
from mutants import (avg_pool_not_divided, conv_without_flip, dense_bias_gradient_averaged,
                     kernel_gradient_flipped, max_pool_routes_to_last_tie, mutate,
                     sigmoid_slope_as_a)


def audited_net():
    return jc.serial(
        jc.Conv2D(3, 3, strides=2), jc.Sigmoid(),          # 0, 1
        jc.Conv2D(4, 3), jc.ReLU(),                        # 2, 3
        jc.MaxPool2D(2), jc.AvgPool2D(2),                  # 4, 5
        jc.Flatten(), jc.Dense(5))                         # 6, 7


def setup(dtype, net=None, seed=0, ties=False):
    net = net or audited_net()
    params, _ = net.init(jax.random.key(seed), (23, 23, 2))
    params = jax.tree.map(lambda p: p.astype(dtype), params)
    rng = np.random.default_rng(seed)
    x = rng.integers(-1, 2, size=(3, 23, 23, 2)) if ties else rng.normal(size=(3, 23, 23, 2))
    return net, params, jnp.asarray(x, dtype), jnp.asarray(rng.integers(0, 5, size=3))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_a_correct_net_passes(dtype):
    net, params, x, labels = setup(dtype)
    report = jc.check_grads(net, jc.softmax_cross_entropy, params, x, labels)
    assert report.ok and report.first_bad_layer is None, str(report)
    assert {row.layer for row in report.rows} == {*range(8), None}
    assert len([r for r in report.rows if r.layer is None]) == 6     # 3 param layers x (w, b)
    assert "all 20 gradients agree" in str(report)


def test_a_correct_net_passes_finite_differences_and_ties():
    net, params, x, labels = setup(jnp.float64, ties=True)     # integer inputs: tied maxima
    report = jc.check_grads(net, jc.softmax_cross_entropy, params, x, labels,
                            finite_differences=True)
    assert report.ok, str(report)
    fd = [r for r in report.rows if r.reference == "finite differences"]
    assert len(fd) == 14 and sum(not r.kink for r in fd) >= 12


def test_stochastic_pooling_net_passes_with_its_key():
    net = jc.serial(jc.Conv2D(3, 3), jc.ReLU(), jc.StochasticPool2D(2, 1), jc.Flatten(),
                    jc.Dense(4))
    params, _ = net.init(jax.random.key(0), (7, 7, 1))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 7, 1)), jnp.float32)
    report = jc.check_grads(net, jc.softmax_cross_entropy, params, x, jnp.asarray([0, 3]),
                            key=jax.random.key(1))
    assert report.ok, str(report)


PLANTED = {
    "conv input residual without the flip": (0, conv_without_flip),
    "conv kernel gradient flipped": (2, kernel_gradient_flipped),
    "sigmoid derivative written as a": (1, sigmoid_slope_as_a),
    "max pool ties routed to the last maximum": (4, max_pool_routes_to_last_tie),
    "avg pool delta not divided by the window": (5, avg_pool_not_divided),
    "dense bias gradient averaged": (7, dense_bias_gradient_averaged),
}


def planted(mistake, dtype):
    """``(index, setup(...))`` of ``audited_net`` with the ``PLANTED`` mistake at its layer."""
    index, wrong = PLANTED[mistake]
    layers = list(audited_net().layers)
    layers[index] = mutate(layers[index], wrong)
    return index, setup(dtype, jc.serial(*layers), ties=index == 4)


@pytest.mark.parametrize("mistake", sorted(PLANTED))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_a_planted_mistake_is_pinned_on_its_layer(mistake, dtype):
    index, (net, params, x, labels) = planted(mistake, dtype)
    report = jc.check_grads(net, jc.softmax_cross_entropy, params, x, labels)
    assert not report.ok
    assert report.first_bad_layer == index, str(report)
    assert all(row.ok for row in report.rows if row.layer is not None and row.layer != index)
    assert f"FAILED: first wrong layer is {index} ({net.layers[index].name})" in str(report)


def test_gradient_check_is_the_end_to_end_comparison_of_the_audit():
    """``gradient_check`` (``fit``'s check: jitted, reduced on the device) compares the same two
    gradients as ``check_grads``' end-to-end rows: the same relative error per parameter array,
    and a planted mistake is named by both."""
    index, wrong = PLANTED["conv kernel gradient flipped"]
    layers = list(audited_net().layers)
    layers[index] = mutate(layers[index], wrong)
    net, params, x, labels = setup(jnp.float64, jc.serial(*layers))
    report = jc.check_grads(net, jc.softmax_cross_entropy, params, x, labels)
    check = audit.gradient_check(net, jc.softmax_cross_entropy, params, x, labels)
    end_to_end = [row for row in report.rows if row.layer is None]
    assert [row.quantity for row in end_to_end] == ["params[0]['b']", "params[0]['w']",
                                                    "params[2]['b']", "params[2]['w']",
                                                    "params[7]['b']", "params[7]['w']"]
    assert list(check.errors) == ["serial[0] Conv2D params['b']", "serial[0] Conv2D params['w']",
                                  "serial[2] Conv2D params['b']", "serial[2] Conv2D params['w']",
                                  "serial[7] Dense params['b']", "serial[7] Dense params['w']"]
    np.testing.assert_allclose(list(check.errors.values()), [r.max_rel for r in end_to_end],
                               rtol=1e-9, atol=1e-12)
    assert check.worst_name == "serial[2] Conv2D params['w']"
    assert check.worst > audit.default_tolerance(params) == audit.TOLERANCES["float64"]
    assert [row.ok for row in end_to_end] == [True, True, True, False, True, True]


def leaky_relu(slope=0.1, derivative=None):
    """A user-written layer: a = max(z, slope z), backward delta * (1 if a > 0 else slope)."""
    derivative = derivative or (lambda a: jnp.where(a > 0, 1.0, slope).astype(a.dtype))

    def forward(params, x, *, key=None, train=True):
        a = jnp.where(x > 0, x, slope * x)
        return a, a

    return Layer(init=lambda key, shape: ((), tuple(shape)), forward=forward,
                 backward=lambda params, a, delta: ((), delta * derivative(a)),
                 apply=lambda params, x, *, key=None, train=True: forward(params, x)[0],
                 name="LeakyReLU")


def test_ceil_mode_and_dilated_pools_pass_the_audit():
    """``check_grads`` and ``check_layer`` on pools in ceil mode and with a dilated window, whose
    ``apply`` (the select of eq. 5.13) ``jax.vjp`` and ``jax.grad`` differentiate where they
    cannot differentiate a dilated ``lax.reduce_window``; ties after a ReLU included, and
    finite differences, which use no autodiff, agree too."""
    net = jc.serial(jc.Conv2D(3, 3), jc.ReLU(),
                    jc.MaxPool2D(3, 2, ((1, 1), (1, 1)), dilation=2, ceil_mode=True),
                    jc.AvgPool2D(2, count_include_pad=False, ceil_mode=True), jc.Flatten(),
                    jc.Dense(4))
    params, _ = net.init(jax.random.key(0), (12, 11, 2))
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    rng = np.random.default_rng(0)
    x, labels = jnp.asarray(rng.normal(size=(2, 12, 11, 2))), jnp.asarray([0, 3])
    report = jc.check_grads(net, jc.softmax_cross_entropy, params, x, labels,
                            finite_differences=True)
    assert report.ok, str(report)
    assert {r.reference for r in report.rows if r.layer in (2, 3)} == {"jax.vjp",
                                                                      "finite differences"}
    assert len([r for r in report.rows if r.layer is None]) == 4       # conv, dense: w, b
    for layer in net.layers[2:4]:
        single = jc.check_layer(layer, (9, 8, 3), finite_differences=True)
        assert single.ok and len(single.rows) == 2, str(single)


def test_check_layer_on_a_user_written_layer():
    good = jc.check_layer(leaky_relu(), (4, 5, 3), finite_differences=True)
    assert good.ok, str(good)
    bad = jc.check_layer(leaky_relu(derivative=lambda a: jnp.ones_like(a)), (4, 5, 3))
    assert not bad.ok and bad.first_bad_layer == 0
    assert "FAIL" in str(bad)


def test_check_layer_catches_a_wrong_init_shape():
    wrong = jc.Conv2D(2, 3)._replace(init=lambda key, shape: (jc.Conv2D(2, 3).init(key, shape)[0], (9, 9, 2)))
    with pytest.raises(ValueError, match=r"Conv2D: init says the output shape is \(9, 9, 2\) but forward gives \(3, 3, 2\)"):
        jc.check_layer(wrong, (5, 5, 1))


def test_finite_differences_need_float64():
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(ValueError, match=r"^check_layer\(Sigmoid\) with finite_differences=True "
                                             r"runs in float64: enable it first with jax.config"):
            jc.check_layer(jc.Sigmoid(), (3,), dtype=jnp.float32, finite_differences=True)
    finally:
        jax.config.update("jax_enable_x64", True)


def test_jaxcnn_check_command(capsys, monkeypatch):
    from jaxcnn import cli, zoo

    assert cli.main(["check", "--arch", "ufldl", "--dtype", "float64",
                     "--finite-differences"]) == 0
    out = capsys.readouterr().out
    assert "ufldl on a random batch of 4 x (28, 28, 1), float64, with finite differences" in out
    assert "finite differences" in out and "all " in out and "gradients agree" in out

    def broken(input_shape=(8, 8, 1), num_classes=10):
        net = zoo.small(input_shape, num_classes)
        layers = list(net.layers)
        layers[1] = mutate(layers[1], lambda layer, p, cache, x, delta: ((), delta))  # ReLU' = 1
        return jc.serial(*layers)

    assert cli.main(["check", "--arch", "small", "--seed", "-1"]) == 0    # numpy's rng: % 2**64
    assert cli.main(["check", "--arch", "small", "--dtype", "bfloat16",
                     "--finite-differences"]) == 0                        # its own tolerance
    monkeypatch.setitem(zoo.ARCHS, "small", broken)
    assert cli.main(["check"]) == 1
    assert "FAILED: first wrong layer is 1 (ReLU)" in capsys.readouterr().out


# --- float16 and bfloat16 ---------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("seed", [0, 3])
def test_a_correct_net_passes_in_16_bits(dtype, seed):
    """The layer rows compare with the closer of ``jax.vjp`` in the dtype and in float32 (at the
    same point); the end-to-end rows run in float32.  Compared within the dtype alone, this net
    shows up to 0.2 relative error in bfloat16 (autodiff's sums rounded to 8 bits)."""
    net, params, x, labels = setup(dtype, seed=seed, ties=seed == 3)
    report = jc.check_grads(net, jc.softmax_cross_entropy, params, x, labels)
    assert report.ok, str(report)
    assert report.dtype == jnp.dtype(dtype).name
    name = jnp.dtype(dtype).name
    layer_rows = [row for row in report.rows if row.layer is not None]
    assert {row.tolerance for row in layer_rows} == {audit.TOLERANCES[name]}
    assert {row.reference for row in report.rows if row.layer is None} == {"jax.grad float32"}
    assert all(row.tolerance == audit.TOLERANCES["float32"] for row in report.rows
               if row.layer is None)
    conv_rows = [row.reference for row in report.rows_of(0)]
    assert conv_rows == ["jax.vjp float32"] * 3            # XLA's 16-bit sums are the noisier
    assert "all 20 gradients agree" in str(report)


@pytest.mark.parametrize("mistake", sorted(PLANTED))
@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_a_planted_mistake_is_pinned_in_16_bits(mistake, dtype):
    index, (net, params, x, labels) = planted(mistake, dtype)
    report = jc.check_grads(net, jc.softmax_cross_entropy, params, x, labels)
    assert report.first_bad_layer == index, str(report)
    assert all(row.ok for row in report.rows if row.layer is not None and row.layer != index)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_check_layer_in_16_bits(dtype):
    for layer, shape in [(jc.Conv2D(4, 3, padding="SAME", method="lax"), (6, 7, 3)),
                         (leaky_relu(), (4, 5, 3))]:
        report = jc.check_layer(layer, shape, batch=3, dtype=dtype)
        assert report.ok and report.dtype == jnp.dtype(dtype).name, str(report)
    bad = jc.check_layer(leaky_relu(derivative=lambda a: jnp.ones_like(a)), (4, 5, 3), dtype=dtype)
    assert not bad.ok and bad.first_bad_layer == 0, str(bad)
    x = np.abs(np.random.default_rng(0).normal(size=(2, 6, 6, 2)))
    drawn = jc.check_layer(jc.StochasticPool2D(2, 1), (6, 6, 2), dtype=dtype, x=x)
    assert drawn.ok and drawn.rows[0].reference == "jax.vjp", str(drawn)   # the dtype's draws


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_finite_differences_of_a_16_bit_layer_use_its_tolerance(dtype):
    """The float64 differences are exact to 1e-5, the 16-bit gradient they meet is not: its
    rows take the dtype's tolerance (they failed correct layers at 1e-5), and still catch a
    wrong derivative."""
    name = jnp.dtype(dtype).name
    for layer, shape in [(jc.Dense(4), (8,)), (jc.Conv2D(3, 3, method="lax"), (6, 6, 2))]:
        report = jc.check_layer(layer, shape, dtype=dtype, finite_differences=True)
        fd = [row for row in report.rows if row.reference == "finite differences"]
        assert len(fd) == 3 and {row.tolerance for row in fd} == {audit.TOLERANCES[name]}
        assert report.ok, str(report)
    bad = jc.check_layer(leaky_relu(derivative=lambda a: jnp.ones_like(a)), (4, 5, 3),
                         dtype=dtype, finite_differences=True)
    assert not [row for row in bad.rows if row.reference == "finite differences" and row.ok
                and not row.kink], str(bad)
    f64 = jc.check_layer(jc.Dense(4), (8,), finite_differences=True)
    assert {row.tolerance for row in f64.rows if row.reference == "finite differences"} == \
        {audit.TOLERANCES["finite differences"]}


def test_check_layer_audits_branch_points_and_merges():
    """A merge takes a tuple of input shapes (and of arrays as ``x``), a branch point gives a
    tuple of outputs; finite differences included."""
    for layer, shape in [(jc.FanOut(3), (4, 4, 2)), (jc.FanInSum(), ((4, 4, 2), (4, 4, 2))),
                         (jc.FanInConcat(), ((4, 4, 2), (4, 4, 3)))]:
        report = jc.check_layer(layer, shape, finite_differences=True)
        assert report.ok and len(report.rows) == 2 * (len(shape) if layer.name != "FanOut"
                                                      else 1), str(report)
    x = (np.ones((2, 4, 4, 2)), np.ones((2, 4, 4, 2)))
    assert jc.check_layer(jc.FanInSum(), ((4, 4, 2), (4, 4, 2)), x=x).ok
    with pytest.raises(ValueError, match=r"^check_layer\(FanInSum\): x must be a tuple of 2 "
                                         r"arrays, one per input shape, got ndarray"):
        jc.check_layer(jc.FanInSum(), ((4, 4, 2), (4, 4, 2)), x=x[0])


def test_check_layer_and_check_grads_name_what_is_wrong_with_their_arguments():
    """Not the layer's fault: an ``x`` of another shape than ``input_shape``; arguments that
    are not a layer, a loss, a shape or a seed; a scalar ``x``."""
    with pytest.raises(ValueError, match=r"^check_layer\(ReLU\): x has the per-example shape "
                                         r"\(7,\), input_shape says \(3,\)"):
        jc.check_layer(jc.ReLU(), (3,), x=np.ones((2, 7)))
    with pytest.raises(TypeError, match=r"^check_layer\(ReLU\): input_shape must be a tuple of "
                                        r"ints .* got 5"):
        jc.check_layer(jc.ReLU(), 5)
    with pytest.raises(TypeError, match=r"^check_layer: expected a layer .* got function"):
        jc.check_layer(lambda x: x, (3,))
    with pytest.raises(TypeError, match=r"^check_layer\(ReLU\): seed must be an int, got 'a'"):
        jc.check_layer(jc.ReLU(), (3,), seed="a")
    with pytest.raises(ValueError, match=r"^check_layer\(ReLU\): seed must be an int of 64 "
                                         r"bits, in \[-2\*\*63, 2\*\*63\), got 9223372036854775808"):
        jc.check_layer(jc.ReLU(), (3,), seed=2 ** 63)
    assert jc.check_layer(jc.ReLU(), (3,), seed=-1, finite_differences=True).ok
    net, params, x, labels = setup(jnp.float32)
    assert jc.check_grads(net, jc.softmax_cross_entropy, params, x, labels, seed=-1,
                          finite_differences=True).ok
    with pytest.raises(TypeError, match=r"^check_grads: loss must be a jaxcnn Loss"):
        jc.check_grads(net, lambda out, t: 0.0, params, x, labels)
    with pytest.raises(TypeError, match=r"^check_grads: net must be a jaxcnn Layer"):
        jc.check_grads(lambda p, x: x, jc.softmax_cross_entropy, params, x, labels)
    with pytest.raises(ValueError, match=r"^check_grads: x needs a batch axis, got a scalar"):
        jc.check_grads(net, jc.softmax_cross_entropy, params, x[0, 0, 0, 0], labels[:1])


def test_check_grads_takes_a_numpy_float64_batch_as_the_layers_do():
    """With 64-bit types off the layers run a NumPy float64 batch in float32 (as under jit);
    the audit compares in that dtype, not in the batch's, which failed a correct layer."""
    net = jc.serial(jc.Conv2D(4, 3, padding="SAME"), jc.ReLU(), jc.Flatten(), jc.Dense(10))
    rng = np.random.default_rng(0)
    x, labels = rng.normal(size=(8, 8, 8, 1)), rng.integers(0, 10, 8)
    with jax.enable_x64(False):
        params, _ = net.init(jax.random.key(0), (8, 8, 1))
        report = jc.check_grads(net, jc.softmax_cross_entropy, params, x, labels)
    assert report.ok and report.dtype == "float32", str(report)
    assert jc.summary(net, np.array([8, 8, 1])).rows[0].output_shape == (8, 8, 4)
    assert jc.check_layer(jc.ReLU(), np.array([3])).ok


def test_gradient_check_in_16_bits_compares_in_float32():
    net, params, x, labels = setup(jnp.bfloat16)
    check = audit.gradient_check(net, jc.softmax_cross_entropy, params, x, labels)
    assert audit.default_tolerance(params) == audit.TOLERANCES["float32"]
    assert check.worst <= audit.TOLERANCES["float32"], check.report(0.0)


class _InputCache(NamedTuple):
    x: jax.Array


def _affine(flip_beta: bool = False, drop_leak: bool = False) -> jc.Layer:
    """``y = gamma x + beta`` per channel, then a leaky ReLU of slope 0.03; a planted mistake:
    ``dbeta`` of the wrong sign, or the leak's slope left out of ``dx`` (ReLU's derivative)."""
    def init(key, shape):
        c = shape[-1]
        return {"gamma": jnp.ones((c,)), "beta": jnp.zeros((c,))}, tuple(shape)

    def per_channel(v, ndim):
        return v.reshape((1,) * (ndim - 1) + (-1,))

    def forward(p, x, *, key=None, train=True):
        z = x * per_channel(p["gamma"], x.ndim) + per_channel(p["beta"], x.ndim)
        return jnp.where(z > 0, z, 0.03 * z), _InputCache(x)

    def backward(p, cache, delta):
        gamma = per_channel(p["gamma"], delta.ndim)
        z = cache.x * gamma + per_channel(p["beta"], delta.ndim)
        dz = jnp.where(z > 0, delta, 0 if drop_leak else 0.03 * delta).astype(delta.dtype)
        axes = tuple(range(delta.ndim - 1))
        dbeta = jnp.sum(dz, axis=axes)
        return {"gamma": jnp.sum(dz * cache.x, axis=axes),
                "beta": -dbeta if flip_beta else dbeta}, dz * gamma

    def apply(p, x, *, key=None, train=True):
        return forward(p, x)[0]
    return jc.Layer(init, forward, backward, apply, "Affine")


@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16"])
def test_a_wrong_gradient_dwarfed_at_a_huge_input_is_caught(dtype):
    """At inputs of 1e15, ``dbeta = sum delta`` is 1e-15 of ``dgamma = sum delta x``: within
    float64's rounding of the layer's largest gradient.  Its sign flipped must still fail --
    the derivation is also compared at the input scaled to at most 1 -- and the right layer
    pass."""
    x = 1e15 * np.random.default_rng(0).normal(size=(2, 5, 4, 3))
    assert not jc.check_layer(_affine(flip_beta=True), (5, 4, 3), x=x, dtype=dtype).ok
    assert jc.check_layer(_affine(), (5, 4, 3), x=x, dtype=dtype).ok


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_16_bit_audit_catches_a_term_below_its_tolerance(dtype):
    """A leak of 0.03 left out of the backward is within bfloat16's 2.4e-2 relative error of
    the whole residual: the 16-bit rows also hold the derivation to float64's rounding."""
    wrong = jc.check_layer(_affine(drop_leak=True), (4, 4, 3), dtype=dtype)
    assert not wrong.ok        # float16's tolerance of 1e-2 fails it anyway; bfloat16's not
    assert ("jax.vjp float64" in str(wrong)) == (dtype == "bfloat16"), str(wrong)
    assert jc.check_layer(_affine(), (4, 4, 3), dtype=dtype).ok


def test_fits_gradient_check_catches_a_bias_dwarfed_by_its_weights():
    """``gradient_check`` (``fit``'s) at a batch of entries ~1e6 also compares at the batch
    scaled to at most 1, where a bias's gradient of the wrong sign is not below the floor."""
    dense = jc.Dense(3)

    def flipped(p, cache, delta):
        grads, dx = dense.backward(p, cache, delta)
        return {**grads, "b": -grads["b"]}, dx
    rng = np.random.default_rng(0)
    x = (1e6 * rng.normal(size=(8, 4))).astype(np.float32)
    y = rng.integers(0, 3, 8).astype(np.int32)
    params, _ = dense.init(jax.random.key(0), (4,))
    params = (jax.tree.map(lambda a: a.astype(jnp.float32), params),)
    wrong = audit.gradient_check(jc.serial(dense._replace(backward=flipped)),
                                 jc.softmax_cross_entropy, params, x, y)
    assert wrong.worst > 1 and wrong.worst_name == "serial[0] Dense params['b']"
    assert audit.gradient_check(jc.serial(dense), jc.softmax_cross_entropy, params, x, y).worst \
        <= audit.TOLERANCES["float32"]


def test_a_nan_error_is_the_worst():
    rows = tuple(audit.Row(0, "Dense", q, "jax.vjp", e, e, 1.0, 1e-4)
                 for q, e in (("params['w']", 0.0), ("params['b']", float("nan"))))
    assert audit.GradReport(rows, "float32").worst == float("inf")


def test_the_default_tolerance_is_of_the_dtype_jax_computes_in():
    """float64 NumPy params with x64 off are float32 arrays to JAX: float32's tolerance, not
    float64's (``fit`` would report a mismatch that is float32 rounding)."""
    params = {"w": np.zeros((2, 3), np.float64)}
    assert audit.default_tolerance(params) == audit.TOLERANCES["float64"]
    with jax.enable_x64(False):
        assert audit.default_tolerance(params) == audit.TOLERANCES["float32"]


# --- the point of the audit: one or more examples, finite --------------------------------------

@pytest.mark.parametrize("where, value, named", [
    ("x", np.nan, r"x has 1 NaN and 0 infinite of its 3174 entries"),
    ("x", -np.inf, r"x has 0 NaN and 1 infinite"),
    ("params", np.nan, r"params\[2\]\['w'\] has 1 NaN and 0 infinite of its 108 entries"),
])
def test_a_non_finite_input_is_refused_not_blamed_on_a_layer(where, value, named):
    net, params, x, labels = setup(jnp.float32)
    if where == "x":
        x = x.at[1, 4, 5, 0].set(value)
    else:
        wrong = {**params[2], "w": params[2]["w"].at[0, 0, 0, 1].set(value)}
        params = (*params[:2], wrong, *params[3:])
    with pytest.raises(ValueError, match=rf"^check_grads: the input holds non-finite values: "
                                         rf"{named}"):
        jc.check_grads(net, jc.softmax_cross_entropy, params, x, labels)


def test_check_layer_refuses_a_non_finite_or_empty_input():
    x = np.ones((2, 4, 4, 1))
    x[0, 1, 2, 0] = np.nan
    with pytest.raises(ValueError, match=r"^check_layer\(MaxPool2D\): the input holds non-finite "
                                         r"values: x has 1 NaN"):
        jc.check_layer(jc.MaxPool2D(2), (4, 4, 1), x=x)
    with pytest.raises(ValueError, match=r"^check_layer\(Sigmoid\): batch must be >= 1, got 0"):
        jc.check_layer(jc.Sigmoid(), (3,), batch=0)


def test_check_grads_refuses_labels_out_of_range_or_a_negative_stochastic_pool_input():
    """The audit's passes are jitted; the checks that need values run first, on the concrete
    batch: the loss's labels and stochastic pooling's domain."""
    net, params, x, labels = setup(jnp.float32)
    with pytest.raises(ValueError, match=r"^softmax_cross_entropy: labels must lie in \[0, 5\), "
                                         r"got values in \[0, 7\]"):
        jc.check_grads(net, jc.softmax_cross_entropy, params, x, labels.at[1].set(7))
    pooled = jc.serial(jc.Conv2D(2, 3), jc.StochasticPool2D(2), jc.Flatten(), jc.Dense(5))
    params, _ = pooled.init(jax.random.key(0), (23, 23, 2))
    with pytest.raises(ValueError, match=r"^serial\[1\] StochasticPool2D: inputs must be >= 0"):
        jc.check_grads(pooled, jc.softmax_cross_entropy, params, x, labels, key=jax.random.key(1))


def test_check_grads_refuses_an_empty_batch():
    net, params, x, labels = setup(jnp.float32)
    with pytest.raises(ValueError, match=r"^check_grads: x is an empty batch \(shape \(0, 23, 23, "
                                         r"2\)\); the audit needs at least one example"):
        jc.check_grads(net, jc.softmax_cross_entropy, params, x[:0], labels[:0])


def test_a_wrong_leaf_inside_combinators_is_named_by_its_path():
    """``check_grads`` audits every leaf inside ``parallel``/``serial`` nests; a planted mistake
    in a branch is named by its path, ``first_bad_layer`` is the top-level layer holding it, and
    a wrong branch point (eq. 6.5: one branch's residual only) is pinned on the ``FanOut``."""
    from mutants import branch_point_one_branch_only

    def net_with(sigmoid, fan):
        return jc.serial(jc.Conv2D(3, 3, padding="SAME"), fan,
                         jc.parallel(jc.serial(jc.Conv2D(3, 3, padding="SAME"), sigmoid),
                                     jc.Identity()),
                         jc.FanInSum(), jc.Flatten(), jc.Dense(4))

    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 5, 5, 1)))
    labels = jnp.asarray([1, 2])
    good = net_with(jc.Sigmoid(), jc.FanOut(2))
    params, _ = good.init(jax.random.key(0), (5, 5, 1))
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    report = jc.check_grads(good, jc.softmax_cross_entropy, params, x, labels)
    assert report.ok, str(report)
    paths = {row.path for row in report.rows if row.layer == 2}
    assert paths == {"serial[2] > parallel[0] > serial[0] Conv2D",
                     "serial[2] > parallel[0] > serial[1] Sigmoid", "serial[2] > parallel[1] Identity"}
    bad = jc.check_grads(net_with(mutate(jc.Sigmoid(), sigmoid_slope_as_a), jc.FanOut(2)),
                         jc.softmax_cross_entropy, params, x, labels)
    assert bad.first_bad_layer == 2
    assert "FAILED: first wrong layer is 2 (serial[2] > parallel[0] > serial[1] Sigmoid)" \
        in str(bad)
    bad = jc.check_grads(net_with(jc.Sigmoid(), mutate(jc.FanOut(2),
                                                       branch_point_one_branch_only)),
                         jc.softmax_cross_entropy, params, x, labels)
    assert bad.first_bad_layer == 1 and bad.first_bad_path == "FanOut", str(bad)


@pytest.mark.parametrize("index, mistake", [(0, "batchnorm_without_statistics_terms"),
                                            (1, "dropout_not_rescaled")])
def test_a_wrong_normalisation_or_dropout_is_pinned_on_its_layer(index, mistake):
    """BatchNorm's backward without the terms through the batch statistics (eq. 7.10), and
    dropout's without ``1 / (1 - rate)`` (eq. 7.16), are each pinned on their layer."""
    import mutants

    layers = [jc.BatchNorm(), jc.Dropout(0.3), jc.Flatten(), jc.Dense(4)]
    layers[index] = mutate(layers[index], getattr(mutants, mistake))
    net = jc.serial(*layers)
    rng = np.random.default_rng(0)
    params, _ = net.init(jax.random.key(0), (3, 3, 2))
    params = jax.tree.map(lambda p: jnp.asarray(np.asarray(p) + 0.3 * rng.normal(size=p.shape),
                                                jnp.float64), params)
    x = jnp.asarray(rng.normal(size=(4, 3, 3, 2)))
    report = jc.check_grads(net, jc.softmax_cross_entropy, params, x, jnp.asarray([0, 3, 1, 2]),
                            key=jax.random.key(2))
    assert report.first_bad_layer == index, str(report)
    assert all(row.ok for row in report.rows if row.layer is not None and row.layer != index)
    assert f"FAILED: first wrong layer is {index} ({layers[index].name})" in str(report)


@pytest.mark.parametrize("seed", range(4))
def test_a_gradient_that_cancels_to_rounding_passes_in_float32_and_a_wrong_one_fails(seed):
    """Normalising sets of two entries makes ``x_hat = +-1`` whatever they are, so ``dx``
    cancels to rounding noise in float32 on both sides: the row passes against ``jax.vjp`` in
    float64, the hand-written error no more than ``ROUNDING_FACTOR`` times float32 autodiff's.
    BatchNorm's backward without the terms through its statistics is still pinned."""
    import mutants

    f32 = jnp.float32
    for layer, shape, batch in [(jc.LayerNorm(), (2,), 4), (jc.BatchNorm(), (4,), 2),
                                (jc.GroupNorm(2), (2, 2), 2),
                                (jc.LayerNorm(use_scale=False, use_bias=False), (2,), 3)]:
        report = jc.check_layer(layer, shape, batch=batch, dtype=f32, seed=seed)
        assert report.ok, str(report)
        assert {row.reference for row in report.rows} <= {"jax.vjp", "jax.vjp float64"}
    bad = mutate(jc.BatchNorm(), mutants.batchnorm_without_statistics_terms)
    report = jc.check_layer(bad, (4,), batch=2, dtype=f32, seed=seed)
    assert not report.ok and [row.quantity for row in report.rows if not row.ok] == ["dx"]
    assert jax.config.jax_enable_x64                     # the context's own setting restored


def test_the_verdict_counts_a_kink_apart():
    """ReLU at exactly 0: its finite-difference row is a kink, not compared -- the verdict says
    so instead of counting it among the gradients that agree."""
    net = jc.serial(jc.ReLU(), jc.Flatten(), jc.Dense(3))
    params, _ = net.init(jax.random.key(0), (2, 2, 1))
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    report = jc.check_grads(net, jc.softmax_cross_entropy, params,
                            jnp.zeros((2, 2, 2, 1), jnp.float64), jnp.array([0, 1], jnp.int32),
                            finite_differences=True)
    assert report.ok and sum(row.kink for row in report.rows) == 1
    assert str(report).endswith(f"{len(report.rows) - 1} gradients agree, 1 not compared at a "
                                f"kink (float64; worst relative error {report.worst:.1e})")


# --- the layer contract, held to: what a new layer's author gets wrong ----------------------

def test_a_gradient_of_the_wrong_shape_or_dtype_fails_its_row():
    """dw with an extra axis (same size, same values) or in another dtype is no gradient of
    the params: its row fails, naming both shapes, in check_layer and in check_grads' end to
    end rows -- never 'all agree' while an optimizer would reshape the params."""
    dense = jc.Dense(3)

    def keepdims(p, c, d):
        dp, dx = dense.backward(p, c, d)
        return {**dp, "b": dp["b"][None]}, dx

    def wide(p, c, d):
        dp, dx = dense.backward(p, c, d)
        return dp, dx.astype(jnp.float64)

    report = jc.check_layer(dense._replace(backward=keepdims), (4,))
    assert not report.ok and report.first_bad_layer == 0
    assert "params['b'] (shape (1, 3) float64, expected (3,) float64)" in str(report)
    report = jc.check_layer(dense._replace(backward=wide), (4,), dtype=jnp.float32)
    assert not report.ok and "dx (shape (2, 4) float64, expected (2, 4) float32)" in str(report)
    net = jc.serial(jc.Flatten(), dense._replace(backward=keepdims))
    params, _ = net.init(jax.random.key(0), (2, 2, 1))
    params = jax.tree.map(lambda v: v.astype(jnp.float64), params)
    report = jc.check_grads(net, jc.softmax_cross_entropy, params,
                            jnp.ones((2, 2, 2, 1), jnp.float64), jnp.array([0, 1], jnp.int32))
    assert report.first_bad_layer == 1
    assert [r.ok for r in report.rows if r.layer is None and "['b']" in r.quantity] == [False]


def test_a_merge_returning_too_few_input_residuals_is_refused():
    merge = jc.FanInSum()
    with pytest.raises(ValueError, match=r"^FanInSum: backward returned dx with structure "
                                         r"PyTreeDef\(\(\*,\)\), expected that of the input "
                                         r"PyTreeDef\(\(\*, \*\)\)"):
        jc.check_layer(merge._replace(backward=lambda p, c, d: ((), (d,))),
                       ((3, 3, 2), (3, 3, 2)))


def test_a_forward_that_is_not_apply_is_pinned_on_its_layer():
    """A forward that leaves out the bias, apply and backward right: at init's zero bias the
    two agree; at other params -- check_layer's own, init's moved -- check_layer adds a
    failing 'y' row, and check_grads pins the layer rather than only the end-to-end rows."""
    dense = jc.Dense(3)

    def forward(p, x, *, key=None, train=True):
        y, cache = dense.forward(p, x, key=key, train=train)
        return y - p["b"][None], cache

    wrong = dense._replace(forward=forward)
    init, _ = dense.init(jax.random.key(0), (4,))
    assert jc.check_layer(wrong, (4,), params=init).ok                 # b = 0: the same
    assert [r.quantity for r in jc.check_layer(wrong, (4,)).rows if not r.ok] == ["y"]
    params = {"w": jnp.ones((4, 3), jnp.float64), "b": jnp.arange(3.0)}
    report = jc.check_layer(wrong, (4,), params=params)
    assert not report.ok and [r.quantity for r in report.rows if not r.ok] == ["y"]
    assert report.rows[-1].reference == "apply"
    net = jc.serial(jc.Flatten(), wrong, jc.Dense(2))
    p, _ = net.init(jax.random.key(0), (2, 2, 1))
    p = jax.tree.map(lambda v: v.astype(jnp.float64), p)
    p = (p[0], {"w": p[1]["w"], "b": jnp.arange(3.0)}, p[2])
    report = jc.check_grads(net, jc.softmax_cross_entropy, p,
                            jnp.asarray(np.random.default_rng(0).normal(size=(2, 2, 2, 1))),
                            jnp.array([0, 1], jnp.int32))
    assert report.first_bad_layer == 1


@pytest.mark.parametrize("field, replace, message", [
    ("init", lambda layer: lambda k, s: layer.init(k, s)[0],
     r"^Dense: init must return the pair \(params, output_shape\), got dict"),
    ("forward", lambda layer: lambda p, x, **kw: layer.forward(p, x, **kw)[0],
     r"^Dense: forward must return the pair \(y, cache\), got ArrayImpl"),
    ("backward", lambda layer: lambda p, c, d: layer.backward(p, c, d)[1],
     r"^Dense: backward must return the pair \(dparams, dx\), got ArrayImpl"),
])
def test_a_layer_function_that_breaks_the_contract_is_named(field, replace, message):
    dense = jc.Dense(3)
    with pytest.raises(TypeError, match=message):
        jc.check_layer(dense._replace(**{field: replace(dense)}), (4,))


def test_check_layer_refuses_a_bad_key_and_takes_a_cache_of_python_ints():
    with pytest.raises(TypeError, match=r"^check_layer\(Dense\): key must be one JAX random key"):
        jc.check_layer(jc.Dense(3), (4,), key="garbage")
    dense = jc.Dense(3)

    def forward(p, x, *, key=None, train=True):       # a shape kept as Python ints
        y, cache = dense.forward(p, x, key=key, train=train)
        return y, (cache, tuple(x.shape))

    def backward(p, cache, d):
        inner, shape = cache
        dp, dx = dense.backward(p, inner, d)
        return dp, dx.reshape(shape)

    assert jc.check_layer(dense._replace(forward=forward, backward=backward), (4,)).ok


# --- mistakes that init's round values, one mode, or a net-wide scale would hide ----------------

def _scale_forgotten(layer, params, cache, x, delta):
    """A normalisation's input residual without its scale (eq. 7.10 without ``gamma``): right
    where the scale is 1, as init makes it."""
    grads, dx = layer.backward(params, cache, delta)
    return grads, dx / params["scale"].reshape(1, 1, 1, -1)


@pytest.mark.parametrize("layer", [jc.BatchNorm(), jc.LayerNorm(), jc.GroupNorm(1)],
                         ids=lambda layer: layer.name)
def test_check_layer_moves_inits_ones_and_zeros(layer):
    """``check_layer`` audits at init's params moved off their ones and zeros, so a scale left
    out of the backward fails there; at init's own params it would pass."""
    bad = mutate(layer, _scale_forgotten)
    params, _ = layer.init(jax.random.key(0), (4, 4, 3))
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    assert jc.check_layer(bad, (4, 4, 3), params=params).ok         # init's: scale 1
    report = jc.check_layer(bad, (4, 4, 3))
    assert not report.ok and report.first_bad_layer == 0, str(report)
    assert jc.check_layer(layer, (4, 4, 3)).ok


def test_check_layer_audits_a_stateful_layer_evaluated_too():
    """BatchNorm's evaluated backward (fixed statistics, eq. 7.13) is audited bound to the state
    a training step leaves: a mistake there alone fails the ``train=False`` rows."""
    layer = jc.BatchNorm()

    def evaluated_doubled(inner, params, cache, x, delta):
        grads, dx = inner.backward(params, cache, delta)
        return grads, dx * 2.0

    bad = layer._replace(state=layer.state._replace(
        bind=lambda s: mutate(layer.state.bind(s), evaluated_doubled)))
    report = jc.check_layer(bad, (4, 4, 3))
    assert not report.ok and report.first_bad_path == "BatchNorm (train=False)", str(report)
    assert [r.path for r in report.rows if not r.ok] == ["BatchNorm (train=False)"]
    good = jc.check_layer(layer, (4, 4, 3))
    assert good.ok and len(good.rows) == 6 and "BatchNorm (train=False)" in str(good)


@pytest.mark.parametrize("seed", range(3))
def test_a_bias_before_a_normalisation_is_rounding_in_every_dtype(seed):
    """The bias's true gradient is 0 (the normalisation subtracts it again): both sides are
    rounding noise, in float64 as below it -- no false alarm, in a layer's audit or a net's."""
    stack = jc.serial(jc.Conv2D(3, 3, padding="SAME"), jc.BatchNorm())
    for dtype in (jnp.float32, jnp.float64):
        report = jc.check_layer(stack, (5, 5, 2), seed=seed, dtype=dtype)
        assert report.ok, str(report)
    net = jc.serial(stack, jc.ReLU(), jc.Flatten(), jc.Dense(4))
    params, _ = net.init(jax.random.key(seed), (5, 5, 2))
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    x = jax.random.normal(jax.random.key(seed + 10), (4, 5, 5, 2), jnp.float64)
    report = jc.check_grads(net, jc.softmax_cross_entropy, params, x, jnp.arange(4))
    assert report.ok, str(report)


def test_gradient_check_compares_each_layer_at_its_own_scale():
    """A deep sigmoid net's first layer has gradients far below the last one's: a sign flipped
    in its bias gradient is a 200% error there, which a net-wide rounding floor would pass."""
    def flipped(layer, params, cache, x, delta):
        grads, dx = layer.backward(params, cache, delta)
        return {**grads, "b": -grads["b"]}, dx

    layers = [mutate(jc.Dense(16), flipped), jc.Sigmoid()]
    for _ in range(7):
        layers += [jc.Dense(16), jc.Sigmoid()]
    net = jc.serial(*layers, jc.Dense(3))
    params, _ = net.init(jax.random.key(0), (16,))
    x = jax.random.normal(jax.random.key(1), (8, 16), jnp.float32)
    labels = jnp.arange(8) % 3
    check = audit.gradient_check(net, jc.softmax_cross_entropy, params, x, labels)
    assert check.worst_name == "serial[0] Dense params['b']" and check.worst > 1.0, check
    report = jc.check_grads(net, jc.softmax_cross_entropy, params, x, labels)
    assert not [r for r in report.rows if r.layer is None and r.quantity == "params[0]['b']"][0].ok


@pytest.mark.parametrize("layer, shape", [
    (jc.Conv2D(3, 3, padding="SAME"), (6, 6, 2)), (jc.Conv2D(4, 3, strides=2, groups=2), (7, 7, 2)),
    (jc.ConvTranspose2D(2, 3, strides=2), (3, 3, 2)), (jc.Dense(3), (5,)),
    (jc.MaxPool2D(2), (6, 6, 2)), (jc.AvgPool2D(3, 2, padding="SAME"), (7, 7, 2)),
    (jc.GlobalAvgPool2D(), (4, 4, 2)), (jc.Flatten(), (3, 3, 2)), (jc.Sigmoid(), (4,)),
    (jc.Softmax(), (5,)), (jc.LayerNorm(), (4, 4, 3)), (jc.GroupNorm(2), (4, 4, 4)),
    (jc.BatchNorm(), (4, 4, 3)), (jc.Dropout(0.3), (4, 4, 2)),
], ids=lambda v: v.name if isinstance(v, Layer) else "")
def test_every_layer_passes_its_audit_on_one_example(layer, shape):
    """Batch 1, as ``vmap`` runs a layer per example (eq. 6.3): a backward that squeezed an
    axis, or divided by the batch where it should not, would be wrong here alone."""
    report = jc.check_layer(layer, shape, batch=1)
    assert report.ok, str(report)


@pytest.mark.parametrize("dtype, factor", [(jnp.bfloat16, 1.5), (jnp.float16, 1.08),
                                           (jnp.float32, 1.0 + 5e-4)])
def test_a_mistake_below_float64_alone_is_not_passed_as_rounding(dtype, factor):
    """A kernel gradient scaled in the 16-bit or float32 path only (the float64 backward is
    right): the rounding rescue allows the reference's own rounding to a gradient of real
    size, not 100 units of its dtype, so the row fails -- in a layer's audit and a net's."""
    def scaled_below_float64(layer, params, cache, x, delta):
        grads, dx = layer.backward(params, cache, delta)
        if x.dtype != jnp.float64:
            grads = {**grads, "w": grads["w"] * jnp.asarray(factor, grads["w"].dtype)}
        return grads, dx

    bad = mutate(jc.Dense(8), scaled_below_float64)
    report = jc.check_layer(bad, (16,), batch=4, dtype=dtype)
    assert [r.quantity for r in report.rows if not r.ok] == ["params['w']"], str(report)
    net = jc.serial(bad, jc.ReLU(), jc.Dense(3))
    params, _ = net.init(jax.random.key(0), (16,))
    params = jax.tree.map(lambda p: p.astype(dtype), params)
    x = jax.random.normal(jax.random.key(1), (6, 16), dtype)
    report = jc.check_grads(net, jc.softmax_cross_entropy, params, x, jnp.arange(6) % 3)
    assert report.first_bad_layer == 0, str(report)


def test_a_wrapped_stateful_layer_is_audited_in_training():
    """A BatchNorm wrapped with a cache of its own, which its state cannot read: audited in
    training as before, without an evaluated pass to crash on."""
    bn = jc.BatchNorm()

    def forward(params, x, *, key=None, train=True):
        y, cache = bn.forward(params, x, key=key, train=train)
        return y, (cache,)

    def backward(params, cache, delta):
        return bn.backward(params, cache[0], delta)

    report = jc.check_layer(bn._replace(forward=forward, backward=backward), (4, 4, 3))
    assert report.ok and len(report.rows) == 3, str(report)

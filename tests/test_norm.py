"""BatchNorm, LayerNorm, GroupNorm and Dropout: hand-written backwards (eqs. 7.1-7.16) equal
``jax.vjp`` of their own forward and of an independent reference written here with
``jnp.mean`` / ``jnp.var``; worked examples by hand; BatchNorm's state; Dropout's mask; whole
nets against ``jax.grad``; the audit; bad input.
"""
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import jaxcnn as jc
from harness import TOL, assert_backward_matches, init_as

KEY = jax.random.key(0)


# --- the oracle: normalisation written plainly with jnp.mean / jnp.var ------------------------

def reference(kind: str, groups: int, epsilon: float, params: dict, x):
    """``y`` of BatchNorm / LayerNorm / GroupNorm, from the textbook definitions."""
    c = x.shape[-1]
    if kind == "BatchNorm":
        v, axes = x, tuple(range(x.ndim - 1))
    elif kind == "LayerNorm":
        v, axes = x, (x.ndim - 1,)
    else:                                       # GroupNorm: (N, ..., G, C/G), over all but N, G
        v = x.reshape(*x.shape[:-1], groups, c // groups)
        axes = (*range(1, x.ndim - 1), x.ndim)
    mean = jnp.mean(v, axis=axes, keepdims=True)
    var = jnp.var(v, axis=axes, keepdims=True)                       # biased, as in training
    y = ((v - mean) / jnp.sqrt(var + epsilon)).reshape(x.shape)
    per_channel = (1,) * (x.ndim - 1) + (c,)
    if "scale" in params:
        y = y * params["scale"].reshape(per_channel)
    if "bias" in params:
        y = y + params["bias"].reshape(per_channel)
    return y


def err(got, want, floor=0.0) -> float:
    """``max |got - want|`` relative to ``max |want|``, or to ``floor`` where that is larger: the
    size of the terms the compact form subtracts (for a set of two entries, ``dx`` is a
    difference of nearly equal terms and far smaller than either)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = max(float(np.max(np.abs(want), initial=0.0)), floor, 1e-300)
    return float(np.max(np.abs(got - want), initial=0.0)) / scale


def random_params(params, rng, dtype):
    """Scale around 1 and bias around 0, random, so that both gradients are exercised."""
    out = {}
    if "scale" in params:
        out["scale"] = jnp.asarray(1 + 0.5 * rng.normal(size=params["scale"].shape), dtype)
    if "bias" in params:
        out["bias"] = jnp.asarray(rng.normal(size=params["bias"].shape), dtype)
    return out


class Case(NamedTuple):
    kind: str
    shape: tuple
    groups: int
    use_scale: bool
    use_bias: bool
    loc: float
    dtype: type


def make(case: Case):
    if case.kind == "BatchNorm":
        return jc.BatchNorm(use_scale=case.use_scale, use_bias=case.use_bias)
    if case.kind == "LayerNorm":
        return jc.LayerNorm(use_scale=case.use_scale, use_bias=case.use_bias)
    return jc.GroupNorm(case.groups, use_scale=case.use_scale, use_bias=case.use_bias)


@st.composite
def norm_cases(draw):
    rank = draw(st.sampled_from([2, 4]))
    c = draw(st.integers(1, 4))
    spatial = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if rank == 4 else ()
    groups = draw(st.sampled_from([g for g in (1, 2, c) if c % g == 0]))
    return Case(draw(st.sampled_from(["BatchNorm", "LayerNorm", "GroupNorm"])),
                (draw(st.integers(1, 3)), *spatial, c), groups, draw(st.booleans()),
                draw(st.booleans()), draw(st.sampled_from([0.0, 1e3])),
                draw(st.sampled_from([jnp.float32, jnp.float64])))


def set_size(case: Case) -> int:
    """How many entries each set of ``case``'s layer normalises over (eqs. 7.1, 7.11, 7.12)."""
    n, *spatial, c = case.shape
    return {"BatchNorm": n * math.prod(spatial), "LayerNorm": c,
            "GroupNorm": math.prod(spatial) * c // case.groups}[case.kind]


def check_norm(case: Case, seed: int = 0):
    """Forward and backward, jitted, against ``jax.vjp`` of the layer's ``apply`` and of
    ``reference`` (in float64, from the same inputs for a float32 case), with a random
    cotangent.  Two compiles per case: the forward, and the rest with the cache handed in."""
    layer, rng = make(case), np.random.default_rng(seed)
    params, out_shape = layer.init(KEY, case.shape[1:])
    assert out_shape == case.shape[1:], "init's output shape is the input's"
    params = random_params(params, rng, case.dtype)
    x = jnp.asarray(case.loc + rng.normal(size=case.shape), case.dtype)
    if set_size(case) == 1:                 # x_hat = 0 whatever x: refused, never the bias
        for run in (layer.forward, layer.apply, jax.jit(layer.forward)):
            with pytest.raises(ValueError, match=rf"{case.kind}: every set it normalises "
                                                 rf"holds one entry \(input shape"):
                run(params, x)
        return
    y, cache = jax.jit(layer.forward)(params, x)
    dy = jnp.asarray(rng.normal(size=y.shape), case.dtype)

    @jax.jit
    def backwards(params, cache, x, dy):
        wide = jax.tree.map(lambda a: a.astype(jnp.float64), (params, x, dy))
        ref = lambda p, x: reference(case.kind, case.groups, 1e-5, p, x)   # noqa: E731
        y_ref, vjp = jax.vjp(ref, *wide[:2])
        return (layer.backward(params, cache, dy), jax.vjp(layer.apply, params, x)[1](dy),
                y_ref, vjp(wide[2]))

    (grads, dx), own, y_ref, want = backwards(params, cache, x, dy)
    assert y.dtype == dx.dtype == case.dtype and y.shape == x.shape
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    # the size of the terms eq. 7.10 subtracts, and of those eq. 7.5 sums
    gamma = float(np.max(np.abs(params["scale"]))) if case.use_scale else 1.0
    floor_dx = float(np.max(np.abs(dy))) * gamma * float(np.max(cache.inv_std))
    floor_p = float(np.max(np.abs(dy))) * max(1.0, float(np.max(np.abs(cache.x_hat))))
    floors = [floor_p] * len(jax.tree.leaves(params)) + [floor_dx]
    tol = TOL[jnp.dtype(case.dtype)]
    for got, w, floor in zip(jax.tree.leaves((grads, dx)), jax.tree.leaves(own), floors):
        assert err(got, w, floor) <= tol, (case, err(got, w, floor))
    # float32 cannot centre better than its rounding of the mean: |x| / sigma units of it
    tol = 1e-10 if case.dtype == jnp.float64 else 2e-5 * max(
        1.0, float(np.max(np.abs(x))) / float(np.min(1 / np.asarray(cache.inv_std))))
    assert err(y, y_ref) <= tol, (case, err(y, y_ref))
    for got, w, floor in zip(jax.tree.leaves((grads, dx)), jax.tree.leaves(want), floors):
        assert err(got, w, floor) <= tol, (case, err(got, w, floor))


@given(norm_cases())
@example(Case("BatchNorm", (1, 3), 1, True, True, 0.0, jnp.float64))          # batch 1: refused
@example(Case("BatchNorm", (2, 5), 1, True, True, 0.0, jnp.float64))          # batch 2: M = 2
@example(Case("BatchNorm", (2, 3, 2, 1), 1, True, True, 1e3, jnp.float32))    # 1 channel, large
@example(Case("LayerNorm", (2, 2, 3, 4), 1, False, False, 1e3, jnp.float32))  # nor scale nor bias
@example(Case("GroupNorm", (2, 2, 2, 4), 1, True, False, 0.0, jnp.float64))   # groups 1
@example(Case("GroupNorm", (1, 3, 2, 4), 4, False, True, 1e3, jnp.float64))   # groups C
@example(Case("GroupNorm", (3, 6), 3, True, True, 0.0, jnp.float32))          # rank 2
def test_norm_backward_matches_autodiff_and_the_reference(case):
    check_norm(case)


# --- worked examples by hand -----------------------------------------------------------------

def test_batchnorm_by_hand():
    """Channel 0 holds 0, 0, 4, 4: mean 2, biased variance 4; with eps = 5, sigma = 3 and
    x_hat = -2/3, -2/3, 2/3, 2/3.  Channel 1 is constant: x_hat = 0, y = bias.  For
    dy = (1, 0, 0, 0) on channel 0, eq. 7.10 with M = 4, scale 3:
    dx = (1/4)(4 dy - 1 + (2/3) x_hat) = (23, -13, -5, -5) / 36 -- not dy scale / sigma = dy."""
    bn = jc.BatchNorm(momentum=0.9, epsilon=5.0)
    x = jnp.asarray([[0.0, 1.0], [0.0, 1.0], [4.0, 1.0], [4.0, 1.0]])
    params = {"scale": jnp.asarray([3.0, 2.0]), "bias": jnp.asarray([1.0, -1.0])}
    y, cache = bn.forward(params, x)
    np.testing.assert_allclose(y, [[-1.0, -1.0], [-1.0, -1.0], [3.0, -1.0], [3.0, -1.0]],
                               rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(cache.mean.ravel(), [2.0, 1.0], rtol=1e-15)
    np.testing.assert_allclose(cache.var.ravel(), [4.0, 0.0], rtol=1e-15)
    dy = jnp.asarray([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    grads, dx = bn.backward(params, cache, dy)
    np.testing.assert_allclose(dx[:, 0], np.array([23.0, -13.0, -5.0, -5.0]) / 36, rtol=1e-14)
    np.testing.assert_array_equal(dx[:, 1], 0.0)
    np.testing.assert_allclose(grads["scale"], [-2 / 3, 0.0], rtol=1e-15)
    np.testing.assert_array_equal(grads["bias"], [1.0, 0.0])
    state = bn.state.update(bn.state.init((2,)), cache)        # eq. 7.14 from (0, 1), m = 0.9
    np.testing.assert_allclose(state["mean"], [0.2, 0.1], rtol=1e-6)
    np.testing.assert_allclose(state["var"], [1.3, 0.9], rtol=1e-6)


def test_layernorm_and_groupnorm_by_hand():
    """LayerNorm of (1, 3) over its 3 entries: mean 2, variance 2/3; GroupNorm(2) of
    (1, 5, 7, 0) with the pairs (1, 5) and (7, 0) normalised apart: +-1 each (eps tiny)."""
    ln = jc.LayerNorm(epsilon=1e-300, use_scale=False, use_bias=False)
    y = ln.apply({}, jnp.asarray([[1.0, 2.0, 3.0]]))
    np.testing.assert_allclose(y, [[-np.sqrt(1.5), 0.0, np.sqrt(1.5)]], rtol=1e-14)
    gn = jc.GroupNorm(2, epsilon=1e-300, use_bias=False)
    y = gn.apply({"scale": jnp.asarray([1.0, 2.0, 3.0, 4.0])}, jnp.asarray([[1.0, 5.0, 7.0, 0.0]]))
    np.testing.assert_allclose(y, [[-1.0, 2.0, 3.0, -4.0]], rtol=1e-14)


# --- BatchNorm's state -----------------------------------------------------------------------

def bn_setup(dtype=jnp.float64, shape=(4, 3, 3, 2), loc=0.0):
    bn = jc.BatchNorm(momentum=0.8)
    rng = np.random.default_rng(3)
    params = random_params(init_as(bn, shape[1:], dtype)[0], rng, dtype)
    x = jnp.asarray(loc + 2 * rng.normal(size=shape), dtype)
    return bn, params, x, rng


def test_batchnorm_state_init_update_and_bind():
    bn, params, x, rng = bn_setup()
    state = bn.state.init((3, 3, 2))
    assert {k: (v.shape, v.dtype) for k, v in state.items()} == {
        "mean": ((2,), jnp.float32), "var": ((2,), jnp.float32)}
    np.testing.assert_array_equal(state["mean"], 0.0)
    np.testing.assert_array_equal(state["var"], 1.0)
    state = {"mean": jnp.asarray([0.5, -1.0]), "var": jnp.asarray([2.0, 0.25])}
    _, cache = jax.jit(bn.forward)(params, x)
    new = jax.jit(bn.state.update)(state, cache)                              # eq. 7.14
    for k, stat in (("mean", jnp.mean(x, axis=(0, 1, 2))), ("var", jnp.var(x, axis=(0, 1, 2)))):
        np.testing.assert_allclose(new[k], 0.8 * state[k] + 0.2 * stat, rtol=1e-13)
    bound = bn.state.bind(new)
    y = jax.jit(lambda p, x: bound.apply(p, x, train=False))(params, x)        # eq. 7.13
    per_channel = lambda a: a.reshape(1, 1, 1, 2)                          # noqa: E731
    want = (per_channel(params["scale"]) * (x - per_channel(new["mean"]))
            / jnp.sqrt(per_channel(new["var"]) + 1e-5) + per_channel(params["bias"]))
    np.testing.assert_allclose(y, want, rtol=1e-13, atol=1e-13)
    assert_backward_matches(bound, params, x, train=False)
    _, eval_cache = bound.forward(params, x, train=False)
    _, dx = bound.backward(params, eval_cache, jnp.ones_like(x))               # affine: no
    np.testing.assert_allclose(dx, jnp.broadcast_to(                          # mean, var terms
        per_channel(params["scale"] / jnp.sqrt(new["var"] + 1e-5)), x.shape), rtol=1e-14)
    # training mode bound is training mode unbound, and the bound layer keeps its state fns
    np.testing.assert_array_equal(bound.apply(params, x), bn.apply(params, x))
    assert bound.state is not None and bound.state.update(new, cache)["mean"].shape == (2,)
    assert_backward_matches(bound, params, x)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16])
def test_batchnorm_bound_casts_its_state_to_the_input(dtype):
    bn, params, x, _ = bn_setup(dtype)
    state = {"mean": jnp.asarray([0.5, -1.0], jnp.float64), "var": jnp.asarray([2.0, 0.25])}
    y = bn.state.bind(state).apply(params, x, train=False)
    assert y.dtype == dtype


def test_batchnorm_update_is_affine_in_the_batch_statistics():
    """The mean of the states updated from two chunks is the update from their mean
    statistics (what microbatching and data parallelism rely on)."""
    bn, params, x, _ = bn_setup()
    state = {"mean": jnp.asarray([0.5, -1.0]), "var": jnp.asarray([2.0, 0.25])}
    (_, c1), (_, c2) = bn.forward(params, x[:2]), bn.forward(params, x[2:])
    updated = [bn.state.update(state, c) for c in (c1, c2)]
    averaged = c1._replace(mean=(c1.mean + c2.mean) / 2, var=(c1.var + c2.var) / 2)
    for k in ("mean", "var"):
        np.testing.assert_allclose((updated[0][k] + updated[1][k]) / 2,
                                   bn.state.update(state, averaged)[k], rtol=1e-14)


def test_batchnorm_state_through_a_network():
    """``jc.init_state`` / ``update_state`` / ``with_state`` find the layer's state inside a
    net: the running mean moves toward the batch mean, and the bound net evaluates with it."""
    net = jc.serial(jc.ReLU(), jc.BatchNorm(momentum=0.5), jc.Flatten())
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3, 3, 2)), jnp.float32)
    params, _ = net.init(KEY, (3, 3, 2))
    state = jc.init_state(net, (3, 3, 2))
    assert state[0] == state[2] == () and set(state[1]) == {"mean", "var"}
    _, cache = net.forward(params, x)
    state = jc.update_state(net, state, cache)
    batch_mean = jnp.mean(jax.nn.relu(x), axis=(0, 1, 2))
    np.testing.assert_allclose(state[1]["mean"], 0.5 * batch_mean, rtol=1e-6)
    y = jax.jit(lambda p, s, x: jc.with_state(net, s).apply(p, x, train=False))(params, state, x)
    want = (jax.nn.relu(x) - state[1]["mean"].reshape(1, 1, 1, 2)) / jnp.sqrt(
        state[1]["var"].reshape(1, 1, 1, 2) + 1e-5)
    np.testing.assert_allclose(y, want.reshape(4, 18), rtol=1e-5, atol=1e-6)


def test_batchnorm_refuses_to_evaluate_without_its_state():
    bn, params, x, _ = bn_setup()
    match = (r"^BatchNorm: evaluation \(train=False\) normalises with the running statistics, "
             r"which this layer does not hold; evaluate with jc.with_state\(net, state\)\.apply")
    with pytest.raises(ValueError, match=match):
        bn.apply(params, x, train=False)
    with pytest.raises(ValueError, match=r"^serial\[0\] BatchNorm: evaluation \(train=False\)"):
        jax.jit(lambda p, x: jc.serial(bn, jc.ReLU()).apply((p, ()), x, train=False))(params, x)
    _, eval_cache = bn.state.bind(bn.state.init((3, 3, 2))).forward(params, x, train=False)
    with pytest.raises(ValueError, match=r"^BatchNorm: update needs the cache of a training "
                                         r"forward \(train=True\)"):
        bn.state.update(bn.state.init((3, 3, 2)), eval_cache)
    with pytest.raises(ValueError, match=r"^BatchNorm: update expects the NormCache of a "
                                         r"BatchNorm forward, got tuple"):
        bn.state.update(bn.state.init((3, 3, 2)), ())


def test_batchnorm_state_of_the_wrong_shape():
    bn, params, x, _ = bn_setup()
    with pytest.raises(ValueError, match=r"^BatchNorm: expected a state \{'mean': \(C,\), "
                                         r"'var': \(C,\)\}, got \['mean'\]"):
        bn.state.bind({"mean": jnp.zeros(2)})
    bound = bn.state.bind({"mean": jnp.zeros(3), "var": jnp.ones(3)})
    with pytest.raises(ValueError, match=r"^BatchNorm: state\['mean'\] has shape \(3,\), "
                                         r"expected \(2,\) for this input"):
        bound.apply(params, x, train=False)
    for state, exc, match in [
            ({"mean": jnp.zeros(2, jnp.int32), "var": jnp.ones(2)}, TypeError,
             r"^BatchNorm: state\['mean'\] must be a real floating-point array, got int32"),
            ({"mean": jnp.zeros(2), "var": jnp.ones(2, jnp.complex128)}, TypeError,
             r"^BatchNorm: state\['var'\] must be a real floating-point array, got complex"),
            ({"mean": jnp.zeros(2), "var": -jnp.ones(2)}, ValueError,
             r"^BatchNorm: state\['var'\] must be >= 0 \(a variance\), got a most negative "
             r"entry of -1.0")]:
        with pytest.raises(exc, match=match):
            bn.state.bind(state).apply(params, x, train=False)


# --- Dropout ---------------------------------------------------------------------------------

def test_dropout_by_hand():
    """rate 0.75 keeps a quarter, each times 4 (eq. 7.15); the backward multiplies delta by the
    same mask and 4 (eq. 7.16).  The mask is jax.random.bernoulli(key, 0.25, shape)."""
    drop, key = jc.Dropout(0.75), jax.random.key(5)
    x = jnp.ones((2, 16))
    y, cache = drop.forward((), x, key=key)
    mask = np.asarray(jax.random.bernoulli(key, 0.25, x.shape))
    np.testing.assert_array_equal(cache.mask, mask)
    np.testing.assert_array_equal(y, np.where(mask, 4.0, 0.0))
    delta = jnp.arange(32.0).reshape(2, 16)
    _, dx = drop.backward((), cache, delta)
    np.testing.assert_array_equal(dx, np.where(mask, 4.0 * np.asarray(delta), 0.0))
    assert 0 < mask.sum() < mask.size


@pytest.mark.parametrize("shape, dtype, rate", [((3, 5), jnp.float64, 0.5),
                                                ((2, 4, 3, 2), jnp.float32, 0.5),
                                                ((1, 3, 2, 1), jnp.float64, 0.0)])
def test_dropout_backward_matches_autodiff(shape, dtype, rate):
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape), dtype)
    for train in (True, False):
        assert_backward_matches(jc.Dropout(rate), (), x, key=jax.random.key(1), train=train)


def test_dropout_backward_reuses_the_mask():
    drop = jc.Dropout(0.5)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8)))
    y1, cache = jax.jit(lambda x, k: drop.forward((), x, key=k))(x, jax.random.key(0))
    y2, _ = jax.jit(lambda x, k: drop.forward((), x, key=k))(x, jax.random.key(1))
    assert not np.array_equal(y1, y2), "another key draws another mask"
    delta = jnp.asarray(np.random.default_rng(1).normal(size=x.shape))
    _, dx = jax.jit(drop.backward)((), cache, delta)
    np.testing.assert_array_equal(dx != 0, y1 != 0)                 # where the forward kept
    np.testing.assert_array_equal(dx, jnp.where(y1 != 0, 2 * delta, 0.0))


def test_dropout_at_rate_zero_and_in_evaluation_is_the_identity():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)))
    delta = jnp.asarray(np.random.default_rng(1).normal(size=(3, 4)))
    for drop, train in ((jc.Dropout(0), True), (jc.Dropout(0.0), False), (jc.Dropout(0.9), False)):
        y, cache = drop.forward((), x, train=train)                        # no key needed
        assert cache.mask is None
        np.testing.assert_array_equal(y, x)
        np.testing.assert_array_equal(drop.backward((), cache, delta)[1], delta)


def test_dropout_keeps_a_fraction_of_one_minus_rate():
    x = jnp.ones((400, 250))
    y = jax.jit(lambda x: jc.Dropout(0.3).apply((), x, key=jax.random.key(2)))(x)
    kept = float(jnp.mean(y != 0))
    assert abs(kept - 0.7) < 0.005, kept                     # 100000 draws: sd 0.0015
    assert abs(float(jnp.mean(y)) - 1.0) < 0.01              # E[y] = x (eq. 7.15)


# --- whole nets against jax.grad, and the audit ----------------------------------------------

def mixed_net():
    # no bias before BatchNorm: its gradient is 0 (the batch mean takes any shift away)
    return jc.serial(jc.Conv2D(4, 3, padding="SAME", use_bias=False), jc.BatchNorm(),  # 0, 1
                     jc.ReLU(), jc.Conv2D(4, 3), jc.GroupNorm(2),                    # 2-4
                     jc.Flatten(), jc.LayerNorm(), jc.Dropout(0.3), jc.Dense(5))     # 5-8


def mixed_setup(dtype, seed=0):
    net = mixed_net()
    rng = np.random.default_rng(seed)
    params, _ = net.init(jax.random.key(seed), (6, 6, 2))
    params = jax.tree.map(
        lambda p: jnp.asarray(np.asarray(p) + 0.3 * rng.normal(size=p.shape), dtype), params)
    x = jnp.asarray(rng.normal(size=(3, 6, 6, 2)), dtype)
    return net, params, x, jnp.asarray([0, 3, 4])


@pytest.mark.parametrize("dtype, tol", [(jnp.float64, 1e-10), (jnp.float32, 2e-5)])
def test_a_net_of_the_new_layers_matches_jax_grad(dtype, tol):
    net, params, x, labels = mixed_setup(dtype)
    loss, key = jc.softmax_cross_entropy, jax.random.key(7)
    value, grads = jax.jit(lambda p, x, t, k: jc.value_and_grad(net, loss)(p, x, t, key=k))(
        params, x, labels, key)
    want_value, want = jax.jit(jax.value_and_grad(
        lambda p, x, t, k: loss.value(net.apply(p, x, key=k), t)))(params, x, labels, key)
    np.testing.assert_allclose(value, want_value, rtol=tol)
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
        assert err(g, w) <= tol, err(g, w)


def audit_net():
    """A smaller net for the audit, which runs eagerly (``tests/test_audit.py`` plants its
    mistakes in the same one)."""
    return jc.serial(jc.BatchNorm(), jc.ReLU(), jc.GroupNorm(2), jc.Flatten(),      # 0-3
                     jc.LayerNorm(), jc.Dropout(0.3), jc.Dense(4))                   # 4-6


def test_the_audit_passes_on_the_new_layers():
    net = audit_net()
    params, _ = net.init(KEY, (3, 3, 4))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda p: jnp.asarray(np.asarray(p) + 0.3 * rng.normal(size=p.shape),
                                                jnp.float64), params)
    x = jnp.asarray(rng.normal(size=(3, 3, 3, 4)))
    report = jc.check_grads(net, jc.softmax_cross_entropy, params, x, jnp.asarray([0, 3, 1]),
                            key=jax.random.key(7))
    assert report.ok, str(report)
    assert {row.layer for row in report.rows} == {*range(7), None}


@pytest.mark.parametrize("layer, shape, kw", [
    (jc.BatchNorm(), (4, 4, 3), {}),
    (jc.BatchNorm(use_bias=False), (5,), {}),
    (jc.LayerNorm(), (4, 4, 3), {}),
    (jc.GroupNorm(3), (4, 4, 6), {}),
    (jc.Dropout(0.4), (4, 4, 3), {"key": jax.random.key(3)}),
])
def test_check_layer_passes(layer, shape, kw):
    report = jc.check_layer(layer, shape, batch=3, finite_differences=True, **kw)
    assert report.ok, str(report)


def test_summary_counts_the_elementwise_kinds():
    """BatchNorm, LayerNorm (over the channels of one position) and Dropout leave a unit's
    receptive field as it was (config kind "elementwise"), one FLOP per element."""
    net = jc.serial(jc.Conv2D(2, 3), jc.BatchNorm(), jc.LayerNorm(), jc.Dropout(0.5))
    rows = jc.summary(net, (7, 7, 1)).rows
    assert [r.receptive_field for r in rows] == [(3, 3)] * 4
    assert [r.params for r in rows] == [20, 4, 4, 0]
    assert [r.flops for r in rows[1:]] == [50] * 3


# --- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("build, error, match", [
    (lambda: jc.GroupNorm(0), ValueError, r"^GroupNorm: num_groups must be >= 1, got 0"),
    (lambda: jc.GroupNorm(2.0), TypeError, r"^GroupNorm: num_groups must be an int"),
    (lambda: jc.BatchNorm(momentum=1.5), ValueError, r"^BatchNorm: momentum must be in "
                                                     r"\[0, 1\], got 1.5"),
    (lambda: jc.BatchNorm(epsilon=0), ValueError, r"^BatchNorm: epsilon must be in \(0, inf\)"),
    (lambda: jc.BatchNorm(epsilon=1e-40).apply(  # flushes to 0 in float32
        {"scale": jnp.ones(2, jnp.float32), "bias": jnp.zeros(2, jnp.float32)},
        jnp.ones((4, 2), jnp.float32)), ValueError,
     r"^BatchNorm: epsilon must be a normal float32 number, in \[1.17549e-38, 3.40282e\+38\], "
     r"for inputs of this dtype, got 1e-40"),
    (lambda: jax.jit(jc.LayerNorm(epsilon=1e39).apply)(         # infinite in float32
        {"scale": jnp.ones(2, jnp.bfloat16), "bias": jnp.zeros(2, jnp.bfloat16)},
        jnp.ones((4, 2), jnp.bfloat16)), ValueError,
     r"^LayerNorm: epsilon must be a normal float32 number, .* got 1e\+39"),
    (lambda: jc.GroupNorm(2, param_dtype=jnp.int32), TypeError,
     r"^GroupNorm: param_dtype must be a floating-point dtype, got int32"),
    (lambda: jc.LayerNorm(use_scale="yes"), TypeError, r"^LayerNorm: use_scale must be a bool"),
    (lambda: jc.Dropout(1.0), ValueError, r"^Dropout: rate must be in \[0, 1\), the "
                                          r"probability of dropping an entry, got 1.0"),
    (lambda: jc.Dropout(-0.1), ValueError, r"^Dropout: rate must be in \[0, 1\)"),
    (lambda: jc.Dropout(float("nan")), ValueError, r"^Dropout: rate must be in \[0, 1\)"),
    (lambda: jc.Dropout("0.5"), TypeError, r"^Dropout: rate must be a number in \[0, 1\), "
                                           r"got str"),
    (lambda: jc.Dropout(True), TypeError, r"^Dropout: rate must be a number"),
    (lambda: jc.Dropout(jnp.ones(2) / 4), TypeError, r"^Dropout: rate must be a number in "
                                                      r"\[0, 1\), got ArrayImpl of shape \(2,\) "
                                                      r"and dtype float"),
    (lambda: jc.Dropout(np.asarray(True)), TypeError, r"^Dropout: rate must be a number.*bool"),
    (lambda: jax.jit(jc.Dropout)(0.5), TypeError, r"^Dropout: rate must be a number in \[0, "
                                                   r"1\) fixed when the layer is built, got a "
                                                   r"traced value"),
    (lambda: jc.BatchNorm(momentum=jnp.asarray(1.5)), ValueError, r"^BatchNorm: momentum must "
                                                                   r"be in \[0, 1\], got 1.5"),
])
def test_bad_settings(build, error, match):
    with pytest.raises(error, match=match):
        build()


@pytest.mark.parametrize("make", [jc.BatchNorm, jc.LayerNorm, lambda **kw: jc.GroupNorm(1, **kw)])
def test_numpy_bools_are_flags(make):
    """``use_scale=np.False_`` is a bool to the layer (as to Conv2D and Dense): its params and
    its passes as with ``False``."""
    layer, plain = make(use_scale=np.False_, use_bias=np.True_), make(use_scale=False)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3, 3, 2)), jnp.float32)
    params, _ = layer.init(jax.random.key(0), x.shape[1:])
    assert set(params) == {"bias"} and dict(layer.config)["use_scale"] is False
    y, cache = layer.forward(params, x)
    np.testing.assert_array_equal(y, plain.apply(params, x))
    assert set(layer.backward(params, cache, y)[0]) == {"bias"}


def test_a_cache_from_another_normalisation_is_refused():
    """LayerNorm's cache holds other sets' statistics than BatchNorm's: its backward and its
    state update name the layer that made it, not return another layer's residual."""
    x = jnp.asarray([[1.0, 2.0], [3.0, 5.0]])
    params = {"scale": jnp.ones(2), "bias": jnp.zeros(2)}
    _, cache = jc.LayerNorm().forward(params, x)
    bn = jc.BatchNorm()
    with pytest.raises(TypeError, match=r"^BatchNorm: backward expects the cache its own "
                                        r"forward returned, got one made by LayerNorm\("):
        bn.backward(params, cache, jnp.ones((2, 2)))
    with pytest.raises(ValueError, match=r"^BatchNorm: update expects the NormCache of a "
                                         r"BatchNorm forward, got LayerNorm's"):
        bn.state.update(jc.init_state(bn, (2,)), cache)
    _, own = bn.forward(params, x)              # a bound BatchNorm takes the unbound one's
    bound = jc.with_state(bn, jc.init_state(bn, (2,)))
    np.testing.assert_array_equal(bound.backward(params, own, x)[1], bn.backward(params, own, x)[1])


def test_settings_given_as_concrete_arrays_are_numbers():
    """A rate or momentum given as a 0-d array (``jnp.float32(0.3)``, ``np.asarray(0.9)``) is
    the number it holds, as ``np.float32(0.3)`` is."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 6)), jnp.float32)
    for rate in (jnp.float32(0.3), np.asarray(0.3, np.float32), jnp.asarray(0.3)):
        y = jc.Dropout(rate).apply((), x, key=KEY)
        np.testing.assert_array_equal(y, jc.Dropout(np.float32(0.3)).apply((), x, key=KEY))
    assert jc.BatchNorm(momentum=jnp.asarray(0.5)).config == jc.BatchNorm(momentum=0.5).config


@pytest.mark.parametrize("dtype, rate, ok", [
    (jnp.float16, 0.99999, False), (jnp.float16, 0.9999, True), (jnp.bfloat16, 0.99999, True)])
def test_a_rate_whose_scale_overflows_the_dtype_is_refused(dtype, rate, ok):
    """Training scales the kept entries by ``1 / (1 - rate)``: beyond the dtype's largest value
    every kept entry would be inf and every dropped one NaN (0 times inf)."""
    layer, x = jc.Dropout(rate), jnp.ones((2, 50000), dtype)
    if ok:
        assert bool(jnp.all(jnp.isfinite(layer.apply((), x, key=KEY))))
        return
    with pytest.raises(ValueError, match=r"^Dropout: rate 0.99999 scales the kept entries by "
                                         r"1 / \(1 - rate\) = 100000, more than float16's "
                                         r"largest value 65504; use a lower rate"):
        jax.jit(lambda x: layer.apply((), x, key=KEY))(x)
    assert bool(jnp.all(jnp.isfinite(layer.apply((), x, key=KEY, train=False))))


def test_bad_inputs_name_the_layer():
    gn = jc.GroupNorm(3)
    with pytest.raises(ValueError, match=r"^GroupNorm: num_groups \(=3\) must divide the "
                                         r"channels \(=4\)"):
        gn.init(KEY, (5, 5, 4))
    with pytest.raises(ValueError, match=r"^GroupNorm: num_groups \(=3\) must divide"):
        jax.jit(gn.apply)({"scale": jnp.ones(4), "bias": jnp.zeros(4)}, jnp.ones((1, 2, 2, 4)))
    bn, params, x, _ = bn_setup(jnp.float32)
    with pytest.raises(ValueError, match=r"^BatchNorm: expected an input of rank >= 2, "
                                         r"\(N, \.\.\., C\) with the channels last, got shape "
                                         r"\(2,\)"):
        bn.apply({"scale": jnp.ones(2), "bias": jnp.zeros(2)}, jnp.ones(2))
    with pytest.raises(ValueError, match=r"^BatchNorm: params\['scale'\] has shape \(3,\), "
                                         r"expected \(2,\)"):
        bn.apply({**params, "scale": jnp.ones(3)}, x)
    with pytest.raises(TypeError, match=r"^BatchNorm: params\['scale'\] has dtype float32 but "
                                        r"the input is float64"):
        bn.apply(params, x.astype(jnp.float64))
    with pytest.raises(TypeError, match=r"^LayerNorm: expected a floating-point input"):
        jc.LayerNorm().apply({"scale": jnp.ones(2), "bias": jnp.zeros(2)},
                             jnp.ones((1, 2), jnp.int32))
    _, cache = bn.forward(params, x)
    with pytest.raises(ValueError, match=r"^BatchNorm: backward got delta of shape \(4, 3, 3\), "
                                         r"expected the forward output's shape \(4, 3, 3, 2\)"):
        bn.backward(params, cache, x[..., 0])
    with pytest.raises(ValueError, match=r"^Dropout: training mode with rate 0.5 draws a "
                                         r"keep-mask and needs a key"):
        jc.Dropout(0.5).apply((), x)
    with pytest.raises(ValueError, match=r"^serial\[1\] Dropout: training mode"):
        jc.serial(jc.ReLU(), jc.Dropout(0.5)).apply(((), ()), x)
    with pytest.raises(ValueError, match=r"^Dropout: backward got delta of shape"):
        jc.Dropout(0.5).backward((), jc.Dropout(0.5).forward((), x, key=KEY)[1], x[:1])


def test_an_empty_batch():
    """BatchNorm in training has no statistics on an empty batch: a ValueError.  LayerNorm,
    GroupNorm, a bound BatchNorm evaluating and Dropout give an empty output, dx empty and
    parameter gradients 0, as every other layer."""
    x = jnp.ones((0, 3, 3, 4), jnp.float32)
    with pytest.raises(ValueError, match=r"^BatchNorm: an empty batch \(input shape "
                                         r"\(0, 3, 3, 4\)\) has no statistics to normalise with "
                                         r"in training"):
        jc.BatchNorm().apply({"scale": jnp.ones(4, jnp.float32),
                              "bias": jnp.zeros(4, jnp.float32)}, x)
    bn = jc.BatchNorm()
    for layer in (jc.LayerNorm(), jc.GroupNorm(2), bn.state.bind(bn.state.init((3, 3, 4)))):
        params, _ = layer.init(KEY, (3, 3, 4))
        y, cache = jax.jit(lambda p, x: layer.forward(p, x, train=False))(params, x)
        grads, dx = layer.backward(params, cache, y)
        assert y.shape == dx.shape == x.shape
        assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(grads))
    y, cache = jc.Dropout(0.5).forward((), x, key=KEY)
    assert y.shape == x.shape and jc.Dropout(0.5).backward((), cache, y)[1].shape == x.shape


def test_an_input_without_positions():
    """A map of height 0 (``(N, 0, W, C)``): LayerNorm and GroupNorm give an empty output, dx
    empty and parameter gradients 0; BatchNorm in training refuses it, naming the empty sets."""
    x = jnp.ones((2, 0, 3, 4), jnp.float32)
    for layer in (jc.LayerNorm(), jc.GroupNorm(2)):
        params, _ = layer.init(KEY, (1, 3, 4))
        y, cache = jax.jit(layer.forward)(params, x)
        grads, dx = jax.jit(layer.backward)(params, cache, y)
        assert y.shape == dx.shape == x.shape
        assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(grads))
    with pytest.raises(ValueError, match=r"^BatchNorm: the sets it normalises over are empty "
                                         r"\(input shape \(2, 0, 3, 4\)\): they have no "
                                         r"statistics to normalise with in training"):
        jc.BatchNorm().apply({"scale": jnp.ones(4, x.dtype), "bias": jnp.zeros(4, x.dtype)}, x)

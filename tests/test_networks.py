"""Whole networks: the hand-written residual chain equals ``jax.grad`` of the plain forward,
and central finite differences in float64 agree with it, independent of autodiff; with XLA's
convolutions, it lowers to the very convolutions and matrix products autodiff's does."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxcnn as jc
from harness import init_as, rel_err
from jaxcnn.lowering import xla


def lenet5():
    return jc.serial(
        jc.Conv2D(6, (5, 5), padding="SAME"), jc.Sigmoid(), jc.AvgPool2D((2, 2)),
        jc.Conv2D(16, (5, 5)), jc.Sigmoid(), jc.MaxPool2D((2, 2)),
        jc.Flatten(), jc.Dense(120), jc.Sigmoid(), jc.Dense(10))


def deep():
    """Four conv layers, three pooling layers (one of each kind, overlapping max), one dense."""
    return jc.serial(
        jc.Conv2D(4, 3, padding="SAME"), jc.ReLU(), jc.MaxPool2D(3, 2, padding="SAME"),
        jc.Conv2D(6, 3, strides=1, dilation=2, padding="SAME"), jc.Tanh(), jc.AvgPool2D(2),
        jc.Conv2D(6, (3, 2), groups=2), jc.ReLU(), jc.StochasticPool2D(2),
        jc.Conv2D(8, 1), jc.Sigmoid(), jc.Flatten(), jc.Dense(10))


NETS = {"lenet5": (lenet5, (28, 28, 1)), "deep": (deep, (20, 18, 3))}
TOL = {jnp.float32: 1e-5, jnp.float64: 1e-10}


def setup(name, dtype, n=4, seed=0):
    make, shape = NETS[name]
    net = make()
    params, out_shape = init_as(net, shape, dtype, seed)
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(n, *shape)), dtype)
    labels = jnp.asarray(rng.integers(0, out_shape[0], size=n))
    return net, params, x, labels


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_network_matches_jax_grad(name, dtype):
    net, params, x, labels = setup(name, dtype)
    key = jax.random.key(3)
    loss = jc.softmax_cross_entropy
    value, grads = jax.jit(jc.value_and_grad(net, loss))(params, x, labels, key=key)
    ref_value, ref = jax.jit(jax.value_and_grad(
        lambda p: loss.value(net.apply(p, x, key=key), labels)))(params)
    assert abs(float(value) - float(ref_value)) <= TOL[dtype] * abs(float(ref_value))
    errors = [rel_err(g, r) for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref))]
    assert len(errors) == len(jax.tree.leaves(params))
    assert max(errors) <= TOL[dtype], errors


def test_squared_error_network_matches_jax_grad():
    net = jc.serial(jc.Conv2D(3, 3), jc.Sigmoid(), jc.AvgPool2D(2, 1), jc.Flatten(),
                    jc.Dense(4), jc.Sigmoid())
    params, _ = init_as(net, (6, 5, 2), jnp.float64)
    rng = np.random.default_rng(0)
    x, y = jnp.asarray(rng.normal(size=(3, 6, 5, 2))), jnp.asarray(rng.uniform(size=(3, 4)))
    _, grads = jax.jit(jc.value_and_grad(net, jc.squared_error))(params, x, y)
    ref = jax.jit(jax.grad(lambda p, x, y: jc.squared_error.value(net.apply(p, x), y)))(
        params, x, y)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref)):
        assert rel_err(g, r) <= 1e-12


def test_central_finite_differences_float64():
    """Independent of autodiff: the bridge's VJP (the hand-written backward) against numerical
    directional derivatives of the forward (``check_grads`` in reverse mode only, since
    ``custom_vjp`` has no forward mode)."""
    net = jc.serial(jc.Conv2D(3, 3, strides=2, padding="SAME"), jc.Tanh(),
                    jc.MaxPool2D(2, 1), jc.Conv2D(4, 2, groups=1), jc.Sigmoid(),
                    jc.AvgPool2D(2), jc.Flatten(), jc.Dense(5))
    params, _ = init_as(net, (9, 9, 2), jnp.float64, seed=1)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 9, 9, 2)))
    f = jax.jit(jc.bridge(net))             # one compile for all of check_grads' evaluations
    check_grads(f, (params, x), order=1, modes=["rev"], eps=1e-6, atol=1e-7, rtol=1e-7)


def test_finite_differences_catch_a_wrong_backward():
    net = jc.serial(jc.Dense(3), jc.Sigmoid())
    bad_sigmoid = net.layers[1]._replace(
        backward=lambda p, cache, delta: ((), delta * cache.a))        # f' written as a
    bad = jc.serial(net.layers[0], bad_sigmoid)
    params, _ = bad.init(jax.random.key(0), (4,))
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4)))
    with pytest.raises(AssertionError):
        check_grads(jc.bridge(bad), (params, x), order=1, modes=["rev"], eps=1e-6)


def test_per_example_gradients_with_vmap():
    net, params, x, labels = setup("lenet5", jnp.float64, n=3)
    vg = jax.jit(jc.value_and_grad(net, jc.softmax_cross_entropy))
    losses, grads = jax.jit(jax.vmap(lambda xi, yi: vg(params, xi[None], yi[None])))(x, labels)
    assert losses.shape == (3,)
    for i in range(3):
        loss_i, grads_i = vg(params, x[i:i + 1], labels[i:i + 1])
        assert rel_err(losses[i], loss_i) <= 1e-12
        for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_i)):
            assert rel_err(g[i], r) <= 1e-10
    # the mean of the per-example gradients is the batch gradient
    _, batch = vg(params, x, labels)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(batch)):
        assert rel_err(jnp.mean(g, axis=0), r) <= 1e-10


def test_bridge_inside_a_plain_jax_program():
    net, params, x, labels = setup("deep", jnp.float64)
    key = jax.random.key(5)
    f = jc.bridge(net, key=key)

    def loss(p):     # any JAX program around the bridged net: an L2 penalty, a custom loss
        l2 = sum(jnp.sum(w ** 2) for w in jax.tree.leaves(p))
        return jc.softmax_cross_entropy.value(f(p, x), labels) + 1e-3 * l2

    def plain(p):
        l2 = sum(jnp.sum(w ** 2) for w in jax.tree.leaves(p))
        return jc.softmax_cross_entropy.value(net.apply(p, x, key=key), labels) + 1e-3 * l2

    # both jitted: on a GPU, XLA's jitted float64 kernel gradients of this net differ from its
    # op-by-op ones by up to 2e-9 (relative), the hand-written and the autodiff ones alike
    got, want = jax.jit(jax.grad(loss))(params), jax.jit(jax.grad(plain))(params)
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert rel_err(g, r) <= 1e-10
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda p: f(p, x), (params,), (params,))


def test_serial_nests():
    inner = jc.serial(jc.Conv2D(2, 3), jc.ReLU())
    net = jc.serial(inner, jc.Flatten(), jc.Dense(2))
    params, out = init_as(net, (5, 5, 1), jnp.float64)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 5, 1)))
    labels = jnp.asarray([0, 1])
    _, grads = jax.jit(jc.value_and_grad(net, jc.softmax_cross_entropy))(params, x, labels)
    ref = jax.jit(jax.grad(lambda p, x, labels: jc.softmax_cross_entropy.value(
        net.apply(p, x), labels)))(params, x, labels)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref)):
        assert rel_err(g, r) <= 1e-12


@pytest.mark.parametrize("name", sorted(NETS))
def test_microbatches_give_the_whole_batch_gradient(name):
    """``microbatch=2`` over a batch of 6: three chunks scanned and averaged give the whole
    batch's loss and gradients (float64, 1e-12); with a key, each chunk gets its own split key,
    exactly as three separate calls would."""
    net, params, x, labels = setup(name, jnp.float64, n=6)
    key = jax.random.key(3)
    loss = jc.softmax_cross_entropy
    whole = jax.jit(jc.value_and_grad(net, loss))      # jitted as ``one`` below: bitwise equal
    chunked = jax.jit(jc.value_and_grad(net, loss, microbatch=2))
    if name == "deep":      # stochastic pooling: the draws follow the chunks' keys
        keys = jax.random.split(key, 3)
        parts = [whole(params, x[2 * i:2 * i + 2], labels[2 * i:2 * i + 2], key=keys[i])
                 for i in range(3)]
        want = jax.tree.map(lambda *a: sum(a) / 3, *parts)
    else:
        want = whole(params, x, labels, key=key)
    got = chunked(params, x, labels, key=key)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
    # a microbatch at least the batch is one chunk: the whole batch, key and all
    one = jax.jit(jc.value_and_grad(net, loss, microbatch=8))(params, x, labels, key=key)
    for g, w in zip(jax.tree.leaves(one), jax.tree.leaves(whole(params, x, labels, key=key))):
        np.testing.assert_array_equal(g, w)


def test_microbatch_errors():
    net, params, x, labels = setup("lenet5", jnp.float32, n=6)
    with pytest.raises(ValueError, match=r"value_and_grad: the batch \(6\) must be a multiple "
                                         r"of microbatch=4 or at most it"):
        jc.value_and_grad(net, jc.softmax_cross_entropy, microbatch=4)(params, x, labels)
    with pytest.raises(ValueError, match=r"value_and_grad: microbatch must be >= 1, got 0"):
        jc.value_and_grad(net, jc.softmax_cross_entropy, microbatch=0)
    with pytest.raises(TypeError, match=r"value_and_grad: microbatch must be an int, got 2.5"):
        jc.value_and_grad(net, jc.softmax_cross_entropy, microbatch=2.5)


def _instructions(fn, args, op):
    """The ``op`` instructions of ``jax.jit(fn)`` lowered at ``args``, SSA names taken out."""
    text = jax.jit(fn).lower(*args).as_text()
    return sorted(re.sub(r"%[\w#.]+", "%", line.split("=", 1)[1]).strip()
                  for line in text.splitlines() if op in line)


def test_lax_backward_is_autodiffs_convolutions_and_products(monkeypatch):
    """With XLA's convolutions as they are off the CPU (``"auto"`` there, and the backward
    passes' axes swapped by dimension numbers: ``xla.canonical_layouts`` false), the
    hand-written step lowers to the very convolutions and matrix products that ``jax.grad``'s
    transpose rules emit: strided, dilated, grouped, padded.  Off the CPU, XLA autotunes each
    distinct one when it compiles, so two steps that share them share that work and its choice
    of kernels.  (On the CPU the passes transpose instead: ``tests/test_lowerings.py``.)"""
    monkeypatch.setattr(xla, "canonical_layouts", lambda: False)
    net = jc.serial(
        jc.Conv2D(4, 3, padding="SAME", method="lax"), jc.ReLU(),
        jc.Conv2D(6, 3, strides=2, padding=((1, 0), (0, 1)), method="lax"), jc.Tanh(),
        jc.Conv2D(6, 3, dilation=2, groups=2, padding="SAME", method="lax"), jc.AvgPool2D(2),
        jc.Conv2D(8, (2, 1), groups=2, method="lax"), jc.Sigmoid(),
        jc.Flatten(), jc.Dense(12), jc.ReLU(), jc.Dense(10))
    params = jax.eval_shape(lambda k: net.init(k, (13, 11, 2))[0], jax.random.key(0))
    x, y = jnp.zeros((3, 13, 11, 2), jnp.float32), jnp.zeros((3,), jnp.int32)
    loss = jc.softmax_cross_entropy
    hand = jc.value_and_grad(net, loss)
    auto = jax.value_and_grad(lambda p, x, y: loss.value(net.apply(p, x), y))
    # 4 convolutions: forward, kernel gradient, and input residual except the first layer's;
    # 2 dense layers: forward, weight gradient, input residual (Flatten passes it on)
    for op, count in (("stablehlo.convolution", 11), ("stablehlo.dot_general", 6)):
        got, want = (_instructions(f, (params, x, y), op) for f in (hand, auto))
        assert len(want) == count, (jax.__version__, want)
        assert got == want, (f"jax {jax.__version__}: hand-written only "
                             f"{sorted(set(got) - set(want))}, autodiff only "
                             f"{sorted(set(want) - set(got))}")

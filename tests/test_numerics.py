"""Extreme but finite inputs, where a naive formula overflows or underflows and the layer must
not: each against float64 (or the exact value) and against ``jax.vjp`` of its forward."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn as jc

KEY = jax.random.key(0)


def forward_backward(layer, params, x, delta, **kw):
    y, cache = jax.jit(lambda p, x: layer.forward(p, x, **kw))(params, x)
    grads, dx = jax.jit(layer.backward)(params, cache, delta)
    return y, grads, dx


@pytest.mark.parametrize("dtype, value", [(jnp.float16, 200.0), (jnp.bfloat16, 1e30),
                                          (jnp.float32, 3e38), (jnp.float32, 1e-20)])
def test_stochastic_pooling_at_test_time_neither_overflows_nor_underflows(dtype, value):
    """Eq. 5.7's ``sum(a^2) / sum(a)`` with squares past the dtype's range (or flushed to zero):
    ``y`` and eq. 5.8's slopes as in float64, and ``jax.vjp`` of the forward agrees."""
    layer = jc.StochasticPool2D(2)
    a = np.asarray([1.0, 2.0, 3.0, 1.0]) * value / 3
    x = jnp.asarray(a.reshape(1, 2, 2, 1), dtype)
    truth_a = np.asarray(x, np.float64).ravel()
    want_y = np.sum(truth_a ** 2) / np.sum(truth_a)
    want_dx = (2 * truth_a - want_y) / np.sum(truth_a)
    delta = jnp.ones((1, 1, 1, 1), dtype)
    y, _, dx = forward_backward(layer, (), x, delta, train=False)
    rtol = float(jnp.finfo(dtype).eps) * 4
    np.testing.assert_allclose(np.asarray(y, np.float64).ravel(), [want_y], rtol=rtol)
    np.testing.assert_allclose(np.asarray(dx, np.float64).ravel(), want_dx, rtol=rtol, atol=rtol)
    _, vjp = jax.vjp(lambda x: layer.apply((), x, train=False), x)
    np.testing.assert_allclose(np.asarray(vjp(delta)[0], np.float64).ravel(), want_dx,
                               rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype, window", [
    (jnp.float16, [3e4, 1e4, 1e4, 3e4]), (jnp.float32, [2e38, 2e38, 1e38, 1e38])])
def test_stochastic_pooling_draws_by_the_weights_where_their_sum_overflows(dtype, window):
    """Eq. 5.5 with a window whose running sum passes the dtype's largest value: the draws
    still follow ``p_k = a_k / S``."""
    n = 4000
    x = jnp.tile(jnp.asarray(window, dtype).reshape(1, 2, 2, 1), (n, 1, 1, 1))
    _, cache = jc.StochasticPool2D(2).forward((), x, key=jax.random.key(3))
    got = np.bincount(np.asarray(cache.index).ravel(), minlength=4) / n
    p = np.asarray(window, np.float64) / np.sum(np.asarray(window, np.float64))
    assert np.all(np.abs(got - p) < 5 * np.sqrt(p * (1 - p) / n) + 1e-3), (got, p)


def test_winograd_in_float16_near_its_largest_values():
    """``B^T d B`` adds four inputs, past float16's range for inputs above a quarter of it:
    the passes run in float32 and agree with XLA's convolutions."""
    x = jnp.full((1, 4, 4, 1), 2e4, jnp.float16)
    params = {"w": jnp.full((3, 3, 1, 1), 1e-3, jnp.float16), "b": jnp.zeros((1,), jnp.float16)}
    delta = jnp.full((1, 2, 2, 1), 0.1, jnp.float16)
    want = forward_backward(jc.Conv2D(1, 3, method="lax"), params, x, delta)
    got = forward_backward(jc.Conv2D(1, 3, method="winograd"), params, x, delta)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert a.dtype == jnp.float16 and bool(jnp.all(jnp.isfinite(a)))
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                   rtol=2e-3)


@pytest.mark.parametrize("method", ["lax", "toeplitz", "reference"])
def test_a_bias_gradient_in_float16_accumulates_in_float32(method):
    """Eq. 4.3's sum of deltas that cancel across columns: partial sums past float16's range
    must not overflow (the CPU's rows-first sum below 8 features)."""
    layer = jc.Conv2D(1, 1, method=method)
    params = {"w": jnp.zeros((1, 1, 1, 1), jnp.float16), "b": jnp.zeros((1,), jnp.float16)}
    x = jnp.zeros((1, 2, 2, 1), jnp.float16)
    delta = jnp.asarray([[4e4, -3e4], [4e4, -3e4]], jnp.float16).reshape(1, 2, 2, 1)
    _, grads, _ = forward_backward(layer, params, x, delta)
    assert float(grads["b"][0]) == 2e4


@pytest.mark.parametrize("layer", [jc.AvgPool2D(2), jc.AvgPool2D(2, 1, "SAME"),
                                   jc.GlobalAvgPool2D()], ids=lambda layer: str(layer.config))
def test_average_pooling_in_float16_where_the_window_sum_overflows(layer):
    """Means that float16 holds, of windows whose sums it does not: as in float32."""
    x = jnp.full((1, 2, 2, 1), 2e4, jnp.float16)
    y = jax.jit(lambda x: layer.apply((), x))(x)
    want = layer.apply((), x.astype(jnp.float32)).astype(jnp.float16)
    assert y.dtype == jnp.float16 and float(jnp.max(y)) == 2e4
    np.testing.assert_array_equal(np.asarray(y), np.asarray(want))

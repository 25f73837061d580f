"""The gradient harness can fail: each classic mistake in a backward is caught by it.

Each mutant keeps the layer's forward and replaces its backward with a plausible wrong one.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn as jc
from jaxcnn import _geometry as geo
from jaxcnn import conv as conv_mod
from harness import TOL, backward_errors


def conv_without_flip(layer, params, cache, x, delta):
    """Input residual with the kernel *not* rotated by 180 degrees."""
    grads, _ = layer.backward(params, cache, delta)
    g = geo.window("Conv2D", x.shape[1:3], (3, 3), (2, 2), (1, 1), "VALID")
    return grads, conv_mod.conv_backward_input(delta, params["w"][::-1, ::-1], g, 1)


def kernel_gradient_flipped(layer, params, cache, x, delta):
    """Kernel gradient as a true convolution (flipped) instead of a correlation."""
    grads, dx = layer.backward(params, cache, delta)
    return {**grads, "w": grads["w"][::-1, ::-1]}, dx


def sigmoid_slope_as_a(layer, params, cache, x, delta):
    """f'(z) written as a instead of a (1 - a)."""
    return (), delta * cache.a


def max_pool_routes_to_last_tie(layer, params, cache, x, delta):
    """Tied maxima routed to the last maximum instead of the first."""
    g = geo.window("MaxPool2D", x.shape[1:3], (2, 2), (2, 2), (1, 1), "VALID")
    win = geo.windows(x, g)
    last = g.count - 1 - jnp.argmax(win[:, :, :, ::-1, :], axis=3)
    one_hot = last[:, :, :, None, :] == jnp.arange(g.count).reshape(1, 1, 1, -1, 1)
    return (), geo.scatter_windows(jnp.where(one_hot, delta[:, :, :, None, :], 0), g)


def avg_pool_not_divided(layer, params, cache, x, delta):
    """Delta copied to every window position without the 1 / |R|."""
    _, dx = layer.backward(params, cache, delta)
    return (), dx * 4


def dense_bias_gradient_averaged(layer, params, cache, x, delta):
    """Bias gradient as the mean of delta over the batch instead of the sum (eq. 1.5)."""
    grads, dx = layer.backward(params, cache, delta)
    return {**grads, "b": jnp.mean(delta, axis=0)}, dx


def stochastic_resamples(layer, params, cache, x, delta):
    """The backward draws again instead of reusing the cached sample."""
    _, fresh = layer.forward(params, x, key=jax.random.key(99))
    return layer.backward(params, cache._replace(index=fresh.index), delta)


def mutate(layer, wrong_backward):
    """The same layer, with ``wrong_backward(layer, params, cache, x, delta)`` as its backward
    (its forward also keeps the input, which some mutants need)."""

    def forward(params, x, *, key=None, train=True):
        y, cache = layer.forward(params, x, key=key, train=train)
        return y, (cache, x)

    def backward(params, cache_and_x, delta):
        cache, x = cache_and_x
        return wrong_backward(layer, params, cache, x, delta)

    return layer._replace(forward=forward, backward=backward)


MUTANTS = {
    "conv input residual without the flip": (jc.Conv2D(3, 3, strides=2), conv_without_flip, (2, 9, 9, 2), None),
    "conv kernel gradient flipped": (jc.Conv2D(3, 3), kernel_gradient_flipped, (2, 7, 7, 2), None),
    "sigmoid derivative written as a": (jc.Sigmoid(), sigmoid_slope_as_a, (2, 5), None),
    "max pool ties routed to the last maximum": (jc.MaxPool2D(2), max_pool_routes_to_last_tie, (2, 4, 4, 2), "ties"),
    "avg pool delta not divided by the window": (jc.AvgPool2D(2), avg_pool_not_divided, (2, 4, 4, 2), None),
    "dense bias gradient averaged": (jc.Dense(3), dense_bias_gradient_averaged, (4, 5), None),
    "stochastic pool samples again in backward": (jc.StochasticPool2D(2), stochastic_resamples, (2, 6, 6, 3), "positive"),
}


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_harness_catches_a_wrong_backward(name):
    layer, mutant, shape, kind = MUTANTS[name]
    rng = np.random.default_rng(0)
    x = {"ties": lambda: rng.integers(0, 2, size=shape), "positive": lambda: rng.uniform(0.1, 1, size=shape),
         None: lambda: rng.normal(size=shape)}[kind]()
    x = jnp.asarray(x, jnp.float64)
    params, _ = layer.init(jax.random.key(0), shape[1:])
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    key = jax.random.key(1) if kind == "positive" else None
    assert max(backward_errors(layer, params, x, key=key)) <= TOL[jnp.dtype("float64")]
    bad = mutate(layer, mutant)
    assert max(backward_errors(bad, params, x, key=key)) > 1e-3, f"harness missed: {name}"

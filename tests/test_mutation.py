"""The gradient harness can fail: each classic mistake in a backward is caught by it.

Each mutant keeps the layer's forward and replaces its backward with a plausible wrong one.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn as jc
from harness import TOL, backward_errors
from mutants import (avg_pool_not_divided, conv_without_flip, dense_bias_gradient_averaged,
                     kernel_gradient_flipped, max_pool_routes_to_last_tie, mutate,
                     sigmoid_slope_as_a, stochastic_resamples)


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

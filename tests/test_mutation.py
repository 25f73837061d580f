"""The gradient harness can fail: each classic mistake in a backward is caught by it.

Each mutant keeps the layer's forward and replaces its backward with a plausible wrong one.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn as jc
from harness import TOL, backward_errors
from mutants import (avg_pool_not_divided, branch_point_one_branch_only, concat_split_swapped,
                     conv_transpose_input_residual_flipped, conv_without_flip,
                     dense_bias_gradient_averaged, kernel_gradient_flipped,
                     max_pool_routes_to_last_tie, mutate, pool_drops_the_ceil_window,
                     sigmoid_slope_as_a, stochastic_resamples)


MUTANTS = {
    "conv input residual without the flip": (jc.Conv2D(3, 3, strides=2), conv_without_flip, (2, 9, 9, 2), None),
    "conv kernel gradient flipped": (jc.Conv2D(3, 3), kernel_gradient_flipped, (2, 7, 7, 2), None),
    "transposed conv input residual flipped": (jc.ConvTranspose2D(3, 3, strides=2), conv_transpose_input_residual_flipped, (2, 4, 4, 2), None),
    "transposed conv kernel gradient flipped": (jc.ConvTranspose2D(3, 3, strides=2), kernel_gradient_flipped, (2, 4, 4, 2), None),
    "sigmoid derivative written as a": (jc.Sigmoid(), sigmoid_slope_as_a, (2, 5), None),
    "max pool ties routed to the last maximum": (jc.MaxPool2D(2), max_pool_routes_to_last_tie, (2, 4, 4, 2), "ties"),
    "avg pool delta not divided by the window": (jc.AvgPool2D(2), avg_pool_not_divided, (2, 4, 4, 2), None),
    "avg pool backward drops the ceil-mode window": (jc.AvgPool2D(2, ceil_mode=True), pool_drops_the_ceil_window, (2, 5, 5, 2), None),
    "dilated max pool backward drops the ceil-mode window": (jc.MaxPool2D(3, 2, dilation=2, ceil_mode=True), pool_drops_the_ceil_window, (2, 8, 8, 2), None),
    "dense bias gradient averaged": (jc.Dense(3), dense_bias_gradient_averaged, (4, 5), None),
    "stochastic pool samples again in backward": (jc.StochasticPool2D(2), stochastic_resamples, (2, 6, 6, 3), "positive"),
    "branch point passes back one branch only": (jc.FanOut(2), branch_point_one_branch_only, (2, 4, 4, 3), None),
}


def test_harness_catches_a_wrong_split():
    """A concatenation that hands each input the other's slice of the residual (eq. 6.7 wrong)
    is caught, by the layer harness and by the audit, which names it by its path."""
    rng = np.random.default_rng(0)
    xs = tuple(jnp.asarray(rng.normal(size=(2, 4, 4, 3))) for _ in range(2))
    concat = jc.FanInConcat()
    y, cache = concat.forward((), xs)
    delta = jnp.asarray(rng.normal(size=y.shape))
    want = jax.vjp(lambda xs: concat.apply((), xs), xs)[1](delta)[0]
    got = mutate(concat, concat_split_swapped).backward((), (cache, xs), delta)[1]
    assert max(float(jnp.max(jnp.abs(g - w))) for g, w in zip(got, want)) > 1e-3
    net = jc.serial(jc.Conv2D(3, 3, padding="SAME"), jc.FanOut(2),
                    jc.parallel(jc.Tanh(), jc.Sigmoid()), mutate(concat, concat_split_swapped),
                    jc.Flatten(), jc.Dense(4))
    params, _ = net.init(jax.random.key(0), (4, 4, 2))
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    report = jc.check_grads(net, jc.softmax_cross_entropy, params,
                            jnp.asarray(rng.normal(size=(2, 4, 4, 2))), jnp.asarray([0, 3]))
    assert report.first_bad_layer == 3 and report.first_bad_path == "FanInConcat", str(report)


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


NORM_MUTANTS = {
    "batchnorm backward without the mean and variance terms": (
        jc.BatchNorm(), "batchnorm_without_statistics_terms", (4, 3, 3, 2)),
    "dropout backward without 1 / (1 - rate)": (jc.Dropout(0.5), "dropout_not_rescaled", (4, 6)),
}


@pytest.mark.parametrize("name", sorted(NORM_MUTANTS))
def test_harness_catches_a_wrong_normalisation_or_dropout(name):
    """The two classic mistakes of section 7 of the derivation: BatchNorm's backward without
    the terms through the batch statistics, and dropout's without its rescaling.  Both layers
    run in training mode, dropout with its key."""
    import mutants

    layer, mutant, shape = NORM_MUTANTS[name]
    # not seed 0, the harness's cotangent: for delta = x BatchNorm's dx nearly vanishes
    x = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float64)
    params, _ = layer.init(jax.random.key(0), shape[1:])
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    key = jax.random.key(1)
    assert max(backward_errors(layer, params, x, key=key)) <= TOL[jnp.dtype("float64")]
    bad = mutate(layer, getattr(mutants, mutant))
    assert max(backward_errors(bad, params, x, key=key)) > 1e-3, f"harness missed: {name}"

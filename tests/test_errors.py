"""Bad input is caught when traced and reported by the layer, with expected vs given values."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn as jc

KEY = jax.random.key(0)


def x_of(*shape, dtype=jnp.float32):
    return jnp.ones(shape, dtype)


@pytest.mark.parametrize("make, match", [
    (lambda: jc.Conv2D(0, 3), r"Conv2D: features must be >= 1, got 0"),
    (lambda: jc.Conv2D(4, (3, 0)), r"Conv2D: kernel_size must be >= 1, got \(3, 0\)"),
    (lambda: jc.Conv2D(4, 3, strides=0), r"Conv2D: strides must be >= 1, got \(0, 0\)"),
    (lambda: jc.Conv2D(4, 3, dilation=-1), r"Conv2D: dilation must be >= 1"),
    (lambda: jc.Conv2D(4, 3, groups=0), r"Conv2D: groups must be >= 1, got 0"),
    (lambda: jc.Conv2D(4, 3, groups=3), r"Conv2D: features \(=4\) must be divisible by groups \(=3\)"),
    (lambda: jc.Conv2D(4, 3, method="fft"),
     r"Conv2D: unknown method 'fft'; expected one of \('auto', 'reference', 'lax', 'toeplitz'\)"),
    (lambda: jc.Conv2D(4, 3, padding="FULL"), r"Conv2D: unknown padding 'FULL'; expected one of \('VALID', 'SAME'\)"),
    (lambda: jc.Conv2D(4, 3, padding=((1, -1), (0, 0))), r"Conv2D: padding amounts must be >= 0"),
    (lambda: jc.AvgPool2D(0), r"AvgPool2D: window must be >= 1, got \(0, 0\)"),
    (lambda: jc.MaxPool2D(2, strides=(1, 0)), r"MaxPool2D: strides must be >= 1, got \(1, 0\)"),
    (lambda: jc.MaxPool2D(2, padding="same-ish"), r"MaxPool2D: unknown padding"),
    (lambda: jc.StochasticPool2D(-2), r"StochasticPool2D: window must be >= 1"),
    (lambda: jc.Dense(0), r"Dense: features must be >= 1, got 0"),
])
def test_bad_settings(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("make, match", [
    (lambda: jc.Conv2D(4.5, 3), r"Conv2D: features must be an int, got 4.5"),
    (lambda: jc.Conv2D(4, "3"), r"Conv2D: kernel_size must be an int or a pair of ints"),
    (lambda: jc.serial(jc.Conv2D(2, 3), jc.Sigmoid), r"serial: argument 1 is function, not a Layer"),
])
def test_bad_setting_types(make, match):
    with pytest.raises(TypeError, match=match):
        make()


@pytest.mark.parametrize("layer, shape, match", [
    (jc.Conv2D(4, 5), (3, 3, 1),
     r"Conv2D: window \(5, 5\) \(dilated extent \(5, 5\)\) is larger than the padded input \(3, 3\)"),
    (jc.Conv2D(4, 3, dilation=3), (6, 6, 1), r"dilated extent \(7, 7\)"),
    (jc.Conv2D(4, 3, groups=2), (5, 5, 3), r"Conv2D: input channels \(=3\) must be divisible by groups \(=2\)"),
    (jc.MaxPool2D(4), (3, 8, 1), r"MaxPool2D: window \(4, 4\) .* larger than the padded input \(3, 8\)"),
    (jc.AvgPool2D(2, padding=((2, 0), (0, 0))), (4, 4, 1),
     r"AvgPool2D: padding \(\(2, 0\), \(0, 0\)\) must be smaller than the window \(2, 2\)"),
    (jc.Conv2D(4, 3), (5, 5), r"Conv2D: expected a per-example input shape of rank 3 \(H, W, C\)"),
    (jc.Dense(3), (4, 4, 1), r"Dense: expected a per-example input shape of rank 1 .*Flatten"),
])
def test_bad_input_shape_at_init(layer, shape, match):
    with pytest.raises(ValueError, match=match):
        layer.init(KEY, shape)


def test_wrong_rank_and_channels_at_forward():
    conv = jc.Conv2D(4, 3)
    params, _ = conv.init(KEY, (6, 6, 3))
    with pytest.raises(ValueError, match=r"Conv2D: expected input of rank 4 \(N, H, W, C\), got shape \(6, 6, 3\)"):
        conv.forward(params, x_of(6, 6, 3))
    with pytest.raises(ValueError, match=r"Conv2D: input has 5 channels but the kernel expects 3 \(params\['w'\].shape\[2\] \* groups\)"):
        jax.jit(conv.apply)(params, x_of(1, 6, 6, 5))
    with pytest.raises(ValueError, match=r"Dense: expected input of rank 2 \(N, features\); put Flatten\(\) before Dense"):
        jc.Dense(2).apply({"w": jnp.ones((4, 2)), "b": jnp.ones(2)}, x_of(1, 2, 2, 1))
    with pytest.raises(TypeError, match=r"Conv2D: expected a floating-point input, got dtype int32"):
        conv.apply(params, jnp.ones((1, 6, 6, 3), jnp.int32))
    with pytest.raises(TypeError, match=r"Conv2D: params\['w'\] has dtype float32 but the input is float64"):
        conv.apply(params, x_of(1, 6, 6, 3, dtype=jnp.float64))


def test_errors_under_jit_name_the_layer_in_the_network():
    net = jc.serial(jc.Conv2D(4, 3), jc.ReLU(), jc.MaxPool2D(2), jc.Flatten(), jc.Dense(3))
    params, _ = net.init(KEY, (8, 8, 1))
    with pytest.raises(ValueError, match=r"^serial\[0\] Conv2D: input has 2 channels but the kernel expects 1"):
        jax.jit(net.apply)(params, x_of(2, 8, 8, 2))
    with pytest.raises(ValueError, match=r"^serial\[4\] Dense: input has 16 features but the weights expect 36"):
        jax.jit(net.apply)(params, x_of(2, 6, 6, 1))
    with pytest.raises(ValueError, match=r"^serial\[2\] MaxPool2D: window \(2, 2\)"):
        net.apply(params, x_of(2, 3, 3, 1))


def test_params_from_another_network():
    net = jc.serial(jc.Conv2D(4, 3), jc.ReLU(), jc.Flatten(), jc.Dense(3))
    other = jc.serial(jc.Conv2D(6, 3), jc.ReLU(), jc.Flatten(), jc.Dense(3))
    shorter = jc.serial(jc.Conv2D(4, 3), jc.Flatten(), jc.Dense(3))
    params, _ = net.init(KEY, (5, 5, 1))
    other_params, _ = other.init(KEY, (5, 5, 1))
    short_params, _ = shorter.init(KEY, (5, 5, 1))
    x = x_of(1, 5, 5, 1)
    with pytest.raises(ValueError, match=r"serial\[0\] Conv2D: params\['w'\] has shape \(3, 3, 1, 6\), expected \(3, 3, 1, 4\) .*another network"):
        net.apply(other_params, x)
    with pytest.raises(ValueError, match=r"serial: expected params as a tuple of 4 entries, one per layer, got 3"):
        net.apply(short_params, x)
    swapped = (params[0], params[3], params[2], params[1])
    with pytest.raises(ValueError, match=r"serial\[1\] ReLU: this layer has no parameters and expects params \(\), got dict"):
        net.apply(swapped, x)
    with pytest.raises(ValueError, match=r"Dense: expected params with key 'w', got \['b'\]"):
        jc.Dense(3).apply({"b": jnp.zeros(3)}, x_of(1, 4))


def test_stochastic_pool_training_needs_a_key():
    pool = jc.StochasticPool2D(2)
    with pytest.raises(ValueError, match=r"StochasticPool2D: training mode draws one position per window and needs a key"):
        pool.forward((), x_of(1, 4, 4, 1))
    net = jc.serial(jc.ReLU(), pool)
    with pytest.raises(ValueError, match=r"serial\[0\] serial\[1\] StochasticPool2D: training mode .*needs a key"):
        jc.value_and_grad(jc.serial(net, jc.Flatten()), jc.squared_error)(
            (((), ()), ()), x_of(1, 4, 4, 1), x_of(1, 4))
    assert pool.apply((), x_of(1, 4, 4, 1), train=False).shape == (1, 2, 2, 1)


@pytest.mark.parametrize("layer, shape", [
    (jc.Conv2D(2, 3), (1, 5, 5, 1)), (jc.Dense(2), (3, 4)), (jc.AvgPool2D(2), (1, 4, 4, 1)),
    (jc.MaxPool2D(2), (1, 4, 4, 1)), (jc.Sigmoid(), (2, 3)), (jc.Flatten(), (2, 2, 2, 1)),
])
def test_delta_of_the_wrong_shape(layer, shape):
    params, _ = layer.init(KEY, shape[1:])
    y, cache = layer.forward(params, x_of(*shape))
    bad = jnp.ones((y.shape[0] + 1, *y.shape[1:]), y.dtype)
    with pytest.raises(ValueError, match=re.escape(
            f"{layer.name}: backward got delta of shape {bad.shape}, expected the forward "
            f"output's shape {y.shape}")):
        jax.jit(layer.backward)(params, cache, bad)


def test_loss_inputs():
    xent, se = jc.softmax_cross_entropy, jc.squared_error
    logits = jnp.zeros((4, 10))
    with pytest.raises(ValueError, match=r"softmax_cross_entropy: labels must have shape \(4,\) .*got \(3,\)"):
        xent.value(logits, jnp.zeros(3, jnp.int32))
    with pytest.raises(TypeError, match=r"softmax_cross_entropy: labels must be an integer array of class indices, got float32"):
        xent.delta(logits, jnp.zeros(4, jnp.float32))
    with pytest.raises(ValueError, match=r"softmax_cross_entropy: labels must lie in \[0, 10\), got values in \[0, 10\]"):
        xent.value(logits, jnp.asarray([0, 1, 2, 10]))
    with pytest.raises(ValueError, match=r"softmax_cross_entropy: outputs must have shape \(N, classes\)"):
        xent.value(jnp.zeros((4, 2, 5)), jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match=r"squared_error: targets must have the outputs' shape \(4, 10\), got \(4, 9\)"):
        se.value(logits, jnp.zeros((4, 9)))


def test_out_of_range_labels_under_jit_make_the_loss_nan():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32)
    labels = jnp.asarray([0, 4, 1])
    value = jax.jit(jc.softmax_cross_entropy.value)(logits, labels)
    delta = jax.jit(jc.softmax_cross_entropy.delta)(logits, labels)
    assert np.isnan(float(value))
    assert np.all(np.isnan(delta[1])) and np.all(np.isfinite(np.asarray(delta)[[0, 2]]))


@pytest.mark.parametrize("layer, shape", [
    (jc.AvgPool2D(2), (1, 4, 4, 1)), (jc.MaxPool2D(2), (1, 4, 4, 1)),
    (jc.StochasticPool2D(2), (1, 4, 4, 1)), (jc.Flatten(), (2, 2, 2, 1)),
    (jc.Sigmoid(), (2, 3)), (jc.Conv2D(2, 3), (1, 5, 5, 1)), (jc.Dense(2), (3, 4)),
])
def test_delta_of_the_wrong_dtype(layer, shape):
    params, _ = layer.init(KEY, shape[1:])
    y, cache = layer.forward(params, x_of(*shape), key=KEY)
    with pytest.raises(TypeError, match=f"{layer.name}: backward got delta of dtype float64, "
                                        f"expected float32"):
        layer.backward(params, cache, jnp.ones(y.shape, jnp.float64))


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    logits = jnp.asarray([[1e4, 0.0, -1e4], [-3e4, 3e4, 0.0]], jnp.float32)
    labels = jnp.asarray([0, 0])
    value = jc.softmax_cross_entropy.value(logits, labels)
    delta = jc.softmax_cross_entropy.delta(logits, labels)
    np.testing.assert_allclose(float(value), (0.0 + 6e4) / 2, rtol=1e-6)
    np.testing.assert_allclose(delta, [[0, 0, 0], [-0.5, 0.5, 0]], atol=1e-7)

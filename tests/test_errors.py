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
     r"Conv2D: unknown method 'fft'; expected one of \('auto', 'reference', 'lax', 'toeplitz', "
     r"'winograd'\)"),
    (lambda: jc.Conv2D(4, (3, 2), method="winograd"),
     r"Conv2D: method 'winograd' \(F\(2x2, 3x3\)\) needs kernel_size \(3, 3\), strides \(1, 1\), "
     r"dilation \(1, 1\) and groups 1; got kernel_size \(3, 2\), strides \(1, 1\), dilation "
     r"\(1, 1\), groups 1"),
    (lambda: jc.Conv2D(4, 3, dilation=2, groups=2, method="winograd"),
     r"Conv2D: method 'winograd' .* got kernel_size \(3, 3\), strides \(1, 1\), dilation "
     r"\(2, 2\), groups 2"),
    (lambda: jc.Conv2D(4, 3, padding="FULL"), r"Conv2D: unknown padding 'FULL'; expected one of \('VALID', 'SAME'\)"),
    (lambda: jc.Conv2D(4, 3, padding=((1, -1), (0, 0))), r"Conv2D: padding amounts must be >= 0"),
    (lambda: jc.Conv2D(1, 3, padding=((2**63, 0), (0, 0))),      # an output size past int64
     r"Conv2D: padding amounts must be >= 0 and <= 2\*\*31 - 1, got \(\(9223372036854775808"),
    (lambda: jc.ConvTranspose2D(1, 3, strides=2**62),             # wrapped in int64 by lax
     r"ConvTranspose2D: strides must be <= 2\*\*31 - 1, got \(4611686018427387904, "),
    (lambda: jc.MaxPool2D((3, 2**40)), r"MaxPool2D: window must be <= 2\*\*31 - 1"),
    (lambda: jc.AvgPool2D(0), r"AvgPool2D: window must be >= 1, got \(0, 0\)"),
    (lambda: jc.MaxPool2D(2, strides=(1, 0)), r"MaxPool2D: strides must be >= 1, got \(1, 0\)"),
    (lambda: jc.MaxPool2D(2, padding="same-ish"), r"MaxPool2D: unknown padding"),
    (lambda: jc.StochasticPool2D(-2), r"StochasticPool2D: window must be >= 1"),
    (lambda: jc.MaxPool2D(2, dilation=(1, 0)), r"MaxPool2D: dilation must be >= 1, got \(1, 0\)"),
    (lambda: jc.AvgPool2D(3, padding=((2, 0), (0, 0)), ceil_mode=True),
     r"AvgPool2D: with ceil_mode, padding \(\(2, 0\), \(0, 0\)\) must be at most half the window "
     r"\(3, 3\) on each side \(<= \(1, 1\)\), as PyTorch"),
    (lambda: jc.MaxPool2D((2, 4), padding=((1, 1), (0, 3)), ceil_mode=True),
     r"MaxPool2D: with ceil_mode, padding \(\(1, 1\), \(0, 3\)\) must be at most half the window "
     r"\(2, 4\) on each side \(<= \(1, 2\)\)"),
    (lambda: jc.Dense(0), r"Dense: features must be >= 1, got 0"),
    (lambda: jc.Dense(2 ** 63), r"Dense: features must be <= 2\*\*31 - 1, got 9223372036854775808"),
    (lambda: jc.Conv2D(1, 3, padding=((float("inf"), 0), (0, 0))),
     r"Conv2D: unknown padding \(\(inf, 0\), \(0, 0\)\)"),
])
def test_bad_settings(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("make, match", [
    (lambda: jc.Conv2D(4.5, 3), r"Conv2D: features must be an int, got 4.5"),
    (lambda: jc.Conv2D(4, "3"), r"Conv2D: kernel_size must be an int or a pair of ints"),
    (lambda: jc.serial(jc.Conv2D(2, 3), jc.Sigmoid), r"serial: argument 1 is function, not a Layer"),
    (lambda: jc.MaxPool2D(2, ceil_mode=1), r"MaxPool2D: ceil_mode must be a bool, got int 1"),
    (lambda: jc.AvgPool2D(2, ceil_mode="True"), r"AvgPool2D: ceil_mode must be a bool, got str"),
    (lambda: jc.MaxPool2D(2, dilation=1.5), r"MaxPool2D: dilation must be an int or a pair of ints"),
    (lambda: jc.Conv2D(1, 3, param_dtype=jnp.int32),
     r"Conv2D: param_dtype must be a floating-point dtype, got int32"),
    (lambda: jc.Dense(1, param_dtype="foo"),
     r"Dense: param_dtype must be a floating-point dtype \(jnp.float32, ...\), got str 'foo'"),
    (lambda: jc.ConvTranspose2D(1, 3, param_dtype=None), r"ConvTranspose2D: param_dtype must be"),
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
     r"AvgPool2D: padding \(\(2, 0\), \(0, 0\)\), which must be smaller than the window \(2, 2\)"),
    (jc.Conv2D(4, 3), (5, 5), r"Conv2D: expected a per-example input shape of rank 3 \(H, W, C\)"),
    (jc.Dense(3), (4, 4, 1), r"Dense: expected a per-example input shape of rank 1 .*Flatten"),
])
def test_bad_input_shape_at_init(layer, shape, match):
    with pytest.raises(ValueError, match=match):
        layer.init(KEY, shape)


@pytest.mark.parametrize("layer, shape, match", [
    (jc.MaxPool2D(3, dilation=3), (6, 6, 1),
     r"^MaxPool2D: window \(3, 3\) \(dilated extent \(7, 7\)\) is larger than the padded input "
     r"\(6, 6\)"),
    # PyTorch's ceil mode would give a 1x1 output here; a window that cannot fit is refused
    (jc.AvgPool2D(3, 3, ceil_mode=True), (2, 5, 1),
     r"^AvgPool2D: window \(3, 3\) \(dilated extent \(3, 3\)\) is larger than the padded input "
     r"\(2, 5\)"),
    (jc.MaxPool2D(2, 1, ((1, 1), (0, 0)), dilation=2), (1, 3, 1),
     r"^MaxPool2D: window \(0, 0\) of \(1, 1\) reads only padding: \(2, 2\) taps dilated by "
     r"\(2, 2\) over input \(1, 3\) padded by \(\(1, 1\), \(0, 0\)\); pad less or dilate less"),
    (jc.MaxPool2D(2, padding="SAME", dilation=3, ceil_mode=True), (5, 5, 1),
     r"^MaxPool2D: \"SAME\" pads \(\(1, 2\), \(1, 2\)\), which must be smaller than the "
     r"window \(2, 2\)"),                    # padding the user did not write: named as SAME's
])
def test_ceil_mode_and_dilated_pools_refuse_a_window_that_cannot_read_the_input(layer, shape,
                                                                                match):
    """At trace time, under ``jit`` too, and by the layer, never by lax: a window larger than
    the padded input (ceil mode or not), a dilated window that reads only padding, a "SAME"
    pad as large as the window."""
    x = x_of(2, *shape)
    for run in (lambda: layer.init(KEY, shape), lambda: jax.jit(layer.apply)((), x),
                lambda: jax.jit(lambda x: layer.forward((), x))(x)):
        with pytest.raises(ValueError, match=match):
            run()


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
    with pytest.raises(ValueError, match=r"Dense: expected params with keys \['b', 'w'\] \(use_bias=True\), got \['b'\]"):
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


# --- an empty batch: every layer maps it to an empty output; a loss refuses it -----------------

EMPTY_BATCH = [
    (jc.Conv2D(3, 3, padding="SAME"), (6, 5, 2), {}),
    (jc.Conv2D(4, 3, strides=2, groups=2, method="toeplitz"), (7, 7, 2), {}),
    (jc.Conv2D(3, 2, dilation=2, method="reference"), (6, 6, 1), {}),
    (jc.Conv2D(3, 3, padding="SAME", method="winograd"), (6, 5, 2), {}),
    (jc.AvgPool2D(3, 2, "SAME"), (5, 5, 2), {}), (jc.MaxPool2D(2, padding="SAME"), (5, 5, 2), {}),
    (jc.StochasticPool2D(2), (4, 4, 2), {"key": KEY}),
    (jc.StochasticPool2D(2), (4, 4, 2), {"train": False}),
    (jc.Sigmoid(), (3,), {}), (jc.Tanh(), (2, 3), {}), (jc.ReLU(), (4, 4, 1), {}),
    (jc.Softmax(), (5,), {}), (jc.Dense(3), (4,), {}), (jc.Flatten(), (3, 2, 2), {}),
]


@pytest.mark.parametrize("layer, shape, kw", EMPTY_BATCH,
                         ids=[f"{c[0].name}-{i}" for i, c in enumerate(EMPTY_BATCH)])
def test_an_empty_batch_gives_an_empty_output(layer, shape, kw):
    """``N = 0`` through ``forward``, ``apply`` and ``backward`` (jitted): outputs of shape
    ``(0, *init's output shape)``, ``dx`` of the input's shape, parameter gradients 0."""
    params, out_shape = layer.init(KEY, shape)
    x = jnp.zeros((0, *shape), jnp.float32)
    y, cache = jax.jit(lambda p, x: layer.forward(p, x, **kw))(params, x)
    assert y.shape == (0, *out_shape) and y.dtype == jnp.float32
    assert jax.jit(lambda p, x: layer.apply(p, x, **kw))(params, x).shape == (0, *out_shape)
    grads, dx = jax.jit(layer.backward)(params, cache, jnp.zeros(y.shape, jnp.float32))
    assert dx.shape == x.shape
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert all(g.shape == p.shape and not np.any(np.asarray(g))
               for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(params)))


@pytest.mark.parametrize("layer", [
    jc.Conv2D(2, 3), jc.ConvTranspose2D(2, 3, 2), jc.GlobalAvgPool2D(), jc.MaxPool2D(2),
    jc.MaxPool2D(2, padding=((1, 1), (1, 1))), jc.AvgPool2D(2, padding=((1, 1), (0, 0))),
    jc.AvgPool2D(2, padding=((1, 1), (0, 0)), count_include_pad=False),
    jc.StochasticPool2D(2)], ids=lambda layer: f"{layer.name}-{dict(layer.config)['padding']}"
    if "padding" in dict(layer.config) else layer.name)
def test_a_map_of_height_zero_is_refused_naming_the_input(layer):
    """A batch may be empty, a map may not: no window fits in it (Conv2D, the pools; with
    padding a window of padding only would, giving -inf or NaN), the transposed convolution
    scatters nothing, and a global mean over no positions is NaN."""
    params, _ = layer.init(KEY, (4, 4, 2))
    with pytest.raises(ValueError, match=rf"^{layer.name}: .*\(0, 4\)"):
        jax.jit(layer.apply)(params, jnp.ones((1, 0, 4, 2), jnp.float32))


def test_an_empty_batch_through_a_network():
    """``serial`` passes an empty batch through; ``value_and_grad`` (jitted or not, chunked or
    not) stops at the loss, a mean over no examples, with a ``ValueError`` naming it; the
    bridge differentiates to zero gradients."""
    net = jc.serial(jc.Conv2D(2, 3), jc.ReLU(), jc.MaxPool2D(2), jc.Flatten(), jc.Dense(3))
    params, _ = net.init(KEY, (6, 6, 1))
    x, labels = jnp.zeros((0, 6, 6, 1), jnp.float32), jnp.zeros((0,), jnp.int32)
    assert net.apply(params, x).shape == (0, 3)
    y, cache = net.forward(params, x)
    grads, dx = net.backward(params, cache, jnp.zeros((0, 3), jnp.float32))
    assert dx.shape == x.shape and not any(np.any(np.asarray(g)) for g in jax.tree.leaves(grads))
    empty = r"softmax_cross_entropy: the batch is empty \(outputs of shape \(0, 3\)\)"
    for vg in (jc.value_and_grad(net, jc.softmax_cross_entropy),
               jax.jit(jc.value_and_grad(net, jc.softmax_cross_entropy)),
               jc.value_and_grad(net, jc.softmax_cross_entropy, microbatch=2)):
        with pytest.raises(ValueError, match=empty):
            vg(params, x, labels)
    with pytest.raises(ValueError, match=r"squared_error: the batch is empty"):
        jc.value_and_grad(net, jc.squared_error)(params, x, jnp.zeros((0, 3), jnp.float32))
    f = jc.bridge(net)
    bridged = jax.grad(lambda p: jnp.sum(f(p, x)))(params)
    assert not any(np.any(np.asarray(g)) for g in jax.tree.leaves(bridged))


# --- what is not an array: a TypeError naming the layer and what it got -------------------------

NOT_ARRAYS = [([[0.0, 1.0]], r"a list of 1 entry"),
              (((0.0, 1.0), (2.0, 3.0)), r"a tuple of 2 entries"), (None, r"None"), (3, r"int 3")]
LAYERS = [(jc.Conv2D(2, 3), (5, 5, 1)), (jc.AvgPool2D(2), (4, 4, 1)), (jc.MaxPool2D(2), (4, 4, 1)),
          (jc.StochasticPool2D(2), (4, 4, 1)), (jc.Sigmoid(), (3,)), (jc.Tanh(), (3,)),
          (jc.ReLU(), (3,)), (jc.Softmax(), (3,)), (jc.Dense(2), (3,)), (jc.Flatten(), (2, 2, 1))]


@pytest.mark.parametrize("layer, shape", LAYERS, ids=[layer.name for layer, _ in LAYERS])
@pytest.mark.parametrize("value, got", NOT_ARRAYS, ids=["list", "tuple", "None", "int"])
def test_an_input_that_is_not_an_array(layer, shape, value, got):
    params, _ = layer.init(KEY, shape)
    match = (rf"^{layer.name}: expected the input to be an array .*got {got} -- convert it with "
             rf"jnp.asarray")
    for run in (layer.forward, layer.apply):
        with pytest.raises(TypeError, match=match):
            run(params, value, key=KEY)
    if not isinstance(value, int):          # under jit an int is traced as an int32 array
        with pytest.raises(TypeError, match=match):
            jax.jit(lambda p, x: layer.apply(p, x, key=KEY))(params, value)
    with pytest.raises(TypeError, match=rf"^serial\[0\] {layer.name}: expected the input to be"):
        jc.serial(layer).apply((params,), value, key=KEY)


@pytest.mark.parametrize("layer, shape", LAYERS, ids=[layer.name for layer, _ in LAYERS])
def test_numpy_arrays_are_inputs_like_jax_arrays(layer, shape):
    params, _ = layer.init(KEY, shape)
    x = np.abs(np.random.default_rng(0).normal(size=(2, *shape))).astype(np.float32)
    np.testing.assert_array_equal(layer.apply(params, x, key=KEY),
                                  layer.apply(params, jnp.asarray(x), key=KEY))
    y, cache = layer.forward(params, x, key=KEY)
    with pytest.raises(TypeError, match=rf"^{layer.name}: expected backward's delta to be an "
                                        rf"array, got a list of 2 entries"):
        layer.backward(params, cache, np.asarray(y).tolist())


def _every_leaf_kind():
    """A net with one layer of every leaf kind, the merges included."""
    block = jc.serial(jc.FanOut(2), jc.parallel(jc.Identity(), jc.ConvTranspose2D(2, 1)),
                      jc.FanInSum(), jc.FanOut(2), jc.FanInConcat())
    return jc.serial(jc.Conv2D(2, 3, padding="SAME"), jc.BatchNorm(), jc.ReLU(), block,
                     jc.GroupNorm(2), jc.Sigmoid(), jc.AvgPool2D(2), jc.StochasticPool2D(1),
                     jc.MaxPool2D(1), jc.LayerNorm(), jc.Dropout(0.5), jc.Tanh(),
                     jc.GlobalAvgPool2D(), jc.Dense(3), jc.Softmax())


def test_numpy_float64_is_float32_eagerly_as_under_jit():
    """With 64-bit types off (JAX's default) ``jit`` computes a NumPy float64 batch in float32;
    every layer does the same eagerly, where it used to refuse it against float32 params."""
    net = _every_leaf_kind()
    x = np.random.default_rng(0).uniform(0.5, 1.5, size=(3, 6, 6, 2))        # float64
    with jax.enable_x64(False):
        params, _ = net.init(KEY, (6, 6, 2))
        eager = net.forward(params, x, key=KEY)
        jitted = jax.jit(lambda p, x: net.forward(p, x, key=KEY))(params, x)
        assert eager[0].dtype == jitted[0].dtype == jnp.float32
        np.testing.assert_allclose(eager[0], jitted[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(net.apply(params, x, key=KEY), eager[0], rtol=1e-5, atol=1e-6)
        delta = np.random.default_rng(1).normal(size=eager[0].shape)              # float64
        (g_eager, dx_eager), (g_jit, dx_jit) = (net.backward(params, eager[1], delta),
                                                jax.jit(net.backward)(params, jitted[1], delta))
    assert dx_eager.dtype == dx_jit.dtype == jnp.float32
    for a, b in zip(jax.tree.leaves((g_eager, dx_eager)), jax.tree.leaves((g_jit, dx_jit))):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(TypeError, match=r"^serial\[0\] Conv2D: params\['w'\] has dtype float32 "
                                        r"but the input is float64"):
        net.apply(params, x, key=KEY)                   # 64-bit types on: float64 stays float64


def test_value_and_grad_and_the_losses_refuse_what_is_not_an_array():
    net = jc.serial(jc.Flatten(), jc.Dense(3))
    params, _ = net.init(KEY, (2, 2, 1))
    vg = jc.value_and_grad(net, jc.softmax_cross_entropy, microbatch=1)
    x, labels = jnp.ones((2, 2, 2, 1), jnp.float32), jnp.asarray([0, 2])
    with pytest.raises(TypeError, match=r"^value_and_grad: expected x to be an array with a batch "
                                        r"axis, got a list of 2 entries"):
        vg(params, np.asarray(x).tolist(), labels)
    with pytest.raises(TypeError, match=r"^value_and_grad: expected targets to be an array with a "
                                        r"batch axis, got a list of 2 entries"):
        vg(params, x, [0, 2])
    with pytest.raises(TypeError, match=r"softmax_cross_entropy: outputs must be a floating-point "
                                        r"array, got a list of 1 entry"):
        jc.softmax_cross_entropy.value([[0.0, 1.0]], jnp.asarray([0]))
    with pytest.raises(TypeError, match=r"softmax_cross_entropy: labels must be an integer array "
                                        r"of class indices, got None"):
        jc.softmax_cross_entropy.delta(jnp.zeros((1, 2)), None)
    with pytest.raises(TypeError, match=r"squared_error: targets must be an array of the outputs' "
                                        r"shape \(1, 2\), got a list of 1 entry"):
        jc.squared_error.value(jnp.zeros((1, 2)), [[0.0, 1.0]])


def test_out_of_range_labels_raise_through_value_and_grad_when_concrete():
    net = jc.serial(jc.Flatten(), jc.Dense(3))
    params, _ = net.init(KEY, (2, 2, 1))
    x = jnp.ones((2, 2, 2, 1), jnp.float32)
    with pytest.raises(ValueError, match=r"softmax_cross_entropy: labels must lie in \[0, 3\), "
                                         r"got values in \[-1, 2\]"):
        jc.value_and_grad(net, jc.softmax_cross_entropy)(params, x, jnp.asarray([2, -1]))
    value, _ = jax.jit(jc.value_and_grad(net, jc.softmax_cross_entropy))(
        params, x, jnp.asarray([2, -1]))
    assert np.isnan(float(value))                      # traced: documented, never silent


def test_concrete_labels_are_checked_before_the_batch_is_chunked():
    """In ``microbatch``'s chunks (a ``lax.scan``) the labels are traced; the whole batch's
    concrete labels are checked first, as without chunks -- never a NaN loss instead."""
    net = jc.serial(jc.Flatten(), jc.Dense(3))
    params, _ = net.init(KEY, (2, 2, 1))
    x, labels = jnp.ones((4, 2, 2, 1), jnp.float32), np.array([0, 1, 2, 7])
    message = r"^softmax_cross_entropy: labels must lie in \[0, 3\), got values in \[0, 7\]"
    for grad in ("manual", "autodiff"):
        with pytest.raises(ValueError, match=message):
            jc.train.loss_and_grad(net, jc.softmax_cross_entropy, grad, 2)(params, x, labels)
        with pytest.raises(ValueError, match=message):
            jc.train.loss_grad_and_state(net, jc.softmax_cross_entropy, grad, 2)(
                params, (), x, labels)
    with pytest.raises(ValueError, match=message):
        jc.value_grad_and_state(net, jc.softmax_cross_entropy, microbatch=2)(params, (), x, labels)
    value, _ = jc.value_and_grad(net, jc.softmax_cross_entropy, microbatch=2)(
        params, x, labels % 3)
    assert np.isfinite(float(value))


def test_squared_error_takes_numpy_targets_eagerly_as_under_jit():
    """NumPy float64 targets are float32 with JAX's 64-bit types off, eagerly as under jit
    (the tests run with them on, so this runs in a process of its own)."""
    import subprocess
    import sys
    code = ("import jax, jax.numpy as jnp, numpy as np, jaxcnn as jc\n"
            "net = jc.serial(jc.Dense(3)); p, _ = net.init(jax.random.key(0), (4,))\n"
            "x, t = jnp.ones((4, 4), jnp.float32), np.ones((4, 3))\n"
            "vg = jc.value_and_grad(net, jc.squared_error)\n"
            "print(float(vg(p, x, t)[0]) == float(jax.jit(vg)(p, x, t)[0]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ, "JAX_ENABLE_X64": "0",
                              "JAX_PLATFORMS": "cpu"}, timeout=120)
    assert out.stdout.strip() == "True", out.stderr


def test_float16_losses_past_65504_examples_and_sums():
    """A float16 batch of 70,000 rows: 1/N is computed in float32, not N in float16 (inf, every
    residual 0); a squared error whose batch sum overflows float16 has a finite mean."""
    net = jc.serial(jc.Dense(3, param_dtype=jnp.float16))
    params, _ = net.init(KEY, (4,))
    x = jax.random.normal(KEY, (70_000, 4), jnp.float16)
    labels = jnp.arange(70_000) % 3
    _, grads = jc.value_and_grad(net, jc.softmax_cross_entropy)(params, x, labels)
    reference = jax.grad(lambda p: jc.softmax_cross_entropy.value(net.apply(p, x), labels))(params)
    w, w_ref = (np.asarray(g[0]["w"], np.float32) for g in (grads, reference))
    assert np.abs(w).max() > 0.1
    np.testing.assert_allclose(w, w_ref, rtol=2e-2, atol=2e-3)
    ones = jnp.ones((2048, 8, 8, 1), jnp.float16)
    assert float(jc.squared_error.value(ones, jnp.zeros_like(ones))) == 32.0
    delta = jc.squared_error.delta(x[:, :3], jnp.zeros((70_000, 3), jnp.float16))
    assert np.abs(np.asarray(delta, np.float32)).max() > 0


# --- found by a hostile-user review (see the commit): each was a raw error or silent garbage ---

@pytest.mark.parametrize("dtype, classes", [(jnp.int8, 200), (jnp.uint8, 256), (jnp.uint8, 300),
                                            (jnp.int16, 40000)])
def test_narrow_integer_labels_give_the_int32_loss(dtype, classes):
    """The range test and the one-hot ran in the labels' dtype: int8 against 200 classes wrapped
    200 to -56 and made every valid row NaN."""
    logits = jax.random.normal(KEY, (3, classes))
    top = min(classes, int(jnp.iinfo(dtype).max) + 1) - 1      # the largest label both hold
    labels = jnp.asarray([1, top, 100], jnp.int32)
    for f in (jc.softmax_cross_entropy.value, jc.softmax_cross_entropy.delta,
              jax.jit(jc.softmax_cross_entropy.delta)):
        np.testing.assert_array_equal(f(logits, labels.astype(dtype)), f(logits, labels))
    traced = jax.jit(jc.softmax_cross_entropy.value)(logits, jnp.asarray([1, 2, 255], jnp.uint8))
    assert np.isnan(float(traced)) == (classes <= 255)   # 255 out of range only below 256 classes


def test_train_must_be_a_python_bool_where_a_layer_depends_on_it():
    net = jc.serial(jc.Flatten(), jc.Dropout(0.5), jc.Dense(3))
    params, _ = net.init(KEY, (2, 2, 1))
    x, labels = x_of(2, 2, 2, 1), jnp.asarray([0, 2])
    vg = jc.value_and_grad(net, jc.softmax_cross_entropy)
    with pytest.raises(TypeError, match=r"^serial\[1\] Dropout: train must be True or False, got "
                                        r"a traced array -- under jax.jit make it static"):
        jax.jit(vg)(params, x, labels, key=KEY, train=False)
    value, _ = jax.jit(vg, static_argnames="train")(params, x, labels, train=False)
    assert np.isfinite(float(value))
    # a net none of whose layers reads train takes a traced one, as it always did
    plain = jc.serial(jc.Conv2D(2, 2), jc.ReLU(), jc.MaxPool2D(1), jc.AvgPool2D(1),
                      jc.LayerNorm(), jc.Dropout(0.0), jc.Flatten(), jc.Dense(3))
    p, _ = plain.init(KEY, (2, 2, 1))
    value, _ = jax.jit(jc.value_and_grad(plain, jc.softmax_cross_entropy))(
        p, x, labels, train=False)
    assert np.isfinite(float(value))
    assert jax.jit(plain.apply)(p, x, train=False).shape == (2, 3)
    for layer, shape in ((jc.Dropout(0.5), (2, 3)), (jc.BatchNorm(), (2, 3)),
                         (jc.StochasticPool2D(2), (1, 2, 2, 1))):
        lp, _ = layer.init(KEY, shape[1:])
        for run in (layer.forward, layer.apply):
            with pytest.raises(TypeError, match=rf"^{layer.name}: train must be True or False, "
                                                rf"got str 'False'"):
                run(lp, x_of(*shape), key=KEY, train="False")


@pytest.mark.parametrize("make, match", [
    (lambda: jc.Conv2D(4, 3, use_bias="False"), r"Conv2D: use_bias must be a bool, got str 'False'"),
    (lambda: jc.ConvTranspose2D(4, 3, use_bias=0), r"ConvTranspose2D: use_bias must be a bool, got int 0"),
    (lambda: jc.Dense(3, use_bias="no"), r"Dense: use_bias must be a bool, got str 'no'"),
    (lambda: jc.AvgPool2D(2, count_include_pad="False"), r"AvgPool2D: count_include_pad must be a bool"),
    (lambda: jc.Dense(3, precision="bogus"), r"Dense: precision must be None, a jax.lax.Precision or its name .* got 'bogus'"),
    (lambda: jc.Conv2D(4, 3, precision=("highest", 7)), r"Conv2D: precision must be None"),
    (lambda: jc.zoo.resnet(blocks=0), r"resnet: blocks must be >= 1, got 0"),
    (lambda: jc.zoo.resnet(blocks=2.5), r"resnet: blocks must be an int, got 2.5"),
    (lambda: jc.zoo.resnet(batch_norm="yes"), r"resnet: batch_norm must be a bool"),
    (lambda: jc.zoo.autoencoder(features="16"), r"autoencoder: features must be an int, got '16'"),
    (lambda: jc.zoo.autoencoder(features=1), r"autoencoder: features must be >= 2 \(the second "
                                             r"convolution has features // 2 maps\), got 1"),
])
def test_settings_are_not_coerced(make, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make()


def test_what_jax_takes_is_taken():
    """Precisions and keys in every form JAX accepts: checking them must refuse none."""
    for precision in ("highest", ("highest", "default"), jax.lax.Precision.HIGH, "BF16_BF16_F32",
                      jax.lax.DotAlgorithmPreset.BF16_BF16_F32):
        jc.Dense(3, precision=precision)
        jc.Conv2D(3, 2, precision=precision)
    layer = jc.Dense(3)
    for key in (jax.random.key(0), jax.random.PRNGKey(0), jax.random.key(0, impl="rbg")):
        assert layer.init(key, (2,))[1] == (3,)
    with pytest.raises(TypeError, match=r"Dense: key must be one JAX random key, .* got an array "
                                        r"of shape \(4,\) and dtype uint32"):
        layer.init(jax.random.key_data(jax.random.key(0, impl="rbg")), (2,))   # not threefry's
    old = jax.config.jax_default_prng_impl
    jax.config.update("jax_default_prng_impl", "rbg")
    try:
        assert layer.init(jax.random.PRNGKey(0), (2,))[1] == (3,)            # rbg's raw uint32[4]
    finally:
        jax.config.update("jax_default_prng_impl", old)


def test_params_that_are_not_arrays_or_carry_extra_keys():
    x = x_of(2, 6, 6, 2)
    conv, conv_nb = jc.Conv2D(4, 3), jc.Conv2D(4, 3, use_bias=False)
    params, _ = conv.init(KEY, (6, 6, 2))
    with pytest.raises(ValueError, match=r"Conv2D: params\['w'\] has shape \(3, 3\), expected "
                                         r"\(3, 3, 2, 4\)"):
        conv.apply({**params, "w": jnp.ones((3, 3))}, x)
    with pytest.raises(TypeError, match=r"Conv2D: expected params\['w'\] to be an array of shape "
                                        r"\(3, 3, 2, 4\), got a list of 3 entries"):
        conv.apply({**params, "w": np.ones((3, 3, 2, 4)).tolist()}, x)
    with pytest.raises(ValueError, match=r"Conv2D: expected params with keys \['w'\] "
                                         r"\(use_bias=False\), got \['b', 'w'\]"):
        conv_nb.forward(params, x)
    with pytest.raises(ValueError, match=r"Conv2D: expected params with keys \['b', 'w'\] "
                                         r"\(use_bias=True\), got \['b', 'junk', 'w'\]"):
        conv.apply({**params, "junk": jnp.ones(3)}, x)
    gn = jc.GroupNorm(2)
    with pytest.raises(TypeError, match=r"GroupNorm: expected params\['scale'\] to be an array"):
        gn.apply({"scale": [1.0] * 4, "bias": jnp.zeros(4)}, x_of(2, 4))
    with pytest.raises(ValueError, match=r"LayerNorm: expected params with keys \['scale'\] "
                                         r"\(use_scale=True, use_bias=False\), got \['bias', 'scale'\]"):
        jc.LayerNorm(use_bias=False).apply(jc.LayerNorm().init(KEY, (4,))[0], x_of(2, 4))


@pytest.mark.parametrize("run, error, match", [
    (lambda: jc.Sigmoid().init(KEY, "abc"), TypeError, r"Sigmoid: input_shape must be a tuple of ints, got 'abc'"),
    (lambda: jc.ReLU().init(KEY, (-3, 2)), ValueError, r"ReLU: input_shape entries must be >= 1, got \(-3, 2\)"),
    (lambda: jc.Tanh().init(KEY, 5), TypeError, r"Tanh: input_shape must be a tuple of ints, got 5"),
    (lambda: jc.Flatten().init(KEY, ()), ValueError, r"Flatten: expected a per-example input shape of rank >= 1"),
    (lambda: jc.Dense(3).init(KEY, (True,)), TypeError, r"Dense: input_shape must be a tuple of ints"),
    (lambda: jc.Identity().init(KEY, "junk"), TypeError, r"Identity: expected a per-example input shape"),
    (lambda: jc.Softmax().init(KEY, ()), ValueError, r"Softmax: expected a per-example input shape of rank >= 1"),
    (lambda: jc.Softmax().apply((), jnp.arange(4.0)), ValueError,
     r"Softmax: expected an input of rank >= 2 \(N, ..., classes\), the batch axis first, got shape \(4,\)"),
    (lambda: jc.Sigmoid().apply((), jnp.float32(1.0)), ValueError, r"Sigmoid: expected an input of rank >= 1"),
    (lambda: jc.Dropout(0.5).apply((), jnp.float32(1.0), key=KEY), ValueError,
     r"Dropout: expected an input of rank >= 1 \(N, ...\), the batch axis first, got shape \(\)"),
    (lambda: jc.FanInSum().apply((), ()), ValueError, r"FanInSum: expected at least one of the inputs, got an empty tuple"),
    (lambda: jc.FanInConcat().apply((), []), ValueError, r"FanInConcat: expected at least one of the inputs"),
    (lambda: jc.FanInConcat().init(KEY, []), ValueError, r"FanInConcat: expected a tuple of per-example input shapes"),
    (lambda: jc.Conv2D(4, 3).init(None, (6, 6, 1)), TypeError,
     r"Conv2D: key must be one JAX random key, jax.random.key\(seed\), got None"),
    (lambda: jc.serial(jc.Dense(3)).init(7, (3,)), TypeError, r"serial: key must be one JAX random key, .*got int 7"),
    (lambda: jc.Dropout(0.5).apply((), x_of(2, 3), key=0), TypeError, r"Dropout: key must be one JAX random key, .*got int 0"),
    (lambda: jc.Dropout(0.5).backward((), None, x_of(2, 3)), TypeError,
     r"Dropout: backward expects the cache its forward returned \(DropoutCache\), got None"),
    (lambda: jc.serial(jc.ReLU()).backward(((),), (None,), x_of(2, 3)), TypeError,
     r"serial\[0\] ReLU: backward expects the cache its forward returned \(ActivationCache\)"),
    (lambda: jc.value_and_grad(jc.serial(jc.Dense(3)), lambda a, b: 0.0), TypeError,
     r"value_and_grad: loss must be a jaxcnn Loss .* got function"),
    (lambda: jc.value_and_grad(jc.Dense, jc.squared_error), TypeError, r"value_and_grad: net must be a jaxcnn Layer"),
])
def test_more_bad_input(run, error, match):
    with pytest.raises(error, match=match):
        run()


def test_microbatch_targets_must_match_the_batch():
    net = jc.serial(jc.Flatten(), jc.Dense(3))
    params, _ = net.init(KEY, (2, 2, 1))
    for microbatch in (None, 2):
        vg = jc.value_and_grad(net, jc.softmax_cross_entropy, microbatch=microbatch)
        with pytest.raises(ValueError, match=r"value_and_grad: targets must have x's batch of 4 "
                                             r"examples along their first axis, got shape \(6,\)"):
            vg(params, x_of(4, 2, 2, 1), jnp.zeros(6, jnp.int32))


def test_merges_check_the_residual_dtype():
    x = x_of(2, 3)
    half = x.astype(jnp.float16)
    fan_out, fan_sum, identity = jc.FanOut(2), jc.FanInSum(), jc.Identity()
    _, cache = fan_out.forward((), x)
    with pytest.raises(TypeError, match=r"FanOut: backward got delta of dtype float16, expected float32"):
        fan_out.backward((), cache, (x, half))
    _, cache = fan_sum.forward((), (x, x))
    with pytest.raises(TypeError, match=r"FanInSum: backward got delta of dtype float16, expected float32"):
        fan_sum.backward((), cache, half)
    _, cache = identity.forward((), x)
    with pytest.raises(TypeError, match=r"Identity: backward got delta of dtype float16, expected float32"):
        identity.backward((), cache, half)


@pytest.mark.parametrize("args, exc, message", [
    (("small", (8, 8, 1), True), TypeError, r"^zoo.get\('small'\): num_classes must be an int, "
                                            r"got True"),
    (("small", (8, 8, 1), 1), ValueError, r"^zoo.get\('small'\): num_classes must be at least 2"),
    (("small", 8, 10), TypeError, r"^zoo.get\('small'\): input_shape must be a tuple of ints, "
                                  r"got 8"),
    (("small", (8.0, 8, 1), 10), TypeError, r"input_shape must be a tuple of ints"),
    ((["small"], (8, 8, 1), 10), ValueError, r"^unknown architecture \['small'\]"),
])
def test_zoo_get_checks_before_its_cache(args, exc, message):
    """Checked before the cache: a net made for 1 class (or shape (8, 8, 1)) is not handed
    back for True (or (8.0, 8, 1)), and an unhashable name is a ValueError, not a raw error."""
    jc.zoo.get("small", (8, 8, 1), 10)
    with pytest.raises(exc, match=message):
        jc.zoo.get(*args)
    assert jc.zoo.get("small", [8, 8, 1], 10) is jc.zoo.get("small", (8, 8, 1), 10)


@pytest.mark.parametrize("kwargs, message", [
    (dict(net=jc.Dense), r"^bridge: net must be a jaxcnn Layer"),
    (dict(net=jc.Dense(3), key=0), r"^bridge: key must be one JAX random key"),
    (dict(net=jc.Dense(3), train="no"), r"^bridge: train must be True or False"),
])
def test_bridge_checks_what_it_is_built_with(kwargs, message):
    net = kwargs.pop("net")
    with pytest.raises(TypeError, match=message):
        jc.bridge(net, **kwargs)


def test_params_from_another_layer_are_named_and_lists_keep_their_type():
    """A layer of the guide's kind (check_param without check_param_keys) given Dense's params
    names the key; params given as a list come back as a list of gradients."""
    from jaxcnn.core import check_param
    with pytest.raises(ValueError, match=r"^Scale: expected params with the key 'gamma', got "
                                         r"\['b', 'w'\] -- params from another network"):
        check_param("Scale", {"w": 0, "b": 0}, "gamma", (3,), jnp.float32)
    net = jc.serial(jc.Flatten(), jc.Dense(3))
    params, _ = net.init(jax.random.key(0), (2, 2, 1))
    _, grads = jc.value_and_grad(net, jc.softmax_cross_entropy)(
        list(params), jnp.ones((2, 2, 2, 1), jnp.float32), jnp.array([0, 1], jnp.int32))
    assert isinstance(grads, list) and len(grads) == 2


def test_max_pooling_refuses_a_dtype_without_infinity():
    """float8_e4m3fn has no -inf: max pooling's start value and padding would be NaN, so
    ``apply`` would give NaN where ``forward`` does not; float8_e5m2, which has one, pools."""
    import ml_dtypes
    x = jnp.arange(16.0, dtype=jnp.float32).reshape(1, 4, 4, 1)
    for layer in (jc.MaxPool2D(2), jc.MaxPool2D(2, padding=((1, 0), (1, 0)))):
        with pytest.raises(TypeError, match=r"^MaxPool2D: dtype float8_e4m3fn has no infinity"):
            jax.jit(layer.apply)((), x.astype(ml_dtypes.float8_e4m3fn))
        with pytest.raises(TypeError, match=r"^MaxPool2D: dtype float8_e4m3fn has no infinity"):
            layer.forward((), x.astype(ml_dtypes.float8_e4m3fn))
    e5m2 = x.astype(ml_dtypes.float8_e5m2)
    y = jc.MaxPool2D(2).apply((), e5m2)
    np.testing.assert_array_equal(np.asarray(y, np.float32),
                                  np.asarray(jc.MaxPool2D(2).forward((), e5m2)[0], np.float32))
    np.testing.assert_array_equal(np.asarray(y, np.float32).ravel(),
                                  np.asarray(e5m2, np.float32).ravel()[[5, 7, 13, 15]])


def test_a_cache_made_by_another_layer_is_refused_naming_both():
    """Pooling routes and activation outputs are layer-specific: another pooling's cache (or
    the same pooling's with other settings) would route the residual elsewhere, another
    activation's output would take the wrong slope.  A TypeError naming both layers, under
    ``jit`` too; a layer's own cache passes through ``jit``."""
    x = jnp.arange(25.0).reshape(1, 5, 5, 1)
    ones = jnp.ones((1, 2, 2, 1))
    for made, used in [(jc.AvgPool2D(3, 2), jc.MaxPool2D(3, 2)),
                       (jc.MaxPool2D(3, 2), jc.MaxPool2D(2, 2)),
                       (jc.AvgPool2D(3, 2), jc.StochasticPool2D(3, 2))]:
        _, cache = made.forward((), x)
        with pytest.raises(TypeError, match=rf"^{used.name}: backward expects the cache its own "
                                            rf"forward returned, got one made by {made.name}\("):
            jax.jit(used.backward)((), cache, ones)
    _, cache = jc.Tanh().forward((), jnp.zeros((1, 2)))
    with pytest.raises(TypeError, match=r"^Sigmoid: backward expects the cache its own forward "
                                        r"returned, got one made by Tanh\(kind='elementwise'\), "
                                        r"not by this Sigmoid"):
        jc.Sigmoid().backward((), cache, jnp.ones((1, 2)))
    pool = jc.MaxPool2D(2)
    cache = jax.jit(lambda a: pool.forward((), a)[1])(x[:, :4, :4])
    assert float(jc.MaxPool2D(2).backward((), cache, ones)[1].sum()) == 4.0


@pytest.mark.parametrize("layer, shape", [(jc.GlobalAvgPool2D(), (1, 1)),
                                          (jc.AvgPool2D(256), (1, 1, 1, 1))])
def test_float16_average_pooling_over_more_positions_than_float16_holds(layer, shape):
    """A window of 65,536 positions: 1 / |R| in float32, not |R| in float16 (infinite), so the
    backward equals jax.vjp of the forward instead of zeros."""
    x = jnp.ones((1, 256, 256, 1), jnp.float16)
    _, cache = layer.forward((), x)
    delta = jnp.ones(shape, jnp.float16)
    got = layer.backward((), cache, delta)[1]
    want = jax.vjp(lambda a: layer.apply((), a), x)[1](delta)[0]
    assert float(got[0, 0, 0, 0]) == float(want[0, 0, 0, 0]) > 0


def test_stochastic_pooling_refuses_non_finite_inputs_where_it_can():
    """A NaN or an infinity in a window's sum would decide its draw silently: refused where
    the input holds values, as a negative entry is."""
    for bad in (np.nan, np.inf):
        x = jnp.array([1.0, bad, 1.0, 1.0]).reshape(1, 2, 2, 1)
        for kw in (dict(train=False), dict(key=jax.random.key(0))):
            with pytest.raises(ValueError, match=r"^StochasticPool2D: inputs must be finite "
                                                 r"\(each window is a distribution over its "
                                                 r"entries, eq. 5.5\), got 1 NaN or infinite"):
                jc.StochasticPool2D(2).apply((), x, **kw)

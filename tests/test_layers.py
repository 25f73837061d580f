"""Every layer's hand-written backward equals ``jax.vjp`` of its forward.

Configurations are drawn by hypothesis over a grid that includes the degenerate cases: 1x1
kernels, windows that don't divide the input, stride > window, pad 0, non-square everything,
N = 1, float32 and float64.  Each case also checks ``init``'s output shape against ``forward``.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxcnn as jc
from harness import TOL, assert_backward_matches, init_as

DTYPES = st.sampled_from([jnp.float32, jnp.float64])


def lax_conv(p, x, strides=1, padding="VALID", dilation=1, groups=1):
    """The plain reference forward: ``lax.conv_general_dilated``, plus the bias if ``p`` has one."""
    y = jax.lax.conv_general_dilated(
        x, p["w"], jc.core.pair("", "", strides), padding,
        rhs_dilation=jc.core.pair("", "", dilation), feature_group_count=groups,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + p["b"].reshape(1, 1, 1, -1) if "b" in p else y


def _padding(draw, k_eff):
    kind = draw(st.sampled_from(["VALID", "SAME", "explicit"]))
    if kind != "explicit":
        return kind
    return tuple((draw(st.integers(0, k - 1 if k > 1 else 2)),
                  draw(st.integers(0, k - 1 if k > 1 else 2))) for k in k_eff)


def _extent(draw, k_eff, padding, lo=0, extra=6):
    """An input size the (dilated) window fits in, padding included."""
    pads = (0, 0) if isinstance(padding, str) else padding
    return draw(st.integers(max(1, k_eff - sum(pads), lo), k_eff + extra))


@st.composite
def conv_cases(draw):
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    k_eff = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    padding = _padding(draw, k_eff)
    pads = padding if not isinstance(padding, str) else ((0, 0), (0, 0))
    hw = tuple(_extent(draw, k, p) for k, p in zip(k_eff, pads))
    groups = draw(st.integers(1, 3))
    c_in, feats = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    method = draw(st.sampled_from(["auto", "lax", "toeplitz"]))
    layer = jc.Conv2D(feats, kernel, strides, padding, dilation, groups,
                      use_bias=draw(st.booleans()), method=method)
    return layer, (draw(st.integers(1, 3)), *hw, c_in), draw(DTYPES)


def run_case(layer, shape, dtype, rng, x=None, **kw):
    params, out_shape = init_as(layer, shape[1:], dtype)
    if x is None:
        x = rng.normal(size=shape)
    x = jnp.asarray(x, dtype)
    y, _ = layer.forward(params, x, **kw)
    assert y.shape == (shape[0], *out_shape), "init's output shape disagrees with forward"
    assert y.dtype == dtype
    assert_backward_matches(layer, params, x, **kw)


@given(conv_cases())
def test_conv_backward(case):
    layer, shape, dtype = case
    run_case(layer, shape, dtype, np.random.default_rng(1))


@st.composite
def pool_cases(draw, padded=True):
    window = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    strides = draw(st.one_of(st.none(), st.tuples(st.integers(1, 4), st.integers(1, 4))))
    padding = _padding(draw, window) if padded else "VALID"
    if not isinstance(padding, str):       # pooling needs each pad smaller than the window
        padding = tuple((min(lo, k - 1), min(hi, k - 1)) for (lo, hi), k in zip(padding, window))
    pads = padding if not isinstance(padding, str) else ((0, 0), (0, 0))
    hw = tuple(_extent(draw, k, p) for k, p in zip(window, pads))
    shape = (draw(st.integers(1, 3)), *hw, draw(st.integers(1, 3)))
    return window, strides, padding, shape, draw(DTYPES)


@given(pool_cases(), st.booleans())
def test_avg_pool_backward(case, count_include_pad):
    window, strides, padding, shape, dtype = case
    layer = jc.AvgPool2D(window, strides, padding, count_include_pad=count_include_pad)
    run_case(layer, shape, dtype, np.random.default_rng(2))


@given(pool_cases(), st.booleans())
def test_max_pool_backward_with_ties(case, ties):
    window, strides, padding, shape, dtype = case
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, size=shape) if ties else rng.normal(size=shape)
    run_case(jc.MaxPool2D(window, strides, padding), shape, dtype, rng, x=x)


@given(pool_cases(padded=False), st.booleans(), st.integers(0, 2**31 - 1))
def test_stochastic_pool_backward(case, train, seed):
    window, strides, _, shape, dtype = case
    rng = np.random.default_rng(seed)
    # non-negative activations with exact zeros, including all-zero windows
    x = rng.uniform(size=shape) * (rng.uniform(size=shape) > 0.4)
    key = jax.random.key(seed) if train else None
    run_case(jc.StochasticPool2D(window, strides), shape, dtype, rng, x=x, key=key, train=train)


@pytest.mark.parametrize("make", [jc.Sigmoid, jc.Tanh, jc.ReLU, jc.Softmax, jc.Flatten])
@pytest.mark.parametrize("shape", [(1, 3), (2, 4, 5, 3)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_parameter_free_backward(make, shape, dtype, rng):
    run_case(make(), shape, dtype, rng)


@given(st.integers(1, 4), st.integers(1, 6), st.integers(1, 5), st.booleans(), DTYPES)
def test_dense_backward(n, n_in, n_out, use_bias, dtype):
    run_case(jc.Dense(n_out, use_bias), (n, n_in), dtype, np.random.default_rng(4))


# --- conventions at kinks and ties, stated as literal answers --------------------------------

def test_relu_derivative_at_zero_is_zero():
    relu = jc.ReLU()
    x = jnp.asarray([[-1.0, 0.0, 2.0]])
    _, cache = relu.forward((), x)
    _, dx = relu.backward((), cache, jnp.ones((1, 3)))
    np.testing.assert_array_equal(dx, [[0.0, 0.0, 1.0]])
    np.testing.assert_array_equal(jax.grad(lambda x: jax.nn.relu(x).sum())(x), dx)


def test_max_pool_ties_go_to_the_first_maximum_in_row_major_order():
    pool = jc.MaxPool2D(2)
    x = jnp.asarray([[1.0, 3.0], [3.0, 3.0]]).reshape(1, 2, 2, 1)
    _, cache = pool.forward((), x)
    _, dx = pool.backward((), cache, jnp.full((1, 1, 1, 1), 5.0))
    np.testing.assert_array_equal(dx[0, :, :, 0], [[0, 5], [0, 0]])
    _, vjp = jax.vjp(lambda x: pool.apply((), x), x)     # jax.grad of lax.reduce_window max
    np.testing.assert_array_equal(vjp(jnp.full((1, 1, 1, 1), 5.0))[0], dx)


def test_overlapping_max_windows_add_up():
    pool = jc.MaxPool2D((1, 2), strides=1)
    x = jnp.asarray([0.0, 9.0, 1.0]).reshape(1, 1, 3, 1)
    _, cache = pool.forward((), x)
    _, dx = pool.backward((), cache, jnp.asarray([2.0, 3.0]).reshape(1, 1, 2, 1))
    np.testing.assert_array_equal(dx.ravel(), [0, 5, 0])


@pytest.mark.parametrize("count_include_pad, expected", [(True, 1.0), (False, 4.0)])
def test_avg_pool_padding_count(count_include_pad, expected):
    """A SAME 2x2 window at the corner of a 1x1 input holds one real 4 and three padded zeros."""
    pool = jc.AvgPool2D(2, strides=1, padding=((0, 1), (0, 1)),
                        count_include_pad=count_include_pad)
    y = pool.apply((), jnp.full((1, 1, 1, 1), 4.0))
    np.testing.assert_array_equal(y.ravel(), [expected])


def test_avg_pool_spreads_delta_evenly():
    pool = jc.AvgPool2D(2)
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    _, cache = pool.forward((), x)
    _, dx = pool.backward((), cache, jnp.asarray([[4.0, 8.0], [12.0, 16.0]]).reshape(1, 2, 2, 1))
    np.testing.assert_array_equal(dx[0, :, :, 0], np.kron([[1, 2], [3, 4]], np.ones((2, 2))))


def test_stochastic_pool_samples_in_proportion_and_never_zero():
    pool = jc.StochasticPool2D((1, 4))
    x = jnp.broadcast_to(jnp.asarray([1.0, 3.0, 0.0, 4.0]), (4000, 1, 4)).reshape(4000, 1, 4, 1)
    _, cache = jax.jit(lambda x: pool.forward((), x, key=jax.random.key(7)))(x)
    freq = np.bincount(np.asarray(cache.index).ravel(), minlength=4) / 4000
    np.testing.assert_allclose(freq, [1 / 8, 3 / 8, 0, 1 / 2], atol=0.03)
    assert freq[2] == 0


def test_stochastic_pool_draw_at_the_top_of_the_distribution_is_never_a_zero(monkeypatch):
    """Eq. 5.5's count stops at the last positive entry even where ``u S`` rounds up to ``S``
    (here forced: ``u = 1``), instead of running past it onto trailing zeros; ``u = 0`` takes
    the first positive entry, and an all-zero window its first position."""
    pool = jc.StochasticPool2D((1, 4))
    x = jnp.asarray([[1.0, 3.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [0.0] * 4]).reshape(3, 1, 4, 1)
    for u, index, value in ((1.0, [1, 2, 0], [3.0, 2.0, 0.0]), (0.0, [0, 2, 0], [1.0, 2.0, 0.0])):
        monkeypatch.setattr(jax.random, "uniform",
                            lambda key, shape, dtype, u=u: jnp.full(shape, u, dtype))
        y, cache = jax.jit(lambda x: pool.forward((), x, key=jax.random.key(0)))(x)
        np.testing.assert_array_equal(np.asarray(cache.index).ravel(), index)
        np.testing.assert_array_equal(np.asarray(y).ravel(), value)


def test_stochastic_pool_backward_reuses_the_sample():
    pool = jc.StochasticPool2D(2)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 4, 4, 3)))
    y, cache = pool.forward((), x, key=jax.random.key(0))
    delta = jnp.ones_like(y)
    _, dx = pool.backward((), cache, delta)
    # the routed residual lands exactly where the output came from
    np.testing.assert_array_equal(np.sort(np.asarray(x[dx > 0])), np.sort(np.asarray(y).ravel()))
    y2, _ = pool.forward((), x, key=jax.random.key(1))
    assert not np.array_equal(y, y2), "a different key should draw different positions"


def test_stochastic_pool_test_time_is_the_weighted_average():
    pool = jc.StochasticPool2D((1, 4))
    a = jnp.asarray([1.0, 3.0, 0.0, 4.0]).reshape(1, 1, 4, 1)
    assert float(pool.apply((), a, train=False).ravel()[0]) == (1 + 9 + 16) / 8
    zero = pool.apply((), jnp.zeros((1, 1, 4, 1)), train=False)
    np.testing.assert_array_equal(zero, 0)


def test_forward_is_jittable_and_vmappable():
    net = jc.serial(jc.Conv2D(2, 3), jc.ReLU(), jc.MaxPool2D(2), jc.Flatten(), jc.Dense(3))
    params, _ = net.init(jax.random.key(0), (8, 8, 1))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 8, 8, 1)), jnp.float32)
    batched = jax.jit(net.apply)(params, x)
    per_example = jax.vmap(lambda xi: net.apply(params, xi[None])[0])(x)
    np.testing.assert_allclose(per_example, batched, rtol=1e-5, atol=1e-6)


# --- the larger sweep, behind a marker: pytest -m slow ---------------------------------------

@pytest.mark.slow
@settings(max_examples=400)
@given(conv_cases())
def test_conv_backward_sweep(case):
    layer, shape, dtype = case
    run_case(layer, shape, dtype, np.random.default_rng(1))


@pytest.mark.slow
@settings(max_examples=300)
@given(pool_cases(), st.booleans())
def test_max_pool_backward_sweep(case, ties):
    window, strides, padding, shape, dtype = case
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, size=shape) if ties else rng.normal(size=shape)
    run_case(jc.MaxPool2D(window, strides, padding), shape, dtype, rng, x=x)


@pytest.mark.parametrize("method", ["lax", "toeplitz"])
@pytest.mark.parametrize("strides, dilation, padding", [
    (1, 1, "VALID"), (1, 2, "SAME"), ((2, 3), 1, ((2, 1), (0, 3))), (3, (1, 2), "VALID"),
    ((1, 2), (2, 1), ((0, 4), (3, 0))), (3, (4, 1), "VALID")])
@pytest.mark.parametrize("groups", [1, 3])
def test_conv_all_three_passes_in_both_formulations(method, strides, dilation, padding, groups):
    """Eqs. 4.2/4.4/4.5 (XLA convolutions) and 4.6/4.7/4.8 (Toeplitz matrix products, one per
    group when grouped) give the forward of ``lax.conv_general_dilated`` and the kernel
    gradient and input residual of its ``jax.vjp``, in float64 to 1e-12; the rows a stride
    skips get no residual.  The last case has one output row (a dilated kernel 9 rows tall,
    two rows unread), whose eq. 4.8 places the kernel's rows without a window scatter."""
    from jaxcnn.conv import conv_plan

    layer = jc.Conv2D(6, (3, 2), strides, padding, dilation, groups, method=method)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 11, 10, 3)))
    params, _ = init_as(layer, (11, 10, 3), jnp.float64)
    y, cache = jax.jit(layer.forward)(params, x)
    ref, vjp = jax.vjp(lambda p, x: lax_conv(p, x, strides, padding, dilation, groups),
                       params, x)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    delta = jnp.asarray(rng.normal(size=y.shape))
    grads, dx = jax.jit(layer.backward)(params, cache, delta)
    ref_grads, ref_dx = vjp(delta)
    np.testing.assert_allclose(grads["w"], ref_grads["w"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-12, atol=1e-12)
    plan = conv_plan(jc.conv.geo.window("Conv2D", (11, 10), (3, 2), jc.core.pair("", "", strides),
                                        jc.core.pair("", "", dilation),
                                        jc.conv.geo.normalize_padding("", padding)), 3, groups,
                     method, features=4)
    assert plan[:4] == (method, method, method, method == "toeplitz" and groups > 1)
    assert plan.inference == method


def test_conv_plan_auto_picks_by_spread_on_cpu():
    """``"auto"``: Toeplitz for few channels over narrow maps, XLA's convolutions for many
    channels (thresholds ``conv.SPREAD_LIMIT`` and the larger backward ones), grouped
    convolutions split per group, and the stride phases for a strided input residual."""
    from jaxcnn import _geometry as geo
    from jaxcnn.conv import conv_plan

    def plan(hw, k, c_in, groups=1, padding="SAME", features=8):
        return conv_plan(geo.window("Conv2D", hw, (k, k), (1, 1), (1, 1), padding), c_in,
                         groups, features=features)[:5]

    if jax.default_backend() != "cpu":     # GPU/TPU: XLA's convolutions, whatever the shape
        assert plan((28, 28), 5, 1) == plan((8, 8), 3, 4, groups=2) == ("lax",) * 3 + (False, None)
        return
    # LeNet-5 C1: spread 6.4, and 28 output columns in two tiles of 14
    assert plan((28, 28), 5, 1) == ("toeplitz", "toeplitz", "toeplitz", False, 14)
    # LeNet-5 C5: spread 16; one output column, one tile
    assert plan((5, 5), 5, 16, padding="VALID") == ("toeplitz",) * 3 + (False, None)
    assert plan((32, 32), 3, 64) == ("lax", "lax", "lax", False, None)    # spread 725
    # each pass has its own limit: 3 channels, 32 wide (spread 34): XLA's forward, Toeplitz
    # backward passes; 16 channels, 14 wide, 3x3 (spread 75): only the kernel gradient.
    # With XLA's forward, four tiles where W_out >= 4 k_w (32 -> 8, 12 -> 3), else two.
    assert plan((32, 32), 3, 3) == ("lax", "toeplitz", "toeplitz", False, 8)
    assert plan((14, 14), 3, 16, padding="VALID") == ("lax", "toeplitz", "lax", False, 3)
    # 10 wide (spread 53, W_out 8 < 12): two tiles of 4
    assert plan((10, 10), 3, 16, padding="VALID") == ("lax", "toeplitz", "lax", False, 4)
    # ... on ungrouped layers; grouped (C_g = 4, spread 45) and strided ones keep 20 for all
    assert plan((32, 32), 3, 16, groups=4) == ("lax", "lax", "lax", True, None)
    assert plan((8, 8), 3, 4, groups=2)[:4] == ("toeplitz", "toeplitz", "toeplitz", True)
    assert plan((32, 32), 3, 64, groups=4)[:4] == ("lax", "lax", "lax", True)
    # depthwise, 16 groups (> GROUP_SPLIT_LIMIT): not unrolled into 16 programs
    assert plan((16, 16), 3, 16, groups=16) == ("lax",) * 3 + (False, None)
    # strided: XLA's kernel gradient always; the Toeplitz input residual up to spread 30,
    # above it the stride phases (eq. 4.9), also per group of a split grouped convolution
    strided = geo.window("Conv2D", (32, 32), (3, 3), (2, 2), (1, 1), "SAME")
    # spread 176
    assert conv_plan(strided, 16, 1, features=8)[:4] == ("lax", "lax", "phases", False)
    # spread 44
    assert conv_plan(strided, 16, 4, features=8)[:4] == ("lax", "lax", "phases", True)
    strided = geo.window("Conv2D", (14, 14), (5, 5), (2, 2), (1, 1), "VALID")
    # spread 15.6
    assert conv_plan(strided, 6, 1, features=8)[:5] == ("toeplitz", "lax", "toeplitz", False, None)
    strided = geo.window("Conv2D", (14, 14), (3, 3), (2, 2), (1, 1), "VALID")
    # spread 69
    assert conv_plan(strided, 16, 1, features=8)[:5] == ("lax", "lax", "phases", False, None)
    # spread 26
    assert conv_plan(strided, 6, 1, features=8)[:5] == ("lax", "lax", "toeplitz", False, 3)
    with pytest.raises(ValueError, match=r"Conv2D: unknown method 'fft'"):
        conv_plan(geo.window("Conv2D", (8, 8), (3, 3), (1, 1), (1, 1), "SAME"), 1, 1, "fft",
                  features=8)


def test_conv_plan_inference_evaluates_as_toeplitz_where_it_is_faster():
    """``inference`` (what ``apply`` computes when not differentiated) is the Toeplitz product
    only where the forward is one and: one output position; 2-3 input channels per group; or
    one, with at most 16 features per group or a kernel at least 7 columns wide (dilated:
    its effective width)."""
    from jaxcnn import _geometry as geo
    from jaxcnn.conv import conv_plan

    def plan(hw, k, c_in, features, groups=1, padding="SAME", dilation=(1, 1)):
        p = conv_plan(geo.window("Conv2D", hw, k, (1, 1), dilation, padding), c_in, groups,
                      features=features)
        return p.forward, p.inference

    if jax.default_backend() != "cpu":
        assert plan((28, 28), (5, 5), 1, 6) == ("lax", "lax")
        return
    assert plan((28, 28), (5, 5), 1, 6) == ("toeplitz",) * 2                      # LeNet C1
    assert plan((14, 14), (5, 5), 6, 16, padding="VALID") == ("toeplitz", "lax")  # LeNet C3
    assert plan((5, 5), (5, 5), 16, 120, padding="VALID") == ("toeplitz",) * 2    # LeNet C5
    assert plan((28, 28), (9, 9), 1, 20, padding="VALID") == ("toeplitz",) * 2    # UFLDL
    assert plan((39, 31), (4, 4), 1, 20, padding="VALID") == ("toeplitz", "lax")  # deepid
    assert plan((8, 8), (3, 3), 1, 32) == ("toeplitz", "lax")            # the zoo's small
    assert plan((28, 28), (4, 4), 1, 32, dilation=(2, 2)) == ("toeplitz",) * 2    # 7 wide
    assert plan((14, 14), (5, 5), 3, 32) == ("toeplitz",) * 2                     # 3 channels
    assert plan((14, 14), (5, 5), 8, 32, groups=4) == ("toeplitz",) * 2   # 2 per group
    assert plan((14, 14), (5, 5), 12, 16, groups=2, padding="VALID") == ("toeplitz", "lax")
    assert plan((32, 32), (3, 3), 3, 64) == ("lax", "lax")                   # XLA's forward


@pytest.mark.parametrize("features, k, shape, kwargs", [
    (16, 5, (14, 14, 6), {}),                          # LeNet C3: XLA's to evaluate
    (20, 9, (28, 28, 1), {}),                          # UFLDL: the Toeplitz product
    (4, 3, (9, 8, 4), {"groups": 2, "padding": "SAME"}),
    (5, (3, 2), (9, 8, 3), {"use_bias": False, "strides": 2}),
])
def test_apply_evaluates_and_differentiates_the_same_function(features, k, shape, kwargs):
    """``apply`` may evaluate in one form and differentiate through another (``apply_output``:
    a ``jax.custom_jvp`` whose rule is ``jax.jvp`` of the plan's forward).  Values, ``jax.vjp``,
    ``jax.jvp``, a Hessian-vector product and ``jax.vmap`` all equal those of a plain
    ``lax.conv_general_dilated`` forward (float64), also under ``jax.checkpoint``; a gradient
    with respect to the parameters alone computes no product with the data's zero tangent; on
    CPU LeNet's C3 evaluates with XLA's convolution and is differentiated through the Toeplitz
    product."""
    from jaxcnn import conv

    layer = jc.Conv2D(features, k, **kwargs)
    rng = np.random.default_rng(2)
    params, _ = init_as(layer, shape, jnp.float64)
    params = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), params)
    x = jnp.asarray(rng.normal(size=(3, *shape)))
    strides = jc.core.pair("", "", kwargs.get("strides", 1))

    def reference(p, x):
        return lax_conv(p, x, strides, kwargs.get("padding", "VALID"),
                        groups=kwargs.get("groups", 1))

    def close(a, b, tol=1e-10):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=tol, atol=tol), a, b)

    y = jax.jit(layer.apply)(params, x)
    close(y, reference(params, x))
    delta = jnp.asarray(rng.normal(size=y.shape))
    close(jax.jit(lambda p, x: jax.vjp(layer.apply, p, x)[1](delta))(params, x),
          jax.vjp(reference, params, x)[1](delta))
    tangent = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), (params, x))
    close(jax.jvp(layer.apply, (params, x), tangent), jax.jvp(reference, (params, x), tangent))
    for f in (layer.apply, jax.checkpoint(layer.apply)):     # second order, in p and in x
        hvp = [jax.jvp(jax.grad(lambda p, x: jnp.sum(jnp.sin(f(p, x))), (0, 1)), (params, x),
                       tangent)[1] for f in (f, reference)]
        close(*hvp)
    close(jax.vmap(lambda x: layer.apply(params, x[None])[0])(x), y)

    def dots(f):
        return str(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(f(p) * delta)))(params)).count(
            "dot_general")

    g = conv.geo.window("Conv2D", shape[:2], jc.core.pair("", "", k), strides, (1, 1),
                        conv.geo.normalize_padding("", kwargs.get("padding", "VALID")))
    plan = conv.conv_plan(g, shape[2], kwargs.get("groups", 1), features=features)
    assert dots(lambda p: layer.apply(p, x)) == dots(lambda p: conv.conv_output(
        x, p["w"], p.get("b"), g, kwargs.get("groups", 1), plan))
    if jax.default_backend() == "cpu" and features == 16:
        evaluated = str(jax.make_jaxpr(layer.apply)(params, x))
        differentiated = str(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(layer.apply(p, x))))(
            params))
        assert "conv_general_dilated" in evaluated and "dot_general" not in evaluated
        assert "dot_general" in differentiated and "conv_general_dilated" not in differentiated


@pytest.mark.parametrize("tile", [None, 1, 2, 3, 5, 100])
@pytest.mark.parametrize("strides, dilation, padding", [
    (1, 1, "SAME"), ((2, 3), 1, ((2, 1), (0, 3))), ((1, 2), (2, 1), ((0, 4), (3, 0)))])
def test_toeplitz_tiles_give_the_same_sums(tile, strides, dilation, padding):
    """Eqs. 4.6-4.8 over column tiles of any size (the last one zero-filled past ``W_out``,
    ``100`` meaning one tile) equal ``lax.conv_general_dilated`` and its ``jax.vjp``."""
    from jaxcnn import _geometry as geo
    from jaxcnn.conv import (conv_backward_input_toeplitz, conv_backward_kernel_toeplitz,
                             conv_forward, conv_forward_toeplitz)

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 9, 13, 2)))
    w = jnp.asarray(rng.normal(size=(3, 3, 2, 4)))
    g = geo.window("Conv2D", (9, 13), (3, 3), jc.core.pair("", "", strides),
                   jc.core.pair("", "", dilation), geo.normalize_padding("", padding))
    y, vjp = jax.vjp(lambda x, w: conv_forward(x, w, g, 1), x, w)
    delta = jnp.asarray(rng.normal(size=y.shape))
    dx, dw = vjp(delta)
    np.testing.assert_allclose(conv_forward_toeplitz(x, w, g, tile=tile), y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv_backward_kernel_toeplitz(x, delta, g, tile=tile), dw,
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv_backward_input_toeplitz(delta, w, g, tile=tile), dx,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tile", [None, 2, 5])
@pytest.mark.parametrize("strides, dilation, padding", [
    (1, 1, "SAME"), ((2, 3), (1, 2), ((2, 1), (0, 3))), ((1, 2), (2, 1), ((3, 0), (1, 1)))])
def test_toeplitz_rows_entries(tile, strides, dilation, padding):
    """Eq. 4.6's row matrix, entry by entry: ``R[(n, i, tile), (p, v, c)] =
    x_pad[n, i s_h + p d_h, tile * step + v, c]``, zero past the padded input."""
    from jaxcnn import _geometry as geo
    from jaxcnn.conv import toeplitz_rows

    x = np.random.default_rng(1).normal(size=(2, 9, 13, 3))
    g = geo.window("Conv2D", (9, 13), (3, 2), jc.core.pair("", "", strides),
                   jc.core.pair("", "", dilation), geo.normalize_padding("", padding))
    t = geo.column_tiles(g, tile)
    r = np.asarray(jax.jit(lambda x: toeplitz_rows(x, g, t))(jnp.asarray(x)))
    (top, bottom), (left, right) = g.padding
    x_pad = np.pad(x, ((0, 0), (top, bottom), (left, right + t.width), (0, 0)))
    (ho, _), (sh, _), (dh, _) = g.out_hw, g.strides, g.dilation
    expected = np.array([[[x_pad[n, i * sh + p * dh, k * t.step + v, c]
                           for p in range(3) for v in range(t.read) for c in range(3)]]
                         for n in range(2) for i in range(ho) for k in range(t.count)])
    np.testing.assert_array_equal(r, expected.reshape(r.shape))


@pytest.mark.parametrize("tile", [None, 2])
@pytest.mark.parametrize("strides, dilation, padding", [
    (1, 1, "SAME"), ((2, 3), (1, 2), ((2, 1), (0, 3)))])
def test_toeplitz_bias_added_to_the_product_rows(tile, strides, dilation, padding):
    """Eq. 4.6 with its bias: ``b`` repeated once per output column of the tile
    (``per_column``, a gather, exactly ``jnp.tile``) and added to the product's 2-D rows gives
    the product plus the bias, tile by tile, also where the last tile runs past ``W_out``."""
    from jaxcnn import _geometry as geo
    from jaxcnn.conv import conv_forward_toeplitz, per_column

    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, 9, 13, 2)))
    w = jnp.asarray(rng.normal(size=(3, 3, 2, 4)))
    b = jnp.asarray(rng.normal(size=(4,)))
    g = geo.window("Conv2D", (9, 13), (3, 3), jc.core.pair("", "", strides),
                   jc.core.pair("", "", dilation), geo.normalize_padding("", padding))
    t = geo.column_tiles(g, tile)
    np.testing.assert_array_equal(per_column(b, t), jnp.tile(b, t.size))
    with_bias = jax.jit(lambda x, w, b: conv_forward_toeplitz(x, w, g, tile=tile, bias=b))
    np.testing.assert_allclose(with_bias(x, w, b),
                               conv_forward_toeplitz(x, w, g, tile=tile) + b.reshape(1, 1, 1, -1),
                               rtol=1e-12, atol=1e-12)


def test_forward_adds_the_bias_to_the_product_rows():
    """``Conv2D.forward`` adds the bias to a Toeplitz product in the product's 2-D layout (so
    the elementwise layer after it runs along long rows); evaluated ``apply`` inside the
    product, where its row matrix has no more entries per row than the output
    (``bias_in_product``: ``k_h read C <= t F``); differentiated ``apply`` to the
    ``(N, H_out, W_out, F)`` output.  They agree, and the backward equals ``jax.vjp`` of
    ``apply``, in float64 and float32.  With XLA's forward there is no product, and the bias
    is added after it."""
    from jaxcnn import _geometry as geo
    from jaxcnn.conv import bias_in_product, conv_plan

    def decide(hw, k, c, f, padding="VALID", groups=1):
        g = geo.window("Conv2D", hw, (k, k), (1, 1), (1, 1), padding)
        plan = conv_plan(g, c, groups, features=f)
        return bias_in_product(g, c, f, plan._replace(forward=plan.inference))

    layer = jc.Conv2D(20, 9)                       # UFLDL's: 20 outputs x 2 tiles of 10
    rng = np.random.default_rng(5)
    for dtype in (jnp.float64, jnp.float32):
        params, _ = init_as(layer, (28, 28, 1), dtype)
        params["b"] = jnp.asarray(rng.normal(size=20), dtype)          # init's bias is zero
        x = jnp.asarray(rng.normal(size=(3, 28, 28, 1)), dtype)
        assert_backward_matches(layer, params, x)
        y, _ = jax.jit(layer.forward)(params, x)
        np.testing.assert_allclose(y, jax.jit(layer.apply)(params, x),
                                   rtol=TOL[jnp.dtype(dtype)], atol=TOL[jnp.dtype(dtype)])

    def bias_adds(f, *args):
        """The shapes of the adds in ``f``'s jaxpr as large as the output (3 * 20 * 20 * 20)."""
        jaxpr = jax.make_jaxpr(f)(*args).jaxpr
        return [str(e.outvars[0].aval.shape) for e in jaxpr.eqns
                if e.primitive.name == "add" and e.outvars[0].aval.size == 24000]

    toeplitz, xla = jc.Conv2D(20, 9, method="toeplitz"), jc.Conv2D(20, 9, method="lax")
    assert bias_adds(lambda p, x: toeplitz.forward(p, x)[0], params, x) == ["(120, 200)"]
    assert set(bias_adds(jax.grad(lambda p: jnp.sum(toeplitz.apply(p, x))), params)) == {
        "(3, 20, 20, 20)"}
    assert bias_adds(lambda p, x: xla.forward(p, x)[0], params, x) == ["(3, 20, 20, 20)"]
    if jax.default_backend() != "cpu":                    # XLA's forward everywhere
        assert not decide((28, 28), 9, 1, 20)
        return
    assert decide((28, 28), 9, 1, 20)                    # UFLDL: 9 * 18 * 1 = 162 <= 10 * 20
    assert not decide((14, 14), 5, 6, 16)                # LeNet C3: XLA's to evaluate
    assert not decide((28, 28), 5, 1, 6, "SAME")         # LeNet C1: 90 > 84
    assert not decide((32, 32), 3, 3, 64, "SAME")        # XLA's forward
    assert not decide((8, 8), 3, 2, 8, groups=2)         # split per group
    # evaluated, apply's product has the column of ones (K = 9 * 18 + 1) and no add of the
    # bias; forward's and differentiated apply's products do not
    assert bias_adds(layer.apply, params, x) == []
    assert "f32[120,163]" in str(jax.make_jaxpr(layer.apply)(params, x))
    assert "163" not in str(jax.make_jaxpr(layer.forward)(params, x))
    assert "163" not in str(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(layer.apply(p, x))))(params))


def test_toeplitz_tile_must_be_positive():
    from jaxcnn import _geometry as geo
    from jaxcnn.conv import conv_forward_toeplitz

    g = geo.window("Conv2D", (6, 6), (3, 3), (1, 1), (1, 1), "VALID")
    with pytest.raises(ValueError, match=r"Conv2D: tile must be an int >= 1 \(output columns "
                                         r"per tile\), got 0"):
        conv_forward_toeplitz(jnp.ones((1, 6, 6, 1)), jnp.ones((3, 3, 1, 2)), g, tile=0)


@pytest.mark.parametrize("window, strides, padding", [(5, None, "VALID"), (5, 2, "SAME"),
                                                      ((7, 3), 1, "VALID")])
def test_avg_pool_large_windows(window, strides, padding):
    """Windows of more than 16 positions take ``lax.reduce_window`` instead of the sum of
    strided slices; the backward (eq. 5.2) still equals ``jax.vjp``."""
    rng = np.random.default_rng(4)
    run_case(jc.AvgPool2D(window, strides, padding), (2, 11, 9, 3), jnp.float64, rng)


@pytest.mark.parametrize("size, strides, dilation, padding", [
    ((3, 3), (2, 2), (1, 1), "SAME"), ((3, 2), (1, 1), (1, 1), "VALID"),
    ((2, 2), (3, 4), (1, 1), "VALID"), ((3, 2), (2, 3), (2, 1), ((1, 2), (0, 1))),
    ((1, 1), (2, 1), (1, 1), "VALID"), ((4, 3), (3, 2), (1, 2), "SAME")])
def test_scatter_windows_is_the_transpose_of_the_gather(size, strides, dilation, padding):
    """Eq. 3.5 (stride phases of shifted taps) is eq. 3.4: ``scatter_windows``, either way of
    shifting, equals the VJP of ``windows`` for a random cotangent per window position, gaps
    (stride > window) and dilation included; ``spread_windows`` (eq. 5.9) equals the VJP of
    ``sum_windows``."""
    from jaxcnn import _geometry as geo

    g = geo.window("AvgPool2D", (11, 10), size, strides, dilation, padding)
    rng = np.random.default_rng(5)
    x_pad = jnp.zeros((2, *g.padded_hw, 3))
    contrib = jnp.asarray(rng.normal(size=(2, *g.out_hw, g.count, 3)))
    _, vjp = jax.vjp(lambda x: geo.windows(x, g), x_pad)
    for pad_first in (False, True):
        scatter = jax.jit(lambda a: geo.scatter_windows(a, g, pad_first))(contrib)
        np.testing.assert_allclose(scatter, vjp(contrib)[0], rtol=1e-13, atol=1e-13)
    share = jnp.asarray(rng.normal(size=(2, *g.out_hw, 3)))
    spread = jax.jit(lambda a: geo.spread_windows(a, g))(share)
    _, vjp = jax.vjp(lambda x: geo.sum_windows(x, g), x_pad)
    np.testing.assert_allclose(spread, vjp(share)[0], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("method", ["transposed", "scatter", "phases"])
@pytest.mark.parametrize("strides, dilation, padding", [
    (1, 1, "VALID"), (1, 2, "SAME"), ((2, 3), 1, ((2, 1), (0, 3))), (3, (1, 2), "VALID"),
    ((2, 2), (2, 3), "SAME"), ((4, 3), 1, ((3, 0), (1, 1)))])
def test_conv_input_residual_every_formulation(method, strides, dilation, padding):
    """Eq. 4.5 as a transposed convolution, as matmul + window scatter, and by stride phases
    (eq. 4.9; dilation sharing a factor with the stride, and strides past the kernel, leave
    phases with no tap): each equals jax.vjp, jitted."""
    from jaxcnn import _geometry as geo
    from jaxcnn.conv import conv_backward_input, conv_forward

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 11, 10, 3)))
    w = jnp.asarray(rng.normal(size=(3, 2, 3, 4)))
    g = geo.window("Conv2D", (11, 10), (3, 2), jc.core.pair("", "", strides),
                   jc.core.pair("", "", dilation), geo.normalize_padding("", padding))
    y, vjp = jax.vjp(lambda x: conv_forward(x, w, g, 1), x)
    delta = jnp.asarray(rng.normal(size=y.shape))
    got = jax.jit(lambda d, w: conv_backward_input(d, w, g, 1, method=method))(delta, w)
    np.testing.assert_allclose(got, vjp(delta)[0], rtol=1e-12, atol=1e-12)


def test_conv_input_residual_formulation_errors():
    """The matrix-product forms are ungrouped, and a misspelt form is named."""
    from jaxcnn import _geometry as geo
    from jaxcnn.conv import conv_backward_input

    g = geo.window("Conv2D", (8, 8), (3, 3), (2, 2), (1, 1), "SAME")
    delta, w = jnp.zeros((1, 4, 4, 4)), jnp.zeros((3, 3, 1, 4))
    for method, form in (("scatter", "scatter"), ("phases", "phase")):
        with pytest.raises(ValueError, match=f"Conv2D: the {form} form of eq. 4.5 needs groups=1, "
                                             f"got 2"):
            conv_backward_input(delta, w, g, 2, method=method)
    with pytest.raises(ValueError, match="unknown method 'fft'; expected 'transposed', 'scatter' "
                                         "or 'phases'"):
        conv_backward_input(delta, w, g, 1, method="fft")

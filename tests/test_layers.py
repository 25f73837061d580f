"""Every layer's hand-written backward equals ``jax.vjp`` of its forward.

Configurations are drawn by hypothesis over a grid that includes the degenerate cases: 1x1
kernels, windows that don't divide the input, stride > window, pad 0, non-square everything,
N = 1, float32 and float64.  Each case also checks ``init``'s output shape against ``forward``.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import jaxcnn as jc
from jaxcnn import _geometry as geo
from harness import TOL, assert_backward_matches, init_as, rel_err

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
    method = draw(st.sampled_from(["auto", "reference", "lax", "toeplitz"]))
    layer = jc.Conv2D(feats, kernel, strides, padding, dilation, groups,
                      use_bias=draw(st.booleans()), method=method)
    return layer, (draw(st.integers(1, 3)), *hw, c_in), draw(DTYPES)


def run_case(layer, shape, dtype, rng, x=None, **kw):
    params, out_shape = init_as(layer, shape[1:], dtype)
    if x is None:
        x = rng.normal(size=shape)
    x = jnp.asarray(x, dtype)
    y, _ = jax.eval_shape(lambda p, x: layer.forward(p, x, **kw), params, x)
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


def _remainder_extent(draw, k_eff, s, padding):
    """An input size the window fits that most often leaves a remainder of ``s - 1`` rows past
    the last window: rows that only a ceil-mode window reads (eq. 5.11)."""
    fit = max(1, k_eff - sum(padding))
    return fit + draw(st.integers(0, 2)) * s + draw(st.sampled_from(range(s - 1, -1, -1)))


@st.composite
def ceil_and_dilated_pool_cases(draw, dilated):
    """Pooling in ceil mode or not, dilated or not: each requested pad at most half the window
    (PyTorch's rule in ceil mode), every window holding an input position."""
    window = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    strides = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if dilated else (1, 1)
    ceil_mode = draw(st.sampled_from([True, False]))
    padding = draw(st.sampled_from(["explicit", "VALID", "SAME"]))
    if padding == "explicit":
        padding = tuple((draw(st.integers(0, k // 2)), draw(st.integers(0, k // 2)))
                        for k in window)
    k_eff = tuple(d * (k - 1) + 1 for k, d in zip(window, dilation))
    pads = padding if not isinstance(padding, str) else ((0, 0), (0, 0))
    hw = tuple(_remainder_extent(draw, k, s, p) for k, s, p in zip(k_eff, strides or window, pads))
    g = geo.window("", hw, window, strides or window, dilation, padding, ceil_mode)
    assume(max(max(p) - k for p, k in zip(g.requested_padding, window)) < 0)   # "SAME"
    assume(geo.window_counts(g).min() > 0)
    shape = (draw(st.integers(1, 3)), *hw, draw(st.integers(1, 3)))
    return window, strides, padding, dilation, ceil_mode, shape, draw(DTYPES)


@given(ceil_and_dilated_pool_cases(dilated=False), st.booleans())
def test_avg_pool_ceil_mode_backward(case, count_include_pad):
    """Eqs. 5.11 and 5.12: the hand-written backward is ``jax.vjp`` of the forward, with the
    overhang read as padding and never counted in the divisor."""
    window, strides, padding, _, ceil_mode, shape, dtype = case
    layer = jc.AvgPool2D(window, strides, padding, count_include_pad, ceil_mode)
    run_case(layer, shape, dtype, np.random.default_rng(2))


@given(ceil_and_dilated_pool_cases(dilated=True), st.booleans())
def test_max_pool_dilated_and_ceil_mode_backward(case, ties):
    """Eqs. 5.11 and 5.13: the hand-written backward is ``jax.vjp`` of ``apply`` (for a dilated
    window, the select of the chosen tap; ``tests/test_reference.py`` holds the choice to
    ``jnp.max`` and ``jnp.argmax`` over the stacked taps), tied inputs included."""
    window, strides, padding, dilation, ceil_mode, shape, dtype = case
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, size=shape) if ties else rng.normal(size=shape)
    layer = jc.MaxPool2D(window, strides, padding, dilation, ceil_mode)
    run_case(layer, shape, dtype, rng, x=x)


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


@pytest.mark.parametrize("window, index", [
    ([1.0, np.nan, 0.0, 2.0], 3),      # after the NaN: 0, 2 -> the 2
    ([np.nan, 1.0, 2.0, 2.0], 2),      # after the NaN: 1, 2, 2 -> the first 2
    ([2.0, 1.0, np.nan, 0.0], 3),      # after the NaN only 0, smaller than the 2 before it
    ([0.0, 0.0, 0.0, np.nan], 3),      # a NaN last keeps the choice
    ([np.nan, np.nan, -1.0, np.nan], 3),
    ([np.nan, 5.0, np.nan, -np.inf], 3),
])
def test_max_pool_routes_a_nan_window_as_jax_grad(window, index):
    """Select and scatter keeps its choice while ``current >= candidate``, scanning the window
    in row-major order: a NaN (false both ways) takes the choice and gives it to the next
    entry.  The output is NaN, as ``apply``'s ``lax.reduce_window``."""
    pool = jc.MaxPool2D(2)
    x = jnp.asarray(window).reshape(1, 2, 2, 1)
    y, cache = pool.forward((), x)
    assert np.isnan(float(y[0, 0, 0, 0])) and np.isnan(float(pool.apply((), x)[0, 0, 0, 0]))
    assert int(cache.index[0, 0, 0, 0]) == index
    _, dx = pool.backward((), cache, jnp.full((1, 1, 1, 1), 5.0))
    _, vjp = jax.vjp(lambda x: pool.apply((), x), x)
    np.testing.assert_array_equal(dx.ravel(), 5.0 * (np.arange(4) == index))
    np.testing.assert_array_equal(vjp(jnp.full((1, 1, 1, 1), 5.0))[0], dx)


def test_max_pool_a_nan_before_padding_routes_to_the_padding():
    """Padding takes part in the scan as ``-inf``: a NaN followed by padded positions hands the
    choice to the padding, and its delta is dropped with the crop -- as ``jax.grad`` does."""
    pool = jc.MaxPool2D((1, 2), strides=1, padding=((0, 0), (0, 1)))
    x = jnp.asarray([3.0, np.nan]).reshape(1, 1, 2, 1)
    y, cache = pool.forward((), x)
    delta = jnp.asarray([2.0, 7.0]).reshape(1, 1, 2, 1)
    _, dx = pool.backward((), cache, delta)
    _, vjp = jax.vjp(lambda x: pool.apply((), x), x)
    # window 0, (3, NaN): the NaN is last and keeps the choice; window 1, (NaN, pad): the pad
    np.testing.assert_array_equal(dx.ravel(), [0.0, 2.0])
    np.testing.assert_array_equal(vjp(delta)[0], dx)


@pytest.mark.parametrize("window, strides, padding", [
    (2, None, "VALID"), (3, 1, "SAME"), ((3, 2), (2, 1), ((2, 0), (0, 1))),
    ((2, 3), (1, 2), "SAME")])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_max_pool_with_nans_ties_and_infinities_is_jax_grad(window, strides, padding, dtype):
    """NaNs at many positions, tied values, infinities, padding and overlapping windows: the
    forward equals ``apply`` (NaN where the window holds one) and the backward ``jax.vjp``."""
    pool = jc.MaxPool2D(window, strides, padding)
    rng = np.random.default_rng(7)
    choices = np.array([np.nan, 0.0, 1.0, 2.0, -np.inf, np.inf])
    for _ in range(5):
        x = jnp.asarray(rng.choice(choices, size=(2, 6, 7, 2), p=[.2, .25, .2, .2, .1, .05]), dtype)
        y, cache = jax.jit(lambda x: pool.forward((), x))(x)
        want, vjp = jax.vjp(lambda x: pool.apply((), x), x)
        np.testing.assert_array_equal(y, want)                   # NaNs in the same places
        delta = jnp.asarray(rng.normal(size=y.shape), dtype)
        _, dx = jax.jit(pool.backward)((), cache, delta)
        assert rel_err(dx, vjp(delta)[0]) <= TOL[jnp.dtype(dtype)]     # overlaps sum in
        routed = np.asarray(dx) != 0                                   # another order
        np.testing.assert_array_equal(routed, np.asarray(vjp(delta)[0]) != 0)


def test_max_pool_ceil_mode_reads_the_last_partial_window():
    """Eq. 5.11: ``(1, 2)`` windows over 3 columns -- one window, or in ceil mode two, the
    second reading column 2 and one overhang column of ``-inf``; its delta goes to column 2."""
    x = jnp.asarray([1.0, 2.0, 5.0]).reshape(1, 1, 3, 1)
    assert jc.MaxPool2D((1, 2)).apply((), x).ravel().tolist() == [2.0]
    pool = jc.MaxPool2D((1, 2), ceil_mode=True)
    y, cache = pool.forward((), x)
    np.testing.assert_array_equal(y.ravel(), [2.0, 5.0])
    delta = jnp.asarray([3.0, 7.0]).reshape(1, 1, 2, 1)
    _, dx = pool.backward((), cache, delta)
    np.testing.assert_array_equal(dx.ravel(), [0.0, 3.0, 7.0])
    np.testing.assert_array_equal(jax.vjp(lambda x: pool.apply((), x), x)[1](delta)[0], dx)


@pytest.mark.parametrize("count_include_pad, expected", [
    (True, [[4 / 9, 2 / 3, 2 / 3, 1 / 3], [2 / 3, 1, 1, 1 / 2], [2 / 3, 1, 1, 1 / 2],
            [1 / 3, 1 / 2, 1 / 2, 1 / 4]]),
    (False, np.ones((4, 4)))])
def test_avg_pool_ceil_mode_divisor_is_pytorchs(count_include_pad, expected):
    """Eq. 5.12 on a 6x6 input of ones, window 3, stride 2, one pad a side: the last windows
    read real row 5, the bottom pad and the overhang, and divide by the 2 of them that are not
    overhang -- the numbers ``torch.nn.functional.avg_pool2d(..., ceil_mode=True)`` gives."""
    pool = jc.AvgPool2D(3, 2, ((1, 1), (1, 1)), count_include_pad, ceil_mode=True)
    y = pool.apply((), jnp.ones((1, 6, 6, 1)))
    np.testing.assert_allclose(y[0, :, :, 0], expected, rtol=1e-15)


def test_dilated_max_pool_ties_go_to_the_first_tap():
    """Eq. 5.13: taps 2 apart over ``[1, 3, 3, 3, 1]``; the middle window's tie (columns 1 and
    3) goes to its first tap, as PyTorch routes it (``jnp.max`` would split it)."""
    pool = jc.MaxPool2D((1, 2), strides=1, dilation=(1, 2))
    x = jnp.asarray([1.0, 3.0, 3.0, 3.0, 1.0]).reshape(1, 1, 5, 1)
    y, cache = jax.jit(lambda x: pool.forward((), x))(x)
    np.testing.assert_array_equal(y.ravel(), [3.0, 3.0, 3.0])
    np.testing.assert_array_equal(cache.index.ravel(), [1, 0, 0])
    delta = jnp.asarray([2.0, 5.0, 7.0]).reshape(1, 1, 3, 1)
    _, dx = jax.jit(pool.backward)((), cache, delta)
    np.testing.assert_array_equal(dx.ravel(), [0.0, 5.0, 9.0, 0.0, 0.0])
    np.testing.assert_array_equal(jax.vjp(lambda x: pool.apply((), x), x)[1](delta)[0], dx)


def test_dilated_max_pool_routes_a_nan_window_as_the_undilated_rule():
    """The NaN rule of eq. 5.4 over a dilated window's taps: taps ``(NaN, 1)`` output NaN and
    route to the tap after the NaN; taps ``(0, NaN)`` route to the NaN, the last tap."""
    pool = jc.MaxPool2D((1, 2), strides=1, dilation=(1, 2))
    x = jnp.asarray([np.nan, 0.0, 1.0, np.nan]).reshape(1, 1, 4, 1)
    y, cache = pool.forward((), x)
    assert np.isnan(np.asarray(y)).all() and np.isnan(np.asarray(pool.apply((), x))).all()
    delta = jnp.asarray([2.0, 5.0]).reshape(1, 1, 2, 1)
    _, dx = pool.backward((), cache, delta)
    np.testing.assert_array_equal(dx.ravel(), [0.0, 0.0, 2.0, 5.0])
    np.testing.assert_array_equal(jax.vjp(lambda x: pool.apply((), x), x)[1](delta)[0], dx)


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


def test_stochastic_pool_refuses_a_concrete_negative_input():
    pool = jc.StochasticPool2D(2)
    x = jnp.asarray([[0.5, -0.25], [1.0, 2.0]]).reshape(1, 2, 2, 1)
    match = (r"^StochasticPool2D: inputs must be >= 0 \(each window is a distribution over its "
             r"entries, eq. 5.5\), got a most negative entry of -0.25 -- put a ReLU")
    for run in (lambda: pool.forward((), x, key=jax.random.key(0)),
                lambda: pool.apply((), x, train=False),
                lambda: pool.forward((), np.asarray(x), train=False)):
        with pytest.raises(ValueError, match=match):
            run()
    with pytest.raises(ValueError, match=r"^serial\[1\] StochasticPool2D: inputs must be >= 0"):
        jc.serial(jc.Tanh(), pool).apply(((), ()), x, key=jax.random.key(0))


def test_stochastic_pool_under_jit_never_draws_a_negative_entry():
    """Traced, the domain cannot be checked (documented): a negative entry is never drawn, and
    a window with no positive entry outputs its first entry."""
    pool = jc.StochasticPool2D((1, 4))
    x = jnp.asarray([[-1.0, 2.0, -3.0, 1.0], [-2.0, 0.0, -1.0, -4.0]]).reshape(2, 1, 4, 1)
    draw = jax.jit(lambda x, key: pool.forward((), x, key=key))
    drawn = [np.asarray(draw(x, jax.random.key(s))[1].index).ravel() for s in range(200)]
    assert {int(d[0]) for d in drawn} == {1, 3} and {int(d[1]) for d in drawn} == {0}
    np.testing.assert_array_equal(draw(x, jax.random.key(0))[0][1].ravel(), [-2.0])


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


def test_stochastic_pool_one_position_windows_route_to_it():
    """A 1x1 window has one position to draw: the output is the input and the residual is
    delta (the count of eq. 5.5 over no earlier positions is an array of zeros, not 0)."""
    pool = jc.StochasticPool2D(1)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 3, 3, 2)))
    y, cache = jax.jit(lambda x: pool.forward((), x, key=jax.random.key(0)))(x)
    np.testing.assert_array_equal(y, x)
    delta = jnp.asarray(np.random.default_rng(1).normal(size=y.shape))
    np.testing.assert_array_equal(jax.jit(pool.backward)((), cache, delta)[1], delta)


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

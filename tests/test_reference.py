"""The reference derivation (``jaxcnn.reference``) is right: each textbook pass equals
``jax.vjp`` of its textbook forward and of XLA's own operation, and the window scatter (3.4)
is the transpose of the window gather (3.3).  The lowerings are then held to it
(``test_lowerings.py``)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

import jaxcnn as jc
from harness import TOL, rel_err
from jaxcnn import _geometry as geo
from jaxcnn.reference import conv as ref
from jaxcnn.reference import pool as ref_pool
from test_layers import _extent, _padding, _remainder_extent, lax_conv


@st.composite
def geometries(draw, max_kernel=4, dilated=True):
    """A window placement over an input it fits: kernel, strides, dilation, padding, size."""
    kernel = (draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel)))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if dilated else (1, 1)
    k_eff = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    padding = _padding(draw, k_eff)
    pads = padding if not isinstance(padding, str) else ((0, 0), (0, 0))
    hw = tuple(_extent(draw, k, p) for k, p in zip(k_eff, pads))
    return geo.window("Conv2D", hw, kernel, strides, dilation, geo.normalize_padding("", padding))


def assert_close(got, want, dtype):
    err = rel_err(got, want)
    assert err <= TOL[jnp.dtype(dtype)], f"relative error {err} > {TOL[jnp.dtype(dtype)]}"


@given(geometries(), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3),
       st.integers(1, 3), st.sampled_from([jnp.float32, jnp.float64]))
def test_reference_conv_passes_are_the_vjp_of_its_forward(g, groups, c_g, f_g, n, dtype):
    """Eq. 4.2 equals ``lax.conv_general_dilated``; eqs. 4.3, 4.4 and both lines of 4.5 equal
    ``jax.vjp`` of eq. 4.2 for a random cotangent, and of XLA's convolution, grouped or not."""
    rng = np.random.default_rng(n * 7 + groups)
    x = jnp.asarray(rng.normal(size=(n, *g.in_hw, groups * c_g)), dtype)
    w = jnp.asarray(rng.normal(size=(*g.size, c_g, groups * f_g)), dtype)
    b = jnp.asarray(rng.normal(size=(groups * f_g,)), dtype)
    forward = lambda x, w, b: ref.forward(x, w, b, g, groups)  # noqa: E731
    delta = jnp.asarray(rng.normal(size=jax.eval_shape(forward, x, w, b).shape), dtype)

    @jax.jit        # one program per drawn geometry: op by op, each shape compiles every op
    def passes(x, w, b, delta):
        y, vjp = jax.vjp(forward, x, w, b)
        want_y, lax_vjp = jax.vjp(lambda p, x: lax_conv(p, x, g.strides, g.padding, g.dilation,
                                                        groups), {"w": w, "b": b}, x)
        hand = (ref.backward_bias(delta), ref.backward_kernel(x, delta, g, groups),
                ref.backward_input(delta, w, g, groups),
                ref.backward_input_full(delta, w, g, groups))
        return y, want_y, vjp(delta), lax_vjp(delta), hand

    y, want_y, (dx, dw, db), (lax_grads, lax_dx), hand = passes(x, w, b, delta)
    assert_close(y, want_y, dtype)
    for got, want in zip(hand, (db, dw, dx, dx)):
        assert_close(got, want, dtype)
    for got, want in zip(hand, (lax_grads["b"], lax_grads["w"], lax_dx, lax_dx)):
        assert_close(got, want, dtype)


def test_reference_forward_is_the_sources_example():
    """The source's 3x3 kernel over its 5x5 binary image gives its feature map (eq. 4.2)."""
    x = jnp.asarray([[1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 0, 1, 1, 0],
                     [0, 1, 1, 0, 0]], jnp.float32).reshape(1, 5, 5, 1)
    w = jnp.asarray([[1, 0, 1], [0, 1, 0], [1, 0, 1]], jnp.float32).reshape(3, 3, 1, 1)
    g = geo.window("Conv2D", (5, 5), (3, 3), (1, 1), (1, 1), "VALID")
    np.testing.assert_array_equal(ref.forward(x, w, None, g)[0, :, :, 0],
                                  [[4, 3, 4], [2, 4, 3], [2, 3, 4]])


def test_reference_input_residual_of_a_one_dimensional_example():
    """Eq. 4.5 by hand on one axis: ``y[i] = x[i] w[0] + x[i+1] w[1]`` (k = 2, s = 1), so
    ``dx = [d0 w0, d0 w1 + d1 w0, d1 w1]`` -- the full convolution of delta with ``w``."""
    w = jnp.asarray([2.0, 5.0]).reshape(1, 2, 1, 1)
    delta = jnp.asarray([3.0, 7.0]).reshape(1, 1, 2, 1)
    g = geo.window("Conv2D", (1, 3), (1, 2), (1, 1), (1, 1), "VALID")
    for backward in (ref.backward_input, ref.backward_input_full):
        np.testing.assert_array_equal(backward(delta, w, g).ravel(), [6.0, 29.0, 35.0])


@pytest.mark.parametrize("size, strides, dilation, padding", [
    ((3, 3), (2, 2), (1, 1), "SAME"), ((3, 2), (1, 1), (1, 1), "VALID"),
    ((2, 2), (3, 4), (1, 1), "VALID"), ((3, 2), (2, 3), (2, 1), ((1, 2), (0, 1))),
    ((1, 1), (2, 1), (1, 1), "VALID"), ((4, 3), (3, 2), (1, 2), "SAME")])
def test_scatter_windows_is_the_transpose_of_the_gather(size, strides, dilation, padding):
    """Eq. 3.5 (stride phases of shifted taps) is eq. 3.4: ``scatter_windows``, either way of
    shifting, equals the VJP of ``windows`` for a random cotangent per window position, gaps
    (stride > window) and dilation included."""
    g = geo.window("AvgPool2D", (11, 10), size, strides, dilation, padding)
    rng = np.random.default_rng(5)
    x_pad = jnp.zeros((2, *g.padded_hw, 3))
    contrib = jnp.asarray(rng.normal(size=(2, *g.out_hw, g.count, 3)))
    _, vjp = jax.vjp(lambda x: geo.windows(x, g), x_pad)
    for pad_first in (False, True):
        scatter = jax.jit(lambda a: geo.scatter_windows(a, g, pad_first))(contrib)
        np.testing.assert_allclose(scatter, vjp(contrib)[0], rtol=1e-13, atol=1e-13)


@given(geometries(max_kernel=3, dilated=False), st.booleans(), st.booleans(),
       st.sampled_from([jnp.float32, jnp.float64]))
def test_reference_pool_passes_are_the_vjp_of_their_forwards(g, count_include_pad, ties, dtype):
    """Eq. 5.2 is ``jax.vjp`` of eq. 5.1 (either divisor); eq. 5.4 is ``jax.vjp`` of
    ``lax.reduce_window`` max, tied windows included (first maximum); eq. 5.8 is ``jax.vjp``
    of eq. 5.7; eq. 5.6 routes as ``jax.vjp`` of taking the drawn entries."""
    if any(p >= k for (lo, hi), k in zip(g.padding, g.size) for p in (lo, hi)):
        g = g._replace(padding=tuple((min(lo, k - 1), min(hi, k - 1))
                                     for (lo, hi), k in zip(g.padding, g.size)))
        g = geo.window("MaxPool2D", g.in_hw, g.size, g.strides, g.dilation, g.padding)
    rng = np.random.default_rng(int(ties) + 2 * int(count_include_pad))
    shape = (2, *g.in_hw, 3)
    x = jnp.asarray(rng.integers(0, 3, size=shape) if ties else rng.normal(size=shape), dtype)
    delta = jnp.asarray(rng.normal(size=(2, *g.out_hw, 3)), dtype)
    # stochastic pooling pads nothing
    stochastic = not any(k > n for k, n in zip(g.size, g.in_hw))
    valid = geo.window("StochasticPool2D", g.in_hw, g.size, g.strides, (1, 1), "VALID")
    delta_s = jnp.asarray(rng.normal(size=(2, *valid.out_hw, 3)), dtype)

    @jax.jit        # one program per drawn geometry: op by op, each shape compiles every op
    def pairs(x, delta, delta_s):
        """``(hand-written, jax.vjp)`` pairs, in the order of the docstring's equations."""
        size = ref_pool.window_size(g, count_include_pad, dtype)
        y, vjp = jax.vjp(lambda x: ref_pool.avg_forward(x, g, size), x)
        assert y.shape == delta.shape
        out = [(ref_pool.avg_backward(delta, g, size), vjp(delta)[0])]
        y, index = ref_pool.max_forward(x, g)
        want, vjp = jax.vjp(lambda x: jax.lax.reduce_window(
            x, np.array(-np.inf, x.dtype), jax.lax.max, (1, *g.size, 1), (1, *g.strides, 1),
            ((0, 0), *g.padding, (0, 0))), x)
        out += [(y, want), (ref_pool.route(index, delta, g), vjp(delta)[0])]
        if stochastic:
            a = jnp.where(x > 0.5, jnp.abs(x), 0)           # non-negative, all-zero windows
            y, vjp = jax.vjp(lambda a: ref_pool.stochastic_expectation(a, valid), a)
            assert y.shape == delta_s.shape
            out.append((ref_pool.stochastic_expectation_backward(a, delta_s, valid),
                        vjp(delta_s)[0]))
            _, index = ref_pool.stochastic_sample(a, valid, jax.random.key(0))
            _, vjp = jax.vjp(lambda a: ref_pool.take(geo.windows(a, valid), index), a)
            out.append((ref_pool.route(index, delta_s, valid), vjp(delta_s)[0]))
        return out

    for got, want in pairs(x, delta, delta_s):
        assert_close(got, want, dtype)


def test_reference_method_runs_the_textbook_in_a_layer():
    """``Conv2D(method="reference")`` computes every pass with the reference itself."""
    layer = jc.Conv2D(4, 3, strides=2, padding="SAME", groups=2, method="reference")
    params, _ = layer.init(jax.random.key(0), (7, 7, 2))
    x = jnp.ones((1, 7, 7, 2), jnp.float32)
    for jaxpr in (jax.make_jaxpr(layer.forward)(params, x),
                  jax.make_jaxpr(lambda p, x: layer.backward(p, layer.forward(p, x)[1],
                                                             jnp.ones((1, 4, 4, 4), jnp.float32)))(params, x)):
        assert "conv_general_dilated" not in str(jaxpr) and "dot_general" in str(jaxpr)


# --- ceil mode and dilated max pooling (eqs. 5.11-5.13) --------------------------------------

def pytorch_out(n, k, s, lo, hi, d, ceil_mode):
    """PyTorch's ``pooling_output_shape_pad_lr``, written out: the output size of one axis."""
    out = (n + lo + hi - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= n + lo:
        out -= 1
    return out


@st.composite
def pool_windows(draw, dilated=True):
    """A pooling window over an input it fits, in ceil mode or not, each requested pad smaller
    than the window (at most half of it in ceil mode), every window holding an input position."""
    size = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if dilated else (1, 1)
    ceil_mode = draw(st.sampled_from([True, False]))
    padding = draw(st.sampled_from(["explicit", "VALID", "SAME"]))
    if padding == "explicit":
        padding = tuple((draw(st.integers(0, k // 2 if ceil_mode else k - 1)),
                         draw(st.integers(0, k // 2 if ceil_mode else k - 1))) for k in size)
    pads = padding if not isinstance(padding, str) else ((0, 0), (0, 0))
    k_eff = tuple(d * (k - 1) + 1 for k, d in zip(size, dilation))
    hw = tuple(_remainder_extent(draw, k, s, p) for k, s, p in zip(k_eff, strides, pads))
    g = geo.window("MaxPool2D", hw, size, strides, dilation, padding, ceil_mode)
    assume(geo.window_counts(g).min() > 0)
    return g


@given(st.integers(1, 12), st.integers(1, 4), st.integers(1, 4), st.integers(1, 3),
       st.integers(0, 2), st.integers(0, 2), st.booleans())
@example(4, 1, 2, 1, 0, 0, True)          # a third window would start at row 4, past the input
@example(5, 2, 2, 1, 1, 1, True)          # a fourth at padded row 6, in the bottom padding
def test_ceil_mode_output_size_is_pytorchs(n, k, s, d, lo, hi, ceil_mode):
    """Eq. 5.11 is PyTorch's rule: the output size rounded up, less the last window if it would
    start past the input and its top padding; the overhang pads the bottom further, by what the
    last window reads past the requested padding.  With ``"SAME"`` ceil mode changes nothing."""
    k_eff = d * (k - 1) + 1
    assume(lo <= k // 2 and hi <= k // 2 and n + lo + hi >= k_eff)
    g = geo.window("MaxPool2D", (n, 5), (k, 1), (s, 1), (d, 1), ((lo, hi), (0, 0)), ceil_mode)
    out = pytorch_out(n, k, s, lo, hi, d, ceil_mode)
    assert g.out_hw == (out, 5)
    overhang = max((out - 1) * s + k_eff - (n + lo + hi), 0)
    assert g.overhang == (overhang, 0) and g.padding == ((lo, hi + overhang), (0, 0))
    assert g.requested_padding == ((lo, hi), (0, 0))
    assert (out - 1) * s < n + lo                       # the last window starts in time
    assert overhang <= (k_eff - 1 if ceil_mode else 0)
    if n >= k_eff:
        same = geo.window("MaxPool2D", (n, 5), (k, 1), (s, 1), (d, 1), "SAME")
        assert geo.window("MaxPool2D", (n, 5), (k, 1), (s, 1), (d, 1), "SAME", True) == same


@given(pool_windows())
def test_ceil_mode_divisor_counts_the_padding_but_not_the_overhang(g):
    """Eq. 5.12, counted tap by tap: with ``count_include_pad`` the window's positions inside
    the input and its requested padding, else its real positions; never the overhang."""
    (lo_h, hi_h), (lo_w, hi_w) = g.requested_padding
    h, w = g.in_hw
    for include, inside in ((True, lambda u, v: u < lo_h + h + hi_h and v < lo_w + w + hi_w),
                            (False, lambda u, v: lo_h <= u < lo_h + h and lo_w <= v < lo_w + w)):
        want = [[sum(inside(i * g.strides[0] + p * g.dilation[0],
                            j * g.strides[1] + q * g.dilation[1])
                     for p in range(g.size[0]) for q in range(g.size[1]))
                 for j in range(g.out_hw[1])] for i in range(g.out_hw[0])]
        got = np.broadcast_to(ref_pool.window_size(g, include, jnp.float64), (1, *g.out_hw, 1))
        np.testing.assert_array_equal(got[0, :, :, 0], np.asarray(want, np.float64))


def tap_oracle(g, ties):
    """Eq. 5.3 over the stacked taps in a form autodiff differentiates: ``jnp.max`` (whose
    gradient splits tied maxima evenly), or with ``ties`` the tap at ``jnp.argmax`` -- the
    first maximum, held constant -- whose gradient is all on it."""
    def forward(x):
        taps = geo.windows(geo.pad(x, g, -jnp.inf), g)
        if not ties:
            return jnp.max(taps, axis=3)
        return ref_pool.take(taps, jnp.argmax(jax.lax.stop_gradient(taps), axis=3))
    return forward


OVERHANGING = [geo.window("MaxPool2D", (6, 7), (3, 2), (2, 3), (2, 1), ((1, 1), (1, 0)), True),
               geo.window("MaxPool2D", (6, 9), (2, 3), (2, 2), (1, 2), ((1, 0), (0, 1)), True)]
"""Dilated windows whose last row or column of windows reads an overhang, drawn every run."""


@given(pool_windows(), st.booleans(), st.booleans(), st.sampled_from([jnp.float32, jnp.float64]))
@example(OVERHANGING[0], True, True, jnp.float64)
@example(OVERHANGING[1], False, False, jnp.float32)
def test_reference_ceil_mode_and_dilated_pool_passes_are_the_vjp_of_their_forwards(
        g, count_include_pad, ties, dtype):
    """In ceil mode, eq. 5.2 with eq. 5.12's divisor is ``jax.vjp`` of eq. 5.1.  Over dilated
    taps, eq. 5.3 is the max of the stacked taps and eq. 5.13's route ``jax.vjp`` of it -- of
    ``jnp.max`` on inputs without ties, of the tap at ``jnp.argmax`` on tied ones."""
    rng = np.random.default_rng(int(ties) + 2 * int(count_include_pad))
    shape = (2, *g.in_hw, 3)
    x = jnp.asarray(rng.integers(0, 3, size=shape) if ties else rng.normal(size=shape), dtype)
    delta = jnp.asarray(rng.normal(size=(2, *g.out_hw, 3)), dtype)

    @jax.jit        # one program per drawn geometry
    def pairs(x, delta):
        size = ref_pool.window_size(g, count_include_pad, dtype)
        _, vjp = jax.vjp(lambda x: ref_pool.avg_forward(x, g, size), x)
        out = [(ref_pool.avg_backward(delta, g, size), vjp(delta)[0])]
        y, index = ref_pool.max_forward(x, g)
        want, vjp = jax.vjp(tap_oracle(g, ties), x)
        return out + [(y, want), (ref_pool.route(index, delta, g), vjp(delta)[0])]

    for got, want in pairs(x, delta):
        assert_close(got, want, dtype)


def test_autodiff_has_no_route_for_tied_dilated_taps():
    """Why eq. 5.13 has no ``jax.grad`` to agree with (jax 0.10): ``jax.vjp`` of a dilated
    ``lax.reduce_window`` max is not implemented, and ``jnp.max`` over the stacked taps splits
    a tie, where eq. 5.13 (and PyTorch) route it to the first tap."""
    g = geo.window("MaxPool2D", (1, 5), (1, 2), (1, 1), (1, 2), "VALID")
    x = jnp.asarray([1.0, 3.0, 3.0, 3.0, 1.0]).reshape(1, 1, 5, 1)
    delta = jnp.asarray([2.0, 5.0, 7.0]).reshape(1, 1, 3, 1)
    dilated = lambda x: jax.lax.reduce_window(  # noqa: E731
        x, np.array(-np.inf, x.dtype), jax.lax.max, (1, 1, 2, 1), (1, 1, 1, 1),
        ((0, 0),) * 4, window_dilation=(1, 1, 2, 1))
    with pytest.raises(NotImplementedError, match="window dilation"):
        jax.vjp(dilated, x)[1](delta)
    _, index = ref_pool.max_forward(x, g)
    np.testing.assert_array_equal(ref_pool.route(index, delta, g).ravel(), [0, 5, 9, 0, 0])
    split = jax.vjp(tap_oracle(g, ties=False), x)[1](delta)[0]
    np.testing.assert_array_equal(split.ravel(), [0, 2.5, 9, 2.5, 0])
    first = jax.vjp(tap_oracle(g, ties=True), x)[1](delta)[0]
    np.testing.assert_array_equal(first.ravel(), [0, 5, 9, 0, 0])

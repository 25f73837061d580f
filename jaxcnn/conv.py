"""Convolution: ``Conv2D``, its forward (eq. 4.2) and its hand-written backward (eqs. 4.3-4.5).

Shapes: input ``x (N, H, W, C_in)``, kernel ``w (kh, kw, C_in // G, F)``, bias ``b (F,)``,
output and ``delta (N, H_out, W_out, F)``, with ``G`` groups and ``H_out`` from eq. 3.1.
Like every CNN library, the forward is a cross-correlation (no kernel flip, eq. 4.2); the flip
of a true convolution (eq. 4.1) reappears in the input residual (eq. 4.5).

Each pass has two formulations of the same sum, chosen per layer shape (``conv_plan``):
XLA's convolutions (``lax.conv_general_dilated``, eqs. 4.2, 4.4, 4.5), and one matrix product
with a banded *Toeplitz* matrix built from the kernel along the width (eqs. 4.6-4.8), which runs
several times faster on CPU for the few-channel convolutions of small nets.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxcnn import _geometry as geo
from jaxcnn.core import (Array, Layer, check_delta, check_input, check_input_shape,
                         check_param, config, pair, positive_int)

_DIMS = ("NHWC", "HWIO", "NHWC")
METHODS = ("auto", "lax", "toeplitz")
# "auto" on CPU takes a pass's Toeplitz form at or below these spreads (conv_plan)
SPREAD_LIMIT = 20                 # the forward; every pass of a grouped convolution
KERNEL_SPREAD_LIMIT = 100         # the kernel gradient, ungrouped, stride 1 (strided: never)
INPUT_SPREAD_LIMIT = 50           # the input residual, ungrouped, stride 1
STRIDED_INPUT_SPREAD_LIMIT = 30   # the input residual, ungrouped, strided (above: phases)
GROUP_SPLIT_LIMIT = 8             # a grouped convolution with at most this many groups is split
# apply, evaluated: the Toeplitz forward where C_g <= 3, except one channel with more than 16
# features per group and a kernel under 7 columns wide (conv_plan)
INFERENCE_CHANNEL_LIMIT = 3
INFERENCE_FEATURE_LIMIT = 16
INFERENCE_WIDE_KERNEL = 7


class ConvCache(NamedTuple):
    """What ``Conv2D.forward`` saves: its input, for the kernel gradient (eq. 4.4 or 4.7).

    Not the Toeplitz row matrix of eq. 4.6, which is ``k_h`` times larger: the backward
    gathers it again from ``x``."""

    x: Array


def conv_forward(x: Array, w: Array, g: geo.Window, groups: int, precision=None) -> Array:
    """Eq. 4.2 without the bias: ``y[n,i,j,o] = sum_{p,q,c} x_pad[n, i s + p d, j s + q d, c] w[p,q,c,o]``.

    ``x (N, H, W, C_in)``, ``w (kh, kw, C_in // G, F)`` -> ``(N, H_out, W_out, F)``.
    """
    return lax.conv_general_dilated(
        x, w, window_strides=g.strides, padding=g.padding, rhs_dilation=g.dilation,
        dimension_numbers=_DIMS, feature_group_count=groups, precision=precision)


def conv_backward_input(delta: Array, w: Array, g: geo.Window, groups: int,
                        precision=None, method: str = "transposed") -> Array:
    """Eq. 4.5, the input residual: a full convolution of delta with the rotated kernel.

    ``delta (N, H_out, W_out, F)``, ``w (kh, kw, C_in // G, F)`` -> ``dx (N, H, W, C_in)``.

    Three formulations of the same sum (``method``):

    - ``"transposed"`` (the default): the forward stride becomes ``s - 1`` zeros between the
      entries of delta (lhs dilation), the kernel is rotated by 180 degrees with its in/out axes
      swapped inside each group, and the padding ``k_eff - 1 - lo`` on the top/left makes the
      correlation "full"; the bottom/right amount is whatever brings the output back to ``H``
      (negative = a crop, which also drops the gradient on the forward's padding).  The swap is
      made by the kernel's dimension numbers (``HWOI``; for ``G > 1`` the group axis moved in
      front of the channels), not by a transpose: the same convolution instruction as
      ``jax.grad``'s transpose rule, so that off the CPU both compile, autotune and run it alike.
    - ``"scatter"`` (``G = 1``): eq. 4.5 read literally -- one matrix product gives every window's
      share ``delta[n,i,j,:] . w[p,q,c,:]``, and the transpose of the window gather (eq. 3.4) adds
      the shares back where the windows came from (by reads, eq. 3.5).  It needs no lhs
      dilation, which XLA's CPU backend runs slowly, but materialises ``kh * kw`` shares per
      input entry.
    - ``"phases"`` (``G = 1``): eq. 4.9 -- each of the ``s_h s_w`` stride phases of ``dx_pad``
      is a stride-1 full correlation of delta (no zeros inserted) with the taps of that phase;
      one correlation computes them all as ``s_h s_w C`` output channels, which then interleave
      back into rows and columns (depth-to-space).  No product with an inserted zero:
      ``conv_plan`` picks it for strided convolutions on CPU (``docs/performance.md``).
    """
    if method == "phases":
        if groups != 1:
            raise ValueError(f"Conv2D: the phase form of eq. 4.5 needs groups=1, got {groups}")
        return _input_residual_by_phases(delta, w, g, precision)
    if method == "scatter":
        if groups != 1:
            raise ValueError(f"Conv2D: the scatter form of eq. 4.5 needs groups=1, got {groups}")
        kh, kw, c, f = w.shape
        n, ho, wo, _ = delta.shape
        shares = jnp.dot(delta, w.reshape(kh * kw * c, f).T, precision=precision)
        return geo.unpad(geo.scatter_windows(shares.reshape(n, ho, wo, kh * kw, c), g), g)
    if method != "transposed":
        raise ValueError(f"Conv2D: unknown method {method!r}; expected 'transposed', 'scatter' "
                         f"or 'phases'")
    kh, kw, cg, f = w.shape
    fg = f // groups
    w_t = (w.reshape(kh, kw, cg, groups, fg).transpose(0, 1, 3, 2, 4)     # read as (O, I) =
           .reshape(kh, kw, groups * cg, fg))[::-1, ::-1]                # (G C_g, F / G)
    pads = []
    for n, k, s, (lo, _), n_out in zip(g.in_hw, g.effective_size, g.strides, g.padding, g.out_hw):
        pads.append((k - 1 - lo, n - (n_out - 1) * s - 1 + lo))
    return lax.conv_general_dilated(
        delta, w_t, window_strides=(1, 1), padding=pads, lhs_dilation=g.strides,
        rhs_dilation=g.dilation, dimension_numbers=("NHWC", "HWOI", "NHWC"),
        feature_group_count=groups, precision=precision)


def _input_residual_by_phases(delta: Array, w: Array, g: geo.Window, precision=None) -> Array:
    """Eq. 4.9: ``dx_pad[n, m s_h + r, m' s_w + r', c] = sum_{t,t',o} delta[n, m - t, m' - t', o]
    w_eff[t s_h + r, t' s_w + r', c, o]``, ``w_eff`` the kernel with its dilation written out as
    zeros and zero-extended to ``b s`` taps, ``b = ceil(k_eff / s)`` per axis.

    ``delta (N, H_out, W_out, F)``, ``w (kh, kw, C, F)`` -> ``dx (N, H, W, C)``; ``G = 1``.
    """
    c, f = w.shape[2:]
    n, ho, wo, _ = delta.shape
    (sh, sw), (dh, dw), (keh, kew) = g.strides, g.dilation, g.effective_size
    bh, bw = -(-keh // sh), -(-kew // sw)
    zero = jnp.zeros((), w.dtype)
    w_eff = lax.pad(w, zero, ((0, bh * sh - keh, dh - 1), (0, bw * sw - kew, dw - 1),
                              (0, 0, 0), (0, 0, 0)))             # (bh sh, bw sw, C, F)
    w_phase = (w_eff.reshape(bh, sh, bw, sw, c, f).transpose(0, 2, 5, 1, 3, 4)
               .reshape(bh, bw, f, sh * sw * c))[::-1, ::-1]     # rotated, in/out swapped
    mh, mw = ho + bh - 1, wo + bw - 1                            # phase rows/columns reached
    phases = lax.conv_general_dilated(delta, w_phase, (1, 1),
                                      ((bh - 1, bh - 1), (bw - 1, bw - 1)),
                                      dimension_numbers=_DIMS, precision=precision)
    dx_pad = (phases.reshape(n, mh, mw, sh, sw, c).transpose(0, 1, 3, 2, 4, 5)
              .reshape(n, mh * sh, mw * sw, c))                  # depth-to-space
    (top, _), (left, _) = g.padding
    h, wd = g.in_hw                                              # crop to dx, or zero-extend
    return lax.pad(dx_pad, zero, ((0, 0, 0), (-top, h + top - mh * sh, 0),
                                  (-left, wd + left - mw * sw, 0), (0, 0, 0)))


def conv_backward_kernel(x: Array, delta: Array, g: geo.Window, groups: int,
                         precision=None) -> Array:
    """Eq. 4.4, the kernel gradient: the correlation of the input with delta.

    ``x (N, H, W, C_in)``, ``delta (N, H_out, W_out, F)`` -> ``dw (kh, kw, C_in // G, F)``.

    ``dw[p,q,c,o] = sum_{n,i,j} x_pad[n, i s + p d, j s + q d, c] delta[n,i,j,o]``: delta is the
    sliding "kernel", dilated by the forward stride, stepping by the forward dilation; the sum
    runs over the batch, so the batch axis plays the role of the contracted channel axis and the
    input channels that of the batch (split into G groups by ``batch_group_count``).
    """
    pads = []
    for n, k, s, (lo, _), n_out in zip(g.in_hw, g.effective_size, g.strides, g.padding, g.out_hw):
        pads.append((lo, k + (n_out - 1) * s - n - lo))
    return lax.conv_general_dilated(
        x, delta, window_strides=g.dilation, padding=pads, rhs_dilation=g.strides,
        dimension_numbers=("CHWN", "IHWO", "HWNC"), batch_group_count=groups,
        precision=precision)


def toeplitz_rows(x: Array, g: geo.Window, t: geo.Tiles) -> Array:
    """Eq. 4.6's left factor: for each output row and column tile, the ``k_h`` padded input
    rows it reads, across the tile's ``t.read`` columns.

    ``x (N, H, W, C)`` -> ``(N H_out t.count, k_h t.read C)``, columns ordered ``(p, v, c)``:
    the tiles' columns first, then the window gather (3.3) with a window of ``k_h`` whole tile
    rows (each tile row's ``t.read C`` entries taken as one channel axis).  Tiles first, because
    the first gather then copies the small input rather than its ``k_h``-times-larger windows.
    (An undilated kernel exactly as large as its padded input makes this the padded input
    flattened, and ``T`` the kernel flattened: a dense layer.)
    """
    x_pad = geo.fit_width(geo.pad(x, g), t.width)
    cols = geo.gather_tiles(x_pad, t, axis=2)                    # (N, Hp, count, read, C)
    n, hp = cols.shape[:2]
    rows = geo.windows(cols.reshape(n, hp, t.count, -1),         # (N, H_out, count, k_h, read C)
                       geo.row_window(g, t.count))
    return rows.reshape(n * g.out_hw[0] * t.count, -1)


def toeplitz_kernel(w: Array, g: geo.Window, t: geo.Tiles) -> Array:
    """Eq. 4.6's right factor, the banded matrix of the kernel: ``k_h`` blocks of rows, each
    block-Toeplitz along the width (a shift of ``s_w`` columns per output column).

    ``w (kh, kw, C, F)`` -> ``(k_h t.read C, t.size F)`` with entry ``[(p, v, c), (j, o)] =
    w[p, q, c, o]`` where ``v = j s_w + q d_w``, and 0 where no tap ``q`` reads column ``v``.
    Every tile uses the same matrix.  Built by a gather (exact): index ``k_w`` is a zero tap.
    """
    kh, kw, c, f = w.shape
    taps = geo.column_taps(g, t)                                 # (kw, t.size) -> column v
    index = np.full((t.read, t.size), kw)
    index[taps, np.arange(t.size)] = np.arange(kw)[:, None]
    w0 = jnp.concatenate([w, jnp.zeros((kh, 1, c, f), w.dtype)], axis=1)
    band = w0[:, index]                                          # (kh, t.read, t.size, C, F)
    return band.transpose(0, 1, 3, 2, 4).reshape(-1, t.size * f)


def _tile_delta(delta: Array, t: geo.Tiles) -> Array:
    """``delta (N, H_out, W_out, F)`` as ``(N H_out t.count, t.size F)``; the columns past
    ``W_out`` that fill the last tile are zero."""
    n, ho, _, f = delta.shape
    return geo.fit_width(delta, t.count * t.size).reshape(n * ho * t.count, t.size * f)


def conv_forward_toeplitz(x: Array, w: Array, g: geo.Window, *, precision=None,
                          tile: int | None = None, bias: Array | None = None,
                          bias_inside: bool = False) -> Array:
    """Eq. 4.6, the forward (4.2) as one matrix product: ``rows(x) @ T(w)``, ``G = 1``.

    ``x (N, H, W, C)``, ``w (kh, kw, C, F)`` -> ``(N, H_out, W_out, F)``.  ``tile``: output
    columns per tile (default: the whole width).  ``bias (F,)``: added to the product in its
    own layout ``(N H_out t.count, t.size F)``, once per output column of the tile
    (``per_column``), before the reshape to ``(N, H_out, W_out, F)``; with ``bias_inside``,
    inside the product instead, as the "+1" bias unit of the source's figures -- a column of
    ones in ``R``, the same repeated bias as a row of ``T``.
    """
    t = geo.column_tiles(g, tile)
    rows, band = toeplitz_rows(x, g, t), toeplitz_kernel(w, g, t)
    if bias is not None and bias_inside:
        rows = lax.pad(rows, jnp.ones((), rows.dtype), ((0, 0, 0), (0, 1, 0)))
        band = jnp.concatenate([band, per_column(bias, t)[None]], axis=0)
    y = jnp.dot(rows, band, precision=precision)
    if bias is not None and not bias_inside:
        y = y + per_column(bias, t)[None]
    return y.reshape(x.shape[0], g.out_hw[0], t.count * t.size, -1)[:, :, :g.out_hw[1]]


def per_column(b: Array, t: geo.Tiles) -> Array:
    """``b (F,)`` once for each of the tile's output columns, ``(t.size F,)`` -- the bias in the
    Toeplitz product's column order ``(j, o)`` -- by a gather with constant indices.

    Exact, and XLA keeps the gather a small array of its own, so an add of it to the product,
    and the elementwise layer after it (a sigmoid, say), run along the product's long rows,
    which XLA's CPU backend vectorises.  Written ``jnp.tile(b, t.size)``, the repeat is fused
    into that loop as an index modulo ``F``, and the loop is not vectorised (over
    ``(N, H, W, F)`` with small ``F`` it is not either): the sigmoid after LeNet-5's C3 took
    1.1 ms either way at batch 512, 0.17 ms along the rows (``docs/performance.md``,
    section 5)."""
    return b[np.arange(t.size * b.shape[0]) % b.shape[0]]


def conv_backward_kernel_toeplitz(x: Array, delta: Array, g: geo.Window, *,
                                  precision=None, tile: int | None = None) -> Array:
    """Eq. 4.7, the kernel gradient (4.4) through eq. 4.6: ``dT = rows(x)^T delta``, then each
    tap ``q`` sums ``dT`` along its band.  ``x (N, H, W, C)``, ``delta (N, H_out, W_out, F)`` ->
    ``dw (kh, kw, C, F)``; ``G = 1``."""
    kh, c, f = g.size[0], x.shape[3], delta.shape[3]
    t = geo.column_tiles(g, tile)
    d_band = jnp.dot(toeplitz_rows(x, g, t).T, _tile_delta(delta, t), precision=precision)
    d_band = d_band.reshape(kh, t.read, c, t.size, f)
    on_band = d_band[:, geo.column_taps(g, t), :, np.arange(t.size)]   # (kw, size, kh, C, F)
    return jnp.sum(on_band, axis=1).transpose(1, 0, 2, 3)


def conv_backward_input_toeplitz(delta: Array, w: Array, g: geo.Window, *, precision=None,
                                 tile: int | None = None) -> Array:
    """Eq. 4.8, the input residual (4.5) through eq. 4.6: ``delta T(w)^T`` gives each output
    row's (and tile's) share of the input rows it read; the transposes of the tile and row
    gathers (3.4) add the shares back; unread columns and the padding get none.
    ``delta (N, H_out, W_out, F)``, ``w (kh, kw, C, F)`` -> ``dx (N, H, W, C)``; ``G = 1``."""
    kh, _, c, _ = w.shape
    n, ho = delta.shape[:2]
    t = geo.column_tiles(g, tile)
    shares = jnp.dot(_tile_delta(delta, t), toeplitz_kernel(w, g, t).T, precision=precision)
    rows = geo.scatter_tiles(shares.reshape(n, ho, t.count, kh, t.read, c), t, axis=3)
    if ho == 1:                 # one window of rows: they are dx_pad's rows, d_h apart
        (hp, _), dh = g.padded_hw, g.dilation[0]
        dx_pad = lax.pad(rows[:, 0], jnp.zeros((), rows.dtype),
                         ((0, 0, 0), (0, hp - (kh - 1) * dh - 1, dh - 1), (0, 0, 0), (0, 0, 0)))
    else:
        rows = jnp.moveaxis(rows, 2, 3)                          # (N, H_out, width, k_h, C)
        dx_pad = geo.scatter_windows(rows, geo.row_window(g, t.width),   # (N, Hp, width, C)
                                     pad_first=True)
    return geo.unpad(geo.fit_width(dx_pad, g.padded_hw[1]), g)


class ConvPlan(NamedTuple):
    """How each pass is computed: ``"lax"`` (XLA's convolutions, eqs. 4.2, 4.4, 4.5),
    ``"toeplitz"`` (eqs. 4.6, 4.7, 4.8) or, for the input residual only, ``"phases"`` (eq. 4.9)
    or ``"scatter"`` (eq. 4.5 as a matrix product and the window scatter 3.4).  ``split``: a
    grouped convolution runs as ``G`` ungrouped ones on its channel slices, each pass as named.
    ``tile``: output columns per tile of the Toeplitz form (``None``: the whole width).
    ``inference``: the forward ``apply`` computes where nothing differentiates it
    (``apply_output``); ``forward`` is the one it differentiates, and ``Conv2D.forward``'s."""

    forward: str
    kernel: str
    input: str
    split: bool = False
    tile: int | None = None
    inference: str = "lax"


def conv_plan(g: geo.Window, c_in: int, groups: int, method: str = "auto", *,
              features: int) -> ConvPlan:
    """Pick the formulation of each pass for one layer shape (static; at trace time).

    ``"lax"`` forces XLA's convolutions, ``"toeplitz"`` the matrix products (a grouped
    convolution split into ungrouped ones).  ``"auto"`` uses XLA's convolutions on GPU/TPU
    (cuDNN and friends).  On CPU it decides each pass from ``spread = C_g * w_read / k_w``
    (``C_g`` input channels per group): the Toeplitz matrix has ``w_read / k_w`` times more
    entries than the kernel has taps per output column, and XLA's CPU convolutions get faster
    as the channels grow.  A pass takes the matrix products when the spread is at most its
    limit, and XLA's convolution otherwise (``benchmarks/conv_plan_sweep.py`` measured them):

    - the forward: ``SPREAD_LIMIT`` (20);
    - the kernel gradient: ``KERNEL_SPREAD_LIMIT`` (100) at stride 1; never when strided;
    - the input residual: ``INPUT_SPREAD_LIMIT`` (50) at stride 1,
      ``STRIDED_INPUT_SPREAD_LIMIT`` (30) when strided -- and above it a strided input
      residual is computed by stride phases (eq. 4.9), not by XLA's lhs-dilated transposed
      convolution;
    - a grouped convolution: ``SPREAD_LIMIT`` for all three passes.

    The forward's choice is also what ``jax.grad`` of ``apply`` transposes; the backward passes
    choose for themselves.  A grouped convolution with at most ``GROUP_SPLIT_LIMIT`` groups is
    split into ``G`` ungrouped ones: XLA's CPU backend runs it 17-20x slower than the same work
    ungrouped (measured at ``G = 4``; a depthwise convolution's hundreds of groups would unroll
    into as many small programs, so it stays with XLA).  Measured on a 2-core x86 CPU (``docs/performance.md``).
    The backend is ``jax.default_backend()`` at trace time: a CPU computation traced on a GPU
    host (e.g. under ``jax.default_device``) gets the GPU plan.

    The Toeplitz form splits the output width into two tiles when ``W_out >= 2 k_w``: each
    tile's matrix then spends about half as much on zeros (eq. 4.6 per tile).  Where the
    forward is XLA's and the kernel gradient a Toeplitz product, there is no forward row
    matrix for the kernel gradient to share inside a jitted step, and tiles of
    ``ceil(W_out / 4)`` columns (at most four; when ``W_out >= 4 k_w``) measured faster; a
    Toeplitz input residual of the same layer uses them too.  Where the forward is a
    Toeplitz product, two.

    ``apply`` evaluated, not differentiated, computes ``inference``'s forward: the Toeplitz
    product only where the forward is one and it also evaluates faster (the forward sweep,
    and whole nets' ``apply``, ``docs/performance.md``):

    - a one-position output (the product is then a dense layer's);
    - two or three input channels per group (``INFERENCE_CHANNEL_LIMIT``; every 3-channel
      shape of the sweep ran at 0.27-1.00 of XLA's time);
    - one input channel per group, with at most ``INFERENCE_FEATURE_LIMIT`` (16) features per
      group (0.24-0.77) or a kernel at least ``INFERENCE_WIDE_KERNEL`` (7) columns wide
      (UFLDL's 9x9: with the bias inside the product, its net evaluates 1.6-2.3x faster than
      with XLA's convolution).

    Elsewhere XLA's convolution: with 6 channels the two forward forms trade places by shape,
    batch and process (LeNet-5's C3: 0.78-1.37), and one channel with 32 features and a 3- or
    5-wide kernel ran slower as a Toeplitz product.  ``jax.grad`` of ``apply`` still
    transposes ``forward``'s form, the faster one to differentiate (``apply_output``).
    """
    if method not in METHODS:
        raise ValueError(f"Conv2D: unknown method {method!r}; expected one of {METHODS}")
    wo = g.out_hw[1]
    tile = -(-wo // 2) if wo >= 2 * g.size[1] else None
    if method != "auto":
        return ConvPlan(method, method, method, split=method == "toeplitz" and groups > 1,
                        tile=tile if method == "toeplitz" else None, inference=method)
    if jax.default_backend() != "cpu" or groups > GROUP_SPLIT_LIMIT:
        return ConvPlan("lax", "lax", "lax")
    spread = (c_in // groups) * geo.column_tiles(g).read / g.size[1]
    strided = max(g.strides) > 1
    if groups > 1:
        limits = (SPREAD_LIMIT,) * 3
    elif strided:
        limits = (SPREAD_LIMIT, 0, STRIDED_INPUT_SPREAD_LIMIT)     # spread > 0: kernel never
    else:
        limits = (SPREAD_LIMIT, KERNEL_SPREAD_LIMIT, INPUT_SPREAD_LIMIT)
    forward, kernel, residual = ("toeplitz" if spread <= limit else "lax" for limit in limits)
    if residual == "lax" and strided:
        residual = "phases"
    if forward == "lax" and kernel == "toeplitz" and wo >= 4 * g.size[1]:
        tile = -(-wo // 4)          # no forward row matrix to share: <= 4 tiles, fewer zeros
    uses_tiles = "toeplitz" in (forward, kernel, residual)
    inference = forward if _evaluates_as_toeplitz(g, c_in, features, groups) else "lax"
    return ConvPlan(forward, kernel, residual, split=groups > 1, tile=tile if uses_tiles else None,
                    inference=inference)


def _evaluates_as_toeplitz(g: geo.Window, c_in: int, features: int, groups: int) -> bool:
    """``conv_plan``'s rule for ``inference`` where the forward is a Toeplitz product: a
    one-position output (the product is then a dense layer's); two or three input channels per
    group; or one, with at most ``INFERENCE_FEATURE_LIMIT`` features per group or a kernel at
    least ``INFERENCE_WIDE_KERNEL`` columns wide."""
    if g.out_hw == (1, 1):
        return True
    c, f = c_in // groups, features // groups
    if c == 1:
        return f <= INFERENCE_FEATURE_LIMIT or g.effective_size[1] >= INFERENCE_WIDE_KERNEL
    return c <= INFERENCE_CHANNEL_LIMIT


def bias_in_product(g: geo.Window, c_in: int, features: int, plan: ConvPlan) -> bool:
    """Whether evaluated ``apply`` adds the bias inside the Toeplitz product (eq. 4.6 with the
    "+1" bias unit: a column of ones in ``R``, the bias as a row of ``T``), ``plan`` being the
    form it evaluates (``plan.inference`` as ``forward``).

    Only for an ungrouped Toeplitz product whose row matrix is no larger than its output,
    ``k_h * read * C <= t * F`` per row (``t`` output columns per tile): the price is one more
    pass over ``R``.  Evaluated, XLA fuses the elementwise layer after the convolution (a
    sigmoid, say) into the pooling after it, a loop over the pooled output in which a bias
    added after the product -- to its rows or to ``(N, H, W, F)`` alike -- is read by an index
    modulo ``F``, which XLA's CPU backend does not vectorise; inside the product there is no
    bias left to read (UFLDL's net evaluates in 0.63-0.70 of the time, ``docs/performance.md``,
    section 5).  ``Conv2D.forward`` adds its bias to the product's rows instead (it keeps the
    sigmoid's output, so the sigmoid is a loop of its own, along the rows), and differentiated
    ``apply`` after the reshape, whose transpose is cheapest.  CPU only: the effect is XLA's
    CPU code generation, and off the CPU a reduced-precision product would round the bias too.
    """
    if plan.forward != "toeplitz" or plan.split or jax.default_backend() != "cpu":
        return False
    t = geo.column_tiles(g, plan.tile)
    return g.size[0] * t.read * c_in <= t.size * features


def _per_group(planned, a: Array, b: Array, g: geo.Window, groups: int, plan: ConvPlan,
               precision) -> Array:
    """``planned`` (one of the three below) on each group's slice of the last axis of ``a``
    and ``b``, as an ungrouped convolution, concatenated back (``plan.split``)."""
    one = plan._replace(split=False)
    parts = zip(jnp.split(a, groups, axis=-1), jnp.split(b, groups, axis=-1))
    return jnp.concatenate([planned(a, b, g, 1, one, precision) for a, b in parts], axis=-1)


def planned_forward(x: Array, w: Array, g: geo.Window, groups: int, plan: ConvPlan,
                    precision=None) -> Array:
    """The forward as ``plan`` says: eq. 4.6 or eq. 4.2 (per group if ``plan.split``)."""
    if plan.split:
        return _per_group(planned_forward, x, w, g, groups, plan, precision)
    if plan.forward == "toeplitz":
        return conv_forward_toeplitz(x, w, g, precision=precision, tile=plan.tile)
    return conv_forward(x, w, g, groups, precision)


def conv_output(x: Array, w: Array, b: Array | None, g: geo.Window, groups: int,
                plan: ConvPlan, precision=None, bias_form: str = "after") -> Array:
    """Eq. 4.2 with its bias, the forward in ``plan.forward``'s form.  Where that is one
    Toeplitz product (ungrouped, or not split), ``bias_form`` says where the bias goes: added
    to the product's ``"rows"``, its own 2-D layout, as ``Conv2D.forward`` does; or
    ``"inside"`` the product, as evaluated ``apply`` does where ``bias_in_product`` allows
    (``conv_forward_toeplitz``).  Otherwise, and with ``"after"``, it is added to the
    ``(N, H_out, W_out, F)`` output, as differentiated ``apply`` does: autodiff transposes
    that add fastest (a sum over ``n, i, j``; the add to the rows costs it a sum and a
    scatter, ``docs/performance.md``, section 5)."""
    if b is not None and bias_form != "after" and plan.forward == "toeplitz" and not plan.split:
        return conv_forward_toeplitz(x, w, g, precision=precision, tile=plan.tile, bias=b,
                                     bias_inside=bias_form == "inside")
    y = planned_forward(x, w, g, groups, plan, precision)                     # eq. 4.2 / 4.6
    return y if b is None else y + b.reshape(1, 1, 1, -1)


def apply_output(x: Array, w: Array, b: Array | None, g: geo.Window, groups: int,
                 plan: ConvPlan, precision=None) -> Array:
    """``Conv2D.apply``: eq. 4.2 with its bias, computed for evaluation in the form fastest to
    evaluate (``plan.inference``, and the bias inside the product where ``bias_in_product``
    allows) and differentiated through the form fastest to differentiate (``plan.forward``,
    the bias added after the reshape).  Where the two differ, a ``jax.custom_jvp`` joins them
    whose rule is ``jax.jvp`` of the second: ``jax.grad`` still differentiates a plain forward
    by autodiff; the two compute the same sums, up to float rounding."""
    evaluate = plan._replace(forward=plan.inference)
    fold = b is not None and bias_in_product(g, x.shape[3], w.shape[3], evaluate)
    if plan.inference == plan.forward and not fold:
        return conv_output(x, w, b, g, groups, plan, precision)
    return _evaluated((x, w, b), g, groups, plan, precision, "inside" if fold else "after")


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3, 4, 5))
def _evaluated(operands, g: geo.Window, groups: int, plan: ConvPlan, precision, bias_form: str):
    """Eq. 4.2 with its bias, ``operands = (x, w, b)``, in ``plan.inference``'s form, the bias
    where ``bias_form`` says; differentiated by ``_differentiated``."""
    return conv_output(*operands, g, groups, plan._replace(forward=plan.inference), precision,
                       bias_form)


@functools.partial(_evaluated.defjvp, symbolic_zeros=True)
def _differentiated(g, groups, plan, precision, bias_form, primals, tangents):
    """``jax.jvp`` of ``conv_output`` in ``plan.forward``'s form, over the operands that have
    a tangent: one nothing differentiates (the data ``x`` of a first layer) stays a symbolic
    zero, so no product with zeros is computed."""
    (operands,), (operand_tangents,) = primals, tangents
    live = [i for i, t in enumerate(operand_tangents)
            if t is not None and not isinstance(t, SymbolicZero)]

    def output(*live_operands):
        args = list(operands)
        for i, a in zip(live, live_operands):
            args[i] = a
        return conv_output(*args, g, groups, plan, precision)

    return jax.jvp(output, [operands[i] for i in live], [operand_tangents[i] for i in live])


def planned_kernel_grad(x: Array, delta: Array, g: geo.Window, groups: int, plan: ConvPlan,
                        precision=None) -> Array:
    """The kernel gradient as ``plan`` says: eq. 4.7 or eq. 4.4 (per group if ``plan.split``)."""
    if plan.split:
        return _per_group(planned_kernel_grad, x, delta, g, groups, plan, precision)
    if plan.kernel == "toeplitz":
        return conv_backward_kernel_toeplitz(x, delta, g, precision=precision, tile=plan.tile)
    return conv_backward_kernel(x, delta, g, groups, precision)


def planned_input_residual(delta: Array, w: Array, g: geo.Window, groups: int, plan: ConvPlan,
                           precision=None) -> Array:
    """The input residual as ``plan`` says: eq. 4.8, eq. 4.9, or eq. 4.5 transposed or as a
    scatter (per group if ``plan.split``)."""
    if plan.split:
        return _per_group(planned_input_residual, delta, w, g, groups, plan, precision)
    if plan.input == "toeplitz":
        return conv_backward_input_toeplitz(delta, w, g, precision=precision, tile=plan.tile)
    return conv_backward_input(delta, w, g, groups, precision,
                               method="transposed" if plan.input == "lax" else plan.input)


def Conv2D(features: int, kernel_size, strides=1, padding="VALID", dilation=1, groups: int = 1,
           use_bias: bool = True, *, w_init=jax.nn.initializers.lecun_normal(),
           b_init=jax.nn.initializers.zeros, param_dtype=jnp.float32, precision=None,
           method: str = "auto") -> Layer:
    """A 2-D convolution layer (a cross-correlation, as in every CNN library).

    Args:
      features: output channels ``F``.
      kernel_size: ``(kh, kw)`` or an int.
      strides, dilation: an int or a pair, each >= 1.
      padding: ``"VALID"``, ``"SAME"`` (XLA's rule, eq. 3.2) or ``((top, bottom), (left, right))``.
      groups: ``G``; input channels and ``features`` must both divide by it.
      use_bias: whether params have ``"b"``.
      w_init, b_init: ``jax.nn.initializers`` for the kernel (default LeCun normal) and bias.
      param_dtype: dtype of the parameters made by ``init``.
      precision: passed to every convolution and matrix product of both passes (``None``: the
        backend default, reduced precision for float32 on GPU/TPU; ``"highest"`` for exact
        float32).
      method: ``"auto"`` (per pass and shape, see ``conv_plan``), ``"lax"`` (XLA's
        convolutions: eqs. 4.2, 4.4, 4.5) or ``"toeplitz"`` (matrix products with the banded
        kernel matrix: eqs. 4.6-4.8; grouped: one per group).  Every choice computes the same
        sums.  ``forward`` adds the bias to a Toeplitz product's rows, ``apply`` inside it or
        after the reshape (``conv_output``); ``apply`` may evaluate in another form than it
        differentiates (``apply_output``): the same values up to float rounding.

    Params: ``{"w": (kh, kw, C_in // G, F), "b": (F,)}``.  Forward eq. 4.2; backward eqs.
    4.3 (bias), 4.4 (kernel), 4.5 (input residual); their Toeplitz forms eqs. 4.6-4.8.
    """
    name = "Conv2D"
    features = positive_int(name, "features", features)
    kernel_size = pair(name, "kernel_size", kernel_size)
    strides = pair(name, "strides", strides)
    dilation = pair(name, "dilation", dilation)
    groups = positive_int(name, "groups", groups)
    padding = geo.normalize_padding(name, padding)
    if features % groups:
        raise ValueError(f"{name}: features (={features}) must be divisible by groups (={groups})")
    if method not in METHODS:
        raise ValueError(f"{name}: unknown method {method!r}; expected one of {METHODS}")

    def geometry(in_hw) -> geo.Window:
        return geo.window(name, in_hw, kernel_size, strides, dilation, padding)

    def check_channels(c_in: int) -> None:
        if c_in % groups:
            raise ValueError(f"{name}: input channels (={c_in}) must be divisible by "
                             f"groups (={groups})")

    def init(key, input_shape):
        h, w, c_in = check_input_shape(name, input_shape, 3, "(H, W, C)")
        check_channels(c_in)
        g = geometry((h, w))
        k_w, k_b = jax.random.split(key)
        params = {"w": w_init(k_w, (*kernel_size, c_in // groups, features), param_dtype)}
        if use_bias:
            params["b"] = b_init(k_b, (features,), param_dtype)
        return params, (*g.out_hw, features)

    def checked(params, x):
        check_input(name, x, 4, "(N, H, W, C)")
        c_in = x.shape[3]
        check_channels(c_in)
        w_shape = (*kernel_size, c_in // groups, features)
        if isinstance(params, dict) and "w" in params and params["w"].shape[:2] == kernel_size \
                and params["w"].shape[2] * groups != c_in:
            raise ValueError(f"{name}: input has {c_in} channels but the kernel expects "
                             f"{params['w'].shape[2] * groups} (params['w'].shape[2] * groups)")
        w = check_param(name, params, "w", w_shape, x.dtype)
        b = check_param(name, params, "b", (features,), x.dtype) if use_bias else None
        return w, b, geometry(x.shape[1:3])

    def output(params, x, hand):
        w, b, g = checked(params, x)
        plan = conv_plan(g, x.shape[3], groups, method, features=features)
        if not hand:
            return apply_output(x, w, b, g, groups, plan, precision)
        return conv_output(x, w, b, g, groups, plan, precision, "rows")       # eq. 4.2 / 4.6

    def forward(params, x, *, key=None, train=True):
        return output(params, x, hand=True), ConvCache(x)

    def apply(params, x, *, key=None, train=True):
        return output(params, x, hand=False)

    def backward(params, cache, delta):
        x = cache.x
        w, _, g = checked(params, x)
        check_delta(name, delta, (x.shape[0], *g.out_hw, features), x.dtype)
        plan = conv_plan(g, x.shape[3], groups, method, features=features)
        grads = {"w": planned_kernel_grad(x, delta, g, groups, plan, precision)}  # eq. 4.4 / 4.7
        if use_bias:
            grads["b"] = jnp.sum(delta, axis=(0, 1, 2))                          # eq. 4.3
        return grads, planned_input_residual(delta, w, g, groups, plan,          # eq. 4.5 / 4.8
                                             precision)

    return Layer(init, forward, backward, apply, name, config=config(
        kind="window", size=kernel_size, strides=strides, dilation=dilation, padding=padding,
        features=features, groups=groups, use_bias=use_bias, method=method))

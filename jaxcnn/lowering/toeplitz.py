"""Convolution as matrix products with a banded Toeplitz matrix: eqs. 4.6-4.8.

A lowering of eqs. 4.2, 4.4 and 4.5 (``jaxcnn.reference.conv``), proven equal to them in
``tests/test_lowerings.py``.  Output row ``i`` of a convolution reads ``k_h`` padded input
rows; put them side by side in one row of ``R`` (the window gather 3.3 with a window of whole
rows) and the kernel in a banded matrix ``T`` whose column ``(j, o)`` holds ``w[p, q, c, o]`` at
the rows ``(p, j s_w + q d_w, c)``: then ``y = R T`` (eq. 4.6), ``dT = R^T delta`` (4.7) and the
input rows' shares are ``delta T^T`` (4.8).  It multiplies ``w_read / k_w`` times more entries
than the kernel has (the zeros of ``T``), in exchange for one large matrix product instead of a
convolution with few channels -- on a CPU, faster for the few-channel layers of small nets
(``jaxcnn.lowering.plan`` decides where).

The output columns may be cut into tiles (``Tiles``): each tile reads its own columns and uses
the same ``T``, which then has fewer zeros.  Ungrouped only (``G = 1``); a grouped convolution
runs one product per group (``jaxcnn.lowering.dispatch``).  Shapes: ``x (N, H, W, C)``,
``w (kh, kw, C, F)``, ``delta (N, H_out, W_out, F)``.
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn import _geometry as geo
from jaxcnn.core import Array


class Tiles(NamedTuple):
    """Output columns in tiles of ``size``: ``count`` tiles, tile ``t`` reading the ``read``
    padded input columns from ``t * step`` on; ``width`` columns in all (the padded input is
    cropped or zero-extended to it).  With one tile, ``read`` is every column the windows read,
    ``(W_out - 1) s_w + k_eff``; the remaining ``r`` of the padded input never are (Section 3)."""

    size: int
    count: int
    step: int
    read: int
    width: int


def column_tiles(g: geo.Window, size: int | None = None) -> Tiles:
    """Split the ``W_out`` output columns into tiles of ``size`` (default: one tile).  Tiles
    belong to this lowering: they are not a window's geometry but a way to cut ``T``."""
    wo, sw, kw = g.out_hw[1], g.strides[1], g.effective_size[1]
    if size is not None and (not isinstance(size, (int, np.integer)) or size < 1):
        raise ValueError(f"Conv2D: tile must be an int >= 1 (output columns per tile), "
                         f"got {size!r}")
    size = wo if size is None else min(size, wo)
    count = -(-wo // size)
    return Tiles(size, count, size * sw, (size - 1) * sw + kw, (count * size - 1) * sw + kw)


def row_window(g: geo.Window, width: int) -> geo.Window:
    """The window of whole rows: ``k_h`` taps down, one column wide, over ``width`` columns.

    Gathering with it gives, for each output row ``i``, the ``k_h`` padded input rows it reads:
    ``(N, H_out, width, k_h, C)`` (eq. 4.6).  ``toeplitz_rows`` gathers it over the column
    tiles, ``(N, Hp, tiles, read C)``: ``width`` is then the tile count and each tile row's
    ``read C`` entries the channel axis.
    """
    return geo.Window((g.padded_hw[0], width), (g.size[0], 1), (g.strides[0], 1),
                  (g.dilation[0], 1), ((0, 0), (0, 0)), (g.out_hw[0], width))


def fit_width(x: Array, width: int) -> Array:
    """Crop or zero-extend the columns (axis 2) of an NHWC array to ``width``."""
    extra = width - x.shape[2]
    return lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (0, 0, 0), (0, extra, 0), (0, 0, 0)))


def gather_tiles(a: Array, t: Tiles, axis: int) -> Array:
    """Each tile's ``t.read`` columns of ``a`` (columns along ``axis``, ``t.width`` of them),
    stacked on a new axis 2: ``(N, H, ..., width, ...) -> (N, H, t.count, ..., read, ...)``."""
    if t.count == 1:
        return jnp.expand_dims(a, 2)
    return jnp.stack([lax.slice_in_dim(a, i * t.step, i * t.step + t.read, axis=axis)
                      for i in range(t.count)], axis=2)


def scatter_tiles(parts: Array, t: Tiles, axis: int) -> Array:
    """The transpose of ``gather_tiles``: add each tile's columns back; overlaps add up."""
    if t.count == 1:
        return parts[:, :, 0]
    zero = jnp.zeros((), parts.dtype)
    placed = []
    for i in range(t.count):
        config = [(0, 0, 0)] * (parts.ndim - 1)
        config[axis] = (i * t.step, t.width - i * t.step - t.read, 0)
        placed.append(lax.pad(parts[:, :, i], zero, config))
    return sum(placed[1:], placed[0])


def column_taps(g: geo.Window, t: Tiles) -> np.ndarray:
    """``v[q, j] = j s_w + q d_w``: the column of its tile that tap ``q`` of the tile's output
    column ``j`` reads.  A static ``(k_w, t.size)`` int array; eq. 4.6."""
    q, j = np.meshgrid(np.arange(g.size[1]), np.arange(t.size), indexing="ij")
    return j * g.strides[1] + q * g.dilation[1]


def toeplitz_rows(x: Array, g: geo.Window, t: Tiles) -> Array:
    """Eq. 4.6's left factor: for each output row and column tile, the ``k_h`` padded input
    rows it reads, across the tile's ``t.read`` columns.

    ``x (N, H, W, C)`` -> ``(N H_out t.count, k_h t.read C)``, columns ordered ``(p, v, c)``:
    the tiles' columns first, then the window gather (3.3) with a window of ``k_h`` whole tile
    rows (each tile row's ``t.read C`` entries taken as one channel axis).  Tiles first, because
    the first gather then copies the small input rather than its ``k_h``-times-larger windows.
    (One output position of an undilated kernel makes this the padded input's window
    flattened, and ``T`` the kernel flattened: a dense layer, taken by reshapes; ``_dense``.)
    """
    x_pad = fit_width(geo.pad(x, g), t.width)
    if _dense(g):
        return x_pad[:, :g.size[0]].reshape(x.shape[0], -1)
    cols = gather_tiles(x_pad, t, axis=2)                    # (N, Hp, count, read, C)
    n, hp = cols.shape[:2]
    rows = geo.windows(cols.reshape(n, hp, t.count, -1),         # (N, H_out, count, k_h, read C)
                       row_window(g, t.count))
    return rows.reshape(n * g.out_hw[0] * t.count, -1)


def toeplitz_kernel(w: Array, g: geo.Window, t: Tiles) -> Array:
    """Eq. 4.6's right factor, the banded matrix of the kernel: ``k_h`` blocks of rows, each
    block-Toeplitz along the width (a shift of ``s_w`` columns per output column).

    ``w (kh, kw, C, F)`` -> ``(k_h t.read C, t.size F)`` with entry ``[(p, v, c), (j, o)] =
    w[p, q, c, o]`` where ``v = j s_w + q d_w``, and 0 where no tap ``q`` reads column ``v``.
    Every tile uses the same matrix.  Built by a gather (exact): index ``k_w`` is a zero tap.
    """
    kh, kw, c, f = w.shape
    if _dense(g):
        return w.reshape(kh * kw * c, f)
    taps = column_taps(g, t)                                 # (kw, t.size) -> column v
    index = np.full((t.read, t.size), kw)
    index[taps, np.arange(t.size)] = np.arange(kw)[:, None]
    w0 = jnp.concatenate([w, jnp.zeros((kh, 1, c, f), w.dtype)], axis=1)
    band = w0[:, index]                                          # (kh, t.read, t.size, C, F)
    return band.transpose(0, 1, 3, 2, 4).reshape(-1, t.size * f)


def _dense(g: geo.Window) -> bool:
    """One output position of an undilated kernel: ``R`` is the padded input's one window
    flattened, ``(N, k_h k_w C)``, and ``T`` the kernel flattened, ``(k_h k_w C, F)`` -- a dense
    layer (LeNet-5's C5).  Eq. 4.6 with one tile of one column, whose band has no zeros; taken
    by reshapes, not the general gathers, which would copy both."""
    return g.out_hw == (1, 1) and g.dilation == (1, 1)


def _tile_delta(delta: Array, t: Tiles) -> Array:
    """``delta (N, H_out, W_out, F)`` as ``(N H_out t.count, t.size F)``; the columns past
    ``W_out`` that fill the last tile are zero."""
    n, ho, _, f = delta.shape
    return fit_width(delta, t.count * t.size).reshape(n * ho * t.count, t.size * f)


def forward(x: Array, w: Array, g: geo.Window, *, precision=None, tile: int | None = None,
            bias: Array | None = None, bias_inside: bool = False) -> Array:
    """Eq. 4.6, the forward (4.2) as one matrix product: ``rows(x) @ T(w)``, ``G = 1``.

    ``x (N, H, W, C)``, ``w (kh, kw, C, F)`` -> ``(N, H_out, W_out, F)``.  ``tile``: output
    columns per tile (default: the whole width).  ``bias (F,)``: added to the product in its
    own layout ``(N H_out t.count, t.size F)``, once per output column of the tile
    (``per_column``), before the reshape to ``(N, H_out, W_out, F)``; with ``bias_inside``,
    inside the product instead, as the "+1" bias unit of the source's figures -- a column of
    ones in ``R``, the same repeated bias as a row of ``T``.
    """
    t = column_tiles(g, tile)
    rows, band = toeplitz_rows(x, g, t), toeplitz_kernel(w, g, t)
    if bias is not None and bias_inside:
        rows = lax.pad(rows, jnp.ones((), rows.dtype), ((0, 0, 0), (0, 1, 0)))
        band = jnp.concatenate([band, per_column(bias, t)[None]], axis=0)
    y = jnp.dot(rows, band, precision=precision)
    if bias is not None and not bias_inside:
        y = y + per_column(bias, t)[None]
    return y.reshape(x.shape[0], g.out_hw[0], t.count * t.size, -1)[:, :, :g.out_hw[1]]


def per_column(b: Array, t: Tiles) -> Array:
    """``b (F,)`` once for each of the tile's output columns, ``(t.size F,)`` -- the bias in the
    Toeplitz product's column order ``(j, o)`` -- by a gather with constant indices.

    Exact, and XLA keeps the gather a small array of its own, so an add of it to the product,
    and the elementwise layer after it (a sigmoid, say), run along the product's long rows,
    which XLA's CPU backend vectorises.  Written ``jnp.tile(b, t.size)``, the repeat is fused
    into that loop as an index modulo ``F``, which is not vectorised
    (``docs/performance.md#why-bias-rows``)."""
    return b[np.arange(t.size * b.shape[0]) % b.shape[0]]


def kernel_grad(x: Array, delta: Array, g: geo.Window, *, precision=None,
                tile: int | None = None) -> Array:
    """Eq. 4.7, the kernel gradient (4.4) through eq. 4.6: ``dT = rows(x)^T delta``, then each
    tap ``q`` sums ``dT`` along its band.  ``x (N, H, W, C)``, ``delta (N, H_out, W_out, F)`` ->
    ``dw (kh, kw, C, F)``; ``G = 1``."""
    kh, c, f = g.size[0], x.shape[3], delta.shape[3]
    t = column_tiles(g, tile)
    d_band = jnp.dot(toeplitz_rows(x, g, t).T, _tile_delta(delta, t), precision=precision)
    if _dense(g):
        return d_band.reshape(kh, g.size[1], c, f)
    d_band = d_band.reshape(kh, t.read, c, t.size, f)
    on_band = d_band[:, column_taps(g, t), :, np.arange(t.size)]   # (kw, size, kh, C, F)
    return jnp.sum(on_band, axis=1).transpose(1, 0, 2, 3)


def input_residual(delta: Array, w: Array, g: geo.Window, *, precision=None,
                   tile: int | None = None) -> Array:
    """Eq. 4.8, the input residual (4.5) through eq. 4.6: ``delta T(w)^T`` gives each output
    row's (and tile's) share of the input rows it read; the transposes of the tile and row
    gathers (3.4) add the shares back; unread columns and the padding get none.
    ``delta (N, H_out, W_out, F)``, ``w (kh, kw, C, F)`` -> ``dx (N, H, W, C)``; ``G = 1``."""
    kh, _, c, _ = w.shape
    n, ho = delta.shape[:2]
    t = column_tiles(g, tile)
    shares = jnp.dot(_tile_delta(delta, t), toeplitz_kernel(w, g, t).T, precision=precision)
    rows = scatter_tiles(shares.reshape(n, ho, t.count, kh, t.read, c), t, axis=3)
    if ho == 1:                 # one window of rows: they are dx_pad's rows, d_h apart
        (hp, _), dh = g.padded_hw, g.dilation[0]
        dx_pad = lax.pad(rows[:, 0], jnp.zeros((), rows.dtype),
                         ((0, 0, 0), (0, hp - (kh - 1) * dh - 1, dh - 1), (0, 0, 0), (0, 0, 0)))
    else:
        rows = jnp.moveaxis(rows, 2, 3)                          # (N, H_out, width, k_h, C)
        dx_pad = geo.scatter_windows(rows, row_window(g, t.width),   # (N, Hp, width, C)
                                     pad_first=True)
    return geo.unpad(fit_width(dx_pad, g.padded_hw[1]), g)

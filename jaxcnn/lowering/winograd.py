"""Winograd's minimal filtering F(2x2, 3x3): a 3x3 convolution in overlapping 4x4 tiles,
eqs. 4.14-4.17.

A lowering of eqs. 4.2, 4.4 and 4.5 (``jaxcnn.reference.conv``) for an ungrouped 3x3 kernel
at stride 1, undilated, proven equal to them in ``tests/test_lowerings.py``.  Each 2x2 block of
outputs reads a 4x4 tile ``d`` of the padded input (tiles two apart, overlapping by two), and

    Y = A^T [(G g G^T) * (B^T d B)] A                                        (eq. 4.14)

for each channel pair: 16 multiplications where (4.2) takes 36.  Summed over the channels, the
16 entries of the transformed tiles ``V = B^T d B`` meet the 16 of the transformed kernel
``U = G g G^T`` in 16 matrix products ``(tiles, C) x (C, F)``.  Each step is linear in the tile
and in the kernel, so the backward passes are the steps' transposes in reverse order: the
output's transform by ``A`` (4.15), then ``dU = V^T dM`` and ``G^T dU G`` (4.16), or
``dV = dM U^T``, ``B dV B^T`` and each tile's entries added back where they were read (4.17).

Every transform multiplies by a constant matrix along one spatial axis at a time (``_mix``),
written as sums of the arrays it combines, which XLA fuses into the loops around them.  Shapes:
``x (N, H, W, C)``, ``w (3, 3, C, F)``, ``delta (N, H_out, W_out, F)``.  16-bit operands are
transformed in float32 and the result rounded back (``_in_float32``): ``B^T d B`` adds up to
four entries, which in float16 overflows at a quarter of its range.
"""
from __future__ import annotations

import functools

import numpy as np
from jax import lax
import jax.numpy as jnp

from jaxcnn import _geometry as geo
from jaxcnn.core import Array, wide

B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])
"""The input tile's transform, ``V = B^T d B`` (4x4 -> 4x4)."""
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
"""The kernel's transform, ``U = G g G^T`` (3x3 -> 4x4)."""
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]])
"""The output's transform, ``Y = A^T M A`` (4x4 -> 2x2)."""


def _mix(m: np.ndarray, parts: list) -> list:
    """``[sum_a m[k, a] parts[a] for each row k]`` of a constant matrix, its zeros skipped."""
    out = []
    for row in m:
        terms = [p if c == 1 else -p if c == -1 else float(c) * p
                 for c, p in zip(row, parts) if c]
        out.append(sum(terms[1:], terms[0]))
    return out


def _tile_counts(g: geo.Window) -> tuple[int, int]:
    """Tiles down and across: one per 2x2 block of outputs, the last one partly past them."""
    return -(-g.out_hw[0] // 2), -(-g.out_hw[1] // 2)


def _pad_to(x: Array, h: int, w: int) -> Array:
    """Crop or zero-extend the spatial axes of an NHWC array to ``(h, w)`` (bottom, right)."""
    return lax.pad(x, jnp.zeros((), x.dtype),
                   ((0, 0, 0), (0, h - x.shape[1], 0), (0, w - x.shape[2], 0), (0, 0, 0)))


def _taps(a: Array, axis: int, tiles: int) -> list:
    """Entry ``r`` (0-3) of every tile along ``axis``: ``a[2 i + r]`` for tile ``i``."""
    return [lax.slice_in_dim(a, r, r + 2 * tiles - 1, stride=2, axis=axis) for r in range(4)]


def _add_back(parts: list, axis: int) -> Array:
    """The transpose of ``_taps``: ``out[2 i + r] += parts[r][i]``, ``tiles -> 2 tiles + 2``
    along ``axis``.  Written as reads: even positions get entries 0 and 2 (of the tile before),
    odd ones 1 and 3; the two phases interleave by a reshape."""
    def shifted(p, before):
        config = [(0, 0, 0)] * p.ndim
        config[axis] = (before, 1 - before, 0)
        return lax.pad(p, jnp.zeros((), p.dtype), config)

    even = shifted(parts[0], 0) + shifted(parts[2], 1)
    odd = shifted(parts[1], 0) + shifted(parts[3], 1)
    return _interleave([even, odd], axis)


def _interleave(parts: list, axis: int) -> Array:
    """``out[2 i + r] = parts[r][i]`` along ``axis``: two phases into one axis twice as long."""
    both = jnp.stack(parts, axis=axis + 1)
    shape = list(parts[0].shape)
    shape[axis] *= 2
    return both.reshape(shape)


def _phases(a: Array, axis: int) -> list:
    """The transpose of ``_interleave``: ``[a[0::2], a[1::2]]`` along ``axis``."""
    return [lax.slice_in_dim(a, r, a.shape[axis], stride=2, axis=axis) for r in range(2)]


def _sandwich(m: np.ndarray, grid: list) -> list:
    """``m grid m^T`` for a grid (a list of lists) of arrays: entry ``[i][j]`` is ``sum_ab
    m[i, a] m[j, b] grid[a][b]``, one axis at a time."""
    cols = [_mix(m, row) for row in grid]                     # (grid m^T)[a][j]
    per_j = [_mix(m, [c[j] for c in cols]) for j in range(m.shape[0])]
    return [list(row) for row in zip(*per_j)]


def _stack(grid: list) -> Array:
    """A 4x4 grid of ``(N, th, tw, K)`` arrays as ``(16, N th tw, K)``, row-major."""
    return jnp.stack([a.reshape(-1, a.shape[-1]) for row in grid for a in row])


def _grid(a: Array, shape: tuple) -> list:
    """The transpose of ``_stack``: ``(16, ..., K)`` as a 4x4 grid of ``shape + (K,)`` arrays."""
    return [[a[4 * i + j].reshape(*shape, a.shape[-1]) for j in range(4)] for i in range(4)]


def input_tiles(x: Array, g: geo.Window) -> Array:
    """``V = B^T d B`` of every tile ``d`` of the padded input: ``(16, N th tw, C)``, the 16
    entries of the transformed tile first (eq. 4.14)."""
    th, tw = _tile_counts(g)
    x_pad = _pad_to(geo.pad(x, g), 2 * th + 2, 2 * tw + 2)
    d = [_taps(r, 2, tw) for r in _taps(x_pad, 1, th)]        # d[a][b], (N, th, tw, C)
    return _stack(_sandwich(B_T, d))


def kernel_tiles(w: Array) -> Array:
    """``U = G g G^T`` of the kernel: ``(16, C, F)`` (eq. 4.14)."""
    return jnp.stack([u for row in _sandwich(G, [list(w[p]) for p in range(3)]) for u in row])


def _in_float32(pass_):
    """The pass computed in float32 where its operands are 16-bit, its result in their dtype."""
    @functools.wraps(pass_)
    def run(a: Array, b: Array, g: geo.Window, *, precision=None) -> Array:
        acc = wide(a.dtype)
        if acc == a.dtype:
            return pass_(a, b, g, precision=precision)
        return pass_(a.astype(acc), b.astype(acc), g, precision=precision).astype(a.dtype)
    return run


@_in_float32
def forward(x: Array, w: Array, g: geo.Window, *, precision=None) -> Array:
    """Eq. 4.14, the forward (4.2): ``M = V U`` per transformed entry, then ``Y = A^T M A``.
    ``x (N, H, W, C)``, ``w (3, 3, C, F)`` -> ``(N, H_out, W_out, F)``."""
    n, (th, tw) = x.shape[0], _tile_counts(g)
    m = lax.dot_general(input_tiles(x, g), kernel_tiles(w), (((2,), (1,)), ((0,), (0,))),
                        precision=precision)                  # (16, N th tw, F)
    y = _sandwich(A_T, _grid(m, (n, th, tw)))                 # y[r][c], (N, th, tw, F)
    y = _interleave([_interleave(row, 2) for row in y], 1)    # (N, 2 th, 2 tw, F)
    return y[:, :g.out_hw[0], :g.out_hw[1]]


def output_residual(delta: Array, g: geo.Window) -> Array:
    """Eq. 4.15, the transpose of ``Y = A^T M A``: ``dM = A delta A^T`` per tile, ``(16, N th
    tw, F)``; the outputs past ``(H_out, W_out)`` in the last tiles get zero."""
    th, tw = _tile_counts(g)
    d = _pad_to(delta, 2 * th, 2 * tw)
    return _stack(_sandwich(A_T.T, [_phases(r, 2) for r in _phases(d, 1)]))


@_in_float32
def kernel_grad(x: Array, delta: Array, g: geo.Window, *, precision=None) -> Array:
    """Eq. 4.16, the kernel gradient (4.4): ``dU = V^T dM`` per transformed entry, summed over
    every tile of the batch, then ``dg = G^T dU G``.  ``x (N, H, W, C)``, ``delta (N, H_out,
    W_out, F)`` -> ``dw (3, 3, C, F)``.  ``V`` is rebuilt from ``x`` (the layer caches ``x``,
    as for every form); in one jitted step XLA computes it once with the forward's."""
    du = lax.dot_general(input_tiles(x, g), output_residual(delta, g),
                         (((1,), (1,)), ((0,), (0,))), precision=precision)   # (16, C, F)
    dw = _sandwich(G.T, _grid(du, (x.shape[3],)))             # dw[p][q], (C, F)
    return jnp.stack([jnp.stack(row) for row in dw])


@_in_float32
def input_residual(delta: Array, w: Array, g: geo.Window, *, precision=None) -> Array:
    """Eq. 4.17, the input residual (4.5): ``dV = dM U^T`` per transformed entry, ``dd = B dV
    B^T`` per tile, and each tile's 16 entries added back where ``input_tiles`` read them;
    the padding gets none.  ``delta (N, H_out, W_out, F)``, ``w (3, 3, C, F)`` -> ``dx (N, H,
    W, C)``."""
    n, (th, tw) = delta.shape[0], _tile_counts(g)
    dv = lax.dot_general(output_residual(delta, g), kernel_tiles(w),
                         (((2,), (2,)), ((0,), (0,))), precision=precision)   # (16, N th tw, C)
    dd = _sandwich(B_T.T, _grid(dv, (n, th, tw)))             # dd[a][b], (N, th, tw, C)
    dx_pad = _add_back([_add_back(row, 2) for row in dd], 1)  # (N, 2 th + 2, 2 tw + 2, C)
    return geo.unpad(_pad_to(dx_pad, *g.padded_hw), g)

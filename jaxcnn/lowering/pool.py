"""Faster forms of average and max pooling, each a lowering of ``jaxcnn.reference.pool``.

- ``window_sums``: eq. 5.1's sums without stacking the windows -- the ``K`` strided slices
  added (XLA fuses them into one pass), or one ``lax.reduce_window`` for a large window.
- ``spread``: eq. 5.2 -- for windows that tile the input, a broadcast of each window's share
  over its block (UFLDL's "upsample"); otherwise the scatter as reads of eq. 5.9.
- ``max_pool``: eq. 5.3 by ``lax.reduce_window``, the form ``jax.grad`` differentiates (its
  transpose routes to the first maximum, as eq. 5.4); for a dilated window, which ``jax.grad``
  of ``lax.reduce_window`` cannot take, the select of eq. 5.13 (``max_pool_by_index``).

Each is proven equal to the reference in ``tests/test_lowerings.py``.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn import _geometry as geo
from jaxcnn.core import Array
from jaxcnn.reference import pool as ref

SLICE_SUM_LIMIT = 16
"""Windows of at most this many positions are summed as strided slices; larger ones by one
``lax.reduce_window`` (``docs/performance.md#why-avg-pool-sums``)."""


def window_sums(x: Array, g: geo.Window) -> Array:
    """``sum_{(u,v) in R_ij} x_pad[n,u,v,c]`` (eq. 5.1's numerator), padding zero:
    ``(N, H, W, C) -> (N, H_out, W_out, C)``."""
    if g.count <= SLICE_SUM_LIMIT:
        return geo.sum_windows(geo.pad(x, g), g)
    return lax.reduce_window(x, np.zeros((), x.dtype), lax.add, (1, *g.size, 1),
                             (1, *g.strides, 1), ((0, 0), *g.padding, (0, 0)))


def spread(share: Array, g: geo.Window) -> Array:
    """Eq. 5.2 for a given ``share = delta / |R|``: each window's share added to every position
    it covers, ``(N, H_out, W_out, C) -> dx (N, H, W, C)``."""
    if g.strides != g.size:                           # overlapping or gapped windows
        return geo.unpad(geo.spread_windows(share, g), g)                    # eq. 5.9
    (kh, kw), (hp, wp) = g.size, g.padded_hw
    n, ho, wo, c = share.shape
    tiled = jnp.broadcast_to(share[:, :, None, :, None, :], (n, ho, kh, wo, kw, c))
    tiled = tiled.reshape(n, ho * kh, wo * kw, c)
    # rows and columns past the last window (a VALID remainder) get no residual
    return geo.unpad(lax.pad(tiled, jnp.zeros((), tiled.dtype),
                             ((0, 0, 0), (0, hp - ho * kh, 0), (0, wp - wo * kw, 0), (0, 0, 0))),
                     g)


def max_pool(x: Array, g: geo.Window) -> Array:
    """Eq. 5.3 as one ``lax.reduce_window``; padded positions hold ``-inf``.  A dilated window
    goes to ``max_pool_by_index``: ``jax.vjp`` of ``lax.reduce_window`` max with
    ``window_dilation`` raises ``NotImplementedError`` (jax 0.10)."""
    if g.dilation != (1, 1):
        return max_pool_by_index(x, g)
    # a NumPy init value lets lax recognise the max monoid, which jax.grad can transpose
    return lax.reduce_window(x, np.array(-np.inf, x.dtype), lax.max, (1, *g.size, 1),
                             (1, *g.strides, 1), ((0, 0), *g.padding, (0, 0)))


def max_pool_by_index(x: Array, g: geo.Window) -> Array:
    """Eq. 5.13: each window's output is its tap at the position eq. 5.4 routes to (the
    ``index`` of ``jaxcnn.reference.pool.max_forward``, an integer: no derivative), read by a
    select over the ``K`` tap slices, so ``jax.grad`` routes delta exactly as eq. 5.4 -- the
    first maximum, or the NaN rule -- where a max over the stacked taps (``jnp.max``) would
    split it among tied maxima.  NaN where the window holds one, as eq. 5.3."""
    y, index = ref.max_forward(x, g)
    chosen = lax.select_n(index, *geo.window_slices(geo.pad(x, g, -jnp.inf), g))
    nan, zero = jnp.asarray(jnp.nan, x.dtype), jnp.zeros((), x.dtype)
    return chosen + jnp.where(jnp.isnan(y), nan, zero)

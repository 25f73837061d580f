"""Pooling as the textbook writes it: eqs. 5.1-5.8 of ``docs/derivation.md``.

Every forward gathers the windows (3.3) and reduces each one -- a mean, a max, a sample, a
weighted mean -- and every backward gives each window entry its share of the window's delta
and adds the shares back where they were read (3.4): the routes of Section 5.  No lowering, no
switch: the pooling layers' fast forms (``jaxcnn.lowering.pool``) are proven equal to these.

Shapes: input ``x (N, H, W, C)``, output and ``delta (N, H_out, W_out, C)``, ``index`` the window
position ``k < K`` each output took (row-major, ``(N, H_out, W_out, C)`` ints); ``g`` the window's
placement (``geo.Window``).  Backward passes return ``dx (N, H, W, C)``: the residual on the
padding is dropped.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxcnn import _geometry as geo
from jaxcnn.core import Array, wide


def window_size(g: geo.Window, count_include_pad: bool, dtype) -> Array:
    """``|R_ij|`` of eqs. 5.1 and 5.12: ``kh kw``, or (``count_include_pad=False``) the number
    of real input positions in each window, ``(1, H_out, W_out, 1)``; in ceil mode the
    overhang is never counted.  Geometry only, never data."""
    if count_include_pad and g.overhang == (0, 0):
        return jnp.asarray(g.count, dtype)
    return jnp.asarray(geo.window_counts(g, count_include_pad)[None, :, :, None], dtype)


def avg_forward(x: Array, g: geo.Window, size: Array) -> Array:
    """Eq. 5.1: ``y[n,i,j,c] = sum_{(u,v) in R_ij} x_pad[n,u,v,c] / |R_ij|``, padding zero."""
    return jnp.sum(geo.windows(geo.pad(x, g), g), axis=3) / size


def avg_backward(delta: Array, g: geo.Window, size: Array) -> Array:
    """Eq. 5.2: every entry of window ``(i, j)`` gets ``delta[n,i,j,c] / |R_ij|``; overlaps add."""
    share = delta / size
    shares = jnp.broadcast_to(share[:, :, :, None, :], (*share.shape[:3], g.count,
                                                         share.shape[3]))
    return geo.unpad(geo.scatter_windows(shares, g), g)


def max_forward(x: Array, g: geo.Window) -> tuple[Array, Array]:
    """Eq. 5.3: ``y = max_{R_ij} x_pad`` with ``-inf`` padding, and ``index``, the window
    position eq. 5.4 routes delta to.

    ``index`` is the choice of ``jax.vjp`` of ``lax.reduce_window`` max (XLA's select and
    scatter): scan the window in row-major order, padding included, and keep the current
    choice while ``current >= candidate``.  Without NaN that is the *first* maximum.  A NaN
    compares false both ways, so the choice moves onto a NaN and off it again at the next
    position: the first maximum of the entries after the window's last NaN, or that NaN if it
    is the last entry.  ``y`` is NaN wherever the window holds one, as ``lax.max`` makes it.
    A dilated window is scanned over its taps, ``d`` apart, in the same order (eq. 5.13);
    in ceil mode the overhang is padding, ``-inf`` (eq. 5.11).
    """
    slices = list(geo.window_slices(geo.pad(x, g, -jnp.inf), g))
    y = best = slices[0]
    index = jnp.zeros(best.shape, jnp.int32)
    for k, a in enumerate(slices[1:], 1):
        y = jnp.maximum(y, a)                                  # NaN wins, as in lax.max
        move = ~(best >= a)                                    # a NaN on either side moves
        best, index = jnp.where(move, a, best), jnp.where(move, k, index)
    return y, _stored(index)


def _stored(index: Array) -> Array:
    """``index`` unchanged (it is >= 0), as the output of a reduction, which XLA computes once
    and stores.  The scan that makes it is elementwise, and XLA fuses an elementwise result
    into every reader: the route reads each window's index once per tap and would run the
    scan ``K`` times."""
    return jnp.max(jnp.stack([index, jnp.zeros_like(index)]), axis=0)


def route(index: Array, delta: Array, g: geo.Window) -> Array:
    """Eqs. 5.4 and 5.6: each window's whole delta goes to its position ``index``; a position
    chosen by several overlapping windows receives the sum."""
    k = jnp.arange(g.count, dtype=index.dtype).reshape(1, 1, 1, -1, 1)
    shares = jnp.where(index[:, :, :, None, :] == k, delta[:, :, :, None, :], 0)
    return geo.unpad(geo.scatter_windows(shares, g), g)


def take(windows: Array, index: Array) -> Array:
    """``windows[n, i, j, index[n, i, j, c], c]``: the entry each window chose."""
    return jnp.take_along_axis(windows, index[:, :, :, None, :], axis=3)[:, :, :, 0, :]


def stochastic_sample(x: Array, g: geo.Window, key: Array) -> tuple[Array, Array]:
    """Eq. 5.5 by the inverse of each window's cumulative distribution: ``(y, index)``.

    With ``c_k`` the sum of the window's positive entries up to position ``k`` (row-major) and
    ``u ~ U[0, 1)``, one per window, ``k`` is the first position with ``c_k > u S``,
    ``S = c_{K-1}``, so ``P(k) = a_k / S``.  Counting the positions passed,
    ``sum_k [c_k <= u S and c_k < S]``, never passes the last positive entry, even where
    ``u S`` rounds up to ``S``; a window with ``S = 0`` takes position 0.  The entries are
    scaled by ``2^-ceil(log2 K)`` first: exactly (a power of two), the same ``p_k``, and a sum
    of ``K`` of them cannot overflow.  One uniform number per window and ``K`` compares on the
    ``K`` window slices (``docs/performance.md#why-stochastic-sampler``).  Unpadded windows."""
    slices = list(geo.window_slices(x, g))
    scale = 2.0 ** -math.ceil(math.log2(len(slices)))
    positive = [jnp.maximum(a, 0) * scale for a in slices]
    cum = [positive[0]]
    for a in positive[1:]:
        cum.append(cum[-1] + a)
    total = cum[-1]
    threshold = jax.random.uniform(key, total.shape, total.dtype) * total
    index = sum((((c <= threshold) & (c < total)).astype(jnp.int32) for c in cum[:-1]),
                jnp.zeros(total.shape, jnp.int32))              # a 1x1 window: position 0
    y = slices[0]
    for k, a in enumerate(slices[1:], 1):
        y = jnp.where(index == k, a, y)
    return y, index


def stochastic_expectation(x: Array, g: geo.Window) -> Array:
    """Eq. 5.7, test time: ``y = sum(a^2) / S`` per window, ``S = sum(a)``; 0 where ``S = 0``
    (the inner ``where`` keeps the untaken branch finite, so autodiff agrees with 5.8).
    Computed as ``m sum(r^2) / sum(r)`` with ``r = a / m``, ``m`` the window's largest
    ``|a|`` -- the same number, no square overflowing or underflowing -- in float32 for a
    16-bit input."""
    y, *_ = _expectation(x, g)
    return y.astype(x.dtype)


def _expectation(x: Array, g: geo.Window) -> tuple[Array, list, Array, Array]:
    """Eq. 5.7's ``y``, the window slices ``r_k`` divided by their largest ``|a|``, ``m``,
    ``sum(r)`` and ``m``; float32 for a 16-bit ``x``.  Slice by slice, one loop (and a true
    division: XLA's CPU divides by a broadcast through its reciprocal, which is flushed to zero
    for a divisor above 2^126)."""
    slices = list(geo.window_slices(x.astype(wide(x.dtype)), g))
    top = functools.reduce(jnp.maximum, [jnp.abs(a) for a in slices])
    # y does not depend on m (it scales with the window), so autodiff holds m constant: its
    # two paths through m would cancel exactly, and in floating point overflow (1 / m^2)
    top = jax.lax.stop_gradient(jnp.where(top > 0, top, 1))
    r = [a / top for a in slices]
    s = sum(r[1:], r[0])
    squares = sum((v * v for v in r[1:]), r[0] * r[0])
    return jnp.where(s > 0, top * (squares / jnp.where(s > 0, s, 1)), 0), r, s, top


def _kept(v: Array) -> Array:
    """``v`` unchanged, as the output of a reduction (``_stored``'s device): computed once, not
    again inside each of the ``K`` slopes that read it."""
    return jnp.max(jnp.stack([v, v]), axis=0)


def stochastic_expectation_backward(x: Array, delta: Array, g: geo.Window) -> Array:
    """Eq. 5.8: ``dy/da_k = (2 a_k - y) / S`` (0 where ``S = 0``), scattered as in 3.4; as
    eq. 5.7, on the windows divided by their largest ``|a|``: ``(2 r_k - y / m) / sum(r)``."""
    y, r, s, top = _expectation(x, g)
    share = jnp.where(s > 0, delta.astype(y.dtype) / jnp.where(s > 0, s, 1), 0)
    level, share = _kept(y / top), _kept(share)
    shares = jnp.stack([(2 * v - level) * share for v in r], axis=3)
    return geo.unpad(geo.scatter_windows(shares.astype(delta.dtype), g), g)

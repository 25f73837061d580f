"""Pooling: average (eqs. 5.1-5.2), max (5.3-5.4) and stochastic (5.5-5.8), each with its
hand-written backward.

Shapes: input ``x (N, H, W, C)``, output and ``delta (N, H_out, W_out, C)`` with ``H_out`` from
eq. 3.1; strides default to the window, and overlapping windows (stride < window) are allowed --
where windows overlap, the residuals they pass back add up (eq. 3.4).  The three layers share
``_pool_layer`` (checks, geometry, the layer protocol) and differ only in their pair of passes.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn import _geometry as geo
from jaxcnn.core import (Array, Layer, Static, check_delta, check_input, check_input_shape,
                         check_no_params, config, pair)


class PoolCache(NamedTuple):
    """What a pooling forward saves.

    ``input``: the input's shape and dtype (static, a ``jax.ShapeDtypeStruct``).  ``index``: the window position each output took its
    value from (max: the first maximum; stochastic, training: the sampled one), ``(N, H_out,
    W_out, C)`` ints, or ``None``.  ``x``: the input, kept only by stochastic pooling at test
    time, whose derivative depends on every entry of the window (eq. 5.8); ``None`` otherwise.
    """

    input: Static
    index: Array | None = None
    x: Array | None = None


def _pool_layer(name: str, window, strides, padding,
                forward: Callable[[Array, geo.Window, Array | None, bool], tuple[Array, PoolCache]],
                backward: Callable[[PoolCache, Array, geo.Window], Array],
                apply: Callable[[Array, geo.Window, Array | None, bool], Array] | None = None,
                ) -> Layer:
    """The layer protocol around one pair of pooling passes over padded windows.

    ``backward`` returns the residual on the *padded* input; cropping it (eq. 3.4) is shared.
    """
    window = pair(name, "window", window)
    strides = window if strides is None else pair(name, "strides", strides)
    padding = geo.normalize_padding(name, padding)

    def geometry(in_hw) -> geo.Window:
        g = geo.window(name, in_hw, window, strides, (1, 1), padding)
        if any(p >= k for (lo, hi), k in zip(g.padding, window) for p in (lo, hi)):
            raise ValueError(f"{name}: padding {g.padding} must be smaller than the window "
                             f"{window} on each side, so every window holds an input position")
        return g

    def init(key, input_shape):
        h, w, c = check_input_shape(name, input_shape, 3, "(H, W, C)")
        return (), (*geometry((h, w)).out_hw, c)

    def checked(params, x):
        check_no_params(name, params)
        check_input(name, x, 4, "(N, H, W, C)")
        return geometry(x.shape[1:3])

    def forward_(params, x, *, key=None, train=True):
        return forward(x, checked(params, x), key, train)

    def backward_(params, cache, delta):
        check_no_params(name, params)
        shape, dtype = cache.input.value.shape, cache.input.value.dtype
        g = geometry(shape[1:3])
        check_delta(name, delta, (shape[0], *g.out_hw, shape[3]), dtype)
        return (), geo.unpad(backward(cache, delta, g), g)

    def apply_(params, x, *, key=None, train=True):
        g = checked(params, x)
        return apply(x, g, key, train) if apply is not None else forward(x, g, key, train)[0]

    return Layer(init, forward_, backward_, apply_, name, config=config(
        kind="window", size=window, strides=strides, dilation=(1, 1), padding=padding))


def _static(x: Array) -> Static:
    return Static(jax.ShapeDtypeStruct(x.shape, x.dtype))


def _route(index: Array, delta: Array, g: geo.Window) -> Array:
    """Send each window's delta to one position of it: the residual on the padded input.

    ``index, delta (N, H_out, W_out, C)`` -> ``(N, Hp, Wp, C)`` (eqs. 5.4 and 5.6).
    """
    one_hot = index[:, :, :, None, :] == jnp.arange(g.count, dtype=index.dtype).reshape(1, 1, 1, -1, 1)
    return geo.scatter_windows(jnp.where(one_hot, delta[:, :, :, None, :], 0), g)


def _take(windows: Array, index: Array) -> Array:
    """``windows[n, i, j, index[n, i, j, c], c]``."""
    return jnp.take_along_axis(windows, index[:, :, :, None, :], axis=3)[:, :, :, 0, :]


# --- average pooling -------------------------------------------------------------------------

def AvgPool2D(window, strides=None, padding="VALID", count_include_pad: bool = True) -> Layer:
    """Average pooling: each output is the mean of its window (eq. 5.1).

    Args:
      window: ``(kh, kw)`` or an int.  strides: defaults to the window.
      padding: ``"VALID"``, ``"SAME"`` or ``((top, bottom), (left, right))``, each side
        smaller than the window.
      count_include_pad: ``True`` (default, as Flax's ``avg_pool`` and PyTorch) divides every
        window by ``kh * kw``, padded zeros included; ``False`` divides by the number of real
        input positions in the window (Keras' ``"SAME"``).

    Backward (eq. 5.2): delta is spread evenly over each window, ``delta / |R|`` to every
    position, and overlapping windows add up; for non-overlapping windows this is a broadcast,
    otherwise sums of shifted copies of delta, side by side for every stride phase (eq. 5.9).
    """
    name = "AvgPool2D"

    def divisor(g: geo.Window, dtype):
        if count_include_pad:
            return jnp.asarray(g.count, dtype)
        return jnp.asarray(geo.window_counts(g)[None, :, :, None], dtype)

    def forward(x, g, key, train):
        if g.count <= 16:       # K strided slices, fused into one pass: faster on CPU
            total = geo.sum_windows(geo.pad(x, g), g)
        else:                   # a large window: one op, not K
            total = lax.reduce_window(x, np.zeros((), x.dtype), lax.add, (1, *g.size, 1),
                                      (1, *g.strides, 1), ((0, 0), *g.padding, (0, 0)))
        return total / divisor(g, x.dtype), PoolCache(_static(x))                 # eq. 5.1

    def backward(cache, delta, g):
        share = delta / divisor(g, delta.dtype)                                   # eq. 5.2
        if g.strides != g.size:                       # overlapping or gapped windows
            return geo.spread_windows(share, g)                                   # eq. 5.9
        (kh, kw), (hp, wp) = g.size, g.padded_hw
        n, ho, wo, c = share.shape
        tiled = jnp.broadcast_to(share[:, :, None, :, None, :], (n, ho, kh, wo, kw, c))
        tiled = tiled.reshape(n, ho * kh, wo * kw, c)
        # rows and columns past the last window (a VALID remainder) get no residual
        return lax.pad(tiled, jnp.zeros((), tiled.dtype),
                       ((0, 0, 0), (0, hp - ho * kh, 0), (0, wp - wo * kw, 0), (0, 0, 0)))

    return _pool_layer(name, window, strides, padding, forward, backward)


# --- max pooling -----------------------------------------------------------------------------

def MaxPool2D(window, strides=None, padding="VALID") -> Layer:
    """Max pooling: each output is the maximum of its window (eq. 5.3).

    Padded positions hold ``-inf`` and never win.  Backward (eq. 5.4): delta is routed to the
    window's maximum; among tied maxima to the *first* in row-major window order -- the choice
    ``jax.grad`` of ``lax.reduce_window`` max makes, so the two agree on tied inputs too.  The
    cache holds that index per output, not the input.
    """
    name = "MaxPool2D"

    def forward(x, g, key, train):
        win = geo.windows(geo.pad(x, g, -jnp.inf), g)
        index = jnp.argmax(win, axis=3)          # argmax returns the first of tied maxima
        return _take(win, index), PoolCache(_static(x), index)

    def apply(x, g, key, train):
        # a NumPy init value lets lax recognise the max monoid, which jax.grad can transpose
        return lax.reduce_window(x, np.array(-np.inf, x.dtype), lax.max, (1, *g.size, 1),
                                 (1, *g.strides, 1), ((0, 0), *g.padding, (0, 0)))

    def backward(cache, delta, g):
        return _route(cache.index, delta, g)                                      # eq. 5.4

    return _pool_layer(name, window, strides, padding, forward, backward, apply)


# --- stochastic pooling ----------------------------------------------------------------------

def _sample(x: Array, g: geo.Window, key: Array) -> tuple[Array, PoolCache]:
    """Eq. 5.5 by the inverse of each window's cumulative distribution: with ``c_k`` the sum
    of the window's positive entries up to position ``k`` (row-major) and ``u ~ U[0, 1)``, one
    per window, ``k`` is the first position with ``c_k > u S``, ``S = c_{K-1}``, so that
    ``P(k) = (c_k - c_{k-1}) / S = a_k / S``.  Counting the positions passed,
    ``sum_k [c_k <= u S and c_k < S]``, never passes the last positive entry, even where
    ``u S`` rounds up to ``S``; a window with ``S = 0`` takes position 0.  One uniform per
    window and ``K`` compares, on the ``K`` window slices without stacking them: 7x faster
    than ``jax.random.categorical`` on ``log a`` (Gumbel noise and two logarithms per entry;
    32x32x16, batch 128, measured)."""
    slices = list(geo.window_slices(x, g))
    cum = [jnp.maximum(slices[0], 0)]
    for a in slices[1:]:
        cum.append(cum[-1] + jnp.maximum(a, 0))
    total = cum[-1]
    threshold = jax.random.uniform(key, total.shape, total.dtype) * total
    index = sum(((c <= threshold) & (c < total)).astype(jnp.int32) for c in cum[:-1])
    y = slices[0]
    for k, a in enumerate(slices[1:], 1):
        y = jnp.where(index == k, a, y)
    return y, PoolCache(_static(x), index)


def StochasticPool2D(window, strides=None) -> Layer:
    """Stochastic pooling (Zeiler & Fergus 2013) over windows of non-negative activations.

    Training (``train=True``, needs ``key``; eq. 5.5): in each window, with ``S = sum(a)``, one
    position ``k`` is drawn with probability ``p_k = a_k / S`` (by the inverse of the window's
    cumulative distribution, ``_sample``) and ``y = a_k``; negative entries are never drawn, and
    a window with ``S = 0`` outputs 0 and takes its first position.
    Backward (eq. 5.6): delta is routed to the drawn position, read from the cache -- the
    backward never samples again.

    Test time (``train=False``; eq. 5.7): ``y = sum(p a) = sum(a^2) / S``, 0 where ``S = 0``,
    with its exact derivative ``dy/da_i = (2 a_i - y) / S`` (eq. 5.8; 0 where ``S = 0``).

    Inputs are expected to be >= 0 (after a ReLU or sigmoid); this is a value, not a shape,
    and is not checked under ``jit``.
    """
    name = "StochasticPool2D"

    def forward(x, g, key, train):
        if not train:
            win = geo.windows(x, g)
            s = jnp.sum(win, axis=3)
            y = jnp.where(s > 0, jnp.sum(win * win, axis=3) / jnp.where(s > 0, s, 1), 0)
            return y, PoolCache(_static(x), x=x)                             # eq. 5.7
        if key is None:
            raise ValueError(f"{name}: training mode draws one position per window and needs "
                             f"a key: forward(params, x, key=jax.random.key(...)); pass "
                             f"train=False for the test-time weighted average")
        return _sample(x, g, key)                                              # eq. 5.5

    def backward(cache, delta, g):
        if cache.index is not None:
            return _route(cache.index, delta, g)                                  # eq. 5.6
        win = geo.windows(cache.x, g)
        s = jnp.sum(win, axis=3)
        safe = jnp.where(s > 0, s, 1)
        y = jnp.where(s > 0, jnp.sum(win * win, axis=3) / safe, 0)
        slope = jnp.where((s > 0)[:, :, :, None, :],
                          (2 * win - y[:, :, :, None, :]) / safe[:, :, :, None, :], 0)
        return geo.scatter_windows(slope * delta[:, :, :, None, :], g)            # eq. 5.8

    return _pool_layer(name, window, strides, "VALID", forward, backward)

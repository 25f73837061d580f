"""Pooling: average (eqs. 5.1-5.2), max (5.3-5.4) and stochastic (5.5-5.8), each with its
hand-written backward.

Shapes: input ``x (N, H, W, C)``, output and ``delta (N, H_out, W_out, C)`` with ``H_out`` from
eq. 3.1; strides default to the window, and overlapping windows (stride < window) are allowed --
where windows overlap, the residuals they pass back add up (eq. 3.4).  The three layers share
``_pool_layer`` (checks, geometry, the layer protocol) and differ only in their pair of passes:
the textbook forms of ``jaxcnn.reference.pool``, or where one is faster the lowering of
``jaxcnn.lowering.pool`` proven equal to it.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax

from jaxcnn import _geometry as geo
from jaxcnn.core import (Array, Layer, Static, check_delta, check_input, check_input_shape,
                         check_no_params, config, pair)
from jaxcnn.lowering import pool as fast
from jaxcnn.reference import pool as ref


class PoolCache(NamedTuple):
    """What a pooling forward saves.

    ``input``: the input's shape and dtype (static, a ``jax.ShapeDtypeStruct``).  ``index``: the
    window position each output took its value from (max: the first maximum; stochastic,
    training: the sampled one), ``(N, H_out, W_out, C)`` ints, or ``None``.  ``x``: the input,
    kept only by stochastic pooling at test time, whose derivative depends on every entry of
    the window (eq. 5.8); ``None`` otherwise.
    """

    input: Static
    index: Array | None = None
    x: Array | None = None


def _pool_layer(name: str, window, strides, padding,
                forward: Callable[[Array, geo.Window, Array | None, bool], tuple[Array, PoolCache]],
                backward: Callable[[PoolCache, Array, geo.Window], Array],
                apply: Callable[[Array, geo.Window, Array | None, bool], Array] | None = None,
                ) -> Layer:
    """The layer protocol around one pair of pooling passes: ``forward(x, g, key, train) ->
    (y, cache)``, ``backward(cache, delta, g) -> dx`` and optionally ``apply``."""
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
        return (), backward(cache, delta, g)

    def apply_(params, x, *, key=None, train=True):
        g = checked(params, x)
        return apply(x, g, key, train) if apply is not None else forward(x, g, key, train)[0]

    return Layer(init, forward_, backward_, apply_, name, config=config(
        kind="window", size=window, strides=strides, dilation=(1, 1), padding=padding))


def _static(x: Array) -> Static:
    return Static(jax.ShapeDtypeStruct(x.shape, x.dtype))


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

    def forward(x, g, key, train):
        size = ref.window_size(g, count_include_pad, x.dtype)
        return fast.window_sums(x, g) / size, PoolCache(_static(x))               # eq. 5.1

    def backward(cache, delta, g):
        return fast.spread(delta / ref.window_size(g, count_include_pad, delta.dtype), g)  # 5.2

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
        y, index = ref.max_forward(x, g)                                          # eq. 5.3
        return y, PoolCache(_static(x), index)

    def backward(cache, delta, g):
        return ref.route(cache.index, delta, g)                                   # eq. 5.4

    return _pool_layer(name, window, strides, padding, forward, backward,
                       lambda x, g, key, train: fast.max_pool(x, g))


# --- stochastic pooling ----------------------------------------------------------------------

def StochasticPool2D(window, strides=None) -> Layer:
    """Stochastic pooling (Zeiler & Fergus 2013) over windows of non-negative activations.

    Training (``train=True``, needs ``key``; eq. 5.5): in each window, with ``S = sum(a)``, one
    position ``k`` is drawn with probability ``p_k = a_k / S`` (by the inverse of the window's
    cumulative distribution, ``jaxcnn.reference.pool.stochastic_sample``) and ``y = a_k``;
    negative entries are never drawn, and a window with ``S = 0`` outputs 0 and takes its
    first position.
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
            return ref.stochastic_expectation(x, g), PoolCache(_static(x), x=x)     # eq. 5.7
        if key is None:
            raise ValueError(f"{name}: training mode draws one position per window and needs "
                             f"a key: forward(params, x, key=jax.random.key(...)); pass "
                             f"train=False for the test-time weighted average")
        y, index = ref.stochastic_sample(x, g, key)                               # eq. 5.5
        return y, PoolCache(_static(x), index)

    def backward(cache, delta, g):
        if cache.index is not None:
            return ref.route(cache.index, delta, g)                               # eq. 5.6
        return ref.stochastic_expectation_backward(cache.x, delta, g)             # eq. 5.8

    return _pool_layer(name, window, strides, "VALID", forward, backward)

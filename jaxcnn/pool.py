"""Pooling: average (eqs. 5.1-5.2), max (5.3-5.4; dilated, 5.13) and stochastic (5.5-5.8),
each with its hand-written backward.

Shapes: input ``x (N, H, W, C)``, output and ``delta (N, H_out, W_out, C)`` with ``H_out`` from
eq. 3.1 (eq. 5.11 in ceil mode); strides default to the window, and overlapping windows
(stride < window) are allowed -- where windows overlap, the residuals they pass back add up
(eq. 3.4).  An empty batch (``N = 0``) gives an empty output.  The three layers share
``_pool_layer`` (checks, geometry, the layer protocol) and differ only in their pair of
passes: the textbook forms of ``jaxcnn.reference.pool``, or where one is faster the lowering
of ``jaxcnn.lowering.pool`` proven equal to it.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import _geometry as geo
from jaxcnn.core import (Array, Layer, Static, check_cache, check_delta, check_input,
                         check_input_shape, check_key, check_no_params, check_train, config, flag,
                         is_concrete, made_by, numpy_as_jax, pair, wide)
from jaxcnn.lowering import pool as fast
from jaxcnn.reference import pool as ref


class PoolCache(NamedTuple):
    """What a pooling forward saves.

    ``input``: the input's shape and dtype (static, a ``jax.ShapeDtypeStruct``).  ``index``: the
    window position each output routes its delta to (max: the first maximum, or by the NaN rule
    of ``jaxcnn.reference.pool.max_forward``; stochastic, training: the sampled one),
    ``(N, H_out, W_out, C)`` ints, or ``None``.  ``x``: the input,
    kept only by stochastic pooling at test time, whose derivative depends on every entry of
    the window (eq. 5.8); ``None`` otherwise.
    """

    input: Static
    index: Array | None = None
    x: Array | None = None
    layer: Static | None = None         # core.made_by: another pooling's routes are not ours


def _pool_layer(name: str, window, strides, padding,
                forward: Callable[[Array, geo.Window, Array | None, bool], tuple[Array, PoolCache]],
                backward: Callable[[PoolCache, Array, geo.Window], Array],
                apply: Callable[[Array, geo.Window, Array | None, bool], Array] | None = None,
                dilation=1, ceil_mode: bool = False, infinite: bool = False,
                **settings) -> Layer:
    """The layer protocol around one pair of pooling passes: ``forward(x, g, key, train) ->
    (y, cache)``, ``backward(cache, delta, g) -> dx`` and optionally ``apply``.  ``infinite``:
    the passes pad with ``-inf``, so a dtype without one (``float8_e4m3fn``) is refused.
    ``settings``: the layer's own, for its ``config`` (``count_include_pad``)."""
    window = pair(name, "window", window)
    strides = window if strides is None else pair(name, "strides", strides)
    dilation = pair(name, "dilation", dilation)
    padding = geo.normalize_padding(name, padding)
    ceil_mode = _check_ceil_mode(name, ceil_mode, padding, window)

    def geometry(in_hw) -> geo.Window:
        g = geo.window(name, in_hw, window, strides, dilation, padding, ceil_mode)
        pads = g.requested_padding
        if any(p >= k for (lo, hi), k in zip(pads, window) for p in (lo, hi)):
            chosen = f'"{padding}" pads {pads}' if isinstance(padding, str) else f"padding {pads}"
            raise ValueError(f"{name}: {chosen}, which must be smaller than the window "
                             f"{window} on each side, so that every window holds an input "
                             f"position")
        if dilation != (1, 1):
            _check_dilated_windows(name, g)
        return g

    def init(key, input_shape):
        h, w, c = check_input_shape(name, input_shape, 3, "(H, W, C)")
        return (), (*geometry((h, w)).out_hw, c)

    def checked(params, x):
        check_no_params(name, params)
        check_input(name, x, 4, "(N, H, W, C)")
        if min(x.shape[1:3]) < 1:           # padding could make room for a window of nothing
            raise ValueError(f"{name}: expected a map of height and width >= 1, got "
                             f"{tuple(x.shape[1:3])} (input of shape {tuple(x.shape)})")
        if infinite and not np.isinf(np.array(-np.inf, x.dtype)):
            raise TypeError(f"{name}: dtype {x.dtype} has no infinity, which max pooling pads "
                            f"and starts its max with; cast the input to a dtype with one "
                            f"(float16, bfloat16, float32)")
        return geometry(x.shape[1:3])

    layer_config = config(kind="window", size=window, strides=strides, dilation=dilation,
                          padding=padding, ceil_mode=ceil_mode, **settings)
    tag = made_by(name, layer_config)

    def forward_(params, x, *, key=None, train=True):
        y, cache = forward(x, checked(params, x), key, train)
        return y, cache._replace(layer=tag)

    def backward_(params, cache, delta):
        check_no_params(name, params)
        check_cache(name, cache, PoolCache, tag)
        shape, dtype = cache.input.value.shape, cache.input.value.dtype
        g = geometry(shape[1:3])
        check_delta(name, delta, (shape[0], *g.out_hw, shape[3]), dtype)
        return (), backward(cache, delta, g)

    def apply_(params, x, *, key=None, train=True):
        g = checked(params, x)
        return apply(x, g, key, train) if apply is not None else forward(x, g, key, train)[0]

    return numpy_as_jax(Layer(init, forward_, backward_, apply_, name, config=layer_config))


def _check_ceil_mode(name: str, ceil_mode, padding, window) -> bool:
    """``ceil_mode`` as a bool; with it, each requested pad is at most half the window, as
    PyTorch asks (``"SAME"`` chooses its own pads, and ceil mode changes nothing there)."""
    ceil_mode = flag(name, "ceil_mode", ceil_mode)
    if ceil_mode and not isinstance(padding, str):
        half = tuple(k // 2 for k in window)
        if any(p > h for pads, h in zip(padding, half) for p in pads):
            raise ValueError(f"{name}: with ceil_mode, padding {padding} must be at most half "
                             f"the window {window} on each side (<= {half}), as PyTorch")
    return ceil_mode


def _check_dilated_windows(name: str, g: geo.Window) -> None:
    """Every dilated window holds an input position: its taps can straddle the input and
    read only padding, which no max could route a delta from (PyTorch outputs ``-inf``)."""
    empty = np.argwhere(geo.window_counts(g) == 0)
    if empty.size:
        i, j = (int(v) for v in empty[0])
        raise ValueError(f"{name}: window ({i}, {j}) of {g.out_hw} reads only padding: "
                         f"{g.size} taps dilated by {g.dilation} over input {g.in_hw} padded "
                         f"by {g.requested_padding}; pad less or dilate less")


def _check_non_negative(name: str, x) -> None:
    """Stochastic pooling's domain, checked where ``x`` holds values (not under ``jit``): finite
    (a NaN or an infinity in a window's sum ``S`` would decide its draw silently), >= 0."""
    if is_concrete(x) and x.size:
        if not bool(jnp.isfinite(x).all()):
            raise ValueError(f"{name}: inputs must be finite (each window is a distribution "
                             f"over its entries, eq. 5.5), got "
                             f"{int((~jnp.isfinite(x)).sum())} NaN or infinite entries")
        low = float(jnp.min(x))
        if low < 0:
            raise ValueError(f"{name}: inputs must be >= 0 (each window is a distribution over "
                             f"its entries, eq. 5.5), got a most negative entry of {low} -- "
                             f"put a ReLU or a sigmoid before it")


def _static(x: Array) -> Static:
    return Static(jax.ShapeDtypeStruct(x.shape, x.dtype))


# --- average pooling -------------------------------------------------------------------------

def AvgPool2D(window, strides=None, padding="VALID", count_include_pad: bool = True,
              ceil_mode: bool = False) -> Layer:
    """Average pooling: each output is the mean of its window (eq. 5.1).

    Args:
      window: ``(kh, kw)`` or an int.  strides: defaults to the window.
      padding: ``"VALID"``, ``"SAME"`` or ``((top, bottom), (left, right))``, each side
        smaller than the window.
      count_include_pad: ``True`` (default, as Flax's ``avg_pool`` and PyTorch) divides every
        window by ``kh * kw``, padded zeros included; ``False`` divides by the number of real
        input positions in the window (Keras' ``"SAME"``).
      ceil_mode: round the output size up, as PyTorch's ``ceil_mode=True`` (eq. 5.11): one
        more, partial window where the strides leave input rows or columns unread, starting
        inside the input or its top/left padding; each requested pad then at most half the
        window.  The part of the last window past the padding (the overhang) reads zeros and
        is never counted in the divisor, even with ``count_include_pad`` (eq. 5.12, as
        PyTorch).  With ``"SAME"``, which already rounds up, it changes nothing.

    Backward (eq. 5.2): delta is spread evenly over each window, ``delta / |R|`` to every
    position, and overlapping windows add up; for non-overlapping windows this is a broadcast,
    otherwise sums of shifted copies of delta, side by side for every stride phase (eq. 5.9).
    The overhang's share is cropped with the padding's (eq. 3.4).
    """
    name = "AvgPool2D"
    count_include_pad = flag(name, "count_include_pad", count_include_pad)

    def forward(x, g, key, train):
        acc = wide(x.dtype)                                   # 16-bit windows: float32
        size = ref.window_size(g, count_include_pad, acc)                         # eq. 5.12
        y = fast.window_sums(x.astype(acc), g) / size                             # eq. 5.1
        return y.astype(x.dtype), PoolCache(_static(x))

    def backward(cache, delta, g):          # |R| in float32 at least: float16 holds < 65520
        acc = wide(delta.dtype)
        share = delta.astype(acc) / ref.window_size(g, count_include_pad, acc)
        return fast.spread(share.astype(delta.dtype), g)                          # eq. 5.2

    return _pool_layer(name, window, strides, padding, forward, backward,
                       ceil_mode=ceil_mode, count_include_pad=count_include_pad)


# --- max pooling -----------------------------------------------------------------------------

def MaxPool2D(window, strides=None, padding="VALID", dilation=1,
              ceil_mode: bool = False) -> Layer:
    """Max pooling: each output is the maximum of its window (eq. 5.3).

    Args:
      window: ``(kh, kw)`` or an int.  strides: defaults to the window.
      padding: ``"VALID"``, ``"SAME"`` or ``((top, bottom), (left, right))``, each side
        smaller than the window.
      dilation: ``(dh, dw)`` or an int: the window reads taps ``d`` apart, an extent of
        ``d (k - 1) + 1`` (eq. 5.13; PyTorch's ``dilation``).  Every window must hold an input
        position (a ``ValueError`` names the first that reads only padding).
      ceil_mode: round the output size up, as PyTorch's ``ceil_mode=True`` (eq. 5.11): the
        last window may reach past the padding, and its overhang holds ``-inf`` as padding
        does; each requested pad then at most half the window.  With ``"SAME"``, which already
        rounds up, it changes nothing.

    Padded positions hold ``-inf`` and never win.  Backward (eq. 5.4): delta is routed to the
    window's maximum; among tied maxima to the *first* in row-major window order -- the choice
    ``jax.grad`` of ``lax.reduce_window`` max makes, so the two agree on tied inputs too.  The
    cache holds that index per output, not the input.  A dilated window routes the same way
    among its taps, to input position ``i s + p d - lo`` (eq. 5.13), where ``jax.grad`` of
    ``lax.reduce_window`` is not implemented; its ``apply`` is then the select of eq. 5.13,
    which ``jax.grad`` differentiates to the same route.

    NaN: a window holding one outputs NaN (as ``apply``'s ``lax.reduce_window``), and its delta
    goes where ``jax.grad`` sends it: to the first maximum of the entries after the window's
    last NaN, or to that NaN if it is the window's last entry (``derivation.md``, eq. 5.4).
    """
    name = "MaxPool2D"

    def forward(x, g, key, train):
        y, index = ref.max_forward(x, g)                                          # eq. 5.3
        return y, PoolCache(_static(x), index)

    def backward(cache, delta, g):
        return ref.route(cache.index, delta, g)                                   # eq. 5.4

    return _pool_layer(name, window, strides, padding, forward, backward,
                       lambda x, g, key, train: fast.max_pool(x, g), dilation, ceil_mode,
                       infinite=True)


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

    Inputs must be finite and >= 0 (after a ReLU or sigmoid): each window is a distribution
    over its entries.  A concrete input is checked (``ValueError`` naming the most negative
    entry, or the count of NaN and infinite ones); a traced one (under ``jit``, ``grad``,
    ``vmap``) cannot be, and then a negative entry is never drawn in training (eq. 5.5 samples
    by ``max(a, 0)``; a window with no positive entry outputs its first entry; a NaN or an
    infinity in a window makes its draw arbitrary), while at test time eq. 5.7 divides by
    ``S = sum(a)`` with the negative entries counted, so ``y`` may leave the window's range
    (0 where ``S <= 0``, NaN or infinite).
    """
    name = "StochasticPool2D"

    def forward(x, g, key, train):
        _check_non_negative(name, x)
        if not check_train(name, train):
            return ref.stochastic_expectation(x, g), PoolCache(_static(x), x=x)     # eq. 5.7
        if key is None:
            raise ValueError(f"{name}: training mode draws one position per window and needs "
                             f"a key: forward(params, x, key=jax.random.key(...)); pass "
                             f"train=False for the test-time weighted average")
        y, index = ref.stochastic_sample(x, g, check_key(name, key))             # eq. 5.5
        return y, PoolCache(_static(x), index)

    def backward(cache, delta, g):
        if cache.index is not None:
            return ref.route(cache.index, delta, g)                               # eq. 5.6
        return ref.stochastic_expectation_backward(cache.x, delta, g)             # eq. 5.8

    return _pool_layer(name, window, strides, "VALID", forward, backward)


# --- global average pooling ------------------------------------------------------------------

def GlobalAvgPool2D() -> Layer:
    """Global average pooling, the head of residual nets: ``(N, H, W, C) -> (N, C)``,
    ``y[n, c] = (1 / HW) sum_{i,j} x[n, i, j, c]`` (eq. 5.10: average pooling with one window
    as large as the input, the output's spatial axes dropped).  Backward (eq. 5.10): every
    position gets ``delta[n, c] / (H W)``."""
    name = "GlobalAvgPool2D"
    layer_config = config(kind="global")
    tag = made_by(name, layer_config)

    def init(key, input_shape):
        h, w, c = check_input_shape(name, input_shape, 3, "(H, W, C)")
        return (), (c,)

    def forward(params, x, *, key=None, train=True):
        check_no_params(name, params)
        check_input(name, x, 4, "(N, H, W, C)")
        if 0 in x.shape[1:3]:
            raise ValueError(f"{name}: the input's height and width must be >= 1 (a mean over "
                             f"no positions is not defined), got {tuple(x.shape[1:3])} (input "
                             f"shape {tuple(x.shape)})")
        return jnp.mean(x, axis=(1, 2)), PoolCache(_static(x), layer=tag)       # eq. 5.10

    def backward(params, cache, delta):
        check_no_params(name, params)
        check_cache(name, cache, PoolCache, tag)
        n, h, w, c = cache.input.value.shape
        check_delta(name, delta, (n, c), cache.input.value.dtype)
        acc = wide(delta.dtype)                 # H W in float32 at least, as the forward's mean
        share = (delta.astype(acc) / (h * w)).astype(delta.dtype)                  # eq. 5.10
        return (), jnp.broadcast_to(share[:, None, None, :], (n, h, w, c))

    def apply(params, x, *, key=None, train=True):
        return forward(params, x)[0]

    return numpy_as_jax(Layer(init, forward, backward, apply, name, config=layer_config))

"""Normalisation: BatchNorm (eqs. 7.1-7.10, 7.13, 7.14), LayerNorm (7.11) and GroupNorm (7.12),
each with its hand-written backward.

All three normalise sets of entries ``S`` to mean 0 and variance 1, then scale and shift each
channel: ``x_hat = (x - mu_S) / sqrt(var_S + eps)``, ``y = scale * x_hat + bias`` (per channel,
the last axis).  They differ only in ``S``:

==========  ===========================================================  ====================
layer       ``S``, for an input ``(N, H, W, C)``                          ``M = |S|``
==========  ===========================================================  ====================
BatchNorm   one channel ``c``, over the batch and every position           ``N H W``
LayerNorm   one example at one position, over its channels (last axis)     ``C``
GroupNorm   one example, over every position and one group's channels      ``H W C / G``
==========  ===========================================================  ====================

so one helper, ``_normalise``, computes eqs. 7.1-7.3 over given axes of a view of the input,
one, ``_normalise_backward``, the compact form (eq. 7.10) over the same axes, on sums that
``_backward_sums`` shares with the parameter gradients (eq. 7.5), and
``_norm_layer`` holds the checks and the layer protocol for all three.  Inputs are ``(N, ..., C)``
of rank >= 2 -- ``(N, H, W, C)`` images, ``(N, F)`` features.

16-bit inputs are normalised in float32 (statistics, ``x_hat`` and the backward's sums; a
float16 square of a deviation overflows past 256), and the output and gradients come back in
the input's dtype.  An empty batch gives an empty output, except BatchNorm in training, which
has no statistics to normalise with (``ValueError``).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.core import (Array, Layer, Shape, State, StateFns, Static, apply_from_forward,
                         check_array, check_cache, check_delta, check_input_shape, check_param,
                         check_param_dtype, check_param_keys, check_train, config, flag,
                         is_concrete, made_by, numpy_as_jax, positive_int, static_number, wide)


class NormCache(NamedTuple):
    """What a normalisation's forward saves.

    ``input``: the input's shape and dtype (static).  ``x_hat``: the normalised input (eq. 7.3),
    the input's shape, in float32 at least.  ``inv_std``: ``1 / sigma`` per set ``S``,
    broadcastable against the layer's view of the input (keepdims).  ``mean``, ``var``: the
    statistics computed from this input (eqs. 7.1, 7.2, keepdims; BatchNorm's ``(1, ..., 1, C)``
    are its batch statistics, which its state update reads), or ``None`` where the layer
    normalised with fixed statistics (BatchNorm evaluating with its running ones, eq. 7.13):
    the backward then has no terms through the mean and the variance.
    """

    input: Static
    x_hat: Array
    inv_std: Array
    mean: Array | None = None
    var: Array | None = None
    layer: Static | None = None         # core.made_by: another normalisation's sets differ


Plan = Callable[[Shape], tuple[Shape, tuple[int, ...]]]
"""``plan(input shape) -> (view shape, axes)``: the input reshaped so that each set ``S`` is
the entries of ``axes`` (the other axes indexing the sets)."""


def _normalise(v: Array, axes: tuple[int, ...], epsilon: float):
    """Eqs. 7.1-7.3 over ``axes`` of ``v``: ``(x_hat, 1 / sigma, mu, var)``, the last three
    keepdims.  The variance is the mean square of the centred entries (biased, two passes:
    ``E[x^2] - mu^2`` would cancel catastrophically for large means)."""
    mean = jnp.mean(v, axis=axes, keepdims=True)                                  # eq. 7.1
    centred = v - mean
    var = jnp.mean(centred * centred, axis=axes, keepdims=True)                   # eq. 7.2
    inv_std = jax.lax.rsqrt(var + epsilon)                                        # eq. 7.3
    return centred * inv_std, inv_std, mean, var


def _backward_sums(d: Array, g: Array, x_hat: Array, gamma: Array | None,
                   axes: tuple[int, ...], n_outer: int):
    """The sums of eq. 7.5, per channel, and of eq. 7.10, per set ``S``, on the layer's view of
    ``delta``, ``g = delta gamma`` (eq. 7.6) and ``x_hat`` (its first ``n_outer`` axes the
    input's, the rest its channels): ``(dscale, dbias)``, each ``(C,)``, and
    ``(sum_S g x_hat, sum_S g)`` keepdims (``gamma`` shaped against the view, or ``None``: 1).

    Both run over positions: the axes they share (BatchNorm: every axis but the channels, its
    sets being channels; GroupNorm: ``H, W``; LayerNorm: none) are summed once, and (7.5)
    finishes those partial sums over its other axes, (7.10) weighs them by ``gamma`` and
    finishes them over the rest of ``S``: BatchNorm's and GroupNorm's inputs are read twice,
    not four times (``docs/performance.md#why-norm-sums``)."""
    outer = tuple(range(n_outer))
    shared = tuple(a for a in axes if a in outer)
    rest = tuple(a for a in axes if a not in shared)
    if shared:
        partial = tuple(jnp.sum(p, axis=shared, keepdims=True) for p in (d * x_hat, d))
        per_set = partial if gamma is None else tuple(p * gamma for p in partial)
    else:        # LayerNorm: nothing to share (a d x_hat common to both, XLA would write out)
        partial, per_set = (d * x_hat, d), (g * x_hat, g)
    per_channel = tuple(jnp.sum(p, axis=outer).reshape(-1) for p in partial)        # eq. 7.5
    return (*per_channel, *(jnp.sum(p, axis=rest, keepdims=True) for p in per_set))


def _normalise_backward(g: Array, x_hat: Array, inv_std: Array, sum_gx: Array,
                        sum_g: Array, m: int) -> Array:
    """Eq. 7.10, the compact form: ``dx = (1 / sigma) (g - mean_S g - x_hat mean_S(g x_hat))``
    from ``g = dJ/dx_hat`` (eq. 7.6) and its two sums over each set of ``m`` entries -- the
    terms through the mean (eq. 7.8) and the variance (eq. 7.7) included.  ``x_hat`` is O(1)
    whatever the input's mean, so nothing large cancels.

    ``1 / sigma`` passes an optimisation barrier: the cached per-set statistic, which XLA would
    otherwise merge with the forward's broadcast of it and write at the input's full size
    (``docs/performance.md`` 8.23)."""
    inv_std = jax.lax.optimization_barrier(inv_std)
    return inv_std * (g - sum_g / m - x_hat * (sum_gx / m))


def _per_channel(p: Array, ndim: int) -> Array:
    """A ``(C,)`` array shaped ``(1, ..., 1, C)`` against an input of rank ``ndim``."""
    return p.reshape((1,) * (ndim - 1) + p.shape)


def _check_input(name: str, x) -> None:
    check_array(name, "the input", x, "(N, ..., C)")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name}: expected a floating-point input, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"{name}: expected an input of rank >= 2, (N, ..., C) with the "
                         f"channels last, got shape {tuple(x.shape)}")


def _input_shape(name: str, input_shape) -> Shape:
    """``init``'s per-example shape ``(..., C)``: a tuple of positive ints of rank >= 1."""
    rank = len(input_shape) if isinstance(input_shape, (tuple, list)) else 1
    return check_input_shape(name, input_shape, max(rank, 1), "(..., C), channels last")


def _check_number(name: str, arg: str, value, low: float, high: float, closed: str) -> float:
    """``value`` a real number in the interval from ``low`` to ``high``; ``closed`` says which
    ends belong to it (``"[]"``, ``"[)"``, ``"()"``...)."""
    value = static_number(name, arg, value)
    above = value >= low if closed[0] == "[" else value > low
    below = value <= high if closed[1] == "]" else value < high
    if not (above and below):
        raise ValueError(f"{name}: {arg} must be in {closed[0]}{low:g}, {high:g}{closed[1]}, "
                         f"got {value}")
    return value


def _check_set_size(name: str, m: int, shape: Shape, has_running: bool) -> None:
    """The sets normalised over hold two entries or more: none has no statistics (an empty
    input: an empty output, except for a layer with running statistics, which would update
    them from nothing), and one gives ``x_hat = 0`` whatever the input."""
    if m == 0:
        if not has_running:
            return
        what = "an empty batch (input shape {}) has" if shape[0] == 0 else \
            "the sets it normalises over are empty (input shape {}): they have"
        raise ValueError(f"{name}: {what.format(tuple(shape))} no statistics to normalise "
                         f"with in training")
    if m == 1:
        raise ValueError(
            f"{name}: every set it normalises holds one entry (input shape {tuple(shape)}), so "
            f"x_hat = 0 whatever the input: the output would be the bias and no residual would "
            f"reach the input" + (" -- train on more than one value per channel, or evaluate "
                                  "with the running statistics" if has_running else ""))


def _channel_params(name, params, c: int, dtype, use_scale: bool, use_bias: bool):
    """``(scale, bias)`` from ``params``, each ``(C,)`` of the input's dtype, or ``None``."""
    check_param_keys(name, params, ("scale",) * use_scale + ("bias",) * use_bias,
                     f"use_scale={use_scale}, use_bias={use_bias}")
    scale = check_param(name, params, "scale", (c,), dtype) if use_scale else None
    bias = check_param(name, params, "bias", (c,), dtype) if use_bias else None
    return scale, bias


def _norm_layer(name: str, plan: Plan, epsilon: float, use_scale: bool, use_bias: bool,
                param_dtype, settings: dict, fixed=None, state: StateFns | None = None,
                kind: str = "elementwise") -> Layer:
    """The layer protocol around ``_normalise``: the sets ``S`` from ``plan``.

    ``fixed``: for ``train=False``, ``fixed(C, dtype) -> (mean, var)``, each ``(C,)``, the
    statistics to normalise with instead of the input's (BatchNorm; its unbound ``fixed``
    raises); ``None``: the input's statistics in both modes (LayerNorm, GroupNorm).
    """

    layer_config = config(kind=kind, epsilon=epsilon, use_scale=use_scale, use_bias=use_bias,
                          **settings)
    tag = made_by(name, layer_config)

    def init(key, input_shape):
        shape = _input_shape(name, input_shape)
        plan((1, *shape))
        params = {}
        if use_scale:
            params["scale"] = jnp.ones(shape[-1:], param_dtype)
        if use_bias:
            params["bias"] = jnp.zeros(shape[-1:], param_dtype)
        return params, shape

    def forward(params, x, *, key=None, train=True):
        _check_input(name, x)
        scale, bias = _channel_params(name, params, x.shape[-1], x.dtype, use_scale, use_bias)
        view, axes = plan(x.shape)
        acc = wide(x.dtype)
        _check_epsilon(name, epsilon, acc)
        v = x.astype(acc).reshape(view)
        if fixed is None or check_train(name, train):
            _check_set_size(name, math.prod(view[a] for a in axes), x.shape, fixed is not None)
            x_hat, inv_std, mean, var = _normalise(v, axes, epsilon)       # eqs. 7.1-7.3
        else:
            mean_run, var_run = fixed(x.shape[-1], acc)
            inv_std = jax.lax.rsqrt(_per_channel(var_run, x.ndim) + epsilon)     # eq. 7.13
            x_hat, mean, var = (v - _per_channel(mean_run, x.ndim)) * inv_std, None, None
        x_hat = x_hat.reshape(x.shape)
        y = x_hat
        if use_scale:
            y = y * _per_channel(scale.astype(acc), x.ndim)                         # eq. 7.4
        if use_bias:
            y = y + _per_channel(bias.astype(acc), x.ndim)
        cache = NormCache(Static(jax.ShapeDtypeStruct(x.shape, x.dtype)), x_hat, inv_std,
                          mean, var, tag)
        return y.astype(x.dtype), cache

    def backward(params, cache, delta):
        check_cache(name, cache, NormCache, tag)
        shape, dtype = cache.input.value.shape, cache.input.value.dtype
        scale, _ = _channel_params(name, params, shape[-1], dtype, use_scale, use_bias)
        check_delta(name, delta, shape, dtype)
        d, outer = delta.astype(cache.x_hat.dtype), tuple(range(len(shape) - 1))
        if cache.mean is None:                   # fixed statistics: an affine map, eq. 7.13
            grads = {}
            if use_scale:
                grads["scale"] = jnp.sum(d * cache.x_hat, axis=outer).astype(dtype)  # eq. 7.5
            if use_bias:
                grads["bias"] = jnp.sum(d, axis=outer).astype(dtype)                 # eq. 7.5
            g = d * _per_channel(scale.astype(d.dtype), len(shape)) if use_scale else d
            return grads, (g * cache.inv_std).astype(dtype)                          # eq. 7.13
        view, axes = plan(shape)
        n_outer = len(shape) - 1                 # the view splits the channel axis only
        gamma = None if scale is None else scale.astype(d.dtype).reshape(
            (1,) * n_outer + tuple(view[n_outer:]))
        d, x_hat = d.reshape(view), cache.x_hat.reshape(view)
        g = d if gamma is None else d * gamma                                        # eq. 7.6
        d_scale, d_bias, sum_gx, sum_g = _backward_sums(d, g, x_hat, gamma, axes, n_outer)
        grads = {k: v.astype(dtype) for k, v, used in (("scale", d_scale, use_scale),
                                                       ("bias", d_bias, use_bias)) if used}
        dx = _normalise_backward(g, x_hat, cache.inv_std, sum_gx, sum_g,
                                 math.prod(view[a] for a in axes))                   # eq. 7.10
        return grads, dx.reshape(shape).astype(dtype)

    return numpy_as_jax(Layer(init, forward, backward, apply_from_forward(forward), name,
                              config=layer_config, state=state))


def _settings(name: str, epsilon, use_scale, use_bias) -> tuple[float, bool, bool]:
    """``epsilon`` and the two flags, checked and normalised (a NumPy bool to a bool); the
    dtype the statistics are computed in bounds ``epsilon`` further (``_check_epsilon``)."""
    use_scale, use_bias = flag(name, "use_scale", use_scale), flag(name, "use_bias", use_bias)
    return _check_number(name, "epsilon", epsilon, 0.0, math.inf, "()"), use_scale, use_bias


def _check_epsilon(name: str, epsilon: float, acc) -> None:
    """``epsilon`` a normal number of ``acc``, the dtype of the statistics (float32 at least):
    a smaller one flushes to 0 (a constant set's ``1 / sigma`` infinite), a larger one is
    infinite (the output the bias alone) -- at trace time, when the dtype is known."""
    info = jnp.finfo(acc)
    if not float(info.tiny) <= epsilon <= float(info.max):
        raise ValueError(f"{name}: epsilon must be a normal {jnp.dtype(acc).name} number, in "
                         f"[{float(info.tiny):g}, {float(info.max):g}], for inputs of this "
                         f"dtype, got {epsilon:g}")


# --- batch normalisation ---------------------------------------------------------------------

def BatchNorm(momentum: float = 0.9, epsilon: float = 1e-5, use_scale: bool = True,
              use_bias: bool = True, *, param_dtype=jnp.float32) -> Layer:
    """Batch normalisation (Ioffe & Szegedy 2015): each channel (the last axis) normalised over
    every other axis -- ``(N, H, W, C)`` over ``N, H, W``, ``(N, F)`` over ``N``.

    Params ``{"scale": (C,), "bias": (C,)}`` (ones and zeros; a key only if used).

    Training (``train=True``): with the batch's mean ``mu`` (eq. 7.1) and *biased* variance
    ``var`` (eq. 7.2, as PyTorch and Flax), ``y = scale (x - mu) / sqrt(var + eps) + bias``
    (eqs. 7.3, 7.4; ``eps`` inside the square root).  Backward, with ``M`` the entries per
    channel (``N H W``) and ``sigma = sqrt(var + eps)``: ``dbias = sum dy``, ``dscale =
    sum dy x_hat`` (eq. 7.5), ``dx = (scale / (M sigma)) (M dy - sum dy - x_hat sum(dy x_hat))``
    (eq. 7.10, the terms through the mean and the variance included).  The cache
    (``NormCache``) holds ``x_hat``, ``1 / sigma`` and the batch's ``mean`` and ``var``.
    An empty batch has no statistics: ``ValueError``.

    Evaluation (``train=False``) uses the running statistics, which are *state*, not params
    (``Layer.state``, a ``StateFns``): ``init(input_shape) -> {"mean": zeros (C,), "var": ones
    (C,)}`` in ``param_dtype``; ``update(state, cache)`` after a training forward:
    ``new = momentum * old + (1 - momentum) * batch statistic`` (eq. 7.14) -- Flax's
    convention, ``momentum`` the weight of the old value; PyTorch's ``momentum`` is ``1 -``
    ours (its default 0.1 is our 0.9).  The running variance averages the same biased variance
    training normalised with (as Flax; PyTorch averages the unbiased one): ``M / (M - 1)`` is 1
    to within a percent for the hundreds of entries per channel of a conv net.  ``update`` is affine in the batch statistics, so the
    mean of the updated states of several chunks or devices is the update with their mean
    statistics.  ``bind(state)`` is the same layer evaluating with ``state`` (cast to the
    input's dtype): the affine map ``y = scale (x - mean) / sqrt(var + eps) + bias``, backward
    ``dx = dy scale / sqrt(var + eps)`` with the same ``dscale``, ``dbias`` (eq. 7.13); training
    mode as unbound.  The unbound layer refuses ``train=False`` (``ValueError``): evaluate with
    ``jc.with_state(net, state).apply(params, x, train=False)``.
    """
    name = "BatchNorm"
    epsilon, use_scale, use_bias = _settings(name, epsilon, use_scale, use_bias)
    param_dtype = check_param_dtype(name, param_dtype)
    momentum = _check_number(name, "momentum", momentum, 0.0, 1.0, "[]")

    def plan(shape):
        return tuple(shape), tuple(range(len(shape) - 1))

    def unbound(c, dtype):
        raise ValueError(
            f"{name}: evaluation (train=False) normalises with the running statistics, which "
            f"this layer does not hold; evaluate with jc.with_state(net, state).apply(params, "
            f"x, train=False), the state from jc.init_state(net, input_shape) updated by "
            f"jc.update_state(net, state, cache) after each training forward")

    def bound(state):
        _check_state(name, state)

        def fixed(c, dtype):
            return tuple(_state_entry(name, state, k, c).astype(dtype) for k in ("mean", "var"))

        return fixed

    def update(state, cache):
        return _running_update(name, momentum, state, cache)

    def state_init(input_shape):
        c = _input_shape(name, input_shape)[-1]
        return {"mean": jnp.zeros((c,), param_dtype), "var": jnp.ones((c,), param_dtype)}

    def build(fixed) -> Layer:
        fns = StateFns(state_init, update, lambda state: build(bound(state)))
        return _norm_layer(name, plan, epsilon, use_scale, use_bias, param_dtype,
                           {"momentum": momentum}, fixed=fixed, state=fns)

    return build(unbound)


def _running_update(name: str, momentum: float, state: State, cache: NormCache) -> State:
    """Eq. 7.14: ``momentum * old + (1 - momentum) * batch statistic``, for the mean and the
    (biased) variance a training forward cached; affine in them."""
    _check_state(name, state)
    made = None if not isinstance(cache, NormCache) or cache.layer is None else \
        cache.layer.value[0]
    if not isinstance(cache, NormCache) or made not in (None, name):
        raise ValueError(f"{name}: update expects the NormCache of a BatchNorm forward, got "
                         f"{made or type(cache).__name__}'s -- a cache from another layer?")
    if cache.mean is None:
        raise ValueError(f"{name}: update needs the cache of a training forward (train=True), "
                         f"which holds the batch's statistics; this one is from an evaluation "
                         f"forward (train=False), which used the running statistics")
    c = cache.input.value.shape[-1]
    batch = {"mean": cache.mean.reshape(c), "var": cache.var.reshape(c)}
    return {k: momentum * _state_entry(name, state, k, c)                          # eq. 7.14
            + (1 - momentum) * batch[k].astype(state[k].dtype) for k in ("mean", "var")}


def _check_state(name: str, state: State) -> None:
    if not isinstance(state, dict) or set(state) != {"mean", "var"}:
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{name}: expected a state {{'mean': (C,), 'var': (C,)}}, got {got} "
                         f"-- a state from another network?")


def _state_entry(name: str, state: State, key: str, c: int) -> Array:
    value = state[key]
    check_array(name, f"state[{key!r}]", value)
    if tuple(value.shape) != (c,):
        raise ValueError(f"{name}: state[{key!r}] has shape {tuple(value.shape)}, expected "
                         f"({c},) for this input -- a state from another network?")
    if not jnp.issubdtype(value.dtype, jnp.floating):     # complex too: its imaginary part
        raise TypeError(f"{name}: state[{key!r}] must be a real floating-point array, got "
                        f"{value.dtype}")
    low = float(np.min(np.asarray(value))) if key == "var" and is_concrete(value) and \
        value.size else 0.0                    # in NumPy: a state bound under jit is a constant
    if low < 0:
        raise ValueError(f"{name}: state['var'] must be >= 0 (a variance), got a most negative "
                         f"entry of {low}")
    return value


# --- layer and group normalisation -----------------------------------------------------------

def LayerNorm(epsilon: float = 1e-5, use_scale: bool = True, use_bias: bool = True, *,
              param_dtype=jnp.float32) -> Layer:
    """Layer normalisation (Ba et al. 2016) over each example's *last* axis (Flax's default):
    ``(N, F)`` over the features, ``(N, H, W, C)`` over the channels at each position.

    Params ``{"scale": (C,), "bias": (C,)}``.  ``y = scale x_hat + bias`` with ``x_hat`` from the
    mean and biased variance of the last axis (eqs. 7.1-7.4 over it; eq. 7.11); training and
    evaluation alike, no state.  Backward: eq. 7.10 over the last axis, ``M = C``, with
    ``g = dy scale`` (``scale`` varies over the set, so it stays inside ``g``); ``dscale``,
    ``dbias`` summed over every other axis (eq. 7.5).
    """
    name = "LayerNorm"
    epsilon, use_scale, use_bias = _settings(name, epsilon, use_scale, use_bias)
    param_dtype = check_param_dtype(name, param_dtype)

    def plan(shape):
        return tuple(shape), (len(shape) - 1,)

    return _norm_layer(name, plan, epsilon, use_scale, use_bias, param_dtype, {})


def GroupNorm(num_groups: int, epsilon: float = 1e-5, use_scale: bool = True,
              use_bias: bool = True, *, param_dtype=jnp.float32) -> Layer:
    """Group normalisation (Wu & He 2018), as ``torch.nn.GroupNorm``: the channels of each
    example split into ``num_groups`` consecutive groups, each normalised over every position
    and its ``C / num_groups`` channels -- ``(N, H, W, C)`` over ``H, W`` and the group,
    ``(N, C)`` over the group.  ``num_groups = 1`` normalises each example as a whole,
    ``num_groups = C`` each map (instance normalisation).

    Params ``{"scale": (C,), "bias": (C,)}``, per channel.  ``x`` viewed as
    ``(N, H, W, G, C / G)``, eqs. 7.1-7.4 over ``H, W`` and the last axis (eq. 7.12); training
    and evaluation alike, no state.  Backward: eq. 7.10 over the same entries,
    ``M = H W C / G``; ``dscale``, ``dbias`` per channel (eq. 7.5).  Every unit of the output
    depends on every position of its example's input, in its group's channels.
    """
    name = "GroupNorm"
    num_groups = positive_int(name, "num_groups", num_groups)
    epsilon, use_scale, use_bias = _settings(name, epsilon, use_scale, use_bias)
    param_dtype = check_param_dtype(name, param_dtype)

    def plan(shape):
        c = shape[-1]
        if c % num_groups:
            raise ValueError(f"{name}: num_groups (={num_groups}) must divide the channels "
                             f"(={c}), the last axis of input shape {tuple(shape)}")
        view = (*shape[:-1], num_groups, c // num_groups)
        return view, (*range(1, len(shape) - 1), len(shape))

    return _norm_layer(name, plan, epsilon, use_scale, use_bias, param_dtype,
                       {"num_groups": num_groups}, kind="spatial_norm")

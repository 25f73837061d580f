"""Convolution: ``Conv2D``, its forward (eq. 4.2) and its hand-written backward (eqs. 4.3-4.5).

Shapes: input ``x (N, H, W, C_in)``, kernel ``w (kh, kw, C_in // G, F)``, bias ``b (F,)``,
output and ``delta (N, H_out, W_out, F)``, with ``G`` groups and ``H_out`` from eq. 3.1.
Like every CNN library, the forward is a cross-correlation (no kernel flip, eq. 4.2); the flip
of a true convolution (eq. 4.1) reappears in the input residual (eq. 4.5).

The layer checks its inputs, asks the plan which form computes each pass
(``jaxcnn.lowering.plan``), and calls it (``jaxcnn.lowering.dispatch``).  The forms are the
textbook itself (``jaxcnn.reference.conv``) and its lowerings -- XLA's convolutions, Toeplitz
matrix products, stride phases -- each proven equal to it.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxcnn import _geometry as geo
from jaxcnn.core import (Array, Layer, check_cache, check_delta, check_input, check_input_shape,
                         check_param, check_param_dtype, check_param_keys, check_precision, config,
                         flag, numpy_as_jax, pair, positive_int, split_key)
from jaxcnn.lowering import dispatch
from jaxcnn.lowering.plan import check_method, conv_plan


class ConvCache(NamedTuple):
    """What ``Conv2D.forward`` saves: its input, for the kernel gradient (eq. 4.4 or 4.7).

    Not the Toeplitz row matrix of eq. 4.6, which is ``k_h`` times larger: the backward
    gathers it again from ``x``."""

    x: Array


class _Settings(NamedTuple):
    """``Conv2D``'s static settings, checked once when the layer is made."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int]
    dilation: tuple[int, int]
    padding: object
    groups: int
    use_bias: bool


def _settings(name, features, kernel_size, strides, padding, dilation, groups, use_bias,
              method) -> _Settings:
    s = _Settings(positive_int(name, "features", features),
                  pair(name, "kernel_size", kernel_size), pair(name, "strides", strides),
                  pair(name, "dilation", dilation), geo.normalize_padding(name, padding),
                  positive_int(name, "groups", groups), flag(name, "use_bias", use_bias))
    if s.features % s.groups:
        raise ValueError(f"{name}: features (={s.features}) must be divisible by groups "
                         f"(={s.groups})")
    check_method(name, method, s.kernel_size, s.strides, s.dilation, s.groups)
    return s


def check_channels(name: str, s, c_in: int) -> None:
    """``c_in`` input channels divide into ``s.groups`` (``Conv2D``, ``ConvTranspose2D``)."""
    if c_in % s.groups:
        raise ValueError(f"{name}: input channels (={c_in}) must be divisible by "
                         f"groups (={s.groups})")


def kernel_and_bias(name: str, s, params, x) -> tuple[Array, Array | None]:
    """The kernel ``(kh, kw, C_in // G, F)`` and the bias (or ``None``) of ``params``, checked
    against input ``x`` and the settings ``s`` (``Conv2D``'s or ``ConvTranspose2D``'s)."""
    check_input(name, x, 4, "(N, H, W, C)")
    if 0 in x.shape[1:3]:
        raise ValueError(f"{name}: the input's height and width must be >= 1, got "
                         f"{tuple(x.shape[1:3])} (input shape {tuple(x.shape)})")
    c_in = x.shape[3]
    check_channels(name, s, c_in)
    check_param_keys(name, params, ("w", "b") if s.use_bias else ("w",),
                     f"use_bias={s.use_bias}")
    w = params["w"]
    if getattr(w, "ndim", 0) == 4 and w.shape[:2] == s.kernel_size \
            and w.shape[2] * s.groups != c_in:
        raise ValueError(f"{name}: input has {c_in} channels but the kernel expects "
                         f"{w.shape[2] * s.groups} (params['w'].shape[2] * groups)")
    w = check_param(name, params, "w", (*s.kernel_size, c_in // s.groups, s.features), x.dtype)
    b = check_param(name, params, "b", (s.features,), x.dtype) if s.use_bias else None
    return w, b


def _checked(name: str, s: _Settings, params, x) -> tuple[Array, Array | None, geo.Window]:
    """The kernel, the bias (or ``None``) and the window placement for input ``x``."""
    w, b = kernel_and_bias(name, s, params, x)
    g = geo.window(name, x.shape[1:3], s.kernel_size, s.strides, s.dilation, s.padding)
    return w, b, g


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
      method: ``"auto"`` (per pass and layer shape, ``jaxcnn.lowering.plan.conv_plan``),
        ``"reference"`` (the textbook forms of ``jaxcnn.reference.conv``), ``"lax"`` (XLA's
        convolutions), ``"toeplitz"`` (matrix products with the banded kernel matrix, eqs.
        4.6-4.8; grouped: one per group) or ``"winograd"`` (Winograd's F(2x2, 3x3), eqs.
        4.14-4.17: a 3x3 kernel at stride 1, undilated, ungrouped).  Every method computes the
        same sums (Winograd's up to float rounding); ``apply`` may evaluate in another form
        than it differentiates (``dispatch.evaluate``).

    Params: ``{"w": (kh, kw, C_in // G, F), "b": (F,)}``.  Forward eq. 4.2; backward eqs.
    4.3 (bias), 4.4 (kernel), 4.5 (input residual).
    """
    name = "Conv2D"
    precision = check_precision(name, precision)
    param_dtype = check_param_dtype(name, param_dtype)
    s = _settings(name, features, kernel_size, strides, padding, dilation, groups, use_bias,
                  method)

    def init(key, input_shape):
        h, w, c_in = check_input_shape(name, input_shape, 3, "(H, W, C)")
        check_channels(name, s, c_in)
        g = geo.window(name, (h, w), s.kernel_size, s.strides, s.dilation, s.padding)
        k_w, k_b = split_key(name, key, 2)
        params = {"w": w_init(k_w, (*s.kernel_size, c_in // s.groups, s.features), param_dtype)}
        if s.use_bias:
            params["b"] = b_init(k_b, (s.features,), param_dtype)
        return params, (*g.out_hw, s.features)

    def planned(params, x):
        w, b, g = _checked(name, s, params, x)
        # an empty batch (N = 0) runs XLA's convolutions, which take it; the Toeplitz and
        # reference forms reshape by N.  The output is empty and the parameter gradients 0.
        form = method if x.shape[0] else "lax"
        return w, b, g, conv_plan(g, x.shape[3], s.groups, form, features=s.features)

    def forward(params, x, *, key=None, train=True):
        w, b, g, plan = planned(params, x)
        y = dispatch.forward(x, w, b, g, s.groups, plan, precision, bias="rows")   # eq. 4.2
        return y, ConvCache(x)

    def apply(params, x, *, key=None, train=True):
        w, b, g, plan = planned(params, x)
        return dispatch.evaluate(x, w, b, g, s.groups, plan, precision)            # eq. 4.2

    def backward(params, cache, delta):
        check_cache(name, cache, ConvCache)
        w, _, g, plan = planned(params, cache.x)
        check_delta(name, delta, (cache.x.shape[0], *g.out_hw, s.features), cache.x.dtype)
        grads = {"w": dispatch.kernel_grad(cache.x, delta, g, s.groups, plan, precision)}  # 4.4
        if s.use_bias:
            grads["b"] = dispatch.bias_grad(delta)                                 # eq. 4.3
        return grads, dispatch.input_residual(delta, w, g, s.groups, plan, precision)  # 4.5

    return numpy_as_jax(Layer(init, forward, backward, apply, name, config=config(
        kind="window", size=s.kernel_size, strides=s.strides, dilation=s.dilation,
        padding=s.padding, features=s.features, groups=s.groups, use_bias=s.use_bias,
        method=method)))

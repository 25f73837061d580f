"""Convolution: ``Conv2D``, its forward (eq. 4.2) and its hand-written backward (eqs. 4.3-4.5).

Shapes: input ``x (N, H, W, C_in)``, kernel ``w (kh, kw, C_in // G, F)``, bias ``b (F,)``,
output and ``delta (N, H_out, W_out, F)``, with ``G`` groups and ``H_out`` from eq. 3.1.
Like every CNN library, the forward is a cross-correlation (no kernel flip, eq. 4.2); the flip
of a true convolution (eq. 4.1) reappears in the input residual (eq. 4.5).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn import _geometry as geo
from jaxcnn.core import (Array, Layer, check_delta, check_input, check_input_shape,
                         check_param, config, pair, positive_int, apply_from_forward)

_DIMS = ("NHWC", "HWIO", "NHWC")


class ConvCache(NamedTuple):
    """What ``Conv2D.forward`` saves: its input, for the kernel gradient (eq. 4.4)."""

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

    Two formulations of the same sum (``method``):

    - ``"transposed"`` (the default): the forward stride becomes ``s - 1`` zeros between the
      entries of delta (lhs dilation), the kernel is rotated by 180 degrees with its in/out axes
      swapped inside each group, and the padding ``k_eff - 1 - lo`` on the top/left makes the
      correlation "full"; the bottom/right amount is whatever brings the output back to ``H``
      (negative = a crop, which also drops the gradient on the forward's padding).
    - ``"scatter"`` (``G = 1``): eq. 4.5 read literally -- one matrix product gives every window's
      share ``delta[n,i,j,:] . w[p,q,c,:]``, and the transpose of the window gather (eq. 3.4) adds
      the shares back where the windows came from.  Alone it runs 2-7x faster on XLA's CPU
      backend for few input channels at stride 1, but it materialises ``kh * kw`` shares per
      input entry, and inside a whole training step it measured no faster
      (``docs/performance.md``), so it is not the default.
    """
    if method == "scatter":
        if groups != 1:
            raise ValueError(f"Conv2D: the scatter form of eq. 4.5 needs groups=1, got {groups}")
        kh, kw, c, f = w.shape
        n, ho, wo, _ = delta.shape
        shares = jnp.dot(delta, w.reshape(kh * kw * c, f).T, precision=precision)
        return geo.unpad(geo.scatter_windows(shares.reshape(n, ho, wo, kh * kw, c), g), g)
    if method != "transposed":
        raise ValueError(f"Conv2D: unknown method {method!r}; expected 'transposed' or 'scatter'")
    kh, kw, cg, f = w.shape
    fg = f // groups
    w_t = (w.reshape(kh, kw, cg, groups, fg).transpose(0, 1, 4, 3, 2)
           .reshape(kh, kw, fg, groups * cg))[::-1, ::-1]
    pads = []
    for n, k, s, (lo, _), n_out in zip(g.in_hw, g.effective_size, g.strides, g.padding, g.out_hw):
        pads.append((k - 1 - lo, n - (n_out - 1) * s - 1 + lo))
    return lax.conv_general_dilated(
        delta, w_t, window_strides=(1, 1), padding=pads, lhs_dilation=g.strides,
        rhs_dilation=g.dilation, dimension_numbers=_DIMS, feature_group_count=groups,
        precision=precision)


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


def Conv2D(features: int, kernel_size, strides=1, padding="VALID", dilation=1, groups: int = 1,
           use_bias: bool = True, *, w_init=jax.nn.initializers.lecun_normal(),
           b_init=jax.nn.initializers.zeros, param_dtype=jnp.float32, precision=None) -> Layer:
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
      precision: passed to ``lax.conv_general_dilated`` in both passes (``None``: the backend
        default, reduced precision for float32 on GPU/TPU; ``"highest"`` for exact float32).

    Params: ``{"w": (kh, kw, C_in // G, F), "b": (F,)}``.  Forward eq. 4.2; backward eqs.
    4.3 (bias), 4.4 (kernel), 4.5 (input residual).
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

    def forward(params, x, *, key=None, train=True):
        w, b, g = checked(params, x)
        y = conv_forward(x, w, g, groups, precision)
        if use_bias:
            y = y + b.reshape(1, 1, 1, -1)                                        # eq. 4.2
        return y, ConvCache(x)

    def backward(params, cache, delta):
        x = cache.x
        w, _, g = checked(params, x)
        check_delta(name, delta, (x.shape[0], *g.out_hw, features), x.dtype)
        grads = {"w": conv_backward_kernel(x, delta, g, groups, precision)}   # eq. 4.4
        if use_bias:
            grads["b"] = jnp.sum(delta, axis=(0, 1, 2))                          # eq. 4.3
        return grads, conv_backward_input(delta, w, g, groups, precision)      # eq. 4.5

    return Layer(init, forward, backward, apply_from_forward(forward), name, config=config(
        kind="window", size=kernel_size, strides=strides, dilation=dilation, padding=padding,
        features=features, groups=groups, use_bias=use_bias))

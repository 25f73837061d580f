"""Transposed convolution: ``ConvTranspose2D``, its forward (eqs. 4.10-4.11) and its
hand-written backward (eqs. 4.3, 4.12, 4.13).

Shapes: input ``x (N, H, W, C_in)``, kernel ``w (kh, kw, C_in // G, F)``, bias ``b (F,)``,
output and ``delta (N, H_out, W_out, F)`` with ``G`` groups and ``H_out`` from eq. 4.11:
``(H - 1) s - t - b + d (kh - 1) + 1 + output_padding``.

The transposed convolution is the adjoint of a convolution (``docs/derivation.md``, section
4): its forward is a convolution's input residual (eq. 4.5), its backward a convolution's
forward (eq. 4.2, for ``dx``) and kernel gradient (eq. 4.4, for ``dw``).  So each pass is
XLA's convolution for the matching pass of the adjoint convolution (``jaxcnn.lowering.xla``,
the window of ``adjoint_window`` and the kernel of ``reference.conv_transpose.adjoint_kernel``),
and the textbook forms of ``jaxcnn.reference.conv_transpose`` are the oracle it is tested
against.  The forward equals ``torch.nn.functional.conv_transpose2d`` with weight
``w.transpose(2, 3, 0, 1)`` (ungrouped).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxcnn import _geometry as geo
from jaxcnn.core import (LARGEST, Array, Layer, apply_from_forward, check_cache, check_delta,
                         check_input_shape, check_param_dtype, check_precision, config, flag,
                         numpy_as_jax, pair, positive_int, split_key)
from jaxcnn.conv import check_channels, kernel_and_bias
from jaxcnn.lowering import xla
from jaxcnn.reference import conv_transpose as ref


class ConvTransposeCache(NamedTuple):
    """What ``ConvTranspose2D.forward`` saves: its input, for the kernel gradient (eq. 4.13)."""

    x: Array


class _Settings(NamedTuple):
    """``ConvTranspose2D``'s static settings, checked once when the layer is made."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int]
    dilation: tuple[int, int]
    padding: object
    output_padding: tuple[int, int]
    groups: int
    use_bias: bool


def _settings(name, features, kernel_size, strides, padding, output_padding, dilation, groups,
              use_bias) -> _Settings:
    s = _Settings(positive_int(name, "features", features),
                  pair(name, "kernel_size", kernel_size), pair(name, "strides", strides),
                  pair(name, "dilation", dilation), geo.normalize_padding(name, padding),
                  pair(name, "output_padding", output_padding, minimum=0),
                  positive_int(name, "groups", groups), flag(name, "use_bias", use_bias))
    if any(op >= max(st, d) for op, st, d in zip(s.output_padding, s.strides, s.dilation)):
        raise ValueError(f"{name}: output_padding {s.output_padding} must be smaller than the "
                         f"stride {s.strides} or the dilation {s.dilation} along each axis")
    if s.padding == "SAME" and s.output_padding != (0, 0):
        raise ValueError(f"{name}: padding 'SAME' fixes the output at (H s, W s); "
                         f"output_padding must be 0 with it, got {s.output_padding}")
    if s.features % s.groups:
        raise ValueError(f"{name}: features (={s.features}) must be divisible by groups "
                         f"(={s.groups})")
    return s


def adjoint_window(layer: str, in_hw, size, strides, dilation, padding,
                   output_padding=(0, 0)) -> geo.Window:
    """The window of the adjoint convolution over the transposed convolution's output (eq. 4.11).

    ``in_hw`` is the transposed convolution's input ``(H, W)``.  The result's ``in_hw`` is its
    output ``(H_out, W_out)``, ``out_hw`` is ``(H, W)`` again, and ``padding`` the amounts the
    canvas of eq. 4.10 loses: ``(t, b - output_padding)`` for explicit padding (``"VALID"`` is
    zeros), where a negative amount is rows of zeros added at the bottom (right); for
    ``"SAME"``, the placement of ``Conv2D``'s ``"SAME"`` over an ``(H s, W s)`` input (eq. 3.2).
    Raises ``ValueError`` if the padding leaves no output.
    """
    in_hw = tuple(int(n) for n in in_hw)
    if padding == "SAME":
        return geo.window(layer, _capped(layer, tuple(n * s for n, s in zip(in_hw, strides)),
                                         in_hw, strides), size, strides, dilation, "SAME")
    pads = ((0, 0), (0, 0)) if padding == "VALID" else padding
    out_hw = tuple((n - 1) * s - lo - hi + d * (k - 1) + 1 + op for n, s, (lo, hi), d, k, op
                   in zip(in_hw, strides, pads, dilation, size, output_padding))   # eq. 4.11
    _capped(layer, out_hw, in_hw, strides)
    if min(out_hw) < 1:
        raise ValueError(f"{layer}: padding {pads} leaves an empty output {out_hw} for input "
                         f"{in_hw}: (H - 1) s - top - bottom + d (k - 1) + 1 + output_padding "
                         f"must be >= 1 (strides {tuple(strides)}, kernel {tuple(size)}, "
                         f"dilation {tuple(dilation)}, output_padding {tuple(output_padding)})")
    return geo.window(layer, out_hw, size, strides, dilation,
                      tuple((lo, hi - op) for (lo, hi), op in zip(pads, output_padding)))


def _capped(layer: str, out_hw, in_hw, strides) -> tuple[int, int]:
    """``out_hw``, whose sides are capped at ``LARGEST`` as the settings that make them are."""
    if max(out_hw) > LARGEST:
        raise ValueError(f"{layer}: the output {out_hw} for input {in_hw} at strides "
                         f"{tuple(strides)} has a side past {LARGEST} (2**31 - 1)")
    return out_hw


def _window(name: str, in_hw, s: _Settings) -> geo.Window:
    return adjoint_window(name, in_hw, s.kernel_size, s.strides, s.dilation, s.padding,
                          s.output_padding)


def _checked(name: str, s: _Settings, params, x) -> tuple[Array, Array | None, geo.Window]:
    """The kernel, the bias (or ``None``) and the adjoint window for input ``x``."""
    w, b = kernel_and_bias(name, s, params, x)
    return w, b, _window(name, x.shape[1:3], s)


def ConvTranspose2D(features: int, kernel_size, strides=1, padding="VALID", output_padding=0,
                    dilation=1, groups: int = 1, use_bias: bool = True, *,
                    w_init=jax.nn.initializers.lecun_normal(), b_init=jax.nn.initializers.zeros,
                    param_dtype=jnp.float32, precision=None) -> Layer:
    """A 2-D transposed convolution: every input entry scatters its products with the kernel.

    ``y[n, i s + p d - t, j s + q d - l, o] += x[n, i, j, g(o) C_g + c] w[p, q, c, o]``, plus the
    bias (eqs. 4.10-4.11): the adjoint of ``Conv2D`` with the same kernel (in/out swapped),
    strides, dilation and padding.

    Args:
      features: output channels ``F``.
      kernel_size: ``(kh, kw)`` or an int.
      strides, dilation: an int or a pair, each >= 1.
      padding: ``"VALID"`` (no crop), ``((top, bottom), (left, right))`` (rows and columns
        cropped from the scattered canvas, as PyTorch's ``padding``) or ``"SAME"`` (output
        ``(H s, W s)``, as Keras and Flax: the adjoint of ``Conv2D``'s ``"SAME"``, eq. 3.2).
      output_padding: an int or a pair added to the output size at the bottom/right; each
        smaller than the stride or the dilation of its axis (PyTorch's rule); 0 with ``"SAME"``.
      groups: ``G``; input channels and ``features`` must both divide by it.
      use_bias: whether params have ``"b"``.
      w_init, b_init: ``jax.nn.initializers`` for the kernel (default LeCun normal) and bias.
      param_dtype: dtype of the parameters made by ``init``.
      precision: passed to every convolution of both passes.

    Params: ``{"w": (kh, kw, C_in // G, F), "b": (F,)}``.  Output size eq. 4.11:
    ``H_out = (H - 1) s - t - b + d (kh - 1) + 1 + output_padding``.  Forward eqs. 4.10-4.11;
    backward eqs. 4.3 (bias), 4.13 (kernel), 4.12 (input residual).  Equals
    ``torch.nn.functional.conv_transpose2d`` with weight ``w.transpose(2, 3, 0, 1)`` and
    ``flax.linen.ConvTranspose(transpose_kernel=True)`` with kernel ``w.transpose(0, 1, 3, 2)``
    (ungrouped; explicit padding converted as in ``docs/api.md``).
    """
    name = "ConvTranspose2D"
    precision = check_precision(name, precision)
    param_dtype = check_param_dtype(name, param_dtype)
    s = _settings(name, features, kernel_size, strides, padding, output_padding, dilation,
                  groups, use_bias)

    def init(key, input_shape):
        h, w, c_in = check_input_shape(name, input_shape, 3, "(H, W, C)")
        check_channels(name, s, c_in)
        g = _window(name, (h, w), s)
        k_w, k_b = split_key(name, key, 2)
        params = {"w": w_init(k_w, (*s.kernel_size, c_in // s.groups, s.features), param_dtype)}
        if s.use_bias:
            params["b"] = b_init(k_b, (s.features,), param_dtype)
        return params, (*g.in_hw, s.features)

    def forward(params, x, *, key=None, train=True):
        w, b, g = _checked(name, s, params, x)
        # eqs. 4.10-4.11: the adjoint convolution's input residual (eq. 4.5) with x as delta
        y = xla.input_residual(x, ref.adjoint_kernel(w, s.groups), g, s.groups, precision)
        return (y if b is None else y + b.reshape(1, 1, 1, -1)), ConvTransposeCache(x)

    def backward(params, cache, delta):
        check_cache(name, cache, ConvTransposeCache)
        w, _, g = _checked(name, s, params, cache.x)
        check_delta(name, delta, (cache.x.shape[0], *g.in_hw, s.features), cache.x.dtype)
        dw = xla.kernel_grad(delta, cache.x, g, s.groups, precision)   # eq. 4.13 (4.4 swapped)
        grads = {"w": ref.adjoint_kernel(dw, s.groups)}
        if s.use_bias:
            grads["b"] = ref.backward_bias(delta)                          # eq. 4.3
        return grads, xla.forward(delta, ref.adjoint_kernel(w, s.groups), g, s.groups,
                                  precision)                               # eq. 4.12 (4.2)

    return numpy_as_jax(Layer(
        init, forward, backward, apply_from_forward(forward), name, config=config(
        kind="transposed_window", size=s.kernel_size, strides=s.strides, dilation=s.dilation,
        padding=s.padding, output_padding=s.output_padding, features=s.features,
        groups=s.groups, use_bias=s.use_bias)))

"""Convolution over column pairs: eq. 4.18, XLA's convolution with a tile of (4.6) as its kernel.

A convolution of few output features (16 and fewer) is a matrix product with few columns, which
XLA's CPU convolutions (Eigen's) run well below their speed at 32.  Eq. 4.18 computes two
adjacent output columns per window: the kernel is (4.6)'s banded matrix ``T`` of one tile of two
columns, ``(k_h, t.read, C, 2 F)``, stepping two columns at a time -- twice the features, at
``(k_w + 1) / k_w`` times the multiply-adds (the zeros of ``T``).  The result's layout
``(N, H_out, W_out / 2, 2 F)`` is ``(N, H_out, W_out, F)``'s, so no copy follows.

``forward`` is (4.2) without the bias; ``input_residual`` the second line of (4.5) for a stride-1
layer, itself a stride-1 correlation.  Both go through ``correlate``, whose derivative for
autodiff is XLA's convolution of the layer (a ``custom_jvp``): ``jax.grad`` of ``apply`` gets the
instructions it gets from the ``"lax"`` form.  ``conv_plan`` picks this form on the CPU for the
training passes; evaluated ``apply`` keeps XLA's
(``docs/performance.md#why-pairs``).  Proven equal to ``jaxcnn.reference.conv`` in
``tests/test_lowerings.py``.  Shapes as in ``jaxcnn.lowering.xla``, ``G = 1``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxcnn import _geometry as geo
from jaxcnn.core import Array
from jaxcnn.lowering import toeplitz, xla

TILE = 2
"""Output columns per window: two (three measured slower than XLA's own convolution on the
project's CPU, docs/performance.md 8.25)."""


def pair_kernel(w: Array, g: geo.Window, t: toeplitz.Tiles) -> Array:
    """Eq. 4.18's kernel: (4.6)'s ``T`` of one tile, ``(k_h, t.read, C, t.size F)``, entry
    ``[p, v, c, (j, o)] = w[p, q, c, o]`` where ``v = j s_w + q d_w``, else 0."""
    kh, _, c, f = w.shape
    return toeplitz.toeplitz_kernel(w, g, t).reshape(kh, t.read, c, t.size * f)


def forward(x: Array, w: Array, g: geo.Window, precision=None) -> Array:
    """Eq. 4.18: eq. 4.2 without the bias, ``TILE`` output columns per window.

    ``y[n, i, j t + r, o] = sum_{p, v, c} x_pad[n, i s_h + p d_h, j t s_w + v, c]
    T[p, v, c, (r, o)]``: window ``(k_h, t.read)``, stride ``(s_h, t s_w)``, ``t F`` features.
    ``x (N, H, W, C)``, ``w (kh, kw, C, F)`` -> ``(N, H_out, W_out, F)``.  A last tile past
    ``W_out`` reads zero columns (the padding on the right is extended to ``t.width``); its
    extra outputs are dropped.
    """
    return correlate(x, w, g, precision)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def correlate(x: Array, w: Array, g: geo.Window, precision=None) -> Array:
    """``forward``'s sums; differentiated (``_xla_tangent``) as XLA's convolution of ``g``."""
    t = toeplitz.column_tiles(g, TILE)
    (top, bottom), (left, _) = g.padding
    right = t.width - g.in_hw[1] - left            # to t.width columns (negative: a crop)
    y = lax.conv_general_dilated(
        x, pair_kernel(w, g, t), window_strides=(g.strides[0], t.step),
        padding=((top, bottom), (left, right)), rhs_dilation=(g.dilation[0], 1),
        dimension_numbers=xla.DIMS, precision=precision)        # (N, H_out, count, t F)
    n, ho = y.shape[:2]
    return y.reshape(n, ho, t.count * t.size, w.shape[3])[:, :, :g.out_hw[1]]


@functools.partial(correlate.defjvp, symbolic_zeros=True)
def _xla_tangent(g, precision, primals, tangents):
    """The tangent of (4.2), linear in ``x`` and ``w``: XLA's convolutions, whose transposes
    are the instructions ``jax.grad`` emits for the ``"lax"`` form (eqs. 4.4, 4.5)."""
    (x, w), (dx, dw) = primals, tangents
    y = correlate(x, w, g, precision)
    dy = jnp.zeros_like(y)
    if not isinstance(dx, SymbolicZero):      # a first layer's data has none
        dy = dy + xla.forward(dx, w, g, 1, precision)
    if not isinstance(dw, SymbolicZero):
        dy = dy + xla.forward(x, dw, g, 1, precision)
    return y, dy


def input_residual(delta: Array, w: Array, g: geo.Window, precision=None) -> Array:
    """Eq. 4.5, second line, for a stride-1 layer, by eq. 4.18: the full correlation of delta
    with the rotated kernel, its in/out axes swapped, ``TILE`` columns per window.

    ``delta (N, H_out, W_out, F)``, ``w (kh, kw, C, F)`` -> ``dx (N, H, W, C)``.
    """
    if g.strides != (1, 1):
        raise ValueError(f"Conv2D: the input residual by column pairs needs strides (1, 1), "
                         f"got {g.strides}")
    w_t = w[::-1, ::-1].transpose(0, 1, 3, 2)                       # (kh, kw, F, C)
    full = geo.Window(g.out_hw, g.size, (1, 1), g.dilation, xla.full_padding(g), g.in_hw)
    return correlate(delta, w_t, full, precision)

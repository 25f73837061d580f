"""The transposed convolution as the textbook writes it: eqs. 4.10-4.13 of ``docs/derivation.md``.

A transposed convolution is a convolution read backwards: its forward is a convolution's input
residual (eq. 4.5), its input residual is a convolution's forward (eq. 4.2) and its kernel
gradient a convolution's kernel gradient (eq. 4.4) with the roles of input and residual
swapped.  So every pass here is a function of ``jaxcnn.reference.conv`` applied to the
*adjoint convolution*: the ``Conv2D`` that maps the transposed convolution's output back to its
input, whose kernel is ``w`` with its in/out axes swapped within each group
(``adjoint_kernel``) and whose window ``g`` (``jaxcnn.conv_transpose.adjoint_window``) is
placed over the transposed convolution's output, padded by ``(t, b - output_padding)``: a
negative amount is a crop.  No lowering, no switch; ``ConvTranspose2D``'s passes are proven
equal to these in ``tests/test_conv_transpose.py``.

Shapes: input ``x (N, H, W, C_in)``, kernel ``w (kh, kw, C_g, F)``, bias ``b (F,)``, output and
``delta (N, H_out, W_out, F)`` (eq. 4.11).  ``G`` groups: ``C_in = G C_g``, ``F = G F_g``;
output channel ``o`` reads the ``C_g`` input channels of its group ``o // F_g``, as in
``Conv2D``.  ``g.in_hw = (H_out, W_out)`` and ``g.out_hw = (H, W)``.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxcnn import _geometry as geo
from jaxcnn.core import Array
from jaxcnn.reference import conv


def adjoint_kernel(w: Array, groups: int = 1) -> Array:
    """``w (kh, kw, A, G B) -> (kh, kw, B, G A)``, in and out swapped within each group:
    ``w_adj[p, q, b, g A + a] = w[p, q, a, g B + b]``.  Its own inverse.

    The transposed convolution's kernel ``(kh, kw, C_g, F)`` becomes the adjoint convolution's
    ``(kh, kw, F_g, C_in)``, which reads the ``F`` channels of the transposed output and makes
    the ``C_in`` of its input; not rotated (that is eq. 4.5's second line, not its first).
    """
    kh, kw, a, f = w.shape
    return (w.reshape(kh, kw, a, groups, f // groups).transpose(0, 1, 4, 3, 2)
            .reshape(kh, kw, f // groups, groups * a))


def canvas_window(g: geo.Window) -> geo.Window:
    """The adjoint window over the unpadded canvas of eq. 4.10: ``(H - 1) s + k_eff`` rows (the
    padded rows of ``g``), ``"VALID"``."""
    return geo.window("ConvTranspose2D", g.padded_hw, g.size, g.strides, g.dilation, "VALID")


def crop(canvas: Array, g: geo.Window) -> Array:
    """Eq. 4.11: the canvas without its first ``t`` and last ``b - output_padding`` rows (and
    columns), extended by zeros where that amount is negative -- the transpose of
    ``geo.pad(., g)``.  ``(N, Hp, Wp, F) -> (N, H_out, W_out, F)``."""
    (t, b), (l, r) = g.padding
    return lax.pad(canvas, jnp.zeros((), canvas.dtype),
                   ((0, 0, 0), (-t, -b, 0), (-l, -r, 0), (0, 0, 0)))


def forward(x: Array, w: Array, b: Array | None, g: geo.Window, groups: int = 1,
            precision=None) -> Array:
    """Eqs. 4.10-4.11: ``y[n, i s + p d - t, j s + q d - l, o] += x[n, i, j, g(o) C_g + c] w[p, q, c, o]``.

    Every input entry scatters its products with the kernel onto the canvas at
    ``(i s + p d, j s + q d)`` (overlaps add up): the first line of eq. 4.5 with ``x`` in the
    place of delta and the adjoint kernel, computed by ``reference.conv.backward_input`` (one
    contraction and the scatter-add 3.4).  The crop then drops the padding and zero-extends
    by the output padding, and the bias is added.  -> ``y (N, H_out, W_out, F)``.
    """
    canvas = conv.backward_input(x, adjoint_kernel(w, groups), canvas_window(g), groups,
                                 precision)                              # eq. 4.10
    y = crop(canvas, g)                                                  # eq. 4.11
    return y if b is None else y + b.reshape(1, 1, 1, -1)


def backward_bias(delta: Array) -> Array:
    """Eq. 4.3, unchanged: ``db_o = sum_{n,u,v} delta[n,u,v,o]``.  ``(N, H_out, W_out, F)`` -> ``(F,)``."""
    return conv.backward_bias(delta)


def backward_input(delta: Array, w: Array, g: geo.Window, groups: int = 1,
                   precision=None) -> Array:
    """Eq. 4.12: ``dx[n,i,j,gC_g+c] = sum_{p,q,f} delta_pad[n, is+pd, js+qd, gF_g+f] w[p,q,c,gF_g+f]``.

    The adjoint convolution's forward (eq. 4.2) on delta, padded by ``g.padding`` (the
    transpose of the crop): each input entry gathers the deltas of the outputs it was
    scattered to.  ``delta (N, H_out, W_out, F)`` -> ``dx (N, H, W, C_in)``.
    """
    return conv.forward(delta, adjoint_kernel(w, groups), None, g, groups, precision)


def backward_kernel(x: Array, delta: Array, g: geo.Window, groups: int = 1,
                    precision=None) -> Array:
    """Eq. 4.13: ``dw[p,q,c,o] = sum_{n,i,j} delta_pad[n, i s + p d, j s + q d, o] x[n,i,j,g(o) C_g + c]``.

    The convolution's kernel gradient (eq. 4.4) with the roles swapped: the padded delta is
    the input whose windows are read, and ``x`` the residual that weights them; the result is
    the adjoint kernel's gradient, swapped back.  -> ``dw (kh, kw, C_g, F)``.
    """
    return adjoint_kernel(conv.backward_kernel(delta, x, g, groups, precision), groups)

"""Convolution as XLA's convolution instructions: eqs. 4.2, 4.4 and 4.5 by
``lax.conv_general_dilated`` (``Conv2D(method="lax")``, and ``"auto"`` off the CPU).

Each pass is one instruction, the very one ``jax.grad`` emits for the same forward, so that off
the CPU both compile, autotune and run alike.  Proven equal to ``jaxcnn.reference.conv`` in
``tests/test_lowerings.py``.  Shapes: ``x (N, H, W, C_in)``, ``w (kh, kw, C_in // G, F)``,
``delta (N, H_out, W_out, F)``, ``G`` groups.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn import _geometry as geo
from jaxcnn.core import Array

DIMS = ("NHWC", "HWIO", "NHWC")
"""The forward's dimension numbers: images NHWC, kernels HWIO."""


def canonical_layouts() -> bool:
    """Whether the backward passes swap axes by transposes, so that every convolution reads
    ``DIMS`` (XLA's CPU: inside a loop it runs any other layout as a plain loop nest), or by
    dimension numbers, as ``jax.grad``'s transpose rules do (elsewhere: two steps that share
    their instructions share XLA's autotuning, ``docs/performance.md`` 8.19).
    ``jax.default_backend()`` at trace time decides."""
    return jax.default_backend() == "cpu"


def forward(x: Array, w: Array, g: geo.Window, groups: int, precision=None) -> Array:
    """Eq. 4.2 without the bias: ``y[n,i,j,o] = sum_{p,q,c} x_pad[n, i s + p d, j s + q d, c] w[p,q,c,o]``.

    ``x (N, H, W, C_in)``, ``w (kh, kw, C_in // G, F)`` -> ``(N, H_out, W_out, F)``.
    """
    return lax.conv_general_dilated(
        x, w, window_strides=g.strides, padding=g.padding, rhs_dilation=g.dilation,
        dimension_numbers=DIMS, feature_group_count=groups, precision=precision)


def kernel_grad(x: Array, delta: Array, g: geo.Window, groups: int, precision=None) -> Array:
    """Eq. 4.4, the kernel gradient: the correlation of the input with delta.

    ``x (N, H, W, C_in)``, ``delta (N, H_out, W_out, F)`` -> ``dw (kh, kw, C_in // G, F)``.

    ``dw[p,q,c,o] = sum_{n,i,j} x_pad[n, i s + p d, j s + q d, c] delta[n,i,j,o]``: delta is the
    sliding "kernel", dilated by the forward stride, stepping by the forward dilation; the sum
    runs over the batch, so the batch axis plays the role of the contracted channel axis and the
    input channels that of the batch (split into G groups by ``batch_group_count``).  The rows
    past the last one read (the remainder ``r`` of Section 3) are cropped by the padding.

    On the CPU the roles are swapped by transposes -- ``x`` to ``(C_in, H, W, N)``, delta to
    ``(H_out, W_out, N, F)``, the result back from ``(C_in // G, kh, kw, F)`` -- which XLA
    would insert itself, except inside a loop (``lax.scan``: ``microbatch``), where it runs
    the transpose rule's dimension numbers (``CHWN, IHWO -> HWNC``) as a plain loop nest
    instead (``docs/performance.md``, section 11).  ``x``'s transpose is ``unfused_transpose``.
    Elsewhere, those dimension numbers.
    """
    pads = []
    for n, k, s, (lo, _), n_out in zip(g.in_hw, g.effective_size, g.strides, g.padding, g.out_hw):
        pads.append((lo, k + (n_out - 1) * s - n - lo))
    if not canonical_layouts():
        return lax.conv_general_dilated(
            x, delta, window_strides=g.dilation, padding=pads, rhs_dilation=g.strides,
            dimension_numbers=("CHWN", "IHWO", "HWNC"), batch_group_count=groups,
            precision=precision)
    dw = lax.conv_general_dilated(
        unfused_transpose(x, (3, 1, 2, 0)), delta.transpose(1, 2, 0, 3), window_strides=g.dilation,
        padding=pads, rhs_dilation=g.strides, dimension_numbers=DIMS, batch_group_count=groups,
        precision=precision)                                    # (C_in // G, kh, kw, F)
    return dw.transpose(1, 2, 0, 3)


def unfused_transpose(a: Array, perm: tuple[int, ...]) -> Array:
    """``a.transpose(perm)`` that XLA writes by a copy of its own, not fused with what made ``a``.

    XLA's CPU backend fuses the elementwise layer that produced an activation (a bias and a
    ReLU, say) into its transpose to ``(C, H, W, N)``, and runs that loop in the output's
    order, reading across whole examples: 2-3x the time of the pure copy it emits for a
    transpose alone (``docs/performance.md`` 8.24).  A conditional is a boundary XLA does not
    fuse across.  Both branches are the transpose, so the result does not depend on the
    predicate, which reads ``a`` only so that XLA cannot fold the conditional away.
    """
    def swap(a):
        return a.transpose(perm)

    first = a.reshape(-1)[:1]
    return lax.cond(jnp.all(first == first), swap, swap, a)


def full_padding(g: geo.Window) -> tuple[tuple[int, int], tuple[int, int]]:
    """Eq. 4.5's padding of delta, the crop folded in: ``(k_eff - 1 - lo, H + lo - (H_out - 1)
    s - 1)`` per axis, which makes the full correlation exactly ``H`` rows tall (negative: a
    crop)."""
    return tuple((k - 1 - lo, n + lo - (n_out - 1) * s - 1) for n, k, s, (lo, _), n_out
                 in zip(g.in_hw, g.effective_size, g.strides, g.padding, g.out_hw))


def input_residual(delta: Array, w: Array, g: geo.Window, groups: int, precision=None) -> Array:
    """Eq. 4.5, second line: the full convolution of delta with the rotated kernel, as one
    transposed convolution.

    ``delta (N, H_out, W_out, F)``, ``w (kh, kw, C_in // G, F)`` -> ``dx (N, H, W, C_in)``.

    The forward stride becomes ``s - 1`` zeros between the entries of delta (lhs dilation), the
    kernel is rotated by 180 degrees with its in/out axes swapped inside each group, and the
    padding ``k_eff - 1 - lo`` on the top/left makes the correlation "full"; the bottom/right
    amount is whatever brings the output back to ``H`` (negative = a crop, which also drops the
    gradient on the forward's padding).  On the CPU the swap is a transpose of the kernel (for
    ``G > 1`` with the group axis moved in front of the channels), so that the instruction
    reads ``HWIO`` also inside a loop (see ``kernel_grad``); elsewhere the kernel's dimension
    numbers make it (``HWOI``), the instruction of ``jax.grad``'s transpose rule.
    """
    kh, kw, cg, f = w.shape
    fg = f // groups
    w_t = (w.reshape(kh, kw, cg, groups, fg).transpose(0, 1, 3, 2, 4)     # read as (O, I) =
           .reshape(kh, kw, groups * cg, fg))[::-1, ::-1]                # (G C_g, F / G)
    dims = ("NHWC", "HWOI", "NHWC")
    if canonical_layouts():
        w_t, dims = w_t.transpose(0, 1, 3, 2), DIMS                     # (F / G, G C_g)
    return lax.conv_general_dilated(
        delta, w_t, window_strides=(1, 1), padding=full_padding(g), lhs_dilation=g.strides,
        rhs_dilation=g.dilation, dimension_numbers=dims,
        feature_group_count=groups, precision=precision)

"""The input residual by stride phases: eq. 4.9, a lowering of eq. 4.5.

A strided convolution's transposed form (4.5) multiplies every zero it inserts between the
entries of delta: a fraction ``1 - 1/(s_h s_w)`` of its products.  Read by phases (3.5), each of
the ``s_h s_w`` stride phases of ``dx_pad`` is a stride-1 full correlation of delta itself with
the taps of that phase; one correlation computes them all as ``s_h s_w C`` output channels,
which then interleave back into rows and columns (depth-to-space).  ``jaxcnn.lowering.plan``
takes it for strided convolutions on the CPU; proven equal to ``jaxcnn.reference.conv`` in
``tests/test_lowerings.py``.  Ungrouped (``G = 1``).
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxcnn import _geometry as geo
from jaxcnn.core import Array
from jaxcnn.lowering.xla import DIMS


def input_residual(delta: Array, w: Array, g: geo.Window, precision=None) -> Array:
    """Eq. 4.9: ``dx_pad[n, m s_h + r, m' s_w + r', c] = sum_{t,t',o} delta[n, m - t, m' - t', o]
    w_eff[t s_h + r, t' s_w + r', c, o]``, ``w_eff`` the kernel with its dilation written out as
    zeros and zero-extended to ``b s`` taps, ``b = ceil(k_eff / s)`` per axis.

    ``delta (N, H_out, W_out, F)``, ``w (kh, kw, C, F)`` -> ``dx (N, H, W, C)``; ``G = 1``.
    """
    c, f = w.shape[2:]
    n, ho, wo, _ = delta.shape
    (sh, sw), (dh, dw), (keh, kew) = g.strides, g.dilation, g.effective_size
    bh, bw = -(-keh // sh), -(-kew // sw)
    zero = jnp.zeros((), w.dtype)
    w_eff = lax.pad(w, zero, ((0, bh * sh - keh, dh - 1), (0, bw * sw - kew, dw - 1),
                              (0, 0, 0), (0, 0, 0)))             # (bh sh, bw sw, C, F)
    w_phase = (w_eff.reshape(bh, sh, bw, sw, c, f).transpose(0, 2, 5, 1, 3, 4)
               .reshape(bh, bw, f, sh * sw * c))[::-1, ::-1]     # rotated, in/out swapped
    mh, mw = ho + bh - 1, wo + bw - 1                            # phase rows/columns reached
    phases = lax.conv_general_dilated(delta, w_phase, (1, 1),
                                      ((bh - 1, bh - 1), (bw - 1, bw - 1)),
                                      dimension_numbers=DIMS, precision=precision)
    dx_pad = (phases.reshape(n, mh, mw, sh, sw, c).transpose(0, 1, 3, 2, 4, 5)
              .reshape(n, mh * sh, mw * sw, c))                  # depth-to-space
    (top, _), (left, _) = g.padding
    h, wd = g.in_hw                                              # crop to dx, or zero-extend
    return lax.pad(dx_pad, zero, ((0, 0, 0), (-top, h + top - mh * sh, 0),
                                  (-left, wd + left - mw * sw, 0), (0, 0, 0)))

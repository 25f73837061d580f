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
    (top, _), (left, _) = g.padding
    h, wd = g.in_hw
    (m0, m1), (n0, n1) = _reached(top, h, sh, ho + bh - 1), _reached(left, wd, sw, wo + bw - 1)
    phases = lax.conv_general_dilated(                          # only the phase rows dx keeps
        delta, w_phase, (1, 1),
        ((bh - 1 - m0, m1 - ho), (bw - 1 - n0, n1 - wo)),       # may be negative: a crop
        dimension_numbers=DIMS, precision=precision)            # (N, m1 - m0, n1 - n0, sh sw C)
    dx_pad = (phases.reshape(n, m1 - m0, n1 - n0, sh, sw, c).transpose(0, 1, 3, 2, 4, 5)
              .reshape(n, (m1 - m0) * sh, (n1 - n0) * sw, c))   # depth-to-space
    return lax.pad(dx_pad, zero, ((0, 0, 0), (m0 * sh - top, top + h - m1 * sh, 0),
                                  (n0 * sw - left, left + wd - n1 * sw, 0), (0, 0, 0)))


def _reached(lo: int, size: int, s: int, m: int) -> tuple[int, int]:
    """The phase rows ``[m0, m1)`` of ``m`` that hold rows ``[lo, lo + size)`` of ``dx_pad``:
    computing no others keeps the phases' output the size of ``dx`` (less than ``s`` rows over
    per edge) rather than the ``m s`` rows every phase reaches."""
    return min(lo // s, m), min(m, -(-(lo + size) // s))

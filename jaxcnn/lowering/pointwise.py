"""A 1x1 kernel: eqs. 4.19-4.21, the dense layer of section 1 at every position the kernel reads.

With ``k_h = k_w = 1`` the window of (4.2) is one pixel, so the convolution is (1.1) applied to
the rows ``a = x_pad[n, i s_h, j s_w, :]`` (one per output position), and its backward passes are
(1.4) and (1.6) on those rows, the input residual put back at the positions read (zero at the
others and cropped off the padding).  Matrix products and one strided slice, no convolution.
XLA's CPU compiler rewrites a stride-1 1x1 forward (and so its input residual) into such a
product itself, but not the kernel gradient, which it runs as a convolution over the whole map
with the batch as channels (eq. 4.4's reading): ``conv_plan`` takes (4.20) for the kernel
gradient of a stride-1 1x1 layer.  ``forward`` and ``input_residual`` complete the derivation;
no plan takes them (strided, in a training step and in evaluation, they measured no faster than
XLA's convolutions: ``docs/performance.md#why-pointwise``).  All three proven equal to
``jaxcnn.reference.conv`` in ``tests/test_lowerings.py``.  Shapes as in
``jaxcnn.lowering.xla``, ``w (1, 1, C, F)``, ``G = 1``; the dilation reads nothing here.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxcnn import _geometry as geo
from jaxcnn.core import Array
from jaxcnn.lowering import xla


def positions(x: Array, g: geo.Window) -> Array:
    """Eq. 4.19's rows: ``a[n, i, j, :] = x_pad[n, i s_h, j s_w, :]``, ``(N, H_out, W_out, C)`` --
    the one window slice (3.3) of a 1x1 kernel."""
    (rows,) = geo.window_slices(geo.pad(x, g), g)
    return rows


def forward(x: Array, w: Array, g: geo.Window, precision=None) -> Array:
    """Eq. 4.19, (4.2) without the bias for a 1x1 kernel: ``y[n, i, j, :] = a[n, i, j, :] W``,
    ``W = w[0, 0] (C, F)``.  ``x (N, H, W, C)`` -> ``(N, H_out, W_out, F)``."""
    return jnp.dot(positions(x, g), w[0, 0], precision=precision)


def kernel_grad(x: Array, delta: Array, g: geo.Window, precision=None) -> Array:
    """Eq. 4.20, (4.4) for a 1x1 kernel: ``dW = a^T delta`` (1.4) over the ``N H_out W_out``
    rows.  ``x (N, H, W, C)``, ``delta (N, H_out, W_out, F)`` -> ``dw (1, 1, C, F)``."""
    rows = positions(x, g).reshape(-1, x.shape[3])
    return jnp.dot(rows.T, delta.reshape(-1, delta.shape[3]), precision=precision)[None, None]


def input_residual(delta: Array, w: Array, g: geo.Window, precision=None) -> Array:
    """Eq. 4.21, (4.5) for a 1x1 kernel: ``delta W^T`` (1.6) at the positions read,
    ``dx[n, i s_h - t, j s_w - l, :]``, zero at the others.  One ``lax.pad``: ``s - 1`` zeros
    between rows (interior padding), the padding's ``(t, l)`` cropped off the top and left,
    and the bottom and right filled or cropped to ``(H, W)`` (xla.full_padding's amounts for
    ``k = 1``).  ``delta (N, H_out, W_out, F)`` -> ``dx (N, H, W, C)``."""
    shares = jnp.dot(delta, w[0, 0].T, precision=precision)             # (N, H_out, W_out, C)
    pads = [(lo, hi, s - 1) for (lo, hi), s in zip(xla.full_padding(g), g.strides)]
    return lax.pad(shares, jnp.zeros((), shares.dtype), [(0, 0, 0), *pads, (0, 0, 0)])

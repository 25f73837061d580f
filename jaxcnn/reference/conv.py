"""Convolution as the textbook writes it: eqs. 4.2-4.5 of ``docs/derivation.md``.

Every pass is the window gather of Section 3 and one contraction: the forward gathers every
window of the padded input (3.3) and contracts it with the kernel; the kernel gradient
contracts the same windows with delta; the input residual contracts delta with the kernel into
one share per window entry and adds the shares back where they were read (3.4).  No lowering,
no switch: this module is what the fast forms (``jaxcnn.lowering``) are proven equal to, and
``Conv2D(method="reference")`` runs it.

Shapes: input ``x (N, H, W, C_in)``, kernel ``w (kh, kw, C_g, F)``, bias ``b (F,)``, output and
``delta (N, H_out, W_out, F)`` (``H_out`` by eq. 3.1).  ``G`` groups: ``C_in = G C_g`` and
``F = G F_g``; output channel ``o`` reads the ``C_g`` input channels of its group ``o // F_g``.
``K = kh kw`` window positions, row-major.  ``g`` is the window's placement (``geo.Window``).
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxcnn import _geometry as geo
from jaxcnn.core import Array


def _by_group(a: Array, groups: int) -> Array:
    """Split the last axis into ``(G, C / G)``: channel ``g C_g + c`` at ``[g, c]``."""
    return a.reshape(*a.shape[:-1], groups, a.shape[-1] // groups)


def _kernel_by_group(w: Array, groups: int) -> Array:
    """``w (kh, kw, C_g, F)`` as ``(K, C_g, G, F_g)``: tap, input channel, group, output."""
    kh, kw, cg, f = w.shape
    return w.reshape(kh * kw, cg, groups, f // groups)


def forward(x: Array, w: Array, b: Array | None, g: geo.Window, groups: int = 1,
            precision=None) -> Array:
    """Eq. 4.2: ``y[n,i,j,o] = b_o + sum_{p,q,c} x_pad[n, i s + p d, j s + q d, g(o) C_g + c] w[p,q,c,o]``.

    ``X = windows(x_pad)`` is ``(N, H_out, W_out, K, C_in)`` (eq. 3.3), and
    ``y[n,i,j,o] = b_o + sum_{k,c} X[n,i,j,k,g(o) C_g + c] w[k,c,o]``.
    """
    windows = _by_group(geo.windows(geo.pad(x, g), g), groups)          # (N, Ho, Wo, K, G, C_g)
    y = jnp.einsum("nijkgc,kcgo->nijgo", windows, _kernel_by_group(w, groups),
                   precision=precision)
    y = y.reshape(*y.shape[:3], -1)                                      # (N, Ho, Wo, F)
    return y if b is None else y + b.reshape(1, 1, 1, -1)


def backward_bias(delta: Array) -> Array:
    """Eq. 4.3: ``db_o = sum_{n,i,j} delta[n,i,j,o]``.  ``delta (N, H_out, W_out, F)`` -> ``(F,)``."""
    return jnp.sum(delta, axis=(0, 1, 2))


def backward_kernel(x: Array, delta: Array, g: geo.Window, groups: int = 1,
                    precision=None) -> Array:
    """Eq. 4.4: ``dw[p,q,c,o] = sum_{n,i,j} x_pad[n, i s + p d, j s + q d, g(o) C_g + c] delta[n,i,j,o]``.

    The correlation of the layer's input with delta: the windows of the forward, each weighted
    by the delta of the output it made.  -> ``dw (kh, kw, C_g, F)``.
    """
    windows = _by_group(geo.windows(geo.pad(x, g), g), groups)          # (N, Ho, Wo, K, G, C_g)
    dw = jnp.einsum("nijkgc,nijgo->kcgo", windows, _by_group(delta, groups),
                    precision=precision)                                 # (K, C_g, G, F_g)
    return dw.reshape(*g.size, *dw.shape[1:2], -1)


def backward_input(delta: Array, w: Array, g: geo.Window, groups: int = 1,
                   precision=None) -> Array:
    """Eq. 4.5, first line: each input entry collects delta through every window that read it.

    ``G[n,i,j,k,g C_g + c] = sum_{f < F_g} delta[n,i,j,g F_g + f] w[k,c,g F_g + f]`` is the share
    of window ``(i, j)``'s entry ``k``; the scatter-add (3.4), the transpose of the gather,
    adds every share back at ``x_pad[n, i s + p d, j s + q d, :]`` (overlaps add up, unread
    positions get 0) and the crop drops the padding.  -> ``dx (N, H, W, C_in)``.
    """
    shares = jnp.einsum("nijgo,kcgo->nijkgc", _by_group(delta, groups),
                        _kernel_by_group(w, groups), precision=precision)
    shares = shares.reshape(*shares.shape[:4], -1)                       # (N, Ho, Wo, K, C_in)
    return geo.unpad(geo.scatter_windows(shares, g), g)


def backward_input_full(delta: Array, w: Array, g: geo.Window, groups: int = 1,
                        precision=None) -> Array:
    """Eq. 4.5, second line -- the source's rule: the input residual is the *full* convolution
    of delta with the kernel rotated by 180 degrees.

    delta with ``s - 1`` zeros between its entries (the stride-dilated delta), padded by
    ``k_eff - 1 - lo`` on the top/left and ``H + lo - (H_out - 1) s - 1`` on the bottom/right
    (negative: a crop, which drops the forward's padding), correlated by the forward (4.2) at
    stride 1 and the forward's dilation with ``w~[p,q,f,g C_g + c] = w[kh-1-p, kw-1-q, c, g F_g + f]``
    (rotated, in/out swapped within each group).  Equal to ``backward_input``
    (``tests/test_reference.py``).  -> ``dx (N, H, W, C_in)``.
    """
    kh, kw, cg, f = w.shape
    rotated = (w[::-1, ::-1].reshape(kh, kw, cg, groups, f // groups)
               .transpose(0, 1, 4, 3, 2).reshape(kh, kw, f // groups, groups * cg))
    pads = [(k - 1 - lo, n + lo - (n_out - 1) * s - 1, s - 1) for n, k, s, (lo, _), n_out
            in zip(g.in_hw, g.effective_size, g.strides, g.padding, g.out_hw)]
    dilated = lax.pad(delta, jnp.zeros((), delta.dtype), [(0, 0, 0), *pads, (0, 0, 0)])
    full = geo.window("Conv2D", dilated.shape[1:3], (kh, kw), (1, 1), g.dilation, "VALID")
    return forward(dilated, rotated, None, full, groups, precision)

"""Geometry of a 2-D sliding window, shared by the forward and backward passes.

Convolution and pooling both slide a (possibly dilated) window over a padded input.  Everything
that depends on the window's placement -- output size, padding amounts, pad / unpad, the
gather of every window and its transpose, the scatter-add back -- lives here, so that a forward
and its backward cannot disagree about it.  All quantities are static Python ints.

Notation (``docs/derivation.md`` section 3): input ``H x W``, window ``k``, stride ``s``,
dilation ``d``, effective window ``k_eff = d (k - 1) + 1``, padding ``(lo, hi)``,
output ``H_out = floor((H + lo + hi - k_eff) / s) + 1``  (eq. 3.1), or in ceil mode (pooling)
rounded up, the last window reaching past the padding by an overhang (eq. 5.11).
"""
from __future__ import annotations

import itertools
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn.core import LARGEST, Array

PADDINGS = ("VALID", "SAME")


class Window(NamedTuple):
    """Static placement of a 2-D window over an ``(H, W)`` input.

    ``padding`` is what every pass pads by, ``((top, bottom), (left, right))``; in ceil mode
    its bottom and right include ``overhang``, the rows and columns the last window reads
    past the requested padding (eq. 5.11).  They are padding to every pass (zeros to a sum,
    ``-inf`` to a max, cropped from the residual); only an average's divisor tells them apart
    (eq. 5.12).
    """

    in_hw: tuple[int, int]
    size: tuple[int, int]
    strides: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]
    out_hw: tuple[int, int]
    overhang: tuple[int, int] = (0, 0)

    @property
    def padded_hw(self) -> tuple[int, int]:
        return tuple(n + lo + hi for n, (lo, hi) in zip(self.in_hw, self.padding))

    @property
    def effective_size(self) -> tuple[int, int]:
        return tuple(d * (k - 1) + 1 for k, d in zip(self.size, self.dilation))

    @property
    def requested_padding(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """``padding`` without the ceil-mode overhang: what the layer was asked to pad."""
        return tuple((lo, hi - o) for (lo, hi), o in zip(self.padding, self.overhang))

    @property
    def count(self) -> int:
        """Number of positions in one window."""
        return self.size[0] * self.size[1]


def normalize_padding(layer: str, padding):
    """``"VALID"``, ``"SAME"`` or explicit ``((top, bottom), (left, right))`` of ints >= 0."""
    if isinstance(padding, str):
        if padding.upper() not in PADDINGS:
            raise ValueError(f"{layer}: unknown padding {padding!r}; expected one of "
                             f"{PADDINGS} or ((top, bottom), (left, right))")
        return padding.upper()
    try:
        (t, b), (l, r) = padding
        pads = tuple(int(v) for v in (t, b, l, r))
        if any(int(v) != v or isinstance(v, bool) for v in (t, b, l, r)):
            raise TypeError
    except (TypeError, ValueError, OverflowError):                  # OverflowError: inf
        raise ValueError(f"{layer}: unknown padding {padding!r}; expected one of {PADDINGS} "
                         f"or ((top, bottom), (left, right))") from None
    if min(pads) < 0 or max(pads) > LARGEST:
        raise ValueError(f"{layer}: padding amounts must be >= 0 and <= 2**31 - 1, got "
                         f"{padding!r}")
    return ((pads[0], pads[1]), (pads[2], pads[3]))


def window(layer: str, in_hw, size, strides, dilation, padding, ceil_mode: bool = False
           ) -> Window:
    """Place a window over an ``in_hw`` input (eq. 3.1); raise if it does not fit.

    ``padding`` is normalised already (see ``normalize_padding``).  ``"SAME"`` follows XLA's
    rule: ``H_out = ceil(H / s)`` and the total padding ``max((H_out - 1) s + k_eff - H, 0)`` is
    split with the extra row at the bottom/right (eq. 3.2).  ``ceil_mode`` rounds the output
    size up as PyTorch, the last window starting inside the input or its top/left padding, and
    pads the bottom/right further by the overhang it reads (eq. 5.11); ``"SAME"`` already
    rounds up, and ceil mode changes nothing there.
    """
    in_hw = tuple(int(n) for n in in_hw)
    size, strides, dilation = tuple(size), tuple(strides), tuple(dilation)
    k_eff = tuple(d * (k - 1) + 1 for k, d in zip(size, dilation))
    if padding == "VALID":
        pads = ((0, 0), (0, 0))
    elif padding == "SAME":
        pads = []
        for n, k, s in zip(in_hw, k_eff, strides):
            total = max((-(-n // s) - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        pads = tuple(pads)
    else:
        pads = padding
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(in_hw, pads))
    if any(k > p for k, p in zip(k_eff, padded)):
        raise ValueError(f"{layer}: window {size} (dilated extent {k_eff}) is larger than the "
                         f"padded input {padded} (input {in_hw}, padding {pads})")
    out_hw = tuple((p - k) // s + 1 for p, k, s in zip(padded, k_eff, strides))
    if not ceil_mode:
        return Window(in_hw, size, strides, dilation, pads, out_hw)
    out_hw = tuple(ceil_out(n, k, s, lo, hi) for n, k, s, (lo, hi)
                   in zip(in_hw, k_eff, strides, pads))
    overhang = tuple(max((o - 1) * s + k - p, 0)        # a remainder: no overhang
                     for o, s, k, p in zip(out_hw, strides, k_eff, padded))
    pads = tuple((lo, hi + o) for (lo, hi), o in zip(pads, overhang))
    return Window(in_hw, size, strides, dilation, pads, out_hw, overhang)


def ceil_out(n: int, k_eff: int, s: int, lo: int, hi: int) -> int:
    """Eq. 5.11, one axis: ``ceil((n + lo + hi - k_eff) / s) + 1`` windows, less the last if it
    would start past the input (``(H_out - 1) s >= n + lo``: only padding and overhang)."""
    out = -(-(n + lo + hi - k_eff) // s) + 1
    return out - 1 if (out - 1) * s >= n + lo else out


def pad(x: Array, g: Window, value=0.0) -> Array:
    """Pad the spatial axes of an NHWC array by ``g.padding`` with ``value``."""
    (t, b), (l, r) = g.padding
    if t == b == l == r == 0:
        return x
    return lax.pad(x, jnp.asarray(value, x.dtype), ((0, 0, 0), (t, b, 0), (l, r, 0), (0, 0, 0)))


def unpad(x_pad: Array, g: Window) -> Array:
    """The transpose of ``pad``: crop the padding away (gradients on padding are dropped)."""
    (t, _), (l, _) = g.padding
    h, w = g.in_hw
    return lax.slice(x_pad, (0, t, l, 0), (x_pad.shape[0], t + h, l + w, x_pad.shape[3]))


def _offsets(g: Window):
    """Window positions ``(p, q)`` in row-major order with their top-left offset in the input."""
    for p in range(g.size[0]):
        for q in range(g.size[1]):
            yield p * g.dilation[0], q * g.dilation[1]


def window_slices(x_pad: Array, g: Window):
    """The ``K`` strided slices ``x_pad[:, u::s_h, v::s_w, :]`` (cropped to ``H_out x W_out``), one
    per window position in row-major order."""
    (ho, wo), (sh, sw) = g.out_hw, g.strides
    n, c = x_pad.shape[0], x_pad.shape[3]
    for u, v in _offsets(g):
        yield lax.slice(x_pad, (0, u, v, 0), (n, u + (ho - 1) * sh + 1, v + (wo - 1) * sw + 1, c),
                        (1, sh, sw, 1))


def windows(x_pad: Array, g: Window) -> Array:
    """Gather every window: ``(N, Hp, Wp, C) -> (N, H_out, W_out, K, C)``, K in row-major order.

    Entry ``[n, i, j, p * kw + q, c] = x_pad[n, i s + p d, j s + q d, c]`` (eq. 3.3).
    """
    return jnp.stack(list(window_slices(x_pad, g)), axis=3)


def _phase_grid(g: Window):
    """Eq. 3.5's grid: ``(mh, mw)`` rows and columns per stride phase, ``(th, tw)`` the largest
    tap shifts ``floor(p d / s)``."""
    (sh, sw), (hp, wp) = g.strides, g.padded_hw
    return ((-(-hp // sh), -(-wp // sw)),
            ((g.size[0] - 1) * g.dilation[0] // sh, (g.size[1] - 1) * g.dilation[1] // sw))


def _tap_shifts(g: Window):
    """Per axis, each tap's ``(shift t, phase r)`` with ``p d = t s + r``, in tap order."""
    return ([divmod(p * g.dilation[0], g.strides[0]) for p in range(g.size[0])],
            [divmod(q * g.dilation[1], g.strides[1]) for q in range(g.size[1])])


def _shift_into_grid(a: Array, g: Window, t: int, t2: int) -> Array:
    """``a (N, H_out, W_out, C)`` shifted ``t`` rows down and ``t2`` columns right into the
    phase grid, zero elsewhere: ``(N, mh, mw, C)``."""
    (mh, mw), _ = _phase_grid(g)
    (ho, wo) = g.out_hw
    return lax.pad(a, jnp.zeros((), a.dtype),
                   ((0, 0, 0), (t, mh - ho - t, 0), (t2, mw - wo - t2, 0), (0, 0, 0)))


def _sum_by_phase(part, g: Window, n: int, c: int, dtype) -> Array:
    """Eq. 3.5's loop: ``part(tap, t, t2)`` is tap ``(p, q)``'s entries shifted ``t`` rows down
    and ``t2`` columns right into its phase's grid, ``(N, mh, mw, C)``, for the tap at offsets
    ``(t s_h + r, t2 s_w + r2)``; each phase ``(r, r2)`` sums its taps' parts, and the phases
    interleave into the padded rows and columns: ``(N, Hp, Wp, C)``."""
    (sh, sw), (hp, wp) = g.strides, g.padded_hw
    (mh, mw), _ = _phase_grid(g)
    rows, cols = _tap_shifts(g)
    phases = {}
    for tap, ((t, r), (t2, r2)) in enumerate(itertools.product(rows, cols)):
        shifted = part(tap, t, t2)
        phases[r, r2] = phases[r, r2] + shifted if (r, r2) in phases else shifted
    gap = jnp.zeros((n, mh, mw, c), dtype)              # a phase no tap reaches
    out = jnp.stack([jnp.stack([phases.get((r, r2), gap) for r2 in range(sw)], axis=3)
                     for r in range(sh)], axis=2)       # (N, mh, sh, mw, sw, C)
    return out.reshape(n, mh * sh, mw * sw, c)[:, :hp, :wp]


def _pad_to_phase_grid(a: Array, g: Window) -> Array:
    """``a (N, H_out, W_out, ...)`` zero-padded so that a slice from ``(th - t, tw - t2)`` of
    ``(mh, mw)`` rows and columns is ``a`` shifted by ``(t, t2)`` into the phase grid."""
    (mh, mw), (th, tw) = _phase_grid(g)
    (ho, wo) = g.out_hw
    config = [(0, 0, 0), (th, mh - ho, 0), (tw, mw - wo, 0)] + [(0, 0, 0)] * (a.ndim - 3)
    return lax.pad(a, jnp.zeros((), a.dtype), config)


def scatter_windows(contrib: Array, g: Window, pad_first: bool = False) -> Array:
    """The transpose of ``windows``: add each window entry back where it came from (eq. 3.4).

    ``(N, H_out, W_out, K, C) -> (N, Hp, Wp, C)``; overlapping windows add up.  Written as
    reads, not strided writes (eq. 3.5): padded row ``m s + r`` (phase ``r``) receives entry
    ``m - t`` of the taps at offset ``u = t s + r``; each phase sums its taps, and the phases
    interleave.  Each tap is shifted into place by its own padding, or with ``pad_first`` by
    a slice of ``contrib`` padded once: the same sums, and which is faster depends on what
    produced ``contrib`` (measured: a select, as in max pooling, pads per tap best; a fresh
    matrix product, as in eq. 4.8, pads first best).
    """
    (mh, mw), (th, tw) = _phase_grid(g)
    n, c = contrib.shape[0], contrib.shape[4]
    if pad_first:
        padded = _pad_to_phase_grid(contrib, g)

        def part(tap, t, t2):
            return lax.slice(padded, (0, th - t, tw - t2, tap, 0),
                             (n, th - t + mh, tw - t2 + mw, tap + 1, c))[:, :, :, 0]
    else:
        def part(tap, t, t2):
            return _shift_into_grid(contrib[:, :, :, tap], g, t, t2)

    return _sum_by_phase(part, g, n, c, contrib.dtype)


def sum_windows(x_pad: Array, g: Window) -> Array:
    """``windows(x_pad, g).sum(axis=3)`` without materialising the gather: ``(N, H_out, W_out, C)``.

    The sum of the ``K`` strided slices, which XLA fuses into one pass over the input.
    """
    parts = window_slices(x_pad, g)
    return sum(parts, next(parts))


def spread_windows(share: Array, g: Window) -> Array:
    """The transpose of ``sum_windows``: each window's value added to every position it covers.

    ``(N, H_out, W_out, C) -> (N, Hp, Wp, C)``, equal to ``scatter_windows`` of ``share``
    broadcast over the ``K`` positions (eq. 5.9, eq. 3.5 with one ``G`` for every tap).  Padded
    row ``m s + r`` receives ``share[m - t]`` for each tap at offset ``t s + r``, so each shift
    ``(t, t2)`` of ``share``, padded into place on the phase grid, is broadcast over the
    ``s_h x s_w`` phases and kept (a constant mask) in the phases its taps reach; the sum is
    then in ``(N, mh, s_h, mw, s_w, C)`` order, and interleaving the phases is a reshape: one
    fused loop of ``ceil(k_h / s_h) ceil(k_w / s_w)`` reads per position, with no concatenation
    of phases.  The shifts go last to first, the order XLA's CPU loop runs fastest
    (``docs/performance.md#why-avg-pool-spread``).
    """
    (sh, sw), (hp, wp) = g.strides, g.padded_hw
    (mh, mw), (th, tw) = _phase_grid(g)
    n, c = share.shape[0], share.shape[3]
    rows, cols = (set(shifts) for shifts in _tap_shifts(g))
    zero = jnp.zeros((), share.dtype)
    total = None
    for t, t2 in itertools.product(range(th, -1, -1), range(tw, -1, -1)):
        reached = np.array([[(t, r) in rows and (t2, r2) in cols for r2 in range(sw)]
                            for r in range(sh)])
        if not reached.any():
            continue
        shifted = _shift_into_grid(share, g, t, t2)
        part = jnp.broadcast_to(shifted[:, :, None, :, None, :], (n, mh, sh, mw, sw, c))
        if not reached.all():
            part = jnp.where(reached[None, None, :, None, :, None], part, zero)
        total = part if total is None else total + part
    return total.reshape(n, mh * sh, mw * sw, c)[:, :hp, :wp]


def window_counts(g: Window, with_padding: bool = False) -> np.ndarray:
    """How many real (unpadded) input positions each window covers, or with ``with_padding``
    how many input and requested padding positions -- all but the ceil-mode overhang
    (eq. 5.12): a static ``(H_out, W_out)``."""
    if with_padding:
        inside = tuple(n + lo + hi - o for n, (lo, hi), o in
                       zip(g.in_hw, g.padding, g.overhang))
        real = np.pad(np.ones(inside, np.int64), ((0, g.overhang[0]), (0, g.overhang[1])))
    else:
        real = np.pad(np.ones(g.in_hw, np.int64), g.padding)
    (ho, wo), (sh, sw) = g.out_hw, g.strides
    return sum(real[u:u + (ho - 1) * sh + 1:sh, v:v + (wo - 1) * sw + 1:sw]
               for u, v in _offsets(g))

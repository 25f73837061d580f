"""``summary(net, input_shape)``: the numbers a researcher checks first, layer by layer.

Output shape, parameter count, forward FLOPs and receptive field of every layer of a network.

- FLOPs are per example, forward pass: a multiply-add counts 2 (convolution, dense), a bias add
  1; pooling counts one operation per window entry; element-wise layers one per element;
  reshapes none.
- The receptive field of a unit is the input region (height, width) that can affect it.  It
  grows as ``r_out = r_in + (k_eff - 1) j_in`` and its step as ``j_out = j_in s`` through a
  sliding window (kernel ``k``, dilation ``d``, stride ``s``, ``k_eff = d (k - 1) + 1``); after a
  ``Flatten``, a global pooling or a normalisation over every position (``GroupNorm``) every
  unit sees the whole input; ``BatchNorm`` counts as evaluated, a per-channel affine map.
  Padding moves a field but does not change its size (at the border part of it lies in the
  padding).  Where branches merge, a unit sees the widest of
  their fields; a merge of branches whose units are spaced differently, or a concatenation
  along a spatial axis, leaves the field unknown (``?``).
- A transposed convolution (``ConvTranspose2D``) counts, like the convolution it is the
  adjoint of, 2 per multiply-add of every input entry with every kernel tap (eq. 4.10, those
  the crop drops included) plus 1 per output for the bias.  Its units are not evenly spaced
  over its input: output row ``u`` reads the input rows ``i`` with ``i s + p d - t = u``, two
  or one of them for ``k = 3``, ``s = 2``.  From there on fields are followed unit by unit
  over one period of units (``_Uneven``); the receptive field shown is the widest unit's
  (holes between dilated taps included), the jump ``j / s`` a fraction, and a merge of such
  fields unknown (``?``), as is one whose period takes more than ``_PERIODS`` taps to follow.
"""
from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import NamedTuple

import jax
import numpy as np

from jaxcnn import _geometry as geo
from jaxcnn.conv_transpose import adjoint_window
from jaxcnn.core import Layer, check_input_shape, in_layer

__all__ = ["Summary", "SummaryRow", "summary"]


@dataclasses.dataclass(frozen=True)
class SummaryRow:
    """One layer of a ``Summary``: its position, name, output shape, parameters, FLOPs and
    receptive field."""

    index: str               # position in the network, "3", or "1.2" inside a combinator
    name: str
    output_shape: tuple      # per example; a tuple of shapes for a layer with several outputs
    params: int
    flops: int | None        # None for a layer whose config does not say how to count
    receptive_field: tuple[int, int] | None   # (height, width) in input pixels
    jump: tuple[int, int] | None              # distance in input pixels between adjacent units
    start: tuple[int, int] | None = None      # top-left of unit (0, 0)'s field (< 0: padding)


@dataclasses.dataclass(frozen=True)
class Summary:
    """A table of ``SummaryRow``; ``str()`` prints it with totals."""

    input_shape: tuple[int, ...]
    rows: tuple[SummaryRow, ...]

    @property
    def params(self) -> int:
        return sum(row.params for row in self.rows)

    @property
    def flops(self) -> int | None:
        counts = [row.flops for row in self.rows]
        return None if None in counts else sum(counts)

    def __str__(self) -> str:
        head = ("#", "layer", "output shape", "params", "FLOPs", "receptive field")
        body = [(r.index, r.name, str(r.output_shape), f"{r.params:,}",
                 "?" if r.flops is None else f"{r.flops:,}",
                 "?" if r.receptive_field is None else
                 f"{r.receptive_field[0]}x{r.receptive_field[1]}") for r in self.rows]
        widths = [max(len(x) for x in col) for col in zip(head, *body)]
        fmt = lambda line: "  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip()  # noqa: E731
        total = "?" if self.flops is None else f"{self.flops:,}"
        return "\n".join([f"input {self.input_shape}", fmt(head), fmt(["-" * w for w in widths]),
                          *map(fmt, body),
                          f"total: {self.params:,} parameters, {total} FLOPs per example"])


def _flops(cfg: dict, in_shape, out_shape) -> int | None:
    kind = cfg.get("kind")
    if kind in ("flatten", "identity", "fanout", "fanin_concat"):
        return 0
    out = math.prod(out_shape)
    if kind in ("elementwise", "spatial_norm"):
        return out
    if kind == "fanin_sum":
        return out * (len(in_shape) - 1)
    if kind == "global":
        return math.prod(in_shape)
    if kind == "dense":
        return 2 * in_shape[0] * out + (out if cfg["use_bias"] else 0)
    if kind == "window":
        k = cfg["size"][0] * cfg["size"][1]
        if "features" in cfg:        # a convolution
            per_output = 2 * k * in_shape[2] // cfg["groups"] + (1 if cfg["use_bias"] else 0)
            return out * per_output
        return out * k
    if kind == "transposed_window":  # every input entry times every tap (eq. 4.10)
        k = cfg["size"][0] * cfg["size"][1]
        return (2 * math.prod(in_shape) * k * cfg["features"] // cfg["groups"]
                + (out if cfg["use_bias"] else 0))
    return None


class _Field(NamedTuple):
    """A unit's receptive field ``size``, the ``jump`` between adjacent units and the
    top-left ``start`` of unit (0, 0)'s field, in input pixels (height, width)."""

    size: tuple[int, int]
    jump: tuple[int, int]
    start: tuple[int, int]
    whole: bool = False        # every unit depends on the whole input (after a GroupNorm, say)
    units: tuple["_Uneven", "_Uneven"] | None = None   # after a transposed convolution


class _Uneven(NamedTuple):
    """One axis of fields that are not evenly spaced (after a transposed convolution): the
    first and last input pixel ``lo[u]``, ``hi[u]`` that unit ``u < period`` sees; unit
    ``u + period`` sees them ``shift`` pixels further on.  A unit that reads nothing (between
    a dilated kernel's taps) has ``lo = inf`` and ``hi = -inf``."""

    lo: tuple
    hi: tuple
    period: int
    shift: int

    def at(self, u: int) -> tuple:
        k, r = divmod(u, self.period)
        return self.lo[r] + k * self.shift, self.hi[r] + k * self.shift


def _ratio(a: int, b: int):
    """``a / b``: an int where it is one, else a ``Fraction``."""
    return a // b if a % b == 0 else Fraction(a, b)


def _through(axis: _Uneven, reads, period: int, shift: int) -> _Uneven:
    """Units ``u < period`` each seeing the union of the fields of the units ``reads(u)``."""
    seen = [[axis.at(v) for v in reads(u)] for u in range(period)]
    return _Uneven(tuple(min((lo for lo, _ in s), default=math.inf) for s in seen),
                   tuple(max((hi for _, hi in s), default=-math.inf) for s in seen),
                   period, shift)


_PERIODS = 2**16
"""The most taps read over one period of an unevenly spaced field's units (the period is the
product of the transposed strides, 4-16 in a decoder); past it the field is unknown rather
than slow to follow."""


def _uneven_field(field: _Field, g: geo.Window, transposed: bool) -> _Field | None:
    """``field`` after the window ``g`` of a convolution or pooling, or after the transposed
    convolution whose adjoint window ``g`` is (output unit ``u`` reads the input units ``i``
    with ``i s + p d - t = u``), followed unit by unit over one period of units."""
    axes = field.units or tuple(_Uneven((s,), (s + r - 1,), 1, j)
                                for s, r, j in zip(field.start, field.size, field.jump))
    if any(a.period * (s if transposed else 1) * k > _PERIODS
           for a, s, k in zip(axes, g.strides, g.size)):
        return None
    out = []
    for axis, k, s, d, (t, _) in zip(axes, g.size, g.strides, g.dilation, g.padding):
        if transposed:
            out.append(_through(axis, lambda u: [(u + t - p * d) // s for p in range(k)
                                                 if (u + t - p * d) % s == 0],
                                axis.period * s, axis.shift))
        else:
            m = math.lcm(axis.period, s)
            out.append(_through(axis, lambda u: [u * s - t + p * d for p in range(k)],
                                m // s, axis.shift * m // axis.period))
    size = tuple(max(int(hi - lo) + 1 for lo, hi in zip(a.lo, a.hi) if hi >= lo) for a in out)
    start = tuple(a.lo[0] for a in out)
    return _Field(size, tuple(_ratio(a.shift, a.period) for a in out),
                  None if math.inf in start else start, units=tuple(out))


def _merge(fields) -> _Field | None:
    """Where branches merge, a unit sees what any branch's unit sees: the union of their
    fields, from the first branch's first pixel to the last one's last (per axis)."""
    if all(f == fields[0] for f in fields):
        return fields[0]       # copies of one field (a branch point's), even unevenly spaced
    if any(f is None or f.units is not None for f in fields):
        return None            # not followed through a merge of unevenly spaced units
    if any(f.jump != fields[0].jump for f in fields):
        return None            # units spaced differently: no one field fits every unit
    start = tuple(min(axis) for axis in zip(*(f.start for f in fields)))
    end = tuple(max(axis) for axis in zip(*((s + r for s, r in zip(f.start, f.size))
                                            for f in fields)))
    return _Field(tuple(e - s for s, e in zip(start, end)), fields[0].jump, start,
                  whole=any(f.whole for f in fields))


def _next_field(layer: Layer, field, whole: tuple[int, int], in_shape):
    """The field after the leaf ``layer`` (its ``config``); ``field`` is one ``_Field`` (or a
    tuple of them for several inputs), ``None`` when unknown."""
    cfg = dict(layer.config)
    kind = cfg.get("kind")
    if isinstance(field, tuple) and not isinstance(field, _Field):
        if kind == "identity":
            return field
        if kind == "fanin_concat" and cfg["axis"] % len(in_shape[0]) != len(in_shape[0]) - 1:
            return None     # joined along a spatial axis: a unit's field depends on its branch
        return _merge(field) if kind in ("fanin_sum", "fanin_concat") else None
    if kind in ("flatten", "dense", "global"):     # known even after an unknown field
        return None if whole is None else _Field(whole, whole, (0, 0), True)
    if field is None:
        return None
    if kind == "window":
        g = geo.window(layer.name, in_shape[:2], cfg["size"], cfg["strides"], cfg["dilation"],
                       cfg["padding"])
        if field.whole:             # it saw everything already: only the units' spacing grows
            return field._replace(jump=tuple(j * s for j, s in zip(field.jump, g.strides)))
        if field.units is not None:     # after a transposed convolution
            return _uneven_field(field, g, transposed=False)
        return _Field(tuple(r + (k - 1) * j for r, k, j in
                            zip(field.size, g.effective_size, field.jump)),
                      tuple(j * s for j, s in zip(field.jump, g.strides)),
                      tuple(s - lo * j for s, (lo, _), j in zip(field.start, g.padding,
                                                               field.jump)))
    if kind == "transposed_window":
        g = adjoint_window(layer.name, in_shape[:2], cfg["size"], cfg["strides"],
                           cfg["dilation"], cfg["padding"], cfg["output_padding"])
        if field.whole:
            return field._replace(jump=tuple(_ratio(j, s) for j, s in zip(field.jump,
                                                                          g.strides)))
        return _uneven_field(field, g, transposed=True)
    if kind == "spatial_norm":      # normalised over every position: each unit sees them all
        return _Field(whole, field.jump, (0, 0), True)
    if kind in ("elementwise", "identity"):
        return field
    if kind == "fanout":
        return (field,) * cfg["n"]
    return None


def _row_field(field):
    """The field a summary row shows: a tuple of fields (a branch point's copies) as one."""
    if isinstance(field, tuple) and not isinstance(field, _Field):
        field = _merge(field)
    return field


def summary(net: Layer, input_shape) -> Summary:
    """Summarise ``net`` for a per-example ``input_shape`` (``(H, W, C)`` for images).

    Parameter counts come from ``net.init``; shapes, FLOPs and receptive fields from each
    layer's ``config`` (see the module docstring for the conventions).  A network that
    branches lists every layer of every branch, indexed by its path (``"2.0.1"``: layer 1 of
    branch 0 of layer 2); a layer with several outputs shows their shapes as a tuple, and a
    merge's units see the widest of its inputs' fields.
    """
    if not isinstance(net, Layer):
        raise TypeError(f"summary: net must be a jaxcnn Layer, got {type(net).__name__}")
    if isinstance(input_shape, np.ndarray) and input_shape.ndim == 1:
        input_shape = tuple(input_shape.tolist())           # np.array([8, 8, 1]) too
    rank = len(input_shape) if isinstance(input_shape, (tuple, list)) else 1
    check_input_shape("summary", input_shape, rank, "")    # one example's shape, e.g. (H, W, C)
    input_shape = tuple(int(d) for d in input_shape)
    rows: list[SummaryRow] = []
    whole = input_shape[:2] if len(input_shape) == 3 else None   # images only have a field

    def leaf(layer: Layer, shape, field, key, prefix: str):
        shapes = []

        def init_params(k):      # traced only: no parameter is allocated
            params, out = layer.init(k, shape)
            shapes.append(out)
            return params

        params = jax.eval_shape(init_params, key)
        out_shape, cfg = shapes[0], dict(layer.config)
        field = _next_field(layer, field, whole, shape)
        shown = _row_field(field)
        rows.append(SummaryRow(prefix or "0", layer.name, out_shape,
                               sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params)),
                               _flops(cfg, shape, out_shape),
                               *((None,) * 3 if shown is None else shown[:3])))
        return out_shape, field

    def walk(layer: Layer, shape, field, key, prefix: str):
        if not layer.layers:
            return leaf(layer, shape, field, key, prefix)
        kind = dict(layer.config).get("kind", layer.name)
        branches = kind == "parallel"
        outs = []
        for i, (sub, k) in enumerate(zip(layer.layers, jax.random.split(key, len(layer.layers)))):
            at = f"{prefix}.{i}" if prefix else f"{i}"
            with in_layer(f"{kind}[{i}]"):          # errors named as init names them
                if branches:
                    outs.append(walk(sub, shape[i], None if field is None else field[i], k, at))
                else:
                    shape, field = walk(sub, shape, field, k, at)
        if branches:
            shapes, fields = zip(*outs)
            return tuple(shapes), (None if any(f is None for f in fields) else tuple(fields))
        return shape, field

    walk(net, input_shape, _Field((1, 1), (1, 1), (0, 0)) if len(input_shape) == 3 else None,
         jax.random.key(0), "")
    return Summary(input_shape, tuple(rows))

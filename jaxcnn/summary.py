"""``summary(net, input_shape)``: the numbers a researcher checks first, layer by layer.

Output shape, parameter count, forward FLOPs and receptive field of every layer of a network.

- FLOPs are per example, forward pass: a multiply-add counts 2 (convolution, dense), a bias add
  1; pooling counts one operation per window entry; element-wise layers one per element;
  reshapes none.
- The receptive field of a unit is the input region (height, width) that can affect it.  It
  grows as ``r_out = r_in + (k_eff - 1) j_in`` and its step as ``j_out = j_in s`` through a
  sliding window (kernel ``k``, dilation ``d``, stride ``s``, ``k_eff = d (k - 1) + 1``); after a
  ``Flatten`` every unit sees the whole input.  Padding moves a field but does not change its
  size (at the border part of it lies in the padding).
"""
from __future__ import annotations

import dataclasses
import math

import jax

from jaxcnn.core import Layer

__all__ = ["Summary", "SummaryRow", "summary"]


@dataclasses.dataclass(frozen=True)
class SummaryRow:
    """One layer of a ``Summary``: its position, name, output shape, parameters, FLOPs and
    receptive field."""

    index: str               # position in the network, "3" or "1.2" for nested serials
    name: str
    output_shape: tuple[int, ...]
    params: int
    flops: int | None        # None for a layer whose config does not say how to count
    receptive_field: tuple[int, int] | None   # (height, width) in input pixels
    jump: tuple[int, int] | None              # distance in input pixels between adjacent units


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
    out = math.prod(out_shape)
    kind = cfg.get("kind")
    if kind == "elementwise":
        return out
    if kind == "flatten":
        return 0
    if kind == "dense":
        return 2 * in_shape[0] * out + (out if cfg["use_bias"] else 0)
    if kind == "window":
        k = cfg["size"][0] * cfg["size"][1]
        if "features" in cfg:        # a convolution
            per_output = 2 * k * in_shape[2] // cfg["groups"] + (1 if cfg["use_bias"] else 0)
            return out * per_output
        return out * k
    return None


def summary(net: Layer, input_shape) -> Summary:
    """Summarise ``net`` for a per-example ``input_shape`` (``(H, W, C)`` for images).

    Parameter counts come from ``net.init``; shapes, FLOPs and receptive fields from each
    layer's ``config`` (see the module docstring for the conventions).
    """
    input_shape = tuple(int(d) for d in input_shape)
    rows: list[SummaryRow] = []
    spatial = len(input_shape) == 3
    field = [(1, 1), (1, 1)] if spatial else None      # receptive field and jump

    def walk(layer: Layer, shape, key, prefix: str):
        nonlocal field
        if layer.layers:
            for i, (sub, k) in enumerate(zip(layer.layers,
                                             jax.random.split(key, len(layer.layers)))):
                shape = walk(sub, shape, k, f"{prefix}{i}" if not prefix else f"{prefix}.{i}")
            return shape
        shapes = []

        def init_params(k):      # traced only: no parameter is allocated
            params, out = layer.init(k, shape)
            shapes.append(tuple(out))
            return params

        params = jax.eval_shape(init_params, key)
        out_shape = shapes[0]
        cfg = dict(layer.config)
        n_params = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))
        if field is not None:
            kind = cfg.get("kind")
            if kind == "window":
                (r, j) = field
                k_eff = [d * (k - 1) + 1 for k, d in zip(cfg["size"], cfg["dilation"])]
                field = [tuple(ri + (ke - 1) * ji for ri, ke, ji in zip(r, k_eff, j)),
                         tuple(ji * s for ji, s in zip(j, cfg["strides"]))]
            elif kind in ("flatten", "dense"):
                field = [input_shape[:2], input_shape[:2]]
            elif kind != "elementwise":
                field = None
        rows.append(SummaryRow(prefix or "0", layer.name, out_shape, n_params,
                               _flops(cfg, shape, out_shape),
                               None if field is None else tuple(field[0]),
                               None if field is None else tuple(field[1])))
        return out_shape

    walk(net, input_shape, jax.random.key(0), "")
    return Summary(input_shape, tuple(rows))

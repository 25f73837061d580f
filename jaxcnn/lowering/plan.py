"""Which form computes each pass of a convolution: one table of limits, one name for the choice.

The choice is a *method* (``Conv2D(method=...)``), and each pass of a layer gets one form:

- ``"reference"``: the textbook (``jaxcnn.reference.conv``, eqs. 4.2-4.5);
- ``"lax"``: XLA's convolution instructions (``jaxcnn.lowering.xla``, eqs. 4.2, 4.4, 4.5);
- ``"toeplitz"``: matrix products with the banded kernel matrix (``jaxcnn.lowering.toeplitz``,
  eqs. 4.6-4.8), a grouped convolution split into one per group;
- ``"phases"``: the input residual only, by stride phases (``jaxcnn.lowering.phases``, eq. 4.9);
- ``"pairs"``: the forward and the stride-1 input residual, XLA's convolution over column pairs
  (``jaxcnn.lowering.pairs``, eq. 4.18), where it would otherwise be XLA's with few features;
- ``"pointwise"``: the kernel gradient only, of a stride-1 1x1 kernel as one matrix product,
  the dense layer's at every position (``jaxcnn.lowering.pointwise``, eq. 4.20);
- ``"winograd"``: 3x3 kernels at stride 1 in Winograd's 4x4 tiles, F(2x2, 3x3)
  (``jaxcnn.lowering.winograd``, eqs. 4.14-4.17); only by name, ``"auto"`` never picks it.

Every form computes the same sums (``tests/test_lowerings.py``); the plan only decides speed.
It is static (shapes and Python ints), decided at trace time.
"""
from __future__ import annotations

from typing import NamedTuple

import jax

from jaxcnn import _geometry as geo
from jaxcnn.lowering.toeplitz import column_tiles

METHODS = ("auto", "reference", "lax", "toeplitz", "winograd")
"""``Conv2D(method=...)``: ``"auto"`` (per pass and shape, ``conv_plan``) or one form for all."""


def check_method(name: str, method: str, size, strides, dilation, groups: int) -> None:
    """``method`` is one of ``METHODS`` and computes this layer: ``"winograd"`` only a 3x3
    kernel at stride 1, undilated and ungrouped."""
    if method not in METHODS:
        raise ValueError(f"{name}: unknown method {method!r}; expected one of {METHODS}")
    layer = (tuple(size), tuple(strides), tuple(dilation), groups)
    if method == "winograd" and layer != ((3, 3), (1, 1), (1, 1), 1):
        raise ValueError(f"{name}: method 'winograd' (F(2x2, 3x3)) needs kernel_size (3, 3), "
                         f"strides (1, 1), dilation (1, 1) and groups 1; got "
                         f"kernel_size {layer[0]}, strides {layer[1]}, dilation {layer[2]}, "
                         f"groups {groups}")


class Limits(NamedTuple):
    """``conv_plan``'s table.  The spread of a layer is ``C_g w_read / k_w``: the Toeplitz matrix
    has ``w_read / k_w`` times more entries than the kernel has taps per output column, and
    XLA's CPU convolutions get faster as the channels grow.  A pass takes its Toeplitz form at
    or below its spread limit (measured by ``benchmarks/conv_plan_sweep.py``;
    ``docs/performance.md#why-conv-plan``)."""

    forward: float = 20              # the forward; every pass of a grouped convolution
    kernel: float = 100              # the kernel gradient, ungrouped, stride 1 (strided: never)
    input: float = 50                # the input residual, ungrouped, stride 1
    strided_input: float = 30        # the input residual, ungrouped, strided (above: phases)
    kernel_alone_features: int = 16  # a Toeplitz kernel gradient beside XLA's forward, which
    #                                  builds its own row matrix: over 2+ channels, only with
    #                                  more features than this (fewer: slower, and a larger
    #                                  temporary than XLA's)
    group_split: int = 8             # at most this many groups: split into ungrouped ones
    inference_channels: int = 3      # evaluated apply: Toeplitz for 2-3 channels per group,
    inference_features: int = 16     # or one with at most this many features per group,
    inference_wide_kernel: int = 7   # or one with a kernel at least this wide
    pair_features: int = 16          # XLA's forward / input residual with at most this many
    pair_kernel_width: int = 3       # output features, of a kernel at least this wide, at
    #                                  stride 1, undilated, ungrouped: column pairs (eq. 4.18)


LIMITS = Limits()
"""The limits ``conv_plan`` uses on the CPU."""


class ConvPlan(NamedTuple):
    """The form of each pass: ``forward`` (also what ``jax.grad`` of ``apply`` differentiates),
    ``kernel`` (the kernel gradient), ``input`` (the input residual); ``inference``: the forward
    ``apply`` evaluates where nothing differentiates it.  ``split``: a grouped convolution runs
    as ``G`` ungrouped ones on its channel slices.  ``tile``: output columns per tile of the
    Toeplitz form (``None``: the whole width)."""

    forward: str
    kernel: str
    input: str
    split: bool = False
    tile: int | None = None
    inference: str = "lax"


def conv_plan(g: geo.Window, c_in: int, groups: int, method: str = "auto", *,
              features: int, limits: Limits = LIMITS) -> ConvPlan:
    """The forms for one layer shape.  A method other than ``"auto"`` takes its form for every
    pass.  ``"auto"`` takes XLA's convolutions off the CPU (cuDNN and friends) and, with more
    than ``group_split`` groups, everywhere.  On the CPU each pass takes its Toeplitz form at or
    below its spread limit, else XLA's -- and a strided input residual its stride phases;
    grouped convolutions use the forward's limit for all three passes and are split.

    A kernel gradient beside XLA's forward builds its own row matrix: over two or more
    channels per group it takes the Toeplitz form only with more than
    ``kernel_alone_features`` features (fewer: slower than XLA's, and a larger temporary).

    Column pairs: an XLA forward with at most ``pair_features`` features, or an XLA input
    residual with at most that many input channels (its output features), of a stride-1,
    undilated, ungrouped kernel at least ``pair_kernel_width`` wide, takes eq. 4.18 instead;
    evaluated ``apply`` keeps XLA's convolution there.

    A 1x1 ungrouped kernel of stride 1 takes eq. 4.20's matrix product for its kernel gradient
    and XLA's convolutions, which XLA runs as matrix products, for the other passes; strided,
    the rules above (``docs/performance.md#why-pointwise``).

    Tiles: two when ``W_out >= 2 k_w``, halving the zeros of ``T``; four when only the kernel
    gradient is a Toeplitz product and ``W_out >= 4 k_w`` (no forward row matrix to share).
    ``jax.default_backend()`` at trace time decides "off the CPU".
    """
    check_method("Conv2D", method, g.size, g.strides, g.dilation, groups)
    wo = g.out_hw[1]
    tile = -(-wo // 2) if wo >= 2 * g.size[1] else None
    if method != "auto":
        toeplitz = method == "toeplitz"
        return ConvPlan(method, method, method, split=toeplitz and groups > 1,
                        tile=tile if toeplitz else None, inference=method)
    if jax.default_backend() != "cpu" or groups > limits.group_split:
        return ConvPlan("lax", "lax", "lax")
    if g.size == (1, 1) and groups == 1 and g.strides == (1, 1):
        return ConvPlan("lax", "pointwise", "lax")
    spread = (c_in // groups) * column_tiles(g).read / g.size[1]
    strided = max(g.strides) > 1
    if groups > 1:
        passes = (limits.forward,) * 3
    elif strided:
        passes = (limits.forward, 0, limits.strided_input)       # spread > 0: kernel never
    else:
        passes = (limits.forward, limits.kernel, limits.input)
    forward, kernel, residual = ("toeplitz" if spread <= limit else "lax" for limit in passes)
    if residual == "lax" and strided:
        residual = "phases"
    if (forward, kernel) == ("lax", "toeplitz") and c_in // groups > 1 \
            and features // groups <= limits.kernel_alone_features:
        kernel = "lax"
    if forward == "lax" and kernel == "toeplitz" and wo >= 4 * g.size[1]:
        tile = -(-wo // 4)
    uses_tiles = "toeplitz" in (forward, kernel, residual)
    inference = forward if _evaluates_as_toeplitz(g, c_in, features, groups, limits) else "lax"
    if _fits_pairs(g, groups, limits):
        if forward == "lax" and features <= limits.pair_features:
            forward = "pairs"         # evaluated apply keeps XLA's (performance.md 8.25)
        if residual == "lax" and c_in <= limits.pair_features:
            residual = "pairs"
    return ConvPlan(forward, kernel, residual, split=groups > 1, tile=tile if uses_tiles else None,
                    inference=inference)


def _fits_pairs(g: geo.Window, groups: int, limits: Limits) -> bool:
    """Whether eq. 4.18 may take a pass: stride 1, undilated, ungrouped, a kernel at least
    ``pair_kernel_width`` wide (narrower, the pair's extra column is too dear: a 1x1 kernel
    would double the multiply-adds)."""
    return (g.strides == (1, 1) and g.dilation == (1, 1) and groups == 1
            and g.size[1] >= limits.pair_kernel_width)


def _evaluates_as_toeplitz(g: geo.Window, c_in: int, features: int, groups: int,
                           limits: Limits) -> bool:
    """Where the forward is a Toeplitz product, whether evaluated ``apply`` keeps it: a
    one-position output (the product is then a dense layer's); two or three input channels per
    group; or one, with few features per group or a wide kernel (``Limits``)."""
    if g.out_hw == (1, 1):
        return True
    c, f = c_in // groups, features // groups
    if c == 1:
        return f <= limits.inference_features or g.effective_size[1] >= limits.inference_wide_kernel
    return c <= limits.inference_channels


def bias_in_product(g: geo.Window, c_in: int, features: int, plan: ConvPlan) -> bool:
    """Whether evaluated ``apply`` adds the bias inside the Toeplitz product -- eq. 4.6 with the
    source's "+1" bias unit: a column of ones in ``R``, the bias as a row of ``T`` -- ``plan``
    being the form it evaluates.

    Only on the CPU, for an ungrouped Toeplitz product whose row matrix has no more entries per
    row than its output, ``k_h read C <= t F``: the price is one more pass over ``R``.  Why:
    evaluated, XLA fuses the elementwise layer after the convolution into the pooling after
    it, a loop that reads any bias added after the product by an index modulo ``F``, which the
    CPU backend does not vectorise; inside the product no bias is left to read
    (``docs/performance.md#why-bias-in-product``).  Off the CPU a reduced-precision
    product would round the bias too.
    """
    if plan.forward != "toeplitz" or plan.split or jax.default_backend() != "cpu":
        return False
    t = column_tiles(g, plan.tile)
    return g.size[0] * t.read * c_in <= t.size * features

"""Figures that make the source's ideas visible: ``jaxcnn show`` and the functions behind it.

The library does the computing -- ``Conv2D`` applies every kernel, the pooling layers' own
forward and backward passes (and the routed or sampled window positions in their ``PoolCache``)
give the pooling maps, ``ConvTranspose2D`` and ``jax.vjp`` of ``Conv2D`` give the transposed
convolution, ``summary`` gives the receptive fields, a network's hand-written ``backward``
gives the gradient drawn inside them -- and this module only draws, with
matplotlib's Agg canvas (``matplotlib.figure.Figure``: no display, no pyplot state).
matplotlib is imported inside the drawing functions only, so ``import jaxcnn`` never loads it.

``jaxcnn show FIGURE --out DIR`` writes, for each ``FIGURE``:

- ``kernels``: ``convolution_5x5.png`` -- the source's 5x5 image, its 3x3 kernel and the feature
  map ``[[4,3,4],[2,4,3],[2,3,4]]`` with each entry's nine products written in;
  ``kernels_classic.png`` -- the source's kernel, Sobel edges, Laplacian edges, Gaussian blur and
  sharpen, with their weights; with ``--checkpoint``, ``kernels_learned.png`` -- the trained
  first-layer kernels of that run.
- ``features``: ``features_classic.png`` -- those kernels as one ``Conv2D`` with five output
  channels applied to a photograph, one panel per output channel; with ``--checkpoint``,
  ``features_learned.png`` -- the trained first layer on the same photograph.
- ``pooling``: ``pooling.png`` -- average, max and stochastic pooling (three draws, the mean of
  many draws, and the test-time weighted average) of one feature map, and below each what its
  backward pass hands the input for ``delta = 1``: spread, routed, sampled.
- ``transposed``: ``transposed_convolution.png`` -- a 2x2 input scattering four scaled copies of
  a 3x3 kernel onto a 5x5 output at stride 2, the sum as ``ConvTranspose2D`` computes it, and the
  same 5x5 as ``Conv2D``'s input residual for that 2x2 delta (``jax.vjp``).
- ``receptive-field``: ``receptive_field.png`` -- for each convolution, pooling and dense layer of
  a zoo network, the receptive field of its centre unit drawn on the input, and inside it the
  pixels that unit's gradient actually reaches.
- ``all``: every figure above.

The photograph is Grace Hopper, from matplotlib's sample data (``grace_hopper.jpg``: no
download); ``--image PATH`` uses another.  Photographs are turned to grey levels in ``[0, 1]``
(ITU-R 601 luma) and shrunk by ``AvgPool2D``.
"""
from __future__ import annotations

import argparse
import inspect
import math
import os
import sys
from fractions import Fraction
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.activations import ReLU
from jaxcnn.conv import Conv2D
from jaxcnn.conv_transpose import ConvTranspose2D
from jaxcnn.core import Layer, check_seed, leaves, map_leaves, positive_int
from jaxcnn.data import _not_regular
from jaxcnn.pool import AvgPool2D, MaxPool2D, StochasticPool2D
from jaxcnn.state import init_state, with_state
from jaxcnn.summary import summary

__all__ = [
    "FIGURES", "SEED_IMAGE", "SEED_KERNEL", "CLASSIC_KERNELS", "Shown",
    "read_image", "photo", "apply_kernels", "first_conv_kernel",
    "plot_convolution_5x5", "plot_kernels", "plot_feature_maps", "plot_pooling",
    "plot_transposed_convolution", "plot_receptive_fields", "render", "add_show_command",
]

FIGURES = ("kernels", "features", "pooling", "transposed", "receptive-field")
"""The figures ``jaxcnn show`` draws (plus ``all``)."""

SEED_IMAGE = np.array([[1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1],
                       [0, 0, 1, 1, 0], [0, 1, 1, 0, 0]], np.float32)
"""The source's 5x5 binary image."""

SEED_KERNEL = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], np.float32)
"""The source's 3x3 kernel; over ``SEED_IMAGE`` it gives ``[[4,3,4],[2,4,3],[2,3,4]]``."""

CLASSIC_KERNELS: dict[str, np.ndarray] = {
    "the source's kernel": SEED_KERNEL,
    "vertical edges (Sobel)": np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32),
    "all edges (Laplacian)": np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], np.float32),
    "blur (Gaussian)": np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32) / 16,
    "sharpen": np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32),
}
"""Classic 3x3 image kernels by name, as ``(3, 3)`` float32 arrays."""

_FACE = (230, 255)      # (row, column) of Grace Hopper's face in grace_hopper.jpg (600 x 512)
_FACE_HEIGHT = 312      # rows of the photograph a face crop spans, before shrinking
_DPI = 80
_FEATURES_FACTOR = 4    # features: the photograph shrunk by 4 for the classic kernels,
_LEARNED_FACTOR = 6     # by 6 for a checkpoint's
_POOLING_SIZE = 16      # pooling: a 16x16 feature map, from an 18x18 crop (3x3 Sobel)
_LARGE = 150_000        # bytes: a larger PNG is written with a palette of 256 colours
_MAX_PIXELS = 40_000_000  # an input image larger than this is refused before it is decoded


class Shown(NamedTuple):
    """What a figure function returns: the PNG it wrote and the numbers it drew (by name)."""

    path: str
    data: dict[str, Any]


# --- inputs ------------------------------------------------------------------------------------

def read_image(path=None) -> np.ndarray:
    """An image file as float32 ``(H, W, C)`` in ``[0, 1]`` (alpha dropped).

    ``path`` ``None`` reads matplotlib's sample photograph of Grace Hopper.  Raises
    ``ValueError`` for a file that is missing, not a regular file (a FIFO would block), not an
    image matplotlib (Pillow) can read, larger than 40 megapixels, or of 32-bit float or
    integer pixels (Pillow's modes ``F`` and ``I``: matplotlib would read them as 8-bit
    colours, silently, and their scale is unknown).
    """
    import matplotlib.cbook
    import matplotlib.image
    from PIL import Image

    if path is None:
        path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    path = os.fspath(path)
    try:
        fault = _not_regular(path, os.stat(path).st_mode)
        if fault is not None:
            raise fault
        with Image.open(path) as probe:
            mode, (w, h) = probe.mode, probe.size
        if w * h > _MAX_PIXELS:
            raise ValueError(f"it is {w}x{h} pixels, more than {_MAX_PIXELS:,}; shrink it first")
        if mode in ("F", "I"):
            raise ValueError(f"its pixels are 32-bit {'floats' if mode == 'F' else 'integers'} "
                             f"(mode {mode!r}) of no known scale; save it with 8- or 16-bit "
                             f"pixels (PNG, JPEG)")
        a = np.asarray(matplotlib.image.imread(path))
    except (OSError, ValueError, SyntaxError,            # Pillow reports bad files all three
            Image.DecompressionBombError) as err:         # ways, and a huge one a fourth
        raise ValueError(f"cannot read the image {path!r}: {err}") from err
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / np.float32(255)
    elif a.dtype == np.uint16:
        a = a.astype(np.float32) / np.float32(65535)
    else:
        a = a.astype(np.float32)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"the image {path!r} has shape {a.shape}; expected (H, W) or (H, W, C) "
                         f"with 1-4 channels")
    return a[:, :, :3] if a.shape[2] >= 3 else a[:, :, :1]


def _channels(a: np.ndarray, channels: int) -> np.ndarray:
    if channels == a.shape[2]:
        return a
    if channels == 1:             # ITU-R 601 luma
        return (a @ np.array([0.299, 0.587, 0.114], np.float32))[:, :, None]
    if channels == 3 and a.shape[2] == 1:
        return np.repeat(a, 3, axis=2)
    raise ValueError(f"cannot make a {channels}-channel image from one with {a.shape[2]} "
                     f"channels; expected 1 or 3")


def _shrink(a: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor x factor`` blocks, with the library's own ``AvgPool2D``."""
    if factor == 1:
        return a
    return np.asarray(AvgPool2D(factor).apply((), jnp.asarray(a[None], jnp.float32))[0])


def photo(size=None, *, path=None, channels: int = 1, factor: int = 3) -> np.ndarray:
    """A photograph as float32 ``(H, W, channels)`` in ``[0, 1]``, shrunk by ``AvgPool2D``.

    ``size`` ``None``: the whole picture shrunk by ``factor``.  ``size=(H, W)``: exactly that
    size, cut at the aspect ratio ``H : W`` and shrunk by an integer factor -- around Grace
    Hopper's face (about 312 rows of the photograph) for the default picture, around the centre
    and as large as fits for the image at ``path``.
    """
    factor = positive_int("photo", "factor", factor)
    if size is not None:
        h, w = (positive_int("photo", "size", v) for v in size)
    a = _channels(read_image(path), channels)
    if size is None:
        return _shrink(a, factor)
    rows, cols = a.shape[:2]
    fit = min(rows // h, cols // w)
    if fit < 1:
        raise ValueError(f"the image ({rows}x{cols}) is smaller than the {h}x{w} input needed")
    if path is None:
        f = max(1, min(fit, round(_FACE_HEIGHT / h)))
        centre = _FACE
    else:
        f, centre = fit, (rows // 2, cols // 2)
    top = min(max(centre[0] - h * f // 2, 0), rows - h * f)
    left = min(max(centre[1] - w * f // 2, 0), cols - w * f)
    return _shrink(a[top:top + h * f, left:left + w * f], f)


def _kernel(where: str, w, names=None) -> np.ndarray:
    """``w`` as a finite float32 ``HWIO`` kernel ``(kh, kw, C, F)`` with ``F >= 1``, and
    ``names`` (if given) one per output channel; ``ValueError`` naming ``where`` otherwise."""
    w = np.asarray(w, np.float32)
    if w.ndim != 4 or 0 in w.shape:
        raise ValueError(f"{where}: expected a kernel (kh, kw, C, F) with no empty axis, got "
                         f"shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError(f"{where}: the kernel holds non-finite weights")
    if names is not None and len(names) != w.shape[3]:
        raise ValueError(f"{where}: expected {w.shape[3]} names, one per output channel, got "
                         f"{len(names)}")
    return w


def apply_kernels(image: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, *,
                  padding="VALID") -> np.ndarray:
    """``Conv2D`` with kernel ``w (kh, kw, C, F)`` (and bias ``b (F,)``) on ``image (H, W, C)``:
    the feature maps ``(H_out, W_out, F)``, one channel per kernel (eq. 4.2)."""
    w = jnp.asarray(_kernel("apply_kernels", w), jnp.float32)
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"apply_kernels: expected an image (H, W, C), got shape {image.shape}")
    if not np.all(np.isfinite(image)):
        raise ValueError("apply_kernels: the image holds non-finite values")
    conv = Conv2D(w.shape[3], w.shape[:2], padding=padding, use_bias=b is not None)
    params = {"w": w} if b is None else {"w": w, "b": jnp.asarray(b, jnp.float32)}
    return np.asarray(conv.apply(params, jnp.asarray(image[None], jnp.float32))[0])


def first_conv_kernel(checkpoint) -> tuple[np.ndarray, np.ndarray | None, str]:
    """The first convolution of a training run's latest checkpoint: ``(w, b, label)``.

    ``checkpoint`` is the output directory of ``jaxcnn train`` or ``jaxcnn.fit(..., out=DIR)``
    (it holds ``checkpoints/``).  ``w`` is ``(kh, kw, C, F)`` (``HWIO``), ``b`` ``(F,)`` or
    ``None``; ``label`` names the net, the data set and the step.  The first parameter dict
    with a rank-4 ``"w"``, in layer order, is taken to be the first convolution.
    """
    from jaxcnn.train import load_checkpoint

    where = os.fspath(checkpoint)
    if not os.path.isdir(where):
        raise ValueError(f"checkpoint: {where!r} is not a directory; expected a training run's "
                         f"output directory (the --out of jaxcnn train, which holds "
                         f"checkpoints/)")
    if os.path.basename(os.path.normpath(where)) == "checkpoints" and \
            not os.path.isdir(os.path.join(where, "checkpoints")):
        raise ValueError(f"checkpoint: {where!r} is the checkpoints/ folder itself; pass the "
                         f"run's output directory that holds it, {os.path.dirname(where)!r}")
    state, meta = load_checkpoint(checkpoint)

    def first(tree):
        if isinstance(tree, dict):
            if "w" in tree and np.ndim(tree["w"]) == 4:
                return tree
            tree = list(tree.values())
        if isinstance(tree, (list, tuple)):
            for sub in tree:
                found = first(sub)
                if found is not None:
                    return found
        return None

    conv = first(state.get("params"))
    if conv is None:
        raise ValueError(f"the checkpoint in {os.fspath(checkpoint)!r} holds no convolution "
                         f"kernel (no parameter 'w' of rank 4)")
    config = meta.get("config", {})
    trained_on = f" trained on {config['dataset']}" if "dataset" in config else ""
    label = f"{config.get('arch', 'the net')}{trained_on}, step {meta.get('step', '?')}"
    w, b = np.asarray(conv["w"], np.float32), conv.get("b")
    b = None if b is None else np.asarray(b, np.float32)
    if not np.isfinite(w).all() or (b is not None and not np.isfinite(b).all()):
        raise ValueError(f"the first convolution in {os.fspath(checkpoint)!r} ({label}) holds "
                         f"NaN or infinite parameters: nothing to draw (fit never saves such "
                         f"a checkpoint)")
    return w, b, label


# --- drawing helpers ---------------------------------------------------------------------------

def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained", dpi=_DPI)


def _save(fig, path) -> str:
    """Write ``fig`` as a PNG; one over ``_LARGE`` bytes (photographs) with 256 colours."""
    import io

    from PIL import Image                 # matplotlib's own image library

    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    if buffer.tell() <= _LARGE:
        with open(path, "wb") as f:
            f.write(buffer.getvalue())
        return path
    buffer.seek(0)
    with Image.open(buffer) as image:     # median cut keeps the grey levels of a photograph
        image.convert("RGB").quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)
    return path


def _fraction(v: float) -> str:
    f = Fraction(float(v)).limit_denominator(64)
    return str(f) if f.denominator <= 16 else f"{v:.2g}"


def _annotate(ax, values: np.ndarray, fmt, *, dark: np.ndarray | None = None, size=10) -> None:
    """Write each entry of a 2-D array in its cell (white on the cells marked ``dark``)."""
    for (i, j), v in np.ndenumerate(values):
        color = "white" if dark is not None and dark[i, j] else "black"
        ax.text(j, i, fmt(v), ha="center", va="center", fontsize=size, color=color)


def _cells(ax, h: int, w: int) -> None:
    """Thin lines between the cells of an ``h x w`` image."""
    ax.set_xticks(np.arange(-0.5, w, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, h, 1), minor=True)
    ax.grid(which="minor", color="0.6", linewidth=0.6)
    ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)


def _no_ticks(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _symmetric(values, percentile: float = 100) -> float:
    """A colour limit for values drawn around 0: the largest ``|v|`` (or a percentile of them,
    so that a few extreme pixels do not wash out the rest)."""
    return float(max(np.percentile(np.abs(np.asarray(values)), percentile), 1e-12))


# --- the source's 5x5 example ------------------------------------------------------------------

def plot_convolution_5x5(path) -> Shown:
    """The source's example as a picture: the 5x5 image with the 3x3 patch of the first entry
    highlighted, the kernel, and the feature map ``jc.Conv2D`` computes, each entry with its
    nine products (patch times kernel, laid out as the patch) and their sum.

    ``data``: ``feature_map`` (3, 3) and ``products`` (3, 3, 3, 3) -- entry ``[i, j]`` is the
    patch at ``(i, j)`` times the kernel.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Rectangle

    conv = Conv2D(1, (3, 3), use_bias=False)
    fmap = np.asarray(conv.apply({"w": jnp.asarray(SEED_KERNEL.reshape(3, 3, 1, 1))},
                                 jnp.asarray(SEED_IMAGE.reshape(1, 5, 5, 1)))[0, :, :, 0])
    products = np.stack([np.stack([SEED_IMAGE[i:i + 3, j:j + 3] * SEED_KERNEL
                                   for j in range(3)]) for i in range(3)])

    fig = _figure(13, 5)
    ax_img, ax_ker, ax_map = fig.subplots(1, 3, width_ratios=[5, 3.2, 4.6])
    binary = ListedColormap(["white", "#9ecae1"])
    ax_img.imshow(SEED_IMAGE, cmap=binary, vmin=0, vmax=1)
    _cells(ax_img, 5, 5)
    _annotate(ax_img, SEED_IMAGE, lambda v: f"{v:.0f}", size=18)
    for (i, j), k in np.ndenumerate(SEED_KERNEL):       # the kernel weight under each patch cell
        ax_img.text(j + 0.42, i + 0.40, f"x{k:.0f}", ha="right", va="bottom", fontsize=9,
                    color="#c0392b")
    ax_img.add_patch(Rectangle((-0.5, -0.5), 3, 3, fill=False, edgecolor="#c0392b",
                               linewidth=3))
    ax_img.set_title("image (5x5): the first 3x3 patch", fontsize=12)

    ax_ker.imshow(SEED_KERNEL, cmap=ListedColormap(["white", "#fdae6b"]), vmin=0, vmax=1)
    _cells(ax_ker, 3, 3)
    _annotate(ax_ker, SEED_KERNEL, lambda v: f"{v:.0f}", size=18)
    ax_ker.set_title("kernel (3x3)", fontsize=12)

    ax_map.imshow(fmap, cmap="Greens", vmin=0, vmax=6)
    _cells(ax_map, 3, 3)
    for (i, j), v in np.ndenumerate(fmap):
        terms = products[i, j].astype(int)
        rows = ["+".join(str(t) for t in terms[r]) for r in range(3)]
        ax_map.text(j, i - 0.17, "\n".join(rows), ha="center", va="center", fontsize=10,
                    color="0.25", family="monospace", linespacing=1.0)
        ax_map.text(j, i + 0.31, f"= {v:.0f}", ha="center", va="center", fontsize=16,
                    fontweight="bold")
    ax_map.add_patch(Rectangle((-0.5, -0.5), 1, 1, fill=False, edgecolor="#c0392b",
                               linewidth=3))
    ax_map.set_title("feature map (3x3) = jc.Conv2D(1, 3)", fontsize=12)

    first = " + ".join(f"{t:.0f}" for t in products[0, 0].ravel())
    fig.suptitle(f"Slide the kernel over the image, multiply, sum.   First entry: {first} = "
                 f"{fmap[0, 0]:.0f}", fontsize=13)
    return Shown(_save(fig, path), {"feature_map": fmap, "products": products})


# --- kernels and feature maps ------------------------------------------------------------------

def _is_edge(k: np.ndarray) -> bool:
    """A kernel whose weights sum to 0 answers edges with both signs: draw it diverging."""
    return abs(float(np.sum(k))) < 1e-6 * max(float(np.max(np.abs(k))), 1e-12)


def plot_kernels(kernels, path, *, names: Sequence[str] | None = None, title: str = "") -> Shown:
    """Kernels as heat maps, red positive and blue negative around 0.

    ``kernels``: a dict ``name -> (kh, kw)`` (weights written in each cell, as fractions where
    they are) or an ``HWIO`` array ``(kh, kw, C, F)`` -- a layer's kernel, one panel per output
    channel (channels summed over inputs, on one shared scale with one colorbar).
    """
    if isinstance(kernels, dict):
        names, stack = list(kernels), [np.asarray(k, np.float32) for k in kernels.values()]
        if not stack or any(k.ndim != 2 or 0 in k.shape for k in stack):
            raise ValueError(f"plot_kernels: expected a non-empty dict of 2-D kernels, got "
                             f"shapes {[k.shape for k in stack]}")
        if not all(np.all(np.isfinite(k)) for k in stack):
            raise ValueError("plot_kernels: a kernel holds non-finite weights")
        fig = _figure(2.6 * len(stack), 3.1)
        axes = fig.subplots(1, len(stack), squeeze=False)[0]
        for ax, name, k in zip(axes, names, stack):
            lim = _symmetric(k)
            ax.imshow(k, cmap="RdBu_r", vmin=-lim, vmax=lim)
            _cells(ax, *k.shape)
            _annotate(ax, k, _fraction, dark=np.abs(k) > 0.6 * lim, size=12)
            ax.set_title(name, fontsize=11)
        fig.suptitle(title or "Classic 3x3 kernels (weights in each cell)", fontsize=13)
        return Shown(_save(fig, path), {"kernels": dict(zip(names, stack))})

    w = _kernel("plot_kernels", kernels, names)
    per_channel = w.sum(axis=2)                                   # (kh, kw, F)
    f = per_channel.shape[2]
    cols = min(f, 8)
    rows = math.ceil(f / cols)
    fig = _figure(1.45 * cols + 1.2, 1.55 * rows + 0.9)
    axes = fig.subplots(rows, cols, squeeze=False)
    lim = _symmetric(per_channel)
    image = None
    for c, ax in enumerate(axes.ravel()):
        if c >= f:
            ax.axis("off")
            continue
        image = ax.imshow(per_channel[:, :, c], cmap="RdBu_r", vmin=-lim, vmax=lim)
        _no_ticks(ax)
        ax.set_title(names[c] if names else f"channel {c}", fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.8, label="weight")
    summed = " (summed over the input channels)" if w.shape[2] > 1 else ""
    fig.suptitle(title or f"{f} kernels {w.shape[0]}x{w.shape[1]}{summed}", fontsize=12)
    return Shown(_save(fig, path), {"kernels": per_channel})


def plot_feature_maps(image: np.ndarray, w: np.ndarray, path, *, b: np.ndarray | None = None,
                      names: Sequence[str] | None = None, title: str = "",
                      inset_kernels: bool = False) -> Shown:
    """The photograph and one panel per output channel of ``Conv2D`` with kernel ``w``.

    ``image (H, W, C)``, ``w (kh, kw, C, F)``, ``b (F,)`` or ``None``: the maps are
    ``apply_kernels(image, w, b)`` (``"VALID"``: no border effects).  A kernel whose weights sum
    to 0 is drawn red/blue around 0, others in grey levels; each panel has its own colour scale.
    ``inset_kernels`` draws each kernel in the corner of its panel.
    """
    w = _kernel("plot_feature_maps", w, names)
    maps = apply_kernels(image, w, b)
    f = maps.shape[2]
    cols = 3 if f <= 5 else min(f + 1, 6 if f <= 16 else 8)
    rows = math.ceil((f + 1) / cols)
    h, wd = maps.shape[:2]
    panel = 2.9 if f <= 5 else 1.6 if f <= 16 else 1.3
    fig = _figure(panel * cols * max(wd / h, 0.6) + 0.8 * (f <= 5) * cols, panel * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    gray = image[:, :, 0] if image.shape[2] == 1 else image
    axes[0].imshow(gray, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[0].set_title(f"input {image.shape[0]}x{image.shape[1]}", fontsize=10)
    _no_ticks(axes[0])
    for c in range(f):
        ax = axes[c + 1]
        kernel = w[:, :, :, c].sum(axis=2)
        m = maps[:, :, c]
        if _is_edge(kernel) or b is not None:
            lim = _symmetric(m, 99.5)
            im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        else:
            im = ax.imshow(m, cmap="gray", vmin=np.percentile(m, 0.5),
                           vmax=np.percentile(m, 99.5), interpolation="nearest")
        _no_ticks(ax)
        ax.set_title(names[c] if names else f"channel {c}", fontsize=10 if f <= 5 else 8)
        if f <= 5:
            fig.colorbar(im, ax=ax, shrink=0.85, extend="both")
        if inset_kernels:
            inset = ax.inset_axes([0.0, 0.0, 0.3, 0.3 * w.shape[0] / w.shape[1]])
            lim_k = _symmetric(kernel)
            inset.imshow(kernel, cmap="RdBu_r", vmin=-lim_k, vmax=lim_k)
            _no_ticks(inset)
            for spine in inset.spines.values():
                spine.set_edgecolor("yellow")
    for ax in axes[f + 1:]:
        ax.axis("off")
    fig.suptitle(title or f"{f} kernels applied to a photograph (jc.Conv2D, one panel per "
                          f"output channel)", fontsize=12)
    return Shown(_save(fig, path), {"maps": maps})


# --- pooling -----------------------------------------------------------------------------------

def _pooling_input(path=None, size: int = _POOLING_SIZE) -> np.ndarray:
    """A non-negative feature map ``(size, size)``: ReLU of vertical Sobel edges on the photo."""
    img = photo((size + 2, size + 2), path=path)
    sobel = CLASSIC_KERNELS["vertical edges (Sobel)"].reshape(3, 3, 1, 1)
    edges = apply_kernels(img, sobel)
    return np.asarray(ReLU().apply((), jnp.asarray(edges)))[:, :, 0]


def _pooling_passes(a: np.ndarray, window: int, samples: int, draws: int,
                    seed: int) -> dict[str, Any]:
    """The numbers ``plot_pooling`` draws: each pooling's output (``y_*``) and input residual
    for ``delta = 1`` (``dx_*``) of the map ``a`` ``(H, W)``, the routed maxima
    (``index_max``), the first ``samples`` drawn positions (``index_sample``) and ``p``."""
    h, w = a.shape
    x = jnp.asarray(a.reshape(1, h, w, 1))
    ones = jnp.ones((1, h // window, w // window, 1), jnp.float32)

    avg, max_, stochastic = AvgPool2D(window), MaxPool2D(window), StochasticPool2D(window)

    def both(layer, x, **kw):
        """A pooling's output, the input residual its backward gives for delta = 1, and the
        window positions it routed to (``PoolCache.index``)."""
        y, cache = layer.forward((), x, **kw)
        return y, layer.backward((), cache, ones)[1], cache.index

    @jax.jit
    def passes(x, key):
        out = {}
        out["y_avg"], out["dx_avg"], _ = both(avg, x)
        out["y_max"], out["dx_max"], out["index_max"] = both(max_, x)
        out["y_test"], out["dx_test"], _ = both(stochastic, x, train=False)
        # every draw at once; the first few are shown one by one
        ys, dxs, index = jax.vmap(lambda k: both(stochastic, x, key=k))(
            jax.random.split(key, draws))
        for s in range(samples):
            out[f"y_sample{s}"], out[f"dx_sample{s}"] = ys[s], dxs[s]
        out["index_sample"] = index[:samples]
        out["y_mean"], out["dx_mean"] = jnp.mean(ys, axis=0), jnp.mean(dxs, axis=0)
        return out

    # XLA's RngBitGenerator ("rbg") compiles several times faster than threefry on a CPU
    computed = passes(x, jax.random.key(seed, impl="rbg"))
    data: dict[str, Any] = {"input": a}
    data.update({k: np.asarray(v)[..., 0, :, :, 0] if k == "index_sample"
                 else np.asarray(v)[0, :, :, 0] for k, v in computed.items()})
    sums = a.reshape(h // window, window, w // window, window).sum(axis=(1, 3))
    totals = np.repeat(np.repeat(sums, window, axis=0), window, axis=1)
    data["p"] = np.where(totals > 0, a / np.where(totals > 0, totals, 1), 0)
    return data


def _pooling_columns(samples: int, draws: int) -> list[tuple[str, str, str]]:
    """The panels right of the map: (data key suffix, title above, title below)."""
    columns = [("avg", "average (5.1)", "spread: delta / k² (5.2)"),
               ("max", "max (5.3)", "routed to the max (5.4)")]
    columns += [(f"sample{s}", f"stochastic, draw {s + 1} (5.5)",
                 f"routed to draw {s + 1}'s sample (5.6)") for s in range(samples)]
    columns += [("mean", f"mean of {draws} draws",
                 f"mean of {draws} draws ≈ p = a / Σa"),
                ("test", "test time Σa² / Σa (5.7)", "test time (2a − y) / Σa (5.8)")]
    return columns


def _window_grid(ax, window: int, h: int, w: int) -> None:
    """White lines between the pooling windows of an ``h x w`` map; no ticks."""
    for v in range(window, h, window):
        ax.axhline(v - 0.5, color="white", linewidth=1)
    for v in range(window, w, window):
        ax.axvline(v - 0.5, color="white", linewidth=1)
    _no_ticks(ax)


def _draw_pooling_input(above, below, data: dict[str, Any], window: int, vmax: float):
    """The left column: the feature map with its windows and maxima marked, and below it the
    legend of the backward row.  Returns the map's image (for the colour bar)."""
    a = data["input"]
    h, w = a.shape
    image = above.imshow(a, cmap="viridis", vmin=0, vmax=vmax)
    _window_grid(above, window, h, w)
    above.set_title(f"feature map {h}x{w},\n{window}x{window} windows", fontsize=10)
    rows, cols = np.divmod(data["index_max"], window)      # mark each window's maximum
    ii, jj = np.indices(rows.shape)
    above.scatter(jj * window + cols, ii * window + rows, marker="x", color="red", s=18,
                  linewidths=1.2, label="max")
    above.legend(loc="lower right", fontsize=7, framealpha=0.6, handletextpad=0.2)
    below.axis("off")
    below.text(0.0, 0.5, "backward pass:\nthe residual dJ/dx\neach input gets\nfor delta = 1 at\n"
               "every output\n\n(red +, blue −)", fontsize=10, va="center",
               transform=below.transAxes)
    return image


def _draw_pooling_column(above, below, data: dict[str, Any], column: tuple[str, str, str],
                         window: int, vmax: float, lim: float):
    """One pooling: its output with the values written in, and below it its input residual.
    Returns the residual's image (for the colour bar)."""
    name, title_y, title_dx = column
    h, w = data["input"].shape
    y = data["y_" + name]
    above.imshow(y, cmap="viridis", vmin=0, vmax=vmax)
    _annotate(above, y, lambda v: f"{v:.2f}", dark=y < 0.55 * vmax, size=8)
    _no_ticks(above)
    above.set_title(title_y, fontsize=10)
    image = below.imshow(data["dx_" + name], cmap="RdBu_r", vmin=-lim, vmax=lim)
    _window_grid(below, window, h, w)
    below.set_title(title_dx, fontsize=9)
    if name == "avg":
        below.text(w / 2 - 0.5, h / 2 - 0.5, f"1/{window * window} to every input",
                   ha="center", va="center", fontsize=9)
    return image


def plot_pooling(path, feature_map: np.ndarray | None = None, *, window: int = 4,
                 samples: int = 3, draws: int = 1000, seed: int = 0, image=None) -> Shown:
    """Average, max and stochastic pooling of one non-negative feature map, and their backward.

    Top row: the map (window grid drawn) and each pooling's output -- ``AvgPool2D`` (eq. 5.1),
    ``MaxPool2D`` (5.3), ``samples`` training draws of ``StochasticPool2D`` (5.5), the mean of
    ``draws`` draws, and the test-time weighted average ``sum a^2 / sum a`` (5.7).  Bottom row:
    what each backward pass hands the input for ``delta = 1`` at every output: spread evenly
    (5.2), routed to the maximum (5.4), routed to the sampled position read from the cache
    (5.6), on average over the draws ``p = a / sum a``, and the test-time derivative
    ``(2a - y) / S`` (5.8).

    ``feature_map``: ``(H, W)``, ``>= 0``, sides divisible by ``window``; default a 16x16 map of
    vertical edges (ReLU of Sobel) on the photograph (``image``: another photograph's path).
    ``data`` holds every output (``y_*``) and input residual (``dx_*``), ``p`` and the drawn
    positions ``index_sample`` ``(samples, H/k, W/k)``.
    """
    window = positive_int("plot_pooling", "window", window)
    samples = positive_int("plot_pooling", "samples", samples)
    draws = positive_int("plot_pooling", "draws", draws)
    if samples > draws:
        raise ValueError(f"plot_pooling: samples ({samples}) are drawn among the draws, so at "
                         f"most draws ({draws})")
    a = _pooling_input(image) if feature_map is None else np.asarray(feature_map, np.float32)
    if a.ndim == 2 and not np.isfinite(a).all():
        raise ValueError("plot_pooling: the feature map holds NaN or infinite values")
    if a.ndim != 2 or a.shape[0] % window or a.shape[1] % window:
        raise ValueError(f"plot_pooling: expected a 2-D feature map with sides divisible by "
                         f"the window {window}, got shape {a.shape}")
    if np.min(a) < 0:
        raise ValueError("plot_pooling: stochastic pooling needs a non-negative feature map")
    data = _pooling_passes(a, window, samples, draws, seed)
    columns = _pooling_columns(samples, draws)
    ncols = len(columns) + 1
    fig = _figure(2.35 * ncols + 1.2, 5.6)
    axes = fig.subplots(2, ncols)
    vmax = float(np.max(a)) or 1.0
    lim = _symmetric([data["dx_" + c[0]] for c in columns])
    top = _draw_pooling_input(axes[0, 0], axes[1, 0], data, window, vmax)
    for c, column in enumerate(columns, start=1):
        bottom = _draw_pooling_column(axes[0, c], axes[1, c], data, column, window, vmax, lim)
    fig.colorbar(top, ax=axes[0, :], shrink=0.85, label="activation", pad=0.01)
    fig.colorbar(bottom, ax=axes[1, :], shrink=0.85, label="dJ/dx", pad=0.01)
    fig.suptitle("Pooling a feature map three ways, and what each passes back in the backward "
                 "pass (jc.AvgPool2D, jc.MaxPool2D, jc.StochasticPool2D)", fontsize=13)
    return Shown(_save(fig, path), data)


# --- transposed convolution --------------------------------------------------------------------

_T_INPUT = np.array([[1, 2], [3, 4]], np.float32)
_T_KERNEL = np.array([[3, 1, 2], [1, 2, 0], [0, 1, 1]], np.float32)   # top row: eq. 4.10's 1-D w
_T_STRIDE = 2
_COPY_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")


def _transposed_passes(x: np.ndarray, w: np.ndarray, stride: int) -> dict[str, np.ndarray]:
    """The numbers ``plot_transposed_convolution`` draws, for ``x (n, n)`` and ``w (k, k)``.

    ``layer_output``: ``ConvTranspose2D`` (eqs. 4.10-4.11); ``conv_residual`` and
    ``conv_backward``: the input residual (eq. 4.5) of the ``Conv2D`` with the same kernel, in
    and out swapped, for ``delta = x`` -- by ``jax.vjp`` of its forward and by its hand-written
    backward; ``scatter (n, n, H_out, W_out)``: the copy ``x[i, j] w`` that entry ``(i, j)``
    scatters, at rows ``i s ..`` and columns ``j s ..`` (drawn, so written out here).
    """
    n, k = x.shape[0], w.shape[0]
    delta = jnp.asarray(x.reshape(1, n, n, 1))
    w4 = jnp.asarray(w.reshape(k, k, 1, 1))
    y = ConvTranspose2D(1, k, strides=stride, use_bias=False).apply({"w": w4}, delta)
    conv = Conv2D(1, k, strides=stride, use_bias=False)
    params = {"w": jnp.swapaxes(w4, 2, 3)}          # (kh, kw, F, C_in): in and out swapped
    z = jnp.zeros(y.shape, y.dtype)                 # any point: the convolution is linear
    _, vjp = jax.vjp(lambda z: conv.apply(params, z), z)
    (residual,) = vjp(delta)
    _, backward = conv.backward(params, conv.forward(params, z)[1], delta)
    scatter = np.zeros((n, n, *y.shape[1:3]), np.float32)
    for (i, j), v in np.ndenumerate(x):
        scatter[i, j, i * stride:i * stride + k, j * stride:j * stride + k] = v * w
    return {"input": x, "kernel": w, "scatter": scatter,
            "layer_output": np.asarray(y)[0, :, :, 0],
            "conv_residual": np.asarray(residual)[0, :, :, 0],
            "conv_backward": np.asarray(backward)[0, :, :, 0]}


def _outline(ax, top: int, left: int, h: int, w: int, colour: str, inset: float = 0.0):
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((left - 0.5 + inset, top - 0.5 + inset), w - 2 * inset,
                           h - 2 * inset, fill=False, edgecolor=colour, linewidth=2.5))


def _draw_small(ax, values: np.ndarray, title: str, colours=None) -> None:
    """The input or the kernel: values in their cells, each input entry outlined in the colour
    of its copy."""
    ax.imshow(values, cmap="Greys", vmin=0, vmax=4 * float(np.max(values)))
    _cells(ax, *values.shape)
    _annotate(ax, values, lambda v: f"{v:.0f}", size=16)
    if colours is not None:
        for c, (i, j) in enumerate(np.ndindex(values.shape)):
            _outline(ax, i, j, 1, 1, colours[c], inset=0.06)
    ax.set_title(title, fontsize=11)


def _draw_canvas(ax, values: np.ndarray, vmax: float, title: str, *, terms=None,
                 written: np.ndarray | None = None) -> None:
    """A canvas: zeros white, the entries marked ``written`` (default: the nonzero ones)
    written in -- with their sum's terms above them where ``terms[i][j]`` has more than one."""
    written = values != 0 if written is None else written
    ax.imshow(np.ma.masked_equal(values, 0), cmap="Greens", vmin=0, vmax=1.6 * vmax)
    _cells(ax, *values.shape)
    for (i, j), v in np.ndenumerate(values):
        parts = terms[i][j] if terms is not None else []
        if len(parts) > 1:
            ax.text(j, i - 0.2, "+".join(f"{t:.0f}" for t in parts), ha="center",
                    va="center", fontsize=8, color="0.25")
            ax.text(j, i + 0.2, f"{v:.0f}", ha="center", va="center", fontsize=13,
                    fontweight="bold")
        elif written[i, j]:
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=13)
    ax.set_title(title, fontsize=11)


def plot_transposed_convolution(path) -> Shown:
    """The transposed convolution as the convolution's input residual run forward.

    A 2x2 input and a 3x3 kernel at stride 2 give a 5x5 output (eq. 4.11).  Top row: each input
    entry scatters its copy ``x[i, j] w`` onto the canvas at rows ``2i .. 2i + 2`` and columns
    ``2j .. 2j + 2`` (eq. 4.10).  Bottom row: the copies summed -- row 2 and column 2, where
    copies overlap, add two or four terms -- as ``ConvTranspose2D`` computes them, and the same
    5x5 as the input residual (eq. 4.5) of the stride-2 ``Conv2D`` with the same kernel (in
    and out swapped) for ``delta = x``, by ``jax.vjp`` (the hand-written backward agrees).  The
    kernel's top row is the 1-D example of ``docs/derivation.md``: ``[1, 2]`` with ``[3, 1, 2]``
    gives the output's top row ``[3, 1, 8, 2, 4]``.

    ``data``: ``input`` (2, 2), ``kernel`` (3, 3), ``scatter`` (2, 2, 5, 5) -- entry ``[i, j]``
    is the copy that input entry scatters -- ``layer_output``, ``conv_residual`` (by
    ``jax.vjp``) and ``conv_backward`` (by ``Conv2D.backward``), each (5, 5).
    """
    x, w, s = _T_INPUT, _T_KERNEL, _T_STRIDE
    data = _transposed_passes(x, w, s)
    y, k = data["layer_output"], w.shape[0]
    vmax = float(np.max(y))
    fig = _figure(15.5, 8.4)
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.25])
    axes = top.subplots(1, 6, width_ratios=[2, 3, 5, 5, 5, 5])
    _draw_small(axes[0], x, "input x (2x2)", _COPY_COLOURS)
    _draw_small(axes[1], w, "kernel w (3x3)")
    terms = [[[] for _ in range(y.shape[1])] for _ in range(y.shape[0])]
    for c, ((i, j), v) in enumerate(np.ndenumerate(x)):
        copy = data["scatter"][i, j]
        footprint = np.zeros(copy.shape, bool)
        footprint[i * s:i * s + k, j * s:j * s + k] = True
        _draw_canvas(axes[c + 2], copy, vmax, f"x[{i},{j}] = {v:.0f} scatters {v:.0f}·w",
                     written=footprint)
        _outline(axes[c + 2], i * s, j * s, k, k, _COPY_COLOURS[c])
        for (u, t) in np.ndindex(k, k):
            terms[i * s + u][j * s + t].append(copy[i * s + u, j * s + t])
    top.suptitle("(a) every input entry scatters a scaled copy of the kernel onto the 5x5 "
                 "canvas, at rows 2i..2i+2 and columns 2j..2j+2 (eq. 4.10)", fontsize=12)
    ax_y, ax_r, ax_text = bottom.subplots(1, 3, width_ratios=[5, 5, 4.2])
    _draw_canvas(ax_y, y, vmax, "(b) y = jc.ConvTranspose2D(1, 3, strides=2)\n"
                 "the copies added: row 2 and column 2 overlap", terms=terms,
                 written=np.ones(y.shape, bool))
    for c, (i, j) in enumerate(np.ndindex(x.shape)):
        _outline(ax_y, i * s, j * s, k, k, _COPY_COLOURS[c], inset=0.04 + 0.04 * c)
    _draw_canvas(ax_r, data["conv_residual"], vmax, "(c) input residual of jc.Conv2D(1, 3, "
                 "strides=2)\nfor delta = x: jax.vjp (eq. 4.5)",
                 written=np.ones(y.shape, bool))
    same = (np.array_equal(y, data["conv_residual"])
            and np.array_equal(y, data["conv_backward"])
            and np.array_equal(y, data["scatter"].sum(axis=(0, 1))))
    ax_text.axis("off")
    ax_text.text(0.0, 0.5, f"(b) and (c) are {'identical' if same else 'NOT equal'}, entry "
                 f"by entry.\n\nConv2D with the same w (in and out\nchannels swapped) maps a "
                 f"5x5 map\nto 2x2; its input residual maps a 2x2\ndelta back to 5x5 -- the "
                 f"transposed\nconvolution is that residual run\nforward (eqs. 4.10-4.11 vs "
                 f"4.5).\nConv2D's hand-written backward\ngives the same 5x5.\n\nTop row: the "
                 f"1-D example,\n[1, 2] with [3, 1, 2], stride 2\n-> [3, 1, 8, 2, 4].",
                 fontsize=11, va="center", transform=ax_text.transAxes)
    fig.suptitle("Transposed convolution: a 2x2 input, a 3x3 kernel, stride 2 -> 5x5",
                 fontsize=14)
    return Shown(_save(fig, path), data)


# --- receptive fields --------------------------------------------------------------------------

def _native_shape(arch: str) -> tuple[int, ...]:
    from jaxcnn import zoo

    if arch not in zoo.ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {', '.join(zoo.ARCHS)}")
    return tuple(inspect.signature(zoo.ARCHS[arch]).parameters["input_shape"].default)


def _fields(layers: list[Layer], table, shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """The leaves ``plot_receptive_fields`` draws -- every convolution and pooling, and the
    first dense layer -- each with its centre ``unit`` and that unit's ``field`` (top, left,
    height, width in input pixels), from ``summary``'s rows (one per leaf, in order); ``row``
    is the row's ``#``, which the panel's title shows."""
    drawn, dense_seen = [], False
    for l, (layer, row) in enumerate(zip(layers, table.rows)):
        kind = dict(layer.config).get("kind")
        if kind == "window":
            unit = tuple((n - 1) // 2 for n in row.output_shape[:2])
            top, left = (s + u * j for s, u, j in zip(row.start, unit, row.jump))
            field = (top, left, *row.receptive_field)
        elif kind == "dense" and not dense_seen:      # the first dense layer sees everything
            dense_seen, unit, field = True, None, (0, 0, shape[0], shape[1])
        else:
            continue
        drawn.append({"index": l, "row": row.index, "name": layer.name, "unit": unit,
                      "field": field,
                      "output_shape": row.output_shape,
                      "size": dict(layer.config).get("size")})
    return drawn


def _asking(leaf: Layer, b: int, unit) -> Layer:
    """``leaf`` whose backward adds ``delta = 1`` at ``unit`` (all of its outputs when
    ``None``) of example ``b`` to the residual from above: drawn layer ``b``'s question."""

    def backward(params, cache, delta):
        ask = delta.at[b, unit[0], unit[1]].add(1) if unit is not None else delta.at[b].add(1)
        return leaf.backward(params, cache, ask)

    return leaf._replace(backward=backward)


def _field_gradients(net: Layer, drawn: list[dict[str, Any]], params, x: jax.Array,
                     seed: int) -> np.ndarray:
    """``|dJ/dx|`` ``(len(drawn), H, W)`` for ``delta = 1`` at each drawn layer's unit, by the
    hand-written backward."""
    asks = {d["index"]: b for b, d in enumerate(drawn)}
    order = {path: l for l, (path, _) in enumerate(leaves(net))}

    def ask(path, leaf):
        b = asks.get(order[path])
        return leaf if b is None else _asking(leaf, b, drawn[b]["unit"])

    probe = map_leaves(net, ask)

    @jax.jit
    def gradients(params, x):
        """Example ``b`` of a batch of copies of ``x`` carries drawn layer ``b``'s question: the
        backward pass (eqs. 6.1, 6.5-6.8) starts from a zero residual at the output and each
        drawn layer adds its ``delta`` to the residual of its own output."""
        batch = jnp.broadcast_to(x, (len(drawn), *x.shape[1:]))
        y, caches = probe.forward(params, batch, key=jax.random.key(seed), train=False)
        _, dx = probe.backward(params, caches, jnp.zeros_like(y))
        return jnp.sum(jnp.abs(dx), axis=3)

    return np.asarray(gradients(params, x))


def _draw_field(ax, d: dict[str, Any], img: np.ndarray) -> None:
    """One panel: the photograph, the unit's gradient over it and its field's rectangle."""
    from matplotlib.patches import Rectangle

    h, w, channels = img.shape
    top, left, fh, fw = d["field"]
    ax.imshow(img[:, :, 0] if channels == 1 else img, cmap="gray", vmin=0, vmax=1)
    g = d["grad"] / max(float(np.max(d["grad"])), 1e-30)
    # opaque where the gradient is large, the photograph showing through where it is small
    ax.imshow(np.ma.masked_where(g <= 0, g), cmap="plasma", vmin=0, vmax=1,
              alpha=np.where(g > 0, 0.3 + 0.6 * g, 0))
    ax.add_patch(Rectangle((left - 0.5, top - 0.5), fw, fh, fill=False, edgecolor="cyan",
                           linewidth=2))
    ax.add_patch(Rectangle((-0.5, -0.5), w, h, fill=False, edgecolor="0.3", linewidth=1,
                           linestyle=":"))
    ax.set_xlim(min(-0.5, left - 1.0), max(w - 0.5, left + fw))
    ax.set_ylim(max(h - 0.5, top + fh), min(-0.5, top - 1.0))
    _no_ticks(ax)
    k = d["size"]
    what = f"{d['name']} {k[0]}x{k[1]}" if k else d["name"]
    out = "x".join(str(v) for v in d["output_shape"])
    where = (f"unit ({d['unit'][0]}, {d['unit'][1]})" if d["unit"] is not None
             else "every unit")
    ax.set_title(f"[{d['row']}] {what} -> {out}\n{where}: field {fh}x{fw}", fontsize=9)


def plot_receptive_fields(path, arch: str = "deepid", *, input_shape=None, image=None,
                          seed: int = 0) -> Shown:
    """The receptive field of one unit of each layer of the zoo net ``arch``, on its input.

    The input is a photograph (``image``: a path; default Grace Hopper's face) at the net's
    native size (``input_shape``, default the one its paper used: DeepID 39x31, LeNet-5
    28x28).  For each convolution, pooling and dense layer: the rectangle is the field of the
    layer's centre unit -- its size from ``jc.summary``, its place from each window's padding
    and stride (a field may reach into the padding, past the image); the heat map is
    ``|dJ/dx|`` for ``delta = 1`` at that unit (all channels), from the hand-written backward of
    the layers up to it, with initial (untrained) parameters drawn with ``seed`` (in evaluation
    mode: BatchNorm with its initial running statistics): the pixels that unit actually depends
    on, always inside its field (after a ReLU or a max pooling, only some of them).

    ``data["layers"]``: one dict per drawn layer with ``index``, ``name``, ``unit`` (row,
    column), ``field`` (top, left, height, width in input pixels) and ``grad`` ``(H, W)``.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from jaxcnn import zoo

    shape = tuple(input_shape) if input_shape is not None else _native_shape(arch)
    # evaluation mode, BatchNorm (resnet-bn) bound to its initial running statistics: a
    # per-channel affine map, so a unit's gradient stays inside its field; training mode's batch
    # statistics would mix every pixel, and every copy of the batch, into every unit
    net = zoo.get(arch, shape)
    net = with_state(net, init_state(net, shape))
    img = photo(shape[:2], path=image, channels=shape[2])
    layers = [leaf for _, leaf in leaves(net)]
    table = summary(net, shape)
    params, _ = net.init(jax.random.key(seed), shape)
    x = jnp.asarray(img[None], jnp.float32)
    drawn = _fields(layers, table, shape)
    for d, grad in zip(drawn, _field_gradients(net, drawn, params, x, seed)):
        d["grad"] = grad

    cols = min(len(drawn), 4)
    rows = math.ceil(len(drawn) / cols)
    h, w = shape[:2]
    fig = _figure(3.0 * cols * max(w / h, 0.7) + 0.6, 3.5 * rows + 0.7)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, d in zip(axes, drawn):
        _draw_field(ax, d, img)
    for ax in axes[len(drawn):]:
        ax.axis("off")
    fig.colorbar(ScalarMappable(Normalize(0, 1), "plasma"), ax=axes.tolist(), shrink=0.6,
                 label="|dJ/dx| (scaled to 1 per panel)")
    fig.suptitle(f"Receptive fields of {arch} on a {h}x{w} input: local features in the first "
                 f"layers, the whole input at the end\n(cyan: the field by jc.summary; "
                 f"colour: pixels the unit's gradient reaches, by the hand-written backward)",
                 fontsize=11)
    return Shown(_save(fig, path), {"layers": drawn, "image": img, "summary": table})


# --- the command -------------------------------------------------------------------------------

def _image_needs(figures, arch: str | None, learned) -> dict[str, tuple[int, int]]:
    """The smallest photograph ``(rows, cols)`` each of ``figures`` that reads one can use."""
    needs = {}
    if "features" in figures:       # a 3x3 kernel (or the checkpoint's) on the shrunk photo
        h = w = 3 * _FEATURES_FACTOR
        if learned is not None:
            h = max(h, learned[0].shape[0] * _LEARNED_FACTOR)
            w = max(w, learned[0].shape[1] * _LEARNED_FACTOR)
        needs["features"] = (h, w)
    if "pooling" in figures:
        needs["pooling"] = (_POOLING_SIZE + 2, _POOLING_SIZE + 2)
    if "receptive-field" in figures:
        needs["receptive-field"] = _native_shape(arch or "deepid")[:2]
    return needs


def render(figure: str, out, *, checkpoint=None, image=None, arch: str | None = None,
           seed: int | None = None) -> list[Shown]:
    """Draw ``figure`` (one of ``FIGURES`` or ``"all"``) into the directory ``out``.

    ``checkpoint`` (kernels, features): a training run's output directory, whose first-layer
    kernels are drawn too.  ``image`` (features, pooling, receptive-field): a photograph in
    place of Grace Hopper.  ``arch`` (receptive-field): a ``jaxcnn.zoo`` net, default
    ``"deepid"``.  ``seed`` (pooling, receptive-field): stochastic pooling's draws, the
    receptive-field net's parameters (an integer of 64 bits; ``None``: 0).  An option for a
    figure that does not use it, and an ``image`` smaller than a figure needs, are refused
    before anything is drawn.
    """
    if figure not in FIGURES + ("all",):
        raise ValueError(f"unknown figure {figure!r}; expected one of "
                         f"{', '.join(FIGURES + ('all',))}")
    figures = FIGURES if figure == "all" else (figure,)
    for option, value, takes in (("--checkpoint", checkpoint, ("kernels", "features")),
                                 ("--image", image, ("features", "pooling", "receptive-field")),
                                 ("--arch", arch, ("receptive-field",)),
                                 ("--seed", seed, ("pooling", "receptive-field"))):
        if value is not None and figure != "all" and figure not in takes:
            raise ValueError(f"{option} applies to {' and '.join(takes)}, not {figure}")
    seed = 0 if seed is None else check_seed("render", seed)
    if image is not None:
        rows, cols = read_image(image).shape[:2]   # fail before drawing anything
    learned = first_conv_kernel(checkpoint) if checkpoint is not None else None
    if image is not None:
        for name, (h, w) in _image_needs(figures, arch, learned).items():
            if rows < h or cols < w:
                raise ValueError(f"--image {image}: the image ({rows}x{cols}) is smaller than "
                                 f"the {h}x{w} that {name} needs")
    out = _checked_out(out)             # made only once everything else is known to be right
    shown: list[Shown] = []
    for name in figures:
        if name == "kernels":
            shown.append(plot_convolution_5x5(os.path.join(out, "convolution_5x5.png")))
            shown.append(plot_kernels(CLASSIC_KERNELS, os.path.join(out, "kernels_classic.png")))
            if learned is not None:
                w, _, label = learned
                shown.append(plot_kernels(w, os.path.join(out, "kernels_learned.png"),
                                          title=f"First-layer kernels of {label}"))
        elif name == "features":
            img = photo(path=image, factor=_FEATURES_FACTOR)
            w = np.stack(list(CLASSIC_KERNELS.values()), axis=-1)[:, :, None, :]
            shown.append(plot_feature_maps(img, w, os.path.join(out, "features_classic.png"),
                                           names=list(CLASSIC_KERNELS)))
            if learned is not None:
                w, b, label = learned
                if w.shape[2] not in (1, 3):
                    raise ValueError(f"the checkpoint's first kernel reads {w.shape[2]} "
                                     f"channels; a photograph has 1 (grey) or 3 (RGB)")
                img = photo(path=image, channels=w.shape[2], factor=_LEARNED_FACTOR)
                shown.append(plot_feature_maps(
                    img, w, os.path.join(out, "features_learned.png"), b=b, inset_kernels=True,
                    title=f"The first layer of {label}, on a photograph\npre-activations "
                          f"w * x + b, one panel per output channel, its kernel in the corner "
                          f"(red +, blue −)"))
        elif name == "pooling":
            shown.append(plot_pooling(os.path.join(out, "pooling.png"), seed=seed, image=image))
        elif name == "transposed":
            shown.append(plot_transposed_convolution(
                os.path.join(out, "transposed_convolution.png")))
        else:
            shown.append(plot_receptive_fields(os.path.join(out, "receptive_field.png"),
                                               arch or "deepid", image=image, seed=seed))
    return shown


def _checked_out(out) -> str:
    """``out`` made (with its parents) if missing: a directory for the figures, named in the
    error if it is not one or cannot be made -- before anything is drawn."""
    out = os.fspath(out)
    if not out:
        raise ValueError("out: expected a directory for the figures, got an empty path")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as err:
        what = "is not a directory" if os.path.exists(out) else "cannot be made"
        raise ValueError(f"out: {out!r} {what} ({err.strerror}); expected a directory for the "
                         f"figures") from err
    return out


def _error(message, code: int = 2) -> int:
    print(f"jaxcnn show: error: {message}", file=sys.stderr)
    return code


def _run_show(args) -> int:
    try:
        shown = render(args.figure, args.out, checkpoint=args.checkpoint, image=args.image,
                       arch=args.arch, seed=args.seed)
    except ImportError as err:
        return _error(f"{err}; jaxcnn show draws with matplotlib: pip install 'jaxcnn[train]'")
    except (ValueError, TypeError, OSError) as err:
        return _error(err)
    for s in shown:
        print(s.path)
    return 0


def _seed_arg(text: str) -> int:
    """``--seed``: an integer of 64 bits, as ``jaxcnn train`` and ``jaxcnn check`` take it."""
    try:
        return check_seed("--seed", int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer of 64 bits, got {text!r}") \
            from None


def add_show_command(subparsers) -> None:
    """Add ``jaxcnn show FIGURE --out DIR`` to a ``jaxcnn`` argument parser's subparsers."""
    from jaxcnn.zoo import ARCHS

    p = subparsers.add_parser(
        "show", help="draw the source's ideas as PNG figures",
        description="Draw convolution, kernels, feature maps, pooling, transposed convolution "
                    "and receptive fields as PNG figures, computed by jaxcnn's own layers. "
                    "kernels: the source's 5x5 example and classic kernels; features: kernels "
                    "applied to a photograph; pooling: average, max and stochastic pooling, "
                    "forward and backward; transposed: the transposed convolution as a "
                    "convolution's input residual run forward; receptive-field: one unit's "
                    "field per layer of a zoo net.")
    p.add_argument("figure", choices=FIGURES + ("all",), help="which figure(s) to draw")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the PNG files")
    p.add_argument("--checkpoint", metavar="DIR",
                   help="kernels, features: also draw the first-layer kernels of this training "
                        "run (the --out of jaxcnn train)")
    p.add_argument("--image", metavar="PATH",
                   help="features, pooling, receptive-field: a photograph in place of Grace "
                        "Hopper (matplotlib's sample image)")
    p.add_argument("--arch", choices=tuple(ARCHS), default=None,
                   help="receptive-field: the zoo network (default: deepid, the source's "
                        "face-recognition net)")
    p.add_argument("--seed", type=_seed_arg, default=None,
                   help="pooling: stochastic pooling draws; receptive-field: initial parameters "
                        "of the net (default: 0)")
    p.set_defaults(run=_run_show)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jaxcnn.show FIGURE --out DIR ...``: the same as ``jaxcnn show``."""
    parser = argparse.ArgumentParser(prog="jaxcnn")
    add_show_command(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(["show", *(sys.argv[1:] if argv is None else argv)])
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

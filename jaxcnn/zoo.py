"""A small zoo of named networks, each a function returning a ``serial`` ``Layer``.

Every net ends in a ``Dense`` layer of ``num_classes`` *logits*: the softmax is in the loss,
``softmax_cross_entropy`` (eq. 2.6), whose output residual needs no softmax layer.

Input sizes adapt to the data set: each function takes the per-example ``input_shape``
``(H, W, C)`` it will be initialised with.  At the size a net was designed for (or larger) it
keeps its paper's layout; below it (8x8 digits) its convolutions pad ``"SAME"`` so that only
pooling shrinks the maps.  The rule is stated per net.

- ``small``: the default for 8x8 digits -- 3x3 ReLU conv layers of 32 and 64 maps, 2x2 max
  pooling, a 3x3 conv of 128 maps, 2x2 max pooling, He initialisation.
- ``lenet5``: LeCun et al. 1998 -- C1 conv 5x5x6, S2 2x2 average pooling, C3 conv 5x5x16,
  S4 average pooling, C5 conv of 120 maps over all of S4, F6 dense 84, sigmoid units.
- ``ufldl``: the UFLDL tutorial's CNN exercise -- one 9x9 conv layer with 20 maps, sigmoid,
  2x2 mean pooling, softmax.
- ``deepid``: Sun, Wang & Tang 2014 (the face-recognition net of the source post) -- four ReLU
  conv layers (4x4x20, 3x3x40, 3x3x60, 2x2x80), max pooling after the first three, one dense
  layer of 160 features (ReLU) that reads both the third pooling layer and the fourth
  convolution (the paper's skip connection), softmax.
- ``resnet``: a small CIFAR-style residual net (He et al. 2016) -- a 3x3 conv stem, three
  stages of basic residual blocks (16, 32, 64 maps; the last two halve the maps, with a 1x1
  projection on the skip), global average pooling, softmax.
- ``resnet_bn``: ``resnet`` with BatchNorm after every convolution and no convolution bias.
- ``autoencoder``: two convolutions and max poolings down to a code, two stride-2 transposed
  convolutions back up, a sigmoid (not a classifier: it takes ``features``, not classes).
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax

from jaxcnn.activations import ReLU, Sigmoid
from jaxcnn.conv import Conv2D
from jaxcnn.conv_transpose import ConvTranspose2D
from jaxcnn.core import Layer, Shape, check_input_shape, flag, positive_int
from jaxcnn.dense import Dense, Flatten
from jaxcnn.graph import FanInConcat, FanInSum, FanOut, Identity, parallel
from jaxcnn.network import serial
from jaxcnn.norm import BatchNorm
from jaxcnn.pool import AvgPool2D, GlobalAvgPool2D, MaxPool2D

__all__ = ["small", "lenet5", "ufldl", "deepid", "resnet", "resnet_bn", "autoencoder", "ARCHS",
           "Recipe", "RECIPES", "get"]

_he = jax.nn.initializers.he_normal()          # for ReLU: keeps the activations' scale
_glorot = jax.nn.initializers.glorot_normal()  # for sigmoid: keeps the slope away from 0


def _shape(name: str, input_shape, num_classes: int | None = None) -> Shape:
    """``input_shape`` checked, and ``num_classes`` (the last Dense's width) where given."""
    if num_classes is not None and positive_int(name, "num_classes", num_classes) < 2:
        raise ValueError(f"{name}: num_classes must be at least 2 (a softmax over one class is "
                         f"1 whatever the input: nothing to learn), got {num_classes}")
    return check_input_shape(name, input_shape, 3, "(H, W, C)")


def _padding(input_shape: Shape, native: tuple[int, int]) -> str:
    """The paper's ``"VALID"`` at its native input size or larger, ``"SAME"`` below it."""
    return "VALID" if all(n >= m for n, m in zip(input_shape[:2], native)) else "SAME"


def _output_shape(net: Layer, input_shape) -> Shape:
    """``net.init``'s output shape, traced abstractly: no parameters are drawn."""
    shapes = []

    def init(key):
        params, shape = net.init(key, tuple(input_shape))
        shapes.append(shape)                    # a tuple of ints: kept outside the trace
        return params

    jax.eval_shape(init, jax.random.key(0))
    return shapes[0]


def small(input_shape=(8, 8, 1), num_classes: int = 10) -> Layer:
    """The default net for 8x8 digits (97,802 parameters there): ReLU, He init, max pooling.

    ``conv3x3(32) relu  conv3x3(64) relu  maxpool2  conv3x3(128) relu  maxpool2  dense(classes)``,
    all convolutions ``"SAME"`` (any input of at least 4x4 works).  Outputs logits: train with
    ``softmax_cross_entropy``.  With ``jaxcnn train``'s defaults (Adam 1e-3, batches of 32, 30
    epochs) it reaches 98.3-99.4% test accuracy on the digits over seeds 0-9
    (docs/training.md).
    """
    _shape("small", input_shape, num_classes)
    return serial(
        Conv2D(32, 3, padding="SAME", w_init=_he), ReLU(),
        Conv2D(64, 3, padding="SAME", w_init=_he), ReLU(),
        MaxPool2D(2),
        Conv2D(128, 3, padding="SAME", w_init=_he), ReLU(),
        MaxPool2D(2),
        Flatten(), Dense(num_classes, w_init=_glorot))


def lenet5(input_shape=(28, 28, 1), num_classes: int = 10) -> Layer:
    """LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998) with sigmoid units and average pooling.

    C1 conv 5x5x6 (``"SAME"``: LeCun centred 28x28 digits in a 32x32 field, the same as
    padding by 2), S2 2x2 average pooling, C3 conv 5x5x16 (``"VALID"`` from 28x28 up, as in
    the paper; ``"SAME"`` on smaller inputs), S4 2x2 average pooling, C5 conv of 120 maps whose
    kernel covers all of S4 (fully connected to it, as in the paper), F6 dense 84, then
    ``num_classes`` logits for softmax cross-entropy instead of the paper's RBF units.  Sigmoid
    after C1, C3, C5 and F6.  Simplified as usual: the pools have no trainable coefficient and
    bias (so no sigmoid of their own), and C3 reads all six S2 maps (the paper's sparse
    connection table is omitted).  Glorot initialisation.
    """
    _shape("lenet5", input_shape, num_classes)
    front = (
        Conv2D(6, 5, padding="SAME", w_init=_glorot), Sigmoid(),                  # C1
        AvgPool2D(2),                                                             # S2
        Conv2D(16, 5, padding=_padding(input_shape, (28, 28)), w_init=_glorot),   # C3
        Sigmoid(),
        AvgPool2D(2))                                                             # S4
    s4_h, s4_w, _ = _output_shape(serial(*front), input_shape)
    return serial(
        *front,
        Conv2D(120, (s4_h, s4_w), w_init=_glorot), Sigmoid(),                     # C5
        Flatten(), Dense(84, w_init=_glorot), Sigmoid(),                          # F6
        Dense(num_classes, w_init=_glorot))


def ufldl(input_shape=(28, 28, 1), num_classes: int = 10) -> Layer:
    """The UFLDL tutorial's CNN: one 9x9 conv layer of 20 maps, sigmoid, 2x2 mean pooling,
    softmax -- on 28x28 MNIST: 20x20x20 maps, pooled to 10x10x20, then the classifier.

    The conv pads ``"SAME"`` on inputs smaller than 28x28 (on 8x8 digits: 8x8x20, pooled to
    4x4x20).  Outputs logits: train with ``softmax_cross_entropy``.  Glorot initialisation.
    """
    _shape("ufldl", input_shape, num_classes)
    return serial(
        Conv2D(20, 9, padding=_padding(input_shape, (28, 28)), w_init=_glorot), Sigmoid(),
        AvgPool2D(2),
        Flatten(), Dense(num_classes, w_init=_glorot))


def deepid(input_shape=(39, 31, 1), num_classes: int = 10) -> Layer:
    """DeepID (Sun, Wang & Tang 2014): four conv layers, three max-pooling layers, one dense
    layer, softmax -- the face-recognition net pictured in the source post.

    conv 4x4x20, maxpool 2, conv 3x3x40, maxpool 2, conv 3x3x60, maxpool 2, then the paper's
    skip connection: the dense layer of 160 "DeepID" features reads the flattened third pooling
    layer and the flattened fourth convolution (2x2x80) side by side --
    ``FanOut(2)``, ``parallel(serial(conv, relu, flatten), flatten)``, ``FanInConcat()`` -- so
    its residual goes back both through conv 4 and straight to pool 3, where the two add up
    (eq. 6.5).  All ReLU, then ``num_classes`` logits.  Convolutions are ``"VALID"`` on the
    paper's 39x31 patches or larger and ``"SAME"`` below.  He init.
    """
    padding = _padding(_shape("deepid", input_shape, num_classes), (39, 31))
    return serial(
        Conv2D(20, 4, padding=padding, w_init=_he), ReLU(), MaxPool2D(2),
        Conv2D(40, 3, padding=padding, w_init=_he), ReLU(), MaxPool2D(2),
        Conv2D(60, 3, padding=padding, w_init=_he), ReLU(), MaxPool2D(2),
        FanOut(2),
        parallel(serial(Conv2D(80, 2, padding=padding, w_init=_he), ReLU(), Flatten()),
                 Flatten()),
        FanInConcat(),
        Dense(160, w_init=_he), ReLU(),
        Dense(num_classes, w_init=_glorot))


def _conv(features: int, k: int, strides: int = 1, batch_norm: bool = False) -> tuple:
    """A ``"SAME"`` convolution, with BatchNorm after it (and no bias, which BatchNorm's mean
    would remove) when ``batch_norm``."""
    if not batch_norm:
        return (Conv2D(features, k, strides, padding="SAME", w_init=_he),)
    return (Conv2D(features, k, strides, padding="SAME", use_bias=False, w_init=_he),
            BatchNorm())


def _basic_block(features: int, strides: int, batch_norm: bool = False) -> Layer:
    """He et al.'s basic block: ``relu(x + conv3x3(relu(conv3x3(x))))``, BatchNorm after each
    convolution when ``batch_norm``; where it halves the maps or changes their number, the
    skip is a strided 1x1 convolution (a projection)."""
    body = serial(*_conv(features, 3, strides, batch_norm), ReLU(),
                  *_conv(features, 3, 1, batch_norm))
    project = Conv2D(features, 1, strides, use_bias=not batch_norm, w_init=_he)
    skip = (Identity() if strides == 1 else
            serial(project, BatchNorm()) if batch_norm else project)
    return serial(FanOut(2), parallel(body, skip), FanInSum(), ReLU())


def resnet(input_shape=(32, 32, 3), num_classes: int = 10, blocks: int = 1,
           batch_norm: bool = False) -> Layer:
    """A small CIFAR-style residual net (He, Zhang, Ren & Sun 2016, section 4.2).

    A 3x3 conv stem of 16 maps (ReLU), three stages of ``blocks`` basic blocks each with 16,
    32 and 64 maps -- the first block of the second and third stage halves the maps (stride 2)
    and projects its skip with a 1x1 convolution -- global average pooling and ``num_classes``
    logits: ``6 blocks + 2`` layers with weights (ResNet-8 for ``blocks=1``, He et al.'s
    ResNet-20 for 3).  All ``"SAME"``; any input of at least 4x4 works (8x8 digits: 8, 4, 2).
    He init.  ``batch_norm``: BatchNorm after every convolution, as He et al. (``resnet_bn``).
    """
    _shape("resnet", input_shape, num_classes)
    blocks = positive_int("resnet", "blocks", blocks)
    batch_norm = flag("resnet", "batch_norm", batch_norm)
    stages = []
    for features, strides in ((16, 1), (32, 2), (64, 2)):
        stages += [_basic_block(features, strides, batch_norm)] + \
            [_basic_block(features, 1, batch_norm) for _ in range(blocks - 1)]
    return serial(*_conv(16, 3, 1, batch_norm), ReLU(), *stages,
                  GlobalAvgPool2D(), Dense(num_classes, w_init=_glorot))


def resnet_bn(input_shape=(32, 32, 3), num_classes: int = 10, blocks: int = 1) -> Layer:
    """``resnet`` with BatchNorm after every convolution (and no convolution bias), as He et
    al. train it: its running statistics are state (``jaxcnn.state``), updated by ``fit``
    every step and used to evaluate."""
    return resnet(input_shape, num_classes, blocks, batch_norm=True)


def autoencoder(input_shape=(8, 8, 1), features: int = 16) -> Layer:
    """A small convolutional autoencoder: the image back from a code of a sixteenth its area.

    Encoder: conv3x3 ``features`` (ReLU), maxpool 2, conv3x3 ``features // 2`` (ReLU),
    maxpool 2 -- a code of ``(H/4, W/4, features/2)``.  Decoder: two transposed convolutions
    3x3, stride 2, ``"SAME"`` (eqs. 4.10-4.11), each doubling the maps' size --
    ``features`` maps (ReLU), then the input's channels -- and a sigmoid, for images in
    ``[0, 1]`` under ``squared_error`` against themselves.  All ``"SAME"``, He init; ``H`` and
    ``W`` must divide by 4 (8x8 digits: 8, 4, 2, then 4, 8).
    """
    h, w, c = _shape("autoencoder", input_shape)
    if h % 4 or w % 4:
        raise ValueError(f"autoencoder: the input's height and width must divide by 4 (two "
                         f"poolings, two transposed convolutions of stride 2), got "
                         f"{tuple(input_shape)}")
    f = positive_int("autoencoder", "features", features)
    if f < 2:
        raise ValueError(f"autoencoder: features must be >= 2 (the second convolution has "
                         f"features // 2 maps), got {f}")
    return serial(Conv2D(f, 3, padding="SAME", w_init=_he), ReLU(), MaxPool2D(2),
                  Conv2D(f // 2, 3, padding="SAME", w_init=_he), ReLU(), MaxPool2D(2),
                  ConvTranspose2D(f, 3, strides=2, padding="SAME", w_init=_he), ReLU(),
                  ConvTranspose2D(c, 3, strides=2, padding="SAME", w_init=_glorot), Sigmoid())


ARCHS: dict[str, Callable[..., Layer]] = {
    "small": small, "lenet5": lenet5, "ufldl": ufldl, "deepid": deepid, "resnet": resnet,
    "resnet-bn": resnet_bn}
"""The zoo by name (``jaxcnn train --arch``): ``name -> fn(input_shape, num_classes)``."""


class Recipe(NamedTuple):
    """How a zoo net trains when nothing else is said (``jaxcnn train --arch NAME``): Adam's
    learning rate ``lr`` and the number of ``epochs``, with batches of 32.  Each trains its net
    on the bundled 8x8 digits (``docs/training.md`` gives the accuracies over seeds)."""

    lr: float
    epochs: int


RECIPES: dict[str, Recipe] = {
    "small": Recipe(1e-3, 30),
    "lenet5": Recipe(1e-2, 60),       # sigmoid units: a larger step, and longer to leave the plateau
    "ufldl": Recipe(1e-2, 30),
    "deepid": Recipe(1e-3, 30),
    "resnet": Recipe(1e-3, 30),
    "resnet-bn": Recipe(1e-3, 30),
}
"""The ``Recipe`` of each net in ``ARCHS``, by name."""


def get(name: str, input_shape, num_classes: int = 10) -> Layer:
    """The zoo net ``name`` laid out for ``input_shape`` ``(H, W, C)``.

    The same arguments give the same ``Layer`` object, so that ``fit`` reuses the steps it
    compiled for it (layers are pure functions: sharing one is safe).
    """
    if not isinstance(name, str) or name not in ARCHS:
        raise ValueError(f"unknown architecture {name!r}; expected one of {', '.join(ARCHS)}")
    # checked before the cache, which would otherwise hand 1.0 the net made for 1
    shape = _shape(f"zoo.get({name!r})", input_shape, num_classes)
    return _get(name, shape, int(num_classes))


@functools.lru_cache(maxsize=32)
def _get(name: str, input_shape: Shape, num_classes: int) -> Layer:
    return ARCHS[name](input_shape, num_classes)

"""Checks of what training is given, made before anything runs: counts (``fit``'s ``epochs``,
``evaluate``'s ``batch_size``, ...) and data that fits the network.

Raise ``ValueError``/``TypeError`` naming the argument, the expected and the given value.
"""
from __future__ import annotations

import jax
import numpy as np

from jaxcnn.core import Layer, Params
from jaxcnn.data import _first_non_finite, check_arrays


def positive_int(name: str, value) -> int:
    """``value`` as an ``int`` if it is a positive integer (not a bool)."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def check_one_input(where: str, x) -> None:
    """``fit`` and ``evaluate`` take one array of examples: a tuple (the inputs of a net with
    several, ``jaxcnn.graph``) or a list is refused by name, not stacked into one array."""
    if isinstance(x, (tuple, list)):
        raise TypeError(f"{where}: expected one array of examples, got a {type(x).__name__}; a "
                        f"net of several inputs trains through value_and_grad or make_step "
                        f"with a tuple of arrays, not {where}")


def _check_real_targets(x, targets, want: tuple, what: str) -> None:
    """Real targets of the outputs' shape ``want``, for finite images; both finite (the
    class-label branch's ``check_arrays`` checks the images so)."""
    tshape = getattr(targets, "shape", None)
    if tshape == want[:1] and len(want) == 2:       # one entry per image: labels meant
        raise TypeError(f"{what}: class labels must be an integer array (cast with "
                        f".astype(np.int32)), got {targets.dtype}; real targets need the "
                        f"outputs' shape {want}")
    if tshape != want:
        raise ValueError(f"{what}: targets must have shape {want} (one network output per "
                         f"image), got {tshape}")
    for name, a in (("images", x), ("targets", targets)):
        bad = None if a.dtype.kind in "biuOSU" else _first_non_finite(a)  # ml_dtypes: "V"
        if bad is not None:
            raise ValueError(f"{what}: {name} must be finite, {name[:-1]} {bad} holds NaN or "
                             f"infinite values")


def check_data(net: Layer, params: Params, x, targets, what: str, loss=None) -> None:
    """Images fit the net (rank, size, channels, dtype), and targets fit its output: class
    indices (checked by ``data.check_arrays``) for ``(N, classes)`` outputs, or real targets
    of the output's shape -- and, given a ``loss``, the kind of targets it takes (class
    indices or real arrays).  ``what`` names the set in messages ("training set")."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) < 2:
        raise ValueError(f"{what}: images must be an array with a batch axis, e.g. "
                         f"(N, H, W, C), got {shape if shape is not None else type(x).__name__}")
    try:                # a batch of two at least: a set of one example is fine to evaluate
        out = jax.eval_shape(    # with, though a BatchNorm could not train on it
            lambda p, xs: net.forward(p, xs, key=jax.random.key(0), train=True)[0],
            params, jax.ShapeDtypeStruct((max(shape[0], 2), *shape[1:]), x.dtype))
    except (ValueError, TypeError) as err:
        raise type(err)(f"{what}: images of shape {tuple(shape)} and dtype {x.dtype} do not "
                        f"fit the network: {err}") from err
    if np.issubdtype(getattr(targets, "dtype", np.float64), np.integer):
        if len(out.shape) != 2:
            raise ValueError(f"{what}: integer labels need a network with outputs (N, classes), "
                             f"this one gives {out.shape[1:]} per example")
        check_arrays(x, targets, out.shape[1], what, any_rank=True)
    else:
        _check_real_targets(x, targets, (shape[0], *out.shape[1:]), what)
    if loss is not None:
        n = max(shape[0], 1)
        try:            # shapes and dtypes only: the loss's own checks, on the whole set's
            jax.eval_shape(loss.value, jax.ShapeDtypeStruct((n, *out.shape[1:]), out.dtype),
                           jax.ShapeDtypeStruct((n, *targets.shape[1:]), targets.dtype))
        except (ValueError, TypeError) as err:
            raise type(err)(f"{what}: its targets ({targets.dtype}, shape {targets.shape}) "
                            f"do not suit the loss: {err}") from err

"""Losses: a value and the output residual it starts the backward pass with.

Each loss is a mean over the batch, so its ``delta`` (``dJ/d outputs``) carries the ``1/N``;
an empty batch (``N = 0``) has no mean and raises ``ValueError`` naming the loss.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.core import Array, Layer, describe, is_concrete


class Loss(NamedTuple):
    """``value(outputs, targets) -> J`` (a scalar) and ``delta(outputs, targets) -> dJ/d outputs``."""

    value: Callable[[Array, Array], Array]
    delta: Callable[[Array, Array], Array]
    name: str


def check_net(where: str, net) -> None:
    """``net`` is a ``Layer`` (a class such as ``jc.Dense`` is not: it builds one)."""
    if not isinstance(net, Layer):
        raise TypeError(f"{where}: net must be a jaxcnn Layer (jc.serial(...), a zoo net), got "
                        f"{describe(net)}")


def check_net_and_loss(where: str, net, loss) -> None:
    """``net`` is a ``Layer`` and ``loss`` a ``Loss`` (``value`` and its ``delta``): a plain
    function has no output residual for the hand-written backward to start from."""
    check_net(where, net)
    if not isinstance(loss, Loss):
        raise TypeError(f"{where}: loss must be a jaxcnn Loss (jc.softmax_cross_entropy, "
                        f"jc.squared_error, or Loss(value, delta, name)), got {describe(loss)}")


def _check_outputs(name: str, outputs, rank: int | None = None) -> None:
    if not (hasattr(outputs, "shape") and hasattr(outputs, "dtype")):
        raise TypeError(f"{name}: outputs must be a floating-point array, got "
                        f"{describe(outputs)}")
    if not jnp.issubdtype(outputs.dtype, jnp.floating):
        raise TypeError(f"{name}: outputs must be a floating-point array, got {outputs.dtype}")
    if outputs.ndim < 1 or (rank is not None and outputs.ndim != rank):
        raise ValueError(f"{name}: outputs must have shape "
                         f"{'(N, classes)' if rank == 2 else '(N, ...)'}, got {outputs.shape}")
    if outputs.shape[0] == 0:
        raise ValueError(f"{name}: the batch is empty (outputs of shape {outputs.shape}); the "
                         f"loss is a mean over the examples and needs at least one")


# --- softmax cross-entropy -------------------------------------------------------------------

def _check_labels(name: str, logits, labels) -> None:
    _check_outputs(name, logits, rank=2)
    if not (hasattr(labels, "shape") and hasattr(labels, "dtype")):
        raise TypeError(f"{name}: labels must be an integer array of class indices, got "
                        f"{describe(labels)}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"{name}: labels must be an integer array of class indices, got "
                        f"{labels.dtype}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"{name}: labels must have shape {logits.shape[:1]} (one class index per "
                         f"row of the outputs {logits.shape}), got {labels.shape}")
    if is_concrete(labels):              # concrete labels are checked now; traced ones -> NaN
        concrete = np.asarray(labels)
        lo, hi = int(concrete.min(initial=0)), int(concrete.max(initial=0))
        if lo < 0 or hi >= logits.shape[1]:
            raise ValueError(f"{name}: labels must lie in [0, {logits.shape[1]}), "
                             f"got values in [{lo}, {hi}]")


def _class_indices(logits, labels) -> tuple[Array, Array]:
    """``(index, in_range)``: the labels as int32 indices (0 where out of range) and whether
    each lies in ``[0, classes)``, ``(N, 1)``.  The range is tested in the labels' own dtype,
    and the number of classes only where that dtype holds it: int8 labels against 200
    classes must not wrap 200 to -56."""
    classes, labels = logits.shape[1], jnp.asarray(labels)    # NumPy int64 labels: JAX's int
    in_range = labels >= 0
    if classes <= jnp.iinfo(labels.dtype).max:
        in_range = in_range & (labels < jnp.asarray(classes, labels.dtype))
    return jnp.where(in_range, labels, 0).astype(jnp.int32)[:, None], in_range[:, None]


def _xent_value(logits: Array, labels: Array) -> Array:
    """Eq. 2.6: ``J = 1/N sum_n logsumexp(z_n) - z_{n, y_n}`` (stable log-sum-exp)."""
    _check_labels("softmax_cross_entropy", logits, labels)
    index, in_range = _class_indices(logits, labels)
    picked = jnp.take_along_axis(logits, index, axis=1, mode="clip")
    per_example = jax.nn.logsumexp(logits, axis=1, keepdims=True) - picked
    return jnp.mean(jnp.where(in_range, per_example, jnp.nan))


def _xent_delta(logits: Array, labels: Array) -> Array:
    """Eq. 2.6: ``delta = (softmax(z) - onehot(y)) / N``; NaN on a row whose label is out of range."""
    _check_labels("softmax_cross_entropy", logits, labels)
    index, in_range = _class_indices(logits, labels)
    one_hot = index == jnp.arange(logits.shape[1], dtype=jnp.int32).reshape(1, -1)
    delta = _per_example(jax.nn.softmax(logits, axis=1) - one_hot.astype(logits.dtype))
    return jnp.where(in_range, delta, jnp.nan)


def _per_example(a: Array) -> Array:
    """``a / N`` for a batch of ``N`` rows; in float32 where ``N`` is past the dtype's largest
    number (float16's 65504), which would make every entry 0."""
    n = a.shape[0]
    if n <= float(jnp.finfo(a.dtype).max):
        return a / n
    return (a.astype(jnp.float32) / n).astype(a.dtype)


softmax_cross_entropy = Loss(_xent_value, _xent_delta, "softmax_cross_entropy")
"""Softmax cross-entropy on logits ``(N, classes)`` with integer labels ``(N,)`` (eq. 2.6).

``value`` is the batch mean of ``logsumexp(z) - z_y``; ``delta`` is ``(softmax(z) - onehot(y)) / N``.
Labels out of ``[0, classes)`` raise ``ValueError`` when concrete; under ``jit`` (traced labels)
they make the loss NaN, so they can never pass silently.
"""


# --- squared error ---------------------------------------------------------------------------

def _check_targets(name: str, outputs, targets) -> None:
    _check_outputs(name, outputs)
    if not (hasattr(targets, "shape") and hasattr(targets, "dtype")):
        raise TypeError(f"{name}: targets must be an array of the outputs' shape "
                        f"{outputs.shape}, got {describe(targets)}")
    if targets.shape != outputs.shape:
        raise ValueError(f"{name}: targets must have the outputs' shape {outputs.shape}, got "
                         f"{targets.shape}")
    if targets.dtype != outputs.dtype:
        raise TypeError(f"{name}: targets have dtype {targets.dtype} but outputs {outputs.dtype}")


def _as_jax(targets):
    """NumPy targets as ``jnp.asarray`` takes them, eagerly as under ``jit`` (float64 is float32
    with JAX's 64-bit types off); anything else as it is, for the checks to name."""
    return jnp.asarray(targets) if isinstance(targets, np.ndarray) else targets


def _se_value(outputs: Array, targets: Array) -> Array:
    """Eq. 2.5: ``J = 1/(2N) sum_n ||y_n - a_n||^2``, summed in float32 at least (a 16-bit
    sum of a batch's squares overflows float16 where their mean does not)."""
    targets = _as_jax(targets)
    _check_targets("squared_error", outputs, targets)
    wide = outputs.dtype if jnp.finfo(outputs.dtype).bits >= 32 else jnp.float32
    total = jnp.sum(jnp.square((targets - outputs).astype(wide)))
    return (0.5 * total / outputs.shape[0]).astype(outputs.dtype)


def _se_delta(outputs: Array, targets: Array) -> Array:
    """Eq. 2.5: ``dJ/da = -(y - a) / N``; after a sigmoid, eq. 2.2 makes it the source's
    output residual ``-(y - a) f'(z)``."""
    targets = _as_jax(targets)
    _check_targets("squared_error", outputs, targets)
    return _per_example(-(targets - outputs))


squared_error = Loss(_se_value, _se_delta, "squared_error")
"""Squared error ``J = 1/2 ||y - a||^2`` per example, averaged over the batch (eq. 2.5).

Targets are real arrays of the outputs' shape and dtype; ``delta`` is ``-(y - a) / N``.
"""

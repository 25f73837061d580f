"""Evaluation: a net's mean loss and accuracy over a whole set, in test mode.

The set is cut into chunks of one size (``EVAL_BATCH`` in ``fit``), the last one padded and
masked, so that every set -- training subset, test split, any length -- runs through one
compiled function per net and loss.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import backend
from jaxcnn._checks import check_data, check_one_input, positive_int
from jaxcnn.core import Layer, Params, State
from jaxcnn.losses import Loss, check_net_and_loss
from jaxcnn.state import with_state
from jaxcnn.step import memoise

__all__ = ["EVAL_BATCH", "evaluate"]

EVAL_BATCH = 1000
"""The evaluation chunk: one compiled shape for every set, and ``evaluate``'s default."""


@memoise
def _chunk_sums(net: Layer, loss: Loss) -> Callable:
    """Jitted ``(params, state, x, targets, mask) -> (summed loss, correct count)`` over one
    chunk, the net evaluating with its ``state`` (``jaxcnn.state.with_state``; ``()`` for a
    net without)."""

    def chunk_sums(params, state, x, targets, mask):
        out = with_state(net, state).apply(params, x, key=None, train=False)
        per_example = jax.vmap(lambda o, t: loss.value(o[None], t[None]))(out, targets)
        total = jnp.sum(jnp.where(mask, per_example, jnp.zeros((), per_example.dtype)))
        if jnp.issubdtype(targets.dtype, jnp.integer) and out.ndim == 2:
            # compared in int32: class 300 cast to uint8 labels' dtype would wrap to 44; a
            # row with a NaN or infinite output predicts nothing (argmax would say class 0)
            hit = jnp.argmax(out, axis=1).astype(jnp.int32) == targets.astype(jnp.int32)
            hit = hit & jnp.all(jnp.isfinite(out), axis=1)
            return total, jnp.sum(hit & mask)
        return total, jnp.zeros((), jnp.int32)

    return backend.jit(chunk_sums)


def evaluator(net: Layer, loss: Loss, chunk: int = EVAL_BATCH) -> Callable:
    """``(params, x, targets, state=()) -> (mean loss, accuracy or None)`` over NumPy arrays,
    in padded chunks of ``chunk`` examples: ``evaluate`` with the net and loss fixed, as
    ``fit`` uses it after every epoch, on sets it has checked (``evaluate`` checks them; this
    does not, and so is not public)."""
    chunk_sums = _chunk_sums(net, loss)

    def evaluate(params, x, targets, state=()):
        n = len(x)
        total, correct = 0.0, 0
        for start in range(0, n, chunk):
            xs, ts = x[start:start + chunk], targets[start:start + chunk]
            m = len(xs)
            if m < chunk:                       # pad the last chunk; the mask drops the padding
                xs = np.concatenate([xs, np.zeros((chunk - m, *xs.shape[1:]), xs.dtype)])
                ts = np.concatenate([ts, np.zeros((chunk - m, *ts.shape[1:]), ts.dtype)])
            s, c = chunk_sums(params, state, xs, ts, np.arange(chunk) < m)
            total, correct = total + float(s), correct + int(c)
        classify = np.issubdtype(targets.dtype, np.integer)
        return total / n, (correct / n if classify else None)

    return evaluate


def evaluate(net: Layer, loss: Loss, params: Params, x, targets, *,
             batch_size: int = EVAL_BATCH, state: State = ()) -> tuple[float, float | None]:
    """Mean loss and accuracy (``None`` unless targets are class indices) of ``net.apply`` in
    test mode over ``(x, targets)``, in batches of ``batch_size``; a net with state (BatchNorm)
    evaluates with ``state`` (``jaxcnn.state``: ``fit``'s ``FitResult.state``)."""
    batch_size = positive_int("batch_size", batch_size)
    check_net_and_loss("evaluate", net, loss)
    check_one_input("evaluate", x)
    x, targets = np.asarray(x), np.asarray(targets)
    if x.ndim and len(x) == 0:
        raise ValueError(f"evaluate: no examples (x of shape {x.shape}); a mean over none "
                         f"is not defined")
    check_data(net, params, x, targets, "evaluate", loss)   # finite images and targets too
    return evaluator(net, loss, batch_size)(params, x, targets, state)

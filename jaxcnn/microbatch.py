"""Gradients over a batch in chunks: the same ``J`` and gradient with one chunk's activations
in memory (``value_and_grad(..., microbatch=...)``, ``fit(..., microbatch=...)``).

A memory concern, kept apart from the chain rule of ``jaxcnn.network``: for a loss that is a
batch mean, the mean of the chunks' means is the batch's mean, and so is the mean of their
gradients (eq. 6.2 is linear in the per-example terms).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn.core import Array, Params, check_array, is_concrete, positive_int, split_key


def microbatched(vg: Callable, microbatch: int | None, name: str = "microbatched",
                 check: Callable | None = None) -> Callable[..., tuple[Array, Params]]:
    """``vg(params, x, targets, key, train) -> (J, grads)`` on consecutive chunks of
    ``microbatch`` examples, one after another (``lax.scan``), losses and gradients averaged:
    ``(params, x, targets, *, key=None, train=True) -> (J, grads)``.

    For a ``vg`` whose ``J`` is a batch mean (every jaxcnn loss) this is the whole batch's
    ``J`` and gradient up to float rounding.  ``microbatch=None``, or at least the batch: one
    call on the whole batch.  Otherwise the batch must be a multiple of ``microbatch``
    (``ValueError`` naming ``name``), and a given ``key`` is split into one key per chunk.
    Memory: one chunk's activations at a time, and every chunk's gradients until they are
    averaged (the number of chunks times the parameters).  ``check(params, x, targets, key,
    train)``, where given, runs on the whole batch before it is chunked: inside the scan the
    chunks are traced, so a loss's checks of concrete targets would not run (``labels_check``).
    """
    if microbatch is not None:
        microbatch = positive_int(name, "microbatch", microbatch)

    def f(params, x, targets, *, key=None, train=True):
        n = _batch(name, x)
        check_array(name, "targets", targets, "with a batch axis")
        if targets.ndim < 1 or targets.shape[0] != n:
            raise ValueError(f"{name}: targets must have x's batch of {n} examples along their "
                             f"first axis, got shape {tuple(targets.shape)} for x of shape "
                             f"{_shapes(x)}")
        if microbatch is None or microbatch >= n:
            return vg(params, x, targets, key, train)
        if n % microbatch:
            raise ValueError(f"{name}: the batch ({n}) must be a multiple of "
                             f"microbatch={microbatch} or at most it")
        if check is not None:
            check(params, x, targets, key, train)
        count = n // microbatch
        chunks = jax.tree.map(lambda a: a.reshape(count, microbatch, *a.shape[1:]), (x, targets))
        keys = None if key is None else split_key(name, key, count)

        def one(_, chunk):
            (xc, tc), kc = chunk
            return None, vg(params, xc, tc, kc, train)

        # each chunk's (J, grads) stacked, then averaged, rather than summed into a carry:
        # zeros for a carry would lack the device-varying type of per-device gradients under
        # shard_map, and starting it from a first chunk outside the scan measured 6% slower
        _, parts = lax.scan(one, None, (chunks, keys))
        return jax.tree.map(lambda a: jnp.mean(a, axis=0), parts)

    return f


def labels_check(net, loss) -> Callable[..., None]:
    """``microbatched``'s ``check`` for ``net`` and ``loss``: concrete class labels put through
    the loss's own checks (in range, one per row) against outputs of the net's shape, as the
    whole batch's would be, rather than a NaN loss from the chunks."""
    def check(params, x, targets, key, train):
        if not (is_concrete(targets) and jnp.issubdtype(targets.dtype, jnp.integer)):
            return
        key = jax.random.key(0) if key is None else key           # shapes only: any key
        out = jax.eval_shape(lambda p, a, k: net.apply(p, a, key=k, train=train), params, x, key)
        if hasattr(out, "shape"):
            loss.value(jnp.zeros(out.shape, out.dtype), targets)

    return check


def _batch(name: str, x) -> int:
    """The batch size of ``x``: an array, or a (nested) tuple of arrays -- the inputs of a net
    with several (``jaxcnn.graph``) -- each with the same batch axis."""
    parts = jax.tree.leaves(x) if isinstance(x, tuple) and x else [x]
    for part in parts:
        check_array(name, "x", part, "with a batch axis")
        if part.ndim < 1:
            raise ValueError(f"{name}: x must have a batch axis, got shape ()")
    sizes = {part.shape[0] for part in parts}
    if len(sizes) > 1:
        raise ValueError(f"{name}: the inputs in x must share one batch size, got shapes "
                         f"{_shapes(x)}")
    return parts[0].shape[0]


def _shapes(x) -> object:
    return jax.tree.map(lambda a: tuple(a.shape), x)

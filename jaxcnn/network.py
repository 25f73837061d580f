"""Networks: ``serial`` composition (eq. 6.1), ``value_and_grad`` (eq. 6.2) and the
``custom_vjp`` bridge (eq. 6.4)."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn.core import Array, Layer, Params, config, layer_error, positive_int
from jaxcnn.losses import Loss


def _keys(key, n: int):
    """One key per layer, or ``None`` for each when no key is given."""
    return [None] * n if key is None else list(jax.random.split(key, n))


def serial(*layers: Layer) -> Layer:
    """Compose layers in order; the result is itself a ``Layer``.

    Params are a tuple of the layers' params.  ``forward`` runs the layers in order and returns
    the tuple of their caches; ``backward`` runs them in reverse, each turning the residual of
    its output into the gradients of its params and the residual of its input -- the chain
    rule, layer by layer (eq. 6.1).  A given ``key`` is split into one key per layer.
    Errors name the failing layer by its position: ``serial[3] Conv2D: ...``.
    """
    if not layers:
        raise ValueError("serial: needs at least one layer")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"serial: argument {i} is {type(layer).__name__}, not a Layer "
                            f"(did you write jc.Sigmoid instead of jc.Sigmoid()?)")
    name = "serial(" + ", ".join(layer.name for layer in layers) + ")"

    def where(i):
        return f"serial[{i}]"

    def checked(params):
        if not isinstance(params, (tuple, list)) or len(params) != len(layers):
            got = len(params) if isinstance(params, (tuple, list)) else type(params).__name__
            raise ValueError(f"serial: expected params as a tuple of {len(layers)} entries, one "
                             f"per layer, got {got} -- params from another network?")
        return params

    def init(key, input_shape):
        params, shape = [], input_shape
        for i, (layer, k) in enumerate(zip(layers, jax.random.split(key, len(layers)))):
            try:
                p, shape = layer.init(k, shape)
            except (ValueError, TypeError) as err:
                raise layer_error(where(i), err) from err
            params.append(p)
        return tuple(params), shape

    def forward(params, x, *, key=None, train=True):
        caches = []
        for i, (layer, p, k) in enumerate(zip(layers, checked(params), _keys(key, len(layers)))):
            try:
                x, cache = layer.forward(p, x, key=k, train=train)
            except (ValueError, TypeError) as err:
                raise layer_error(where(i), err) from err
            caches.append(cache)
        return x, tuple(caches)

    def backward(params, cache, delta):
        params = checked(params)
        if not isinstance(cache, tuple) or len(cache) != len(layers):
            got = len(cache) if isinstance(cache, tuple) else type(cache).__name__
            raise ValueError(f"serial: expected a cache of {len(layers)} entries from this "
                             f"network's forward, got {got}")
        grads = [None] * len(layers)
        for i in reversed(range(len(layers))):
            try:
                grads[i], delta = layers[i].backward(params[i], cache[i], delta)
            except (ValueError, TypeError) as err:
                raise layer_error(where(i), err) from err
        return tuple(grads), delta

    def apply(params, x, *, key=None, train=True):
        for i, (layer, p, k) in enumerate(zip(layers, checked(params), _keys(key, len(layers)))):
            try:
                x = layer.apply(p, x, key=k, train=train)
            except (ValueError, TypeError) as err:
                raise layer_error(where(i), err) from err
        return x

    return Layer(init, forward, backward, apply, name, tuple(layers), config(kind="serial"))


def value_and_grad(net: Layer, loss: Loss, *,
                   microbatch: int | None = None) -> Callable[..., tuple[Array, Params]]:
    """``(params, x, targets, *, key=None, train=True) -> (J, grads)`` by the hand-written backward.

    Runs ``net.forward``, the loss's output residual and ``net.backward`` (eq. 6.2) -- no
    autodiff.  Jit-able, and vmap-able for per-example gradients (eq. 6.3): map over examples
    given a batch axis of one, ``jax.vmap(lambda x, t: f(params, x[None], t[None]))(xs, ts)``.

    ``microbatch``: run eq. 6.2 on consecutive chunks of this many examples, one after another,
    and average their losses and gradients (``microbatched``): the whole batch's ``J`` and
    gradient up to float rounding, with a chunk's activations in memory instead of the batch's
    (on a CPU, also a working set that stays in cache: ``docs/performance.md``).  The batch
    must be a multiple of it, or at most it (then it is one chunk).  A given ``key`` is split
    into one key per chunk, so stochastic layers draw differently than on the whole batch.
    """
    def whole(params, x, targets, key, train):
        y, cache = net.forward(params, x, key=key, train=train)
        grads, _ = net.backward(params, cache, loss.delta(y, targets))
        return loss.value(y, targets), grads

    return microbatched(whole, microbatch, "value_and_grad")


def microbatched(vg: Callable, microbatch: int | None, name: str = "microbatched"
                 ) -> Callable[..., tuple[Array, Params]]:
    """``vg(params, x, targets, key, train) -> (J, grads)`` on consecutive chunks of
    ``microbatch`` examples, one after another (``lax.scan``), losses and gradients averaged:
    ``(params, x, targets, *, key=None, train=True) -> (J, grads)``.

    For a ``vg`` whose ``J`` is a batch mean (every jaxcnn loss) this is the whole batch's
    ``J`` and gradient up to float rounding.  ``microbatch=None``, or at least the batch: one
    call on the whole batch.  Otherwise the batch must be a multiple of ``microbatch``
    (``ValueError`` naming ``name``), and a given ``key`` is split into one key per chunk.
    Memory: one chunk's activations at a time, and every chunk's gradients until they are
    averaged (the number of chunks times the parameters).
    """
    if microbatch is not None:
        microbatch = positive_int(name, "microbatch", microbatch)

    def f(params, x, targets, *, key=None, train=True):
        n = x.shape[0]
        if microbatch is None or microbatch >= n:
            return vg(params, x, targets, key, train)
        if n % microbatch:
            raise ValueError(f"{name}: the batch ({n}) must be a multiple of "
                             f"microbatch={microbatch} or at most it")
        count = n // microbatch
        chunks = jax.tree.map(lambda a: a.reshape(count, microbatch, *a.shape[1:]), (x, targets))
        keys = None if key is None else jax.random.split(key, count)

        def one(_, chunk):
            (xc, tc), kc = chunk
            return None, vg(params, xc, tc, kc, train)

        # each chunk's (J, grads) stacked, then averaged, rather than summed into a carry:
        # zeros for a carry would lack the device-varying type of per-device gradients under
        # shard_map, and starting it from a first chunk outside the scan measured 6% slower
        _, parts = lax.scan(one, None, (chunks, keys))
        return jax.tree.map(lambda a: jnp.mean(a, axis=0), parts)

    return f


def bridge(net: Layer, *, key=None, train: bool = True) -> Callable[[Params, Array], Array]:
    """``f(params, x) = net.apply(params, x)`` whose VJP is the hand-written backward (eq. 6.4).

    Use it to run the derivation inside any JAX program under ``jax.grad`` / ``jax.vjp``: the
    forward saves the layer caches, and the cotangent of ``f``'s output is the ``delta`` handed
    to ``net.backward``.  ``custom_vjp`` supports reverse mode only (``jax.jvp`` / ``jax.jacfwd``
    raise); ``key`` and ``train`` are fixed when the bridge is made.
    """

    @jax.custom_vjp
    def f(params, x):
        return net.apply(params, x, key=key, train=train)

    def f_fwd(params, x):
        y, cache = net.forward(params, x, key=key, train=train)
        return y, (params, cache)

    def f_bwd(saved, delta):
        params, cache = saved
        return net.backward(params, cache, delta)

    f.defvjp(f_fwd, f_bwd)
    return f

"""Networks: ``serial`` composition (eq. 6.1), ``value_and_grad`` (eq. 6.2) and the
``custom_vjp`` bridge (eq. 6.4)."""
from __future__ import annotations

from typing import Callable

import jax

from jaxcnn.core import (Array, Cache, Layer, Params, check_key, check_train, config, in_layer,
                         layer_keys, split_key)
from jaxcnn.losses import Loss, check_net, check_net_and_loss
from jaxcnn.microbatch import labels_check, microbatched
from jaxcnn.precision import Policy, policy


def serial(*layers: Layer) -> Layer:
    """Compose layers in order; the result is itself a ``Layer``.

    Params are a tuple of the layers' params.  ``forward`` runs the layers in order and returns
    the tuple of their caches; ``backward`` runs them in reverse, each turning the residual of
    its output into the gradients of its params and the residual of its input -- the chain
    rule, layer by layer (eq. 6.1).  A given ``key`` is split into one key per layer.
    Errors name the failing layer by its position: ``serial[3] Conv2D: ...``.  An empty batch
    (``N = 0``) passes through every layer as an empty array.
    """
    if not layers:
        raise ValueError("serial: needs at least one layer")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"serial: argument {i} is {type(layer).__name__}, not a Layer "
                            f"(did you write jc.Sigmoid instead of jc.Sigmoid()?)")
    name = "serial(" + ", ".join(layer.name for layer in layers) + ")"

    def each(params, key=None):
        """``(position, layer, params, key)`` per layer, params checked to be this net's."""
        if not isinstance(params, (tuple, list)) or len(params) != len(layers):
            got = len(params) if isinstance(params, (tuple, list)) else type(params).__name__
            raise ValueError(f"serial: expected params as a tuple of {len(layers)} entries, one "
                             f"per layer, got {got} -- params from another network?")
        return zip((f"serial[{i}]" for i in range(len(layers))), layers, params,
                   layer_keys(key, len(layers)))

    def init(key, input_shape):
        params, shape = [], input_shape
        for i, (layer, k) in enumerate(zip(layers, split_key("serial", key, len(layers)))):
            with in_layer(f"serial[{i}]"):
                p, shape = layer.init(k, shape)
            params.append(p)
        return tuple(params), shape

    def forward(params, x, *, key=None, train=True):
        caches = []
        for where, layer, p, k in each(params, key):
            with in_layer(where):
                x, cache = layer.forward(p, x, key=k, train=train)
            caches.append(cache)
        return x, tuple(caches)

    def backward(params, cache, delta):
        steps = list(each(params))
        if not isinstance(cache, tuple) or len(cache) != len(layers):
            got = len(cache) if isinstance(cache, tuple) else type(cache).__name__
            raise ValueError(f"serial: expected a cache of {len(layers)} entries from this "
                             f"network's forward, got {got}")
        grads = []
        for (where, layer, p, _), c in zip(reversed(steps), reversed(cache)):   # eq. 6.1
            with in_layer(where):
                g, delta = layer.backward(p, c, delta)
            grads.append(g)
        return _like(params, reversed(grads)), delta

    def apply(params, x, *, key=None, train=True):
        for where, layer, p, k in each(params, key):
            with in_layer(where):
                x = layer.apply(p, x, key=k, train=train)
        return x

    return Layer(init, forward, backward, apply, name, tuple(layers), config(kind="serial"),
                 build=serial)


def _like(params, grads) -> tuple | list:
    """The gradients in the params' own container: a list for params given as a list, so that
    ``jax.tree.map(optimizer_step, params, grads)`` sees one structure (a tuple otherwise)."""
    return list(grads) if isinstance(params, list) else tuple(grads)


def value_and_grad(net: Layer, loss: Loss, *, microbatch: int | None = None,
                   precision: str | Policy | None = None) -> Callable[..., tuple[Array, Params]]:
    """``(params, x, targets, *, key=None, train=True) -> (J, grads)`` by the hand-written backward.

    Runs ``net.forward``, the loss's output residual and ``net.backward`` (eq. 6.2) -- no
    autodiff.  Jit-able, and vmap-able for per-example gradients (eq. 6.3): map over examples
    given a batch axis of one, ``jax.vmap(lambda x, t: f(params, x[None], t[None]))(xs, ts)``.

    ``microbatch``: run eq. 6.2 on consecutive chunks of this many examples, one after another,
    and average their losses and gradients (``jaxcnn.microbatch.microbatched``): the whole
    batch's ``J`` and gradient up to float rounding, with a chunk's activations in memory
    instead of the batch's (on a CPU, also a working set that stays in cache:
    ``docs/performance.md#why-microbatch``).  The batch must be a multiple of it, or at most
    it (then it is one chunk).  A given ``key`` is split into one key per chunk, so stochastic
    layers draw differently than on the whole batch.

    ``precision``: ``"bfloat16"`` or ``"float16"`` runs the forward and the backward on 16-bit
    copies of the params and ``x`` -- activations, caches and deltas in 16 bits -- with the
    loss and its output residual in float32 and the gradients returned in the params' dtype
    (float16's residual scaled, its gradients unscaled: ``jaxcnn.precision``).  ``None`` or
    ``"float32"``: no casts.  Another name: ``ValueError``.

    ``x`` and ``targets`` must be arrays (``TypeError`` otherwise); an empty batch reaches the
    loss, which raises ``ValueError`` (a mean over no examples).
    """
    check_net_and_loss("value_and_grad", net, loss)
    eq_6_2 = _hand_written(net, loss, policy(precision, "value_and_grad: precision"))

    def whole(params, x, targets, key, train):
        value, grads, _ = eq_6_2(params, x, targets, key, train)
        return value, grads

    return microbatched(whole, microbatch, "value_and_grad",       # checks x and targets
                        labels_check(net, loss))


def _hand_written(net: Layer, loss: Loss, pol: Policy
                  ) -> Callable[..., tuple[Array, Params, Cache]]:
    """Eq. 6.2 under the policy ``pol``: ``(params, x, targets, key, train) -> (J, grads,
    cache)`` -- the forward on the cast params and input, the loss and its output residual on
    the float32 output, the backward of the (scaled, cast) residual, the gradients back in the
    params' dtype; the forward's cache for a state update (``jaxcnn.state``)."""
    def f(params, x, targets, key, train):
        p = pol.cast(params)
        y, cache = net.forward(p, pol.cast(x), key=key, train=train)
        y = pol.output(y)
        grads, _ = net.backward(p, cache, pol.delta(loss.delta(y, targets)))
        return loss.value(y, targets), pol.grads(grads, params), cache

    return f


def bridge(net: Layer, *, key=None, train: bool = True) -> Callable[[Params, Array], Array]:
    """``f(params, x) = net.apply(params, x)`` whose VJP is the hand-written backward (eq. 6.4).

    Use it to run the derivation inside any JAX program under ``jax.grad`` / ``jax.vjp``: the
    forward saves the layer caches, and the cotangent of ``f``'s output is the ``delta`` handed
    to ``net.backward``.  ``custom_vjp`` supports reverse mode only (``jax.jvp`` / ``jax.jacfwd``
    raise); ``key`` and ``train`` are fixed when the bridge is made, and checked then.
    """
    check_net("bridge", net)
    check_train("bridge", train)
    if key is not None:
        check_key("bridge", key)

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

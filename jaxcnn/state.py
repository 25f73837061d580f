"""State: what a network keeps besides its params and updates as it trains, not by gradients.

BatchNorm's running statistics are the one example: they are not differentiated and never reach
the optimizer.  Training does not need them -- the four functions of the ``Layer`` contract run
on the batch's statistics -- so a net without state keeps every signature as it was, and a net
with one trains exactly as a net without; the state is only *read* to evaluate (``train=False``)
and *written* after each training step::

    state        = init_state(net, input_shape)                 the tree of the layers' states
    y, cache     = net.forward(params, x, key=key)              training: batch statistics
    state        = update_state(net, state, cache)              from what the forward cached
    y_eval       = with_state(net, state).apply(params, x, train=False)

A network's state is the tree of its layers': a layer with ``Layer.state`` holds its own, any
other ``()``, and a combinator (``serial``, ``parallel``) the tuple of its sub-layers' -- the
same nesting as its params and its cache.  ``value_grad_and_state`` is ``value_and_grad`` that
also returns the updated state, for a training loop of one's own; ``fit`` does all of it.
"""
from __future__ import annotations

from typing import Callable

import jax

from jaxcnn.core import Array, Cache, Layer, Params, State, describe, map_leaves
from jaxcnn.losses import Loss, check_net, check_net_and_loss
from jaxcnn.microbatch import labels_check, microbatched
from jaxcnn.network import _hand_written
from jaxcnn.precision import Policy, policy

__all__ = ["has_state", "init_state", "update_state", "with_state", "value_grad_and_state"]


def has_state(net: Layer) -> bool:
    """Whether any layer of ``net`` keeps a state (``Layer.state``)."""
    check_net("has_state", net)
    return net.state is not None or any(has_state(sub) for sub in net.layers)


def init_state(net: Layer, input_shape) -> State:
    """The initial state of ``net`` for a per-example ``input_shape``: each stateful layer's
    ``state.init`` of its own input shape (found by tracing ``net.init``, no parameter drawn),
    ``()`` for the others, nested as the net is."""
    check_net("init_state", net)
    if not isinstance(input_shape, (tuple, list)):
        raise TypeError(f"init_state: input_shape must be a tuple, the per-example shape such "
                        f"as (28, 28, 1), got {describe(input_shape)}")
    shapes = {}

    def record(path, leaf):
        def init(key, shape):
            shapes[path] = shape
            return leaf.init(key, shape)

        return leaf._replace(init=init)

    probe = map_leaves(net, record)
    jax.eval_shape(lambda k: probe.init(k, tuple(input_shape))[0], jax.random.key(0))

    def build(layer: Layer, path: tuple[int, ...]):
        if layer.layers:
            return tuple(build(sub, (*path, i)) for i, sub in enumerate(layer.layers))
        return layer.state.init(shapes[path]) if layer.state is not None else ()

    return build(net, ())


def update_state(net: Layer, state: State, cache: Cache) -> State:
    """The state after a training forward whose ``cache`` is given: each stateful layer's
    ``state.update`` of its own state and cache; the others' ``()`` unchanged (``()`` stands for
    the whole state of a net that keeps none)."""
    check_net("update_state", net)
    if isinstance(state, tuple) and not state and not has_state(net):
        return state                    # (): the state of a net that keeps none, as elsewhere
    if net.layers:
        if not isinstance(state, tuple) or len(state) != len(net.layers):
            raise ValueError(f"{net.name}: expected a state of {len(net.layers)} entries, one per "
                             f"layer, got {_describe(state)} -- a state from another network?")
        if not isinstance(cache, tuple) or len(cache) != len(net.layers):
            raise ValueError(f"{net.name}: expected the cache of this network's training "
                             f"forward, {len(net.layers)} entries, one per layer, got "
                             f"{_describe(cache)} -- a cache from another network?")
        return tuple(update_state(sub, s, c) for sub, s, c in zip(net.layers, state, cache))
    return net.state.update(state, cache) if net.state is not None else state


def with_state(net: Layer, state: State) -> Layer:
    """``net`` whose stateful layers evaluate (``train=False``) with ``state``: each one's
    ``state.bind(state)``; rebuilt through the combinators (``Layer.build``).  Training mode is
    unchanged.  Built inside a jitted function from a traced ``state``, it costs nothing."""
    check_net("with_state", net)
    if not has_state(net):
        return net
    if isinstance(state, tuple) and not state:
        raise ValueError(f"{net.name}: this network keeps a state (such as BatchNorm's "
                         f"running statistics) to evaluate with, and none was given -- pass fit's "
                         f"FitResult.state, or jc.init_state(net, input_shape)")
    if net.layers:
        if not isinstance(state, tuple) or len(state) != len(net.layers):
            raise ValueError(f"{net.name}: expected a state of {len(net.layers)} entries, one per "
                             f"layer, got {_describe(state)} -- a state from another network?")
        return net.build(*(with_state(sub, s) for sub, s in zip(net.layers, state)))
    return net.state.bind(state) if net.state is not None else net


def _describe(state) -> str:
    return f"{len(state)} entries" if isinstance(state, tuple) else type(state).__name__


def value_grad_and_state(net: Layer, loss: Loss, *, microbatch: int | None = None,
                         precision: str | Policy | None = None
                         ) -> Callable[..., tuple[Array, Params, State]]:
    """``(params, state, x, targets, *, key=None) -> (J, grads, new_state)``: ``value_and_grad``
    (eq. 6.2, the hand-written backward, training mode) and the state updated from the same
    forward's cache (``update_state``).

    ``microbatch``: chunks of this many examples, one after another, as ``value_and_grad``: each
    chunk normalises with its own batch statistics (as each device does under
    ``jaxcnn.distributed``), and the new state is the mean of the chunks' updated states --
    updating with the chunks' mean statistics, since an update is affine in them.
    ``precision``: as ``value_and_grad``'s; the state stays in its own dtype (BatchNorm
    computes the statistics of a 16-bit input in float32).
    """
    check_net_and_loss("value_grad_and_state", net, loss)
    eq_6_2 = _hand_written(net, loss, policy(precision, "value_grad_and_state: precision"))
    return chunked_with_state(net, eq_6_2, microbatch, labels_check(net, loss),
                              "value_grad_and_state")


def chunked_with_state(net: Layer, value_grad_cache: Callable, microbatch: int | None,
                       check: Callable | None = None, name: str = "loss_grad_and_state"
                       ) -> Callable[..., tuple[Array, Params, State]]:
    """``(params, state, x, targets, *, key=None) -> (J, grads, state)`` in training mode from
    ``value_grad_cache(params, x, targets, key, train) -> (J, grads, cache)``: the state updated
    from the cache (``update_state``), on ``microbatch`` chunks averaged as ``microbatched``
    averages the gradients (``check``: its check of the whole batch; ``name`` in errors)."""
    def whole(params_and_state, x, targets, key, train):
        params, state = params_and_state
        value, grads, cache = value_grad_cache(params, x, targets, key, train)
        return value, (grads, update_state(net, state, cache))

    chunked = microbatched(whole, microbatch, "value_and_grad",
                           None if check is None else
                           lambda p_and_s, *rest: check(p_and_s[0], *rest))

    def f(params, state, x, targets, *, key=None, train=True):
        if train is not True:
            raise ValueError(f"{name}: the state is updated in training mode only, got "
                             f"train={train!r}; an evaluated net's gradients: "
                             f"value_and_grad(jc.with_state(net, state), loss)(..., train=False)")
        value, (grads, state) = chunked((params, state), x, targets, key=key, train=True)
        return value, grads, state

    return f

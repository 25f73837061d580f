"""The training step: the gradient (hand-written or ``jax.grad``), then an optax update.

A step is ``loss_and_grad`` -- forward, the loss's output residual, backward, no autodiff
(eq. 6.2) -- then ``optimizer.update`` and ``optax.apply_updates``, all under one ``jax.jit``.
Under a 16-bit ``precision`` (``jaxcnn.precision``) the gradient is computed on 16-bit copies
of the params and batch and returned in float32, so the update, the optimizer state and the
params stay float32.  Nothing here reads files, prints or loops over epochs: that is
``jaxcnn.train.fit``'s.
``jaxcnn.train`` re-exports what a loop of one's own needs (``train.make_step``, ...);
``fit_step``, ``step_keys`` and ``memoise`` are shared by ``fit`` and ``jaxcnn.distributed``.

Every random choice of a run is a function of ``(seed, epoch, step)``, one ``fold_in`` stream
per use of the seed::

    key       = jax.random.key(seed)
    params    = net.init(fold_in(key, 0), input_shape)              init_params
    order(e)  = permutation(fold_in(fold_in(key, 1), e), n_train)   epoch_order
    key(s)    = fold_in(fold_in(key, 2), s)                         fold_in(step_keys(key), s)
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import numpy as np
import optax

from jaxcnn import backend
from jaxcnn.core import Array, Layer, Params, State, describe
from jaxcnn.losses import Loss, check_net_and_loss
from jaxcnn.microbatch import labels_check, microbatched
from jaxcnn.network import value_and_grad
from jaxcnn.precision import Policy, autodiff, policy
from jaxcnn.state import chunked_with_state, has_state, value_grad_and_state

__all__ = [
    "GRADS", "OPTIMIZERS", "make_optimizer", "loss_and_grad", "train_step", "update_step",
    "make_step", "loss_grad_and_state", "state_step", "fit_step", "init_params", "epoch_order",
    "step_keys", "memoise",
]

GRADS = ("manual", "autodiff")
"""How a step gets its gradient: the hand-written backward, or ``jax.grad`` of the same forward."""

OPTIMIZERS: dict[str, Callable[[float], optax.GradientTransformation]] = {
    "sgd": optax.sgd,
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "adam": optax.adam,
}
"""``jaxcnn train --optimizer``: name -> ``fn(learning_rate)``."""

_INIT, _DATA, _STEP = 0, 1, 2          # fold_in tags: one independent stream per use of the seed


def memoise(builder: Callable) -> Callable:
    """Cache what ``builder`` makes for equal (hashable) positional arguments; unhashable ones
    build anew.

    For the builders of jitted functions (``fit_step``, ``distributed.fit_step``, the gradient
    check, the evaluator): repeated ``fit`` calls with the same net, loss and optimizer objects
    then reuse one set of compiled functions instead of tracing and compiling again.
    """
    cached = functools.lru_cache(maxsize=16)(builder)

    @functools.wraps(builder)
    def build(*args):
        try:
            hash(args)
        except TypeError:
            return builder(*args)
        return cached(*args)

    return build


def make_optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    """An optax optimizer by name: ``sgd``, ``momentum`` (SGD, momentum 0.9) or ``adam``.

    The same arguments give the same object, so that ``fit`` reuses its compiled steps.
    The rate must be positive and finite in float32, the precision it is applied in: 1e39 is
    a float64 but ``inf`` in float32, 1e-46 rounds to 0 (``ValueError`` naming the value).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
    if not isinstance(learning_rate, (int, float)) or isinstance(learning_rate, bool) \
            or not math.isfinite(learning_rate) or learning_rate <= 0:
        raise ValueError(f"the learning rate must be a positive number, got {learning_rate!r}")
    with np.errstate(over="ignore", under="ignore"):
        as_float32 = float(np.float32(learning_rate))
    if not (math.isfinite(as_float32) and as_float32 > 0):
        raise ValueError(f"the learning rate must be a positive number that is finite in "
                         f"float32 (at most {float(np.finfo(np.float32).max):.4g}), got "
                         f"{learning_rate!r}, which is {as_float32} in float32")
    return _optimizer(name, float(learning_rate))


@functools.lru_cache(maxsize=32)
def _optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    return OPTIMIZERS[name](learning_rate)


def loss_and_grad(net: Layer, loss: Loss, grad: str = "manual", microbatch: int | None = None,
                  precision: str | Policy | None = None) -> Callable[..., tuple[Array, Params]]:
    """``(params, x, targets, *, key=None, train=True) -> (J, grads)``.

    ``grad="manual"``: ``jaxcnn.value_and_grad``, the hand-written backward (eq. 6.2).
    ``grad="autodiff"``: ``jax.value_and_grad`` of ``loss.value(net.apply(...))`` -- the same
    forward (the same values; ``Conv2D.forward`` may add its bias to the Toeplitz product's
    rows where ``apply`` adds it after the reshape) differentiated by JAX, for comparison.
    ``microbatch``: either one on chunks of this many examples, averaged
    (``jaxcnn.microbatch.microbatched``).  ``precision``: either one under the policy of
    ``jaxcnn.precision`` (``"bfloat16"``, ``"float16"``; ``None``: no casts).
    """
    check_net_and_loss("loss_and_grad", net, loss)
    pol = policy(precision, "loss_and_grad: precision")
    if grad == "manual":
        return value_and_grad(net, loss, microbatch=microbatch, precision=pol)
    if grad != "autodiff":
        raise ValueError(f"grad must be one of {', '.join(GRADS)}, got {grad!r}")

    def f(params, x, targets, key, train):
        vg = autodiff(pol, loss.value,
                      lambda p, xc: (net.apply(p, xc, key=key, train=train), ()))
        value, grads, _ = vg(params, x, targets)
        return value, grads

    return microbatched(f, microbatch, "value_and_grad", labels_check(net, loss))


def loss_grad_and_state(net: Layer, loss: Loss, grad: str = "manual",
                        microbatch: int | None = None, precision: str | Policy | None = None
                        ) -> Callable[..., tuple[Array, Params, State]]:
    """``(params, state, x, targets, *, key=None) -> (J, grads, state)`` in training mode:
    ``loss_and_grad`` and the net's state (``jaxcnn.state``) updated from the same forward.

    ``grad="manual"``: ``jaxcnn.state.value_grad_and_state``.  ``grad="autodiff"``: for a net
    with state, ``jax.grad`` of the loss through ``net.forward`` (whose cache holds the batch
    statistics the update reads); for one without, ``loss_and_grad``'s own, the state ``()``
    passed through.  ``microbatch``: chunks, their gradients and updated states averaged.
    ``precision``: as ``loss_and_grad``'s; the state keeps its own dtype.
    """
    if grad not in GRADS:
        raise ValueError(f"grad must be one of {', '.join(GRADS)}, got {grad!r}")
    check_net_and_loss("loss_grad_and_state", net, loss)
    pol = policy(precision, "loss_grad_and_state: precision")
    if grad == "manual":
        return value_grad_and_state(net, loss, microbatch=microbatch, precision=pol)
    if not has_state(net):
        vg = loss_and_grad(net, loss, grad, microbatch, pol)

        def stateless(params, state, x, targets, *, key=None):
            return (*vg(params, x, targets, key=key, train=True), state)

        return stateless

    def value_grad_cache(params, x, targets, key, train):
        return autodiff(pol, loss.value, lambda p, xc: net.forward(p, xc, key=key, train=train))(
            params, x, targets)

    return chunked_with_state(net, value_grad_cache, microbatch, labels_check(net, loss),
                              "loss_grad_and_state")


def check_optimizer(where: str, optimizer) -> None:
    """``optimizer`` is an optax ``GradientTransformation`` (``init`` and ``update``): a
    ``TypeError`` naming ``where`` when the step is built, not an ``AttributeError`` in it."""
    if not all(callable(getattr(optimizer, f, None)) for f in ("init", "update")):
        raise TypeError(f"{where}: optimizer must be an optax GradientTransformation (init and "
                        f"update), e.g. optax.adam(1e-3) (called), got {describe(optimizer)}")


def state_step(vgs: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """``(params, opt_state, state, x, targets, key) -> (params, opt_state, state, J)`` for any
    ``vgs(params, state, x, targets, *, key) -> (J, grads, state)`` (``loss_grad_and_state``,
    or its data-parallel twin): the gradients and the new state, then the optax update."""
    check_optimizer("state_step", optimizer)

    def step(params, opt_state, state, x, targets, key):
        value, grads, state = vgs(params, state, x, targets, key=key)
        params, opt_state = _apply(optimizer, grads, opt_state, params)
        return params, opt_state, state, value

    return step


def _apply(optimizer: optax.GradientTransformation, grads, opt_state, params):
    """``optimizer.update`` and ``optax.apply_updates``.  optax promotes implicitly (adam's
    ``b1 ** count`` is float ** int32): traced under standard promotion, so that it also runs
    where jaxcnn is tested under strict promotion."""
    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state


def train_step(net: Layer, loss: Loss, optimizer: optax.GradientTransformation,
               grad: str = "manual", microbatch: int | None = None,
               precision: str | Policy | None = None) -> Callable:
    """The un-jitted update ``(params, opt_state, x, targets, key) -> (params, opt_state, J)``;
    under a 16-bit ``precision`` the optimizer still updates the float32 params.  A net with a
    state (BatchNorm) is refused: this step has none to update; ``state_step`` has."""
    return _train_step("train_step", net, loss, optimizer, grad, microbatch, precision)


def _train_step(where: str, net, loss, optimizer, grad, microbatch, precision) -> Callable:
    """``train_step``, its errors naming ``where`` (``make_step`` builds one too)."""
    if isinstance(net, Layer) and has_state(net):
        raise ValueError(f"{where}: {net.name} keeps a state (such as BatchNorm's running "
                         f"statistics), which this step would leave at its initial value; use "
                         f"state_step(loss_grad_and_state(net, loss, ...), optimizer), or fit")
    return _update_step(where, loss_and_grad(net, loss, grad, microbatch, precision), optimizer)


def update_step(vg: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """``train_step`` for any ``vg(params, x, targets, *, key, train) -> (J, grads)``: the
    gradients, then the optax update.  (``jaxcnn.distributed`` passes its sharded ``vg``.)"""
    return _update_step("update_step", vg, optimizer)


def _update_step(where: str, vg: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """``update_step``, its errors naming ``where``."""
    check_optimizer(where, optimizer)

    def step(params, opt_state, x, targets, key):
        value, grads = vg(params, x, targets, key=key, train=True)
        params, opt_state = _apply(optimizer, grads, opt_state, params)
        return params, opt_state, value

    return step


def make_step(net: Layer, loss: Loss, optimizer: optax.GradientTransformation,
              grad: str = "manual", microbatch: int | None = None,
              precision: str | Policy | None = None) -> Callable:
    """``jax.jit`` of ``train_step``: one mini-batch update, compiled once per batch shape.
    A plain ``jax.jit``, so that it nests in a transformation of one's own; ``fit``'s step
    compiles with ``backend.compiler_options()``, which only a top-level jit takes.

    >>> step = make_step(net, jc.softmax_cross_entropy, optax.adam(1e-3))
    >>> params, opt_state, J = step(params, opt_state, x, labels, key)
    """
    return jax.jit(_train_step("make_step", net, loss, optimizer, grad, microbatch, precision))


@memoise
def fit_step(net: Layer, loss: Loss, optimizer: optax.GradientTransformation,
             grad: str, microbatch: int | None = None,
             precision: str | Policy | None = None) -> Callable:
    """``fit``'s step on one device, jitted and cached per arguments: ``(params, opt_state,
    state, x_all, y_all, index, step_key, step) -> (params, opt_state, state, J)``, ``state``
    the net's (``jaxcnn.state``; ``()`` for a net without).

    The batch ``x_all[index]`` is gathered on the device (the data set is an argument, never a
    compiled-in constant) and the forward's key is ``fold_in(step_key, step)``, ``step_key``
    being ``step_keys(key)``.  ``precision``: ``loss_grad_and_state``'s.
    ``distributed.fit_step`` is the same on a mesh.
    """
    update = state_step(loss_grad_and_state(net, loss, grad, microbatch, precision), optimizer)

    def step_fn(params, opt_state, state, x_all, y_all, index, step_key, step):
        return update(params, opt_state, state, x_all[index], y_all[index],
                      jax.random.fold_in(step_key, step))

    return backend.jit(step_fn)


def init_params(net: Layer, input_shape, seed: int = 0) -> tuple[Params, tuple[int, ...]]:
    """``net.init`` with the key ``fit`` reserves for initialisation: ``fold_in(key(seed), 0)``."""
    return net.init(jax.random.fold_in(jax.random.key(seed), _INIT), tuple(input_shape))


def epoch_order(seed_key: Array, epoch: int, n: int) -> np.ndarray:
    """Epoch ``epoch``'s data order: a permutation of ``range(n)`` from ``(key, epoch)`` only."""
    k = jax.random.fold_in(jax.random.fold_in(seed_key, _DATA), epoch)
    return np.asarray(jax.random.permutation(k, n)).astype(np.int32)


def step_keys(seed_key: Array) -> Array:
    """The stream of the forward's keys: step ``s`` draws from ``fold_in(step_keys(key), s)``,
    independent of the init and data-order streams of the same seed."""
    return jax.random.fold_in(seed_key, _STEP)

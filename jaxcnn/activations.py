"""Element-wise activations and softmax, each with its hand-written backward.

An activation ``a = f(z)`` passes back ``delta_z = delta_a * f'(z)`` (eq. 2.2).  Sigmoid and tanh
take ``f'`` from the cached *output* (eqs. 2.1, 2.3), so the backward recomputes no exponential;
ReLU takes it from the sign of its output (eq. 2.4).  Inputs of any rank, batch axis first
(softmax's: at least one more, the axis it normalises); an empty batch gives an empty output.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxcnn.core import (Array, Layer, Static, check_array, check_cache, check_delta,
                         check_input_shape, check_no_params, config, made_by, numpy_as_jax)


class ActivationCache(NamedTuple):
    """What an activation's forward saves: its output ``a``, and which activation made it
    (``core.made_by``: another's ``a`` would take the wrong slope)."""

    a: Array
    layer: Static | None = None


def _activation(name: str, f: Callable[[Array], Array],
                slope: Callable[[Array, Array], Array], rank: int = 1) -> Layer:
    """A parameter-free element-wise layer; ``slope(a, delta)`` is its backward given ``a = f(z)``.
    Inputs of at least ``rank`` axes, the batch axis included."""
    what = "(N, ...)" if rank == 1 else "(N, ..., classes)"

    def init(key, input_shape):
        shape = check_input_shape(name, input_shape, len(input_shape) if isinstance(
            input_shape, (tuple, list)) else -1, "")
        if len(shape) < rank - 1:
            raise ValueError(f"{name}: expected a per-example input shape of rank >= "
                             f"{rank - 1}, (..., classes) (batch axis excluded), got {shape}")
        return (), shape

    def apply(params, x, *, key=None, train=True):
        check_no_params(name, params)
        check_array(name, "the input", x, what)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{name}: expected a floating-point array, got {x.dtype}")
        if x.ndim < rank:
            raise ValueError(f"{name}: expected an input of rank >= {rank} {what}, the batch "
                             f"axis first, got shape {tuple(x.shape)}")
        return f(x)

    settings = config(kind="elementwise")
    tag = made_by(name, settings)

    def forward(params, x, *, key=None, train=True):
        a = apply(params, x)
        return a, ActivationCache(a, tag)

    def backward(params, cache, delta):
        check_no_params(name, params)
        check_cache(name, cache, ActivationCache, tag)
        check_delta(name, delta, cache.a.shape, cache.a.dtype)
        return (), slope(cache.a, delta)

    return numpy_as_jax(Layer(init, forward, backward, apply, name, config=settings))


def Sigmoid() -> Layer:
    """``a = 1 / (1 + exp(-z))``; backward ``delta * a (1 - a)`` from the cached output (eq. 2.1)."""
    return _activation("Sigmoid", jax.nn.sigmoid, lambda a, delta: delta * a * (1 - a))


def Tanh() -> Layer:
    """``a = tanh(z)``; backward ``delta * (1 - a^2)`` from the cached output (eq. 2.3)."""
    return _activation("Tanh", jnp.tanh, lambda a, delta: delta * (1 - a * a))


def ReLU() -> Layer:
    """``a = max(z, 0)``; backward ``delta * 1[a > 0]`` (eq. 2.4).

    Convention at the kink: ReLU'(0) = 0, as ``jax.grad`` of ``jax.nn.relu``.
    """
    return _activation("ReLU", jax.nn.relu, lambda a, delta: jnp.where(a > 0, delta, 0))


def Softmax() -> Layer:
    """``a = softmax(z)`` over the last axis (stable: the maximum is subtracted first).

    Backward (eq. 2.7): ``dz = a * (delta - sum_j delta_j a_j)``.  For classification prefer
    ``softmax_cross_entropy`` on logits, whose output residual needs no softmax layer (eq. 2.6).
    """
    return _activation("Softmax", lambda z: jax.nn.softmax(z, axis=-1),
                       lambda a, delta: a * (delta - jnp.sum(delta * a, axis=-1, keepdims=True)),
                       rank=2)

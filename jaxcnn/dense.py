"""The fully connected layer of the source (eqs. 1.1-1.6) and ``Flatten`` (eq. 2.8).

Batch form: ``a (N, in)``, ``W (in, out)``, ``z = a W + b`` -- the source's ``z = W a + b`` with
every example a row, so its ``dJ/dW_ij = a_j delta_i`` becomes ``dW = a^T delta`` summed over
the batch.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxcnn.core import (Array, Layer, Static, apply_from_forward, check_array, check_cache,
                         check_delta, check_input, check_input_shape, check_no_params, check_param,
                         check_param_dtype, check_param_keys, check_precision, config, flag,
                         numpy_as_jax, positive_int, split_key)


class DenseCache(NamedTuple):
    """What ``Dense.forward`` saves: its input ``a``, for the weight gradient (eq. 1.4)."""

    a: Array


def Dense(features: int, use_bias: bool = True, *,
          w_init=jax.nn.initializers.lecun_normal(), b_init=jax.nn.initializers.zeros,
          param_dtype=jnp.float32, precision=None) -> Layer:
    """A fully connected layer ``z = a W + b`` (eq. 1.1) on inputs ``(N, in)``.

    Params ``{"w": (in, features), "b": (features,)}``.  Backward, with ``delta (N, features)``:
    ``dW = a^T delta`` (eq. 1.4), ``db = sum_n delta_n`` (eq. 1.5), ``dx = delta W^T`` (eq. 1.6),
    each contracted without a transposed copy of ``a`` or ``W``.
    Images go through ``Flatten()`` first.
    """
    name = "Dense"
    features = positive_int(name, "features", features)
    use_bias = flag(name, "use_bias", use_bias)
    precision = check_precision(name, precision)
    param_dtype = check_param_dtype(name, param_dtype)

    def init(key, input_shape):
        (n_in,) = check_input_shape(name, input_shape, 1,
                                    "(features,); put Flatten() before Dense on images")
        k_w, k_b = split_key(name, key, 2)
        params = {"w": w_init(k_w, (n_in, features), param_dtype)}
        if use_bias:
            params["b"] = b_init(k_b, (features,), param_dtype)
        return params, (features,)

    def checked(params, a):
        check_input(name, a, 2, "(N, features); put Flatten() before Dense on images")
        check_param_keys(name, params, ("w", "b") if use_bias else ("w",),
                         f"use_bias={use_bias}")
        if getattr(params["w"], "ndim", 0) == 2 and params["w"].shape[0] != a.shape[1]:
            raise ValueError(f"{name}: input has {a.shape[1]} features but the weights expect "
                             f"{params['w'].shape[0]} (params['w'].shape[0])")
        w = check_param(name, params, "w", (a.shape[1], features), a.dtype)
        b = check_param(name, params, "b", (features,), a.dtype) if use_bias else None
        return w, b

    def forward(params, a, *, key=None, train=True):
        w, b = checked(params, a)
        z = jnp.dot(a, w, precision=precision)
        if use_bias:
            z = z + b[None, :]                                                    # eq. 1.1
        return z, DenseCache(a)

    def backward(params, cache, delta):
        check_cache(name, cache, DenseCache)
        a = cache.a
        w, _ = checked(params, a)
        check_delta(name, delta, (a.shape[0], features), a.dtype)
        # eq. 1.4: the source's dJ/dW_ij = delta_i a_j, summed over n, is (out, in): transposed
        # to W's (in, out).  Written so, both contractions are the very dot_general instructions
        # jax.grad's transpose rule emits (off the CPU, XLA then autotunes and runs them alike).
        grads = {"w": jnp.einsum("ni,nj->ij", delta, a, precision=precision).T}  # eq. 1.4
        if use_bias:
            grads["b"] = jnp.sum(delta, axis=0)                                   # eq. 1.5
        return grads, jnp.einsum("ni,ji->nj", delta, w, precision=precision)     # eq. 1.6

    return numpy_as_jax(Layer(init, forward, backward, apply_from_forward(forward), name,
                              config=config(kind="dense", features=features, use_bias=use_bias)))


class FlattenCache(NamedTuple):
    """What ``Flatten.forward`` saves: the input's shape and dtype (static)."""

    input: Static


def Flatten() -> Layer:
    """``(N, d1, d2, ...) -> (N, d1 * d2 * ...)`` in row-major order; backward reshapes (eq. 2.8)."""
    name = "Flatten"

    def init(key, input_shape):
        shape = check_input_shape(name, input_shape, len(input_shape) if isinstance(
            input_shape, (tuple, list)) else -1, "")
        if not shape:
            raise ValueError(f"{name}: expected a per-example input shape of rank >= 1 "
                             f"(batch axis excluded), got ()")
        return (), (math.prod(shape),)

    def forward(params, x, *, key=None, train=True):
        check_no_params(name, params)
        check_array(name, "the input", x, "(N, d1, d2, ...)")
        if x.ndim < 2:
            raise ValueError(f"{name}: expected an input with a batch axis and at least one "
                             f"more, got shape {tuple(x.shape)}")
        # the row length spelled out: reshape(N, -1) cannot infer it when N = 0
        y = x.reshape(x.shape[0], math.prod(x.shape[1:]))
        return y, FlattenCache(Static(jax.ShapeDtypeStruct(x.shape, x.dtype)))

    def backward(params, cache, delta):
        check_no_params(name, params)
        check_cache(name, cache, FlattenCache)
        shape = cache.input.value.shape
        check_delta(name, delta, (shape[0], math.prod(shape[1:])), cache.input.value.dtype)
        return (), delta.reshape(shape)

    return numpy_as_jax(Layer(init, forward, backward, apply_from_forward(forward), name,
                              config=config(kind="flatten")))

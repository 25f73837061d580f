"""Dropout (Srivastava et al. 2014), inverted: eqs. 7.15-7.16, with its hand-written backward.

Training zeroes each entry with probability ``rate`` and divides the survivors by ``1 - rate``,
so that every entry keeps its expectation and evaluation is the identity.  The keep-mask is
drawn from the layer's ``key`` in the forward and cached; the backward reuses it and never
draws again.  Inputs of any rank, batch axis first; an empty batch gives an empty output.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxcnn.core import (Array, Layer, Static, apply_from_forward, check_array, check_cache,
                         check_delta, check_input_shape, check_key, check_no_params, check_train,
                         config, numpy_as_jax, static_number)


class DropoutCache(NamedTuple):
    """What ``Dropout.forward`` saves: the input's shape and dtype (static) and the keep-mask
    (``True`` where an entry was kept, the input's shape), or ``None`` where nothing was
    dropped (evaluation, ``rate = 0``)."""

    input: Static
    mask: Array | None = None


def Dropout(rate: float) -> Layer:
    """Inverted dropout: each entry dropped with probability ``rate``.

    Training (``train=True``, needs ``key`` when ``rate > 0``; eq. 7.15): a keep-mask
    ``m = jax.random.bernoulli(key, 1 - rate, x.shape)`` and ``y = x m / (1 - rate)``, so that
    ``E[y] = x``.  Backward (eq. 7.16): ``dx = delta m / (1 - rate)``, the mask read from the
    cache (``DropoutCache``) -- the backward never draws again.  Evaluation
    (``train=False``): the identity, ``dx = delta``.  ``rate = 0``: the identity in both modes,
    no key needed.  ``rate`` must be in ``[0, 1)``.
    """
    name = "Dropout"
    rate = static_number(name, "rate", rate, "a number in [0, 1)")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{name}: rate must be in [0, 1), the probability of dropping an "
                         f"entry, got {rate}")
    keep = 1.0 - rate

    def init(key, input_shape):
        rank = len(input_shape) if isinstance(input_shape, (tuple, list)) else 1
        return (), check_input_shape(name, input_shape, rank, "")

    def forward(params, x, *, key=None, train=True):
        check_no_params(name, params)
        check_array(name, "the input", x, "(N, ...)")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{name}: expected a floating-point input, got dtype {x.dtype}")
        if x.ndim < 1:
            raise ValueError(f"{name}: expected an input of rank >= 1 (N, ...), the batch "
                             f"axis first, got shape {tuple(x.shape)}")
        static = Static(jax.ShapeDtypeStruct(x.shape, x.dtype))
        if rate == 0.0 or not check_train(name, train):
            return x, DropoutCache(static)                          # the identity (eq. 7.16)
        if key is None:
            raise ValueError(f"{name}: training mode with rate {rate} draws a keep-mask and "
                             f"needs a key: forward(params, x, key=jax.random.key(...)); pass "
                             f"train=False to evaluate (the identity)")
        if 1.0 / keep > float(jnp.finfo(x.dtype).max):
            raise ValueError(f"{name}: rate {rate} scales the kept entries by 1 / (1 - rate) = "
                             f"{1.0 / keep:.6g}, more than {x.dtype}'s largest value "
                             f"{float(jnp.finfo(x.dtype).max):.6g}; use a lower rate or a wider "
                             f"dtype")
        mask = jax.random.bernoulli(check_key(name, key), keep, x.shape)          # eq. 7.15
        return x * mask.astype(x.dtype) / keep, DropoutCache(static, mask)

    def backward(params, cache, delta):
        check_no_params(name, params)
        check_cache(name, cache, DropoutCache)
        check_delta(name, delta, cache.input.value.shape, cache.input.value.dtype)
        if cache.mask is None:
            return (), delta                                                         # eq. 7.16
        return (), delta * cache.mask.astype(delta.dtype) / keep                     # eq. 7.16

    return numpy_as_jax(Layer(init, forward, backward, apply_from_forward(forward), name,
                              config=config(kind="elementwise", rate=rate)))

"""Mixed precision: 16-bit activations and deltas, float32 parameters, optimizer state and loss.

A ``Policy`` names the dtype a training step *computes* in.  The parameters stay a float32
master copy -- the optimizer, its state and BatchNorm's running statistics never see anything
else -- and only the step's working copies are narrowed::

    p16, x16      = cast(params), cast(x)                    the master copy stays float32
    y16, cache16  = net.forward(p16, x16)                    activations and caches: 16 bits
    y             = float32(y16)
    J             = loss.value(y, targets)                   eq. 2.6 / 2.5 in float32
    delta16       = cast(S * loss.delta(y, targets))         the output residual, scaled by S
    grads16, _    = net.backward(p16, cache16, delta16)      every delta in 16 bits
    grads         = float32(grads16) / S                     what the optimizer is given

``grad="autodiff"`` makes the same casts around ``jax.value_and_grad`` of ``S * J``
(``autodiff``): the transpose of a cast is the cast back, so ``jax.grad`` too runs its
backward in 16 bits and returns float32.

``S`` is a static loss scale.  float16 keeps 5 exponent bits: its smallest normal number is
6.1e-5, and a delta of softmax cross-entropy carries ``1/N`` and shrinks further with each
layer it is handed down, so unscaled deltas and kernel gradients underflow to subnormals and
zero.  Multiplying the output residual by ``S`` (default ``2**10`` for float16) lifts them into
range, and dividing the float32 gradients by it undoes it exactly (a power of two).  A scale
too large overflows to ``inf`` instead: the run then stops (``fit``'s ``NonFiniteLossError``
or ``NonFiniteStateError``, naming the scale), and a smaller ``Policy("float16",
loss_scale=...)`` is the remedy.
bfloat16 keeps float32's 8 exponent bits and needs no scale (``S = 1``).

``"float32"`` (and ``None``) is no policy: no casts at all, every array in the params' own
dtype -- the step bitwise as without this module (float64 params stay float64).
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxcnn.core import Array, Params, static_number

__all__ = ["PRECISIONS", "LOSS_SCALES", "Policy", "policy", "autodiff"]

PRECISIONS = ("float32", "bfloat16", "float16")
"""The dtypes a step can compute in (``precision=``, ``jaxcnn train --precision``)."""

LOSS_SCALES = {"float32": 1.0, "bfloat16": 1.0, "float16": 2.0 ** 10}
"""The default static loss scale ``S`` per precision (see the module docstring)."""


class _Fields(NamedTuple):
    compute: str = "float32"
    loss_scale: float | None = None


class Policy(_Fields):
    """What a step computes in: ``compute``, one of ``PRECISIONS``, and the static loss scale
    ``loss_scale`` (``S``) that the output residual is multiplied by before the backward and
    the float32 gradients divided by after it; ``None`` (the default) is filled in with
    ``LOSS_SCALES[compute]``, so ``Policy("float16")`` is ``Policy("float16", 1024.0)``, equal
    and with one hash.  Hashable, so compiled steps are cached per policy.  ``policy(...)``
    makes a checked one."""

    __slots__ = ()

    def __new__(cls, compute: str = "float32", loss_scale: float | None = None):
        if loss_scale is None:
            loss_scale = LOSS_SCALES.get(compute, 1.0) if isinstance(compute, str) else 1.0
        return super().__new__(cls, compute, loss_scale)

    @property
    def active(self) -> bool:
        """Whether the step casts at all (``compute`` is a 16-bit dtype)."""
        return self.compute != "float32"

    def cast(self, tree: Any) -> Any:
        """The floating arrays of ``tree`` (params, a batch) in the compute dtype; other
        leaves (integer labels) unchanged.  The identity for float32."""
        if not self.active:
            return tree
        return jax.tree.map(lambda a: a.astype(self.compute) if _floating(a) else a, tree)

    def output(self, y: Array) -> Array:
        """The net's output for the loss: float32 (the loss value and its output residual are
        computed there).  The identity for float32."""
        return y.astype(jnp.float32) if self.active else y

    def delta(self, delta: Array) -> Array:
        """The loss's float32 output residual, times ``S``, in the compute dtype: the
        ``delta`` handed to ``net.backward``."""
        if not self.active:
            return delta
        return _scaled(delta, self.loss_scale).astype(self.compute)

    def grads(self, grads: Params, params: Params) -> Params:
        """The 16-bit gradients back in the dtype of the master ``params`` (float32), divided
        by ``S``: what the optimizer is given."""
        if not self.active:
            return grads
        return jax.tree.map(lambda g, p: _scaled(g.astype(p.dtype), 1 / self.loss_scale),
                            grads, params)


def _floating(a) -> bool:
    return hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating)


def _scaled(a: Array, factor: float) -> Array:
    """``a * factor`` in ``a``'s dtype; ``a`` itself for a factor of 1 (nothing traced)."""
    return a if factor == 1 else a * jnp.asarray(factor, a.dtype)


def policy(precision: str | Policy | None = None, where: str = "precision") -> Policy:
    """The checked ``Policy`` for ``precision``: ``None`` or ``"float32"`` (no casts),
    ``"bfloat16"``, ``"float16"`` (loss scale ``LOSS_SCALES``), or a ``Policy`` with a loss
    scale of one's own.  ``ValueError`` naming ``where`` and the choices otherwise."""
    if precision is None:
        return Policy()
    if isinstance(precision, str):
        if precision not in PRECISIONS:
            raise ValueError(f"{where} must be one of {', '.join(PRECISIONS)}, got "
                             f"{precision!r}")
        return Policy(precision, LOSS_SCALES[precision])
    if not isinstance(precision, Policy):
        raise TypeError(f"{where} must be one of {', '.join(PRECISIONS)} or a "
                        f"jaxcnn.precision.Policy, got {type(precision).__name__}")
    policy(precision.compute, where)
    scale = static_number(where, "the loss scale", precision.loss_scale,
                          "a positive finite number", built="the step")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{where}: the loss scale must be a positive finite number (a power "
                         f"of two divides out exactly), got {scale!r}")
    if precision.compute == "float32" and scale != 1:
        raise ValueError(f"{where}: a float32 policy casts nothing and scales nothing, so its "
                         f"loss scale must be 1, got {scale!r}")
    info = jnp.finfo(precision.compute)
    if not float(info.tiny) <= scale <= float(info.max):
        raise ValueError(f"{where}: the loss scale multiplies the output residual in "
                         f"{precision.compute}, so it must be a normal {precision.compute} "
                         f"number, in [{float(info.tiny):g}, {float(info.max):g}], got {scale!r}")
    return Policy(precision.compute, float(scale))


def autodiff(pol: Policy, objective: Callable, run: Callable) -> Callable:
    """``(params, x, targets) -> (J, grads, aux)``: ``jax.value_and_grad`` under the policy.

    ``run(params, x) -> (y, aux)`` is the net's forward on the cast params and input (``aux``
    e.g. its cache); ``objective(y, targets) -> J`` the loss of the float32 output (through a
    device mean, under ``shard_map``).  The differentiated function is ``S * J``: its
    cotangent reaches ``y16`` as the scaled residual, and the gradients come back through the
    casts in the params' dtype, divided by ``S``.
    """
    def scaled(params, x, targets):
        y, aux = run(pol.cast(params), pol.cast(x))
        value = objective(pol.output(y), targets)
        return _scaled(value, pol.loss_scale if pol.active else 1.0), (value, aux)

    def f(params, x, targets):
        (_, (value, aux)), grads = jax.value_and_grad(scaled, has_aux=True)(params, x, targets)
        return value, pol.grads(grads, params), aux

    return f

"""Each pass of a convolution in the form its plan names (``jaxcnn.lowering.plan``).

``forward``, ``kernel_grad`` and ``input_residual`` look the form up in one table per pass and
call it, once per group where the plan splits a grouped convolution.  ``evaluate`` is
``Conv2D.apply``: the forward in the form fastest to evaluate, differentiated through the form
fastest to differentiate.  Shapes as in ``jaxcnn.reference.conv``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from jaxcnn import _geometry as geo
from jaxcnn.core import Array, wide
from jaxcnn.lowering import pairs, phases, pointwise, toeplitz, winograd, xla
from jaxcnn.lowering.plan import ConvPlan, bias_in_product
from jaxcnn.reference import conv as ref

# form -> f(a, b, g, groups, tile, precision); a, b = (x, w), (x, delta), (delta, w) by pass
FORWARD = {
    "reference": lambda x, w, g, groups, tile, p: ref.forward(x, w, None, g, groups, p),
    "lax": lambda x, w, g, groups, tile, p: xla.forward(x, w, g, groups, p),
    "toeplitz": lambda x, w, g, groups, tile, p: toeplitz.forward(x, w, g, precision=p,
                                                                   tile=tile),
    "winograd": lambda x, w, g, groups, tile, p: winograd.forward(x, w, g, precision=p),
    "pairs": lambda x, w, g, groups, tile, p: pairs.forward(x, w, g, p),
}
KERNEL_GRAD = {
    "reference": lambda x, d, g, groups, tile, p: ref.backward_kernel(x, d, g, groups, p),
    "lax": lambda x, d, g, groups, tile, p: xla.kernel_grad(x, d, g, groups, p),
    "toeplitz": lambda x, d, g, groups, tile, p: toeplitz.kernel_grad(x, d, g, precision=p,
                                                                      tile=tile),
    "winograd": lambda x, d, g, groups, tile, p: winograd.kernel_grad(x, d, g, precision=p),
    "pointwise": lambda x, d, g, groups, tile, p: pointwise.kernel_grad(x, d, g, p),
}
INPUT_RESIDUAL = {
    "reference": lambda d, w, g, groups, tile, p: ref.backward_input(d, w, g, groups, p),
    "lax": lambda d, w, g, groups, tile, p: xla.input_residual(d, w, g, groups, p),
    "toeplitz": lambda d, w, g, groups, tile, p: toeplitz.input_residual(d, w, g, precision=p,
                                                                         tile=tile),
    "phases": lambda d, w, g, groups, tile, p: phases.input_residual(d, w, g, p),
    "pairs": lambda d, w, g, groups, tile, p: pairs.input_residual(d, w, g, p),
    "winograd": lambda d, w, g, groups, tile, p: winograd.input_residual(d, w, g, precision=p),
}


def _planned(table: dict, form: str, a: Array, b: Array, g: geo.Window, groups: int,
             plan: ConvPlan, precision) -> Array:
    """``table[form]`` on ``(a, b)``; with ``plan.split``, on each group's slice of the last
    axis of both as an ungrouped convolution, concatenated back."""
    if not plan.split:
        return table[form](a, b, g, groups, plan.tile, precision)
    parts = zip(jnp.split(a, groups, axis=-1), jnp.split(b, groups, axis=-1))
    return jnp.concatenate([table[form](a, b, g, 1, plan.tile, precision) for a, b in parts],
                           axis=-1)


def forward(x: Array, w: Array, b: Array | None, g: geo.Window, groups: int, plan: ConvPlan,
            precision=None, bias: str = "after") -> Array:
    """Eq. 4.2 with its bias, in ``plan.forward``'s form.  Where that is one Toeplitz product
    (ungrouped, or not split), ``bias`` says where the bias goes: ``"rows"``, added to the
    product in its own 2-D layout (``Conv2D.forward``: the activation after it then runs along
    the product's long rows); ``"inside"`` the product, as the "+1" unit (evaluated ``apply``,
    where ``bias_in_product``).  Otherwise, and with ``"after"``, to the ``(N, H_out, W_out, F)``
    output (differentiated ``apply``: autodiff transposes that add fastest)
    (``docs/performance.md#why-bias-rows``)."""
    if b is not None and bias != "after" and plan.forward == "toeplitz" and not plan.split:
        return toeplitz.forward(x, w, g, precision=precision, tile=plan.tile, bias=b,
                                bias_inside=bias == "inside")
    y = _planned(FORWARD, plan.forward, x, w, g, groups, plan, precision)
    return y if b is None else y + b.reshape(1, 1, 1, -1)


def kernel_grad(x: Array, delta: Array, g: geo.Window, groups: int, plan: ConvPlan,
                precision=None) -> Array:
    """Eq. 4.4 in ``plan.kernel``'s form: ``x``, ``delta`` -> ``dw (kh, kw, C_g, F)``."""
    return _planned(KERNEL_GRAD, plan.kernel, x, delta, g, groups, plan, precision)


NARROW_FEATURES = 8
"""Fewer features than this (one AVX vector of float32) make the bias gradient's rows first."""


def bias_grad(delta: Array) -> Array:
    """Eq. 4.3, ``db_o = sum_{n,i,j} delta[n,i,j,o]``, ``(N, H_out, W_out, F)`` -> ``(F,)``: on
    the CPU the rows ``(W_out F)`` summed first, then the ``W_out`` columns -- the same sum in
    another order, for XLA's CPU reduces a last axis of a few features slowly
    (``docs/performance.md#why-bias-gradient``).  Elsewhere the reference's one sum."""
    n, h, w, f = delta.shape
    if jax.default_backend() != "cpu" or f >= NARROW_FEATURES:
        return ref.backward_bias(delta)
    rows = jnp.sum(delta.reshape(n * h, w * f), axis=0, dtype=wide(delta.dtype))
    return jnp.sum(rows.reshape(w, f), axis=0).astype(delta.dtype)


def input_residual(delta: Array, w: Array, g: geo.Window, groups: int, plan: ConvPlan,
                   precision=None) -> Array:
    """Eq. 4.5 in ``plan.input``'s form: ``delta``, ``w`` -> ``dx (N, H, W, C_in)``."""
    return _planned(INPUT_RESIDUAL, plan.input, delta, w, g, groups, plan, precision)


def evaluate(x: Array, w: Array, b: Array | None, g: geo.Window, groups: int, plan: ConvPlan,
             precision=None) -> Array:
    """``Conv2D.apply``: eq. 4.2 with its bias, evaluated in ``plan.inference``'s form (the bias
    inside the product where ``bias_in_product`` allows) and differentiated through
    ``plan.forward``'s (the bias after).  Where the two differ, a ``jax.custom_jvp`` joins them
    whose rule is ``jax.jvp`` of the second: ``jax.grad`` still differentiates a plain forward
    by autodiff; the two compute the same sums, up to float rounding."""
    evaluated = plan._replace(forward=plan.inference)
    fold = b is not None and bias_in_product(g, x.shape[3], w.shape[3], evaluated)
    if plan.inference == plan.forward and not fold:
        return forward(x, w, b, g, groups, plan, precision)
    return _evaluated((x, w, b), g, groups, plan, precision, "inside" if fold else "after")


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3, 4, 5))
def _evaluated(operands, g: geo.Window, groups: int, plan: ConvPlan, precision, bias: str):
    """Eq. 4.2 with its bias, ``operands = (x, w, b)``, in ``plan.inference``'s form, the bias
    where ``bias`` says; differentiated by ``_differentiated``."""
    return forward(*operands, g, groups, plan._replace(forward=plan.inference), precision, bias)


@functools.partial(_evaluated.defjvp, symbolic_zeros=True)
def _differentiated(g, groups, plan, precision, bias, primals, tangents):
    """``jax.jvp`` of ``forward`` in ``plan.forward``'s form, over the operands that have a
    tangent: one nothing differentiates (the data ``x`` of a first layer) stays a symbolic
    zero, so no product with zeros is computed."""
    (operands,), (operand_tangents,) = primals, tangents
    live = [i for i, t in enumerate(operand_tangents)
            if t is not None and not isinstance(t, SymbolicZero)]

    def output(*live_operands):
        args = list(operands)
        for i, a in zip(live, live_operands):
            args[i] = a
        return forward(*args, g, groups, plan, precision)

    return jax.jvp(output, [operands[i] for i in live], [operand_tangents[i] for i in live])

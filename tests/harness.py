"""The gradient harness: a layer's hand-written backward against ``jax.vjp`` of its forward.

The reference is always autodiff of the *plain* forward (``layer.apply``), never of anything
that routes through the hand-written backward.  Cotangents are random: a constant cotangent
hides transposition bugs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

TOL = {jnp.dtype("float32"): 2e-5, jnp.dtype("float64"): 1e-11}


def rel_err(got, want) -> float:
    """``max |got - want| / max |want|`` (absolute where ``want`` is all zeros)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise AssertionError(f"shape {got.shape} != reference shape {want.shape}")
    scale = max(float(np.max(np.abs(want), initial=0.0)), 1e-30)
    return float(np.max(np.abs(got - want), initial=0.0)) / (scale if scale > 1e-30 else 1.0)


def _apply_and_vjp(layer, params, x, dy, key, train):
    """``apply``'s output and ``jax.vjp`` of it at ``dy`` -- the reference, computed jitted."""
    y, vjp = jax.vjp(lambda p, x: layer.apply(p, x, key=key, train=train), params, x)
    return y, vjp(dy)


def backward_errors(layer, params, x, *, key=None, train=True, seed=0):
    """Relative errors of every gradient leaf (params, then input), hand-written vs ``jax.vjp``.

    Forward and backward are jitted, as a user runs them.
    """
    y, cache = jax.jit(lambda p, x: layer.forward(p, x, key=key, train=train))(params, x)
    rng = np.random.default_rng(seed)        # a random cotangent, also for a tuple of outputs
    dy = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype), y)
    got = jax.jit(layer.backward)(params, cache, dy)
    y_ref, want = jax.jit(lambda p, x, dy: _apply_and_vjp(layer, p, x, dy, key, train))(
        params, x, dy)
    tol = TOL[jnp.dtype(jax.tree.leaves(x)[0].dtype)]   # forward and apply may sum in another order
    # Conv2D's apply may evaluate in another form than the one it differentiates
    y_eval = jax.jit(lambda p, x: layer.apply(p, x, key=key, train=train))(params, x)
    for a, b, e in zip(jax.tree.leaves(y), jax.tree.leaves(y_ref), jax.tree.leaves(y_eval)):
        scale = float(np.max(np.abs(b), initial=0.0))
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale,
                                   err_msg=f"{layer.name}: forward and apply disagree")
        np.testing.assert_allclose(e, b, rtol=tol, atol=tol * scale,
                                   err_msg=f"{layer.name}: apply evaluated and differentiated "
                                           f"disagree")
    got_leaves, want_leaves = jax.tree.leaves(got), jax.tree.leaves(want)
    assert jax.tree.structure(got) == jax.tree.structure(want), "gradient tree structure differs"
    return [rel_err(a, b) for a, b in zip(got_leaves, want_leaves)]


def assert_backward_matches(layer, params, x, **kw):
    errs = backward_errors(layer, params, x, **kw)
    tol = TOL[jnp.dtype(jax.tree.leaves(x)[0].dtype)]
    assert max(errs) <= tol, f"{layer.name}: backward vs jax.vjp relative errors {errs} > {tol}"


def init_as(layer, input_shape, dtype, seed=0):
    """``layer.init`` with params cast to ``dtype``, jitted (one compile rather than one per
    random op); returns ``(params, output_shape)``."""
    shapes = []

    def init(key):
        params, out_shape = layer.init(key, input_shape)
        shapes.append(out_shape)                  # static: kept outside the trace
        return jax.tree.map(lambda p: p.astype(dtype), params)

    params = jax.jit(init)(jax.random.key(seed))
    return params, shapes[0]

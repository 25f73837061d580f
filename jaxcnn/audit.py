"""The derivation audit: find the layer whose hand-written backward is wrong.

``check_grads`` compares a network's hand-written gradients with autodiff twice over:

1. **per layer, in isolation.**  Each layer's ``backward`` gets the activations it really sees
   inside the net (its cached forward) and the *reference* residual of its output -- computed by
   autodiff through the layers above it -- and is compared with ``jax.vjp`` of that layer's own
   ``apply``.  An error is pinned on the layer that makes it, not on every layer below it, whose
   incoming residual would be wrong too.
2. **end to end.**  ``value_and_grad`` (the whole hand-written chain) against ``jax.grad`` of
   ``loss.value(net.apply(...))``.

``gradient_check`` is the end-to-end comparison alone, the same two gradients, jitted and
reduced on the device to one relative error per parameter array (a ``GradCheck``): the check
``fit`` runs before training and every ``check_grads`` steps.

Optionally, each layer is also compared with central finite differences in float64, which does
not use autodiff at all: the directional derivative ``<delta, d apply / d leaf . v>`` along a
random direction ``v`` for each parameter leaf and the input.

Tolerances follow the dtype (``TOLERANCES``): a row passes when its relative error
``max |hand - ref| / max |ref|`` is at most the tolerance.  Max-pooling ties agree by
construction (both sides route to the first maximum) and stochastic pooling uses the same key,
hence the same draws, on both sides.  Finite differences are not defined at kinks and exact ties
(ReLU at 0, a max-pooling window of tied zeros after a ReLU): where the one-sided slopes along
``v`` disagree, the row is marked ``kink`` and not counted -- the ``jax.vjp`` row still is.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.core import Layer, Params, layer_keys
from jaxcnn.losses import Loss
from jaxcnn.step import loss_and_grad, memoise

__all__ = ["TOLERANCES", "FD_STEP", "Row", "GradReport", "compare", "check_grads", "check_layer",
           "GradCheck", "gradient_check", "default_tolerance"]

TOLERANCES = {"float32": 1e-4, "float64": 1e-9, "finite differences": 1e-5}
"""Largest relative error that passes: by the dtype of the comparison, and for the float64
central finite differences (step ``FD_STEP``), whose truncation error dominates."""

FD_STEP = 1e-6


@dataclasses.dataclass(frozen=True)
class Row:
    """One comparison: one gradient (a parameter leaf or the input residual) of one layer."""

    layer: int | None      # index in ``serial`` order; None for the end-to-end rows
    name: str              # the layer's name
    quantity: str          # "params['w']", "dx", ...
    reference: str         # "jax.vjp", "jax.grad", "finite differences"
    max_abs: float
    max_rel: float
    cosine: float
    tolerance: float
    kink: bool = False     # finite differences only: the forward has a kink or tie here

    @property
    def ok(self) -> bool:
        return self.kink or bool(self.max_rel <= self.tolerance)


@dataclasses.dataclass(frozen=True)
class GradReport:
    """The audit's result.  ``str(report)`` is a table; ``.ok`` and ``.first_bad_layer`` sum it up."""

    rows: tuple[Row, ...]
    dtype: str

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows)

    @property
    def first_bad_layer(self) -> int | None:
        """Index (in ``serial`` order, 0-based) of the first layer with a failing row, or None."""
        bad = [row.layer for row in self.rows if not row.ok and row.layer is not None]
        return min(bad) if bad else None

    @property
    def worst(self) -> float:
        return max((row.max_rel for row in self.rows if not row.kink), default=0.0)

    def __str__(self) -> str:
        head = ("layer", "name", "gradient", "reference", "max abs err", "max rel err",
                "cosine", "ok")
        body = [("-" if r.layer is None else str(r.layer), r.name, r.quantity, r.reference,
                 f"{r.max_abs:.2e}", f"{r.max_rel:.2e}", f"{r.cosine:.8f}",
                 "kink" if r.kink else "ok" if r.ok else "FAIL") for r in self.rows]
        widths = [max(len(x) for x in col) for col in zip(head, *body)]
        lines = ["  ".join(x.ljust(w) for x, w in zip(line, widths)) for line in [head, *body]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        if self.ok:
            verdict = f"all {len(self.rows)} gradients agree ({self.dtype}; worst relative " \
                      f"error {self.worst:.1e})"
        else:
            where = self.first_bad_layer
            verdict = (f"FAILED: first wrong layer is {where} ({self.rows_of(where)[0].name})"
                       if where is not None else "FAILED: the end-to-end gradients disagree")
        return "\n".join([*lines, verdict])

    def rows_of(self, layer: int) -> list[Row]:
        return [row for row in self.rows if row.layer == layer]


def compare(got, want) -> tuple[float, float, float]:
    """Max absolute error, max relative error (to ``max |want|``) and cosine similarity."""
    got, want = np.asarray(got, np.float64).ravel(), np.asarray(want, np.float64).ravel()
    if got.shape != want.shape:
        return math.inf, math.inf, 0.0
    abs_err = float(np.max(np.abs(got - want), initial=0.0))
    scale = float(np.max(np.abs(want), initial=0.0))
    rel_err = abs_err / scale if scale > 0 else abs_err
    norms = float(np.linalg.norm(got) * np.linalg.norm(want))
    cosine = float(got @ want) / norms if norms > 0 else (1.0 if abs_err == 0 else 0.0)
    return abs_err, rel_err, cosine


def _leaf_names(tree) -> list[str]:
    return ["params" + jax.tree_util.keystr(path)
            for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _dtype_of(x) -> str:
    return str(jnp.dtype(x.dtype))


def _layer_rows(i, layer, p, a, delta, cache, key, train, finite_differences, rng):
    """Compare one layer's backward at its real input ``a`` and reference residual ``delta``."""
    dtype = _dtype_of(a)
    tol = TOLERANCES.get(dtype, TOLERANCES["float32"])
    got_p, got_x = layer.backward(p, cache, delta)
    _, vjp = jax.vjp(lambda p, a: layer.apply(p, a, key=key, train=train), p, a)
    want_p, want_x = vjp(delta)
    rows = []
    names = [*_leaf_names(want_p), "dx"]
    got = [*jax.tree.leaves(got_p), got_x]
    want = [*jax.tree.leaves(want_p), want_x]
    if jax.tree.structure(got_p) != jax.tree.structure(want_p):
        raise ValueError(f"{layer.name}: backward returned dparams with structure "
                         f"{jax.tree.structure(got_p)}, expected that of params "
                         f"{jax.tree.structure(want_p)}")
    for quantity, g, w in zip(names, got, want):
        rows.append(Row(i, layer.name, quantity, "jax.vjp", *compare(g, w), tol))
    if finite_differences:
        rows += _fd_rows(i, layer, p, a, delta, key, train, names, got, rng)
    return rows


def _fd_rows(i, layer, p, a, delta, key, train, names, got, rng):
    """Central differences in float64 of ``<delta, apply(p, a)>`` along one random direction per
    gradient leaf, against the hand-written gradient's inner product with that direction."""
    to64 = lambda t: jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), t)  # noqa: E731
    p64, a64, d64 = to64(p), to64(a), to64(delta)
    leaves, treedef = jax.tree.flatten(p64)
    rows = []
    for j, (quantity, g) in enumerate(zip(names, got)):
        base = leaves[j] if j < len(leaves) else a64
        v = jnp.asarray(rng.normal(size=base.shape))

        def phi(t):
            moved = [leaf + t * v if k == j else leaf for k, leaf in enumerate(leaves)]
            x = a64 + t * v if j == len(leaves) else a64
            y = layer.apply(jax.tree.unflatten(treedef, moved), x, key=key, train=train)
            return float(jnp.sum(d64 * y))

        before, at, after = phi(-FD_STEP), phi(0.0), phi(FD_STEP)
        numeric = (after - before) / (2 * FD_STEP)
        # one-sided slopes that disagree: no derivative to compare with along v
        right, left = (after - at) / FD_STEP, (at - before) / FD_STEP
        kink = abs(right - left) > 1e-4 * (abs(right) + abs(left)) + 1e-8
        analytic = float(jnp.sum(jnp.asarray(g, jnp.float64) * v))
        rows.append(Row(i, layer.name, quantity, "finite differences",
                        *compare([analytic], [numeric]), TOLERANCES["finite differences"], kink))
    return rows


def _require_x64(what: str) -> None:
    if not jax.config.jax_enable_x64:
        raise ValueError(f"{what} runs in float64: enable it first with "
                         f"jax.config.update('jax_enable_x64', True)")


def check_grads(net: Layer, loss: Loss, params, x, targets, *, key=None, train: bool = True,
                finite_differences: bool = False, seed: int = 0) -> GradReport:
    """Audit ``net``'s hand-written gradients on one batch; see the module docstring.

    Args:
      net: a ``serial`` network (each of its top-level layers is audited) or a single layer.
      loss: ``softmax_cross_entropy``, ``squared_error`` or any ``Loss``.
      params, x, targets: as for ``value_and_grad``; the comparison runs in ``x``'s dtype.
      key, train: as for ``forward`` (stochastic pooling needs a key when ``train``).
      finite_differences: also compare each layer with float64 central differences
        (needs ``jax_enable_x64``).
      seed: for the random finite-difference directions.

    Returns:
      A ``GradReport`` with one row per layer and gradient leaf (plus the input residual),
      and end-to-end rows (``layer`` None) for the whole hand-written chain.
    """
    if finite_differences:
        _require_x64("check_grads(finite_differences=True)")
    layers = net.layers or (net,)
    keys = layer_keys(key, len(layers)) if net.layers else [key]
    layer_params = params if net.layers else (params,)
    rng = np.random.default_rng(seed)

    # forward, keeping each layer's input and cache
    inputs, caches, outputs, a = [], [], [], x
    for layer, p, k in zip(layers, layer_params, keys):
        inputs.append(a)
        a, cache = layer.forward(p, a, key=k, train=train)
        caches.append(cache)
        outputs.append(a)

    # the reference residual of every layer's output, by autodiff through the layers above it:
    # a zero "tap" added to each output has the gradient dJ/d(output)
    def loss_with_taps(taps):
        a = x
        for layer, p, k, tap in zip(layers, layer_params, keys, taps):
            a = layer.apply(p, a, key=k, train=train) + tap
        return loss.value(a, targets)

    deltas = jax.grad(loss_with_taps)([jnp.zeros_like(y) for y in outputs])

    rows = []
    for i, (layer, p, a, cache, delta, k) in enumerate(
            zip(layers, layer_params, inputs, caches, deltas, keys)):
        rows += _layer_rows(i, layer, p, a, delta, cache, k, train, finite_differences, rng)

    # end to end: the whole hand-written chain against jax.grad of the plain forward
    grads, ref = _end_to_end(net, loss)(params, x, targets, key, train)
    tol = TOLERANCES.get(_dtype_of(x), TOLERANCES["float32"])
    for quantity, g, w in zip(_leaf_names(ref), jax.tree.leaves(grads), jax.tree.leaves(ref)):
        rows.append(Row(None, "network", quantity, "jax.grad", *compare(g, w), tol))
    return GradReport(tuple(rows), _dtype_of(x))


def check_layer(layer: Layer, input_shape, *, batch: int = 2, dtype=jnp.float64, key=None,
                train: bool = True, finite_differences: bool = False, seed: int = 0,
                x=None) -> GradReport:
    """Audit one layer -- any object with the layer protocol -- on random params and inputs.

    ``init(key, input_shape)`` makes the params (cast to ``dtype``); the input is standard normal
    of shape ``(batch, *input_shape)`` unless given as ``x`` (stochastic pooling wants
    non-negative inputs), and the residual of the output is a random normal cotangent.
    The layer's ``init`` output shape is checked against its forward.
    """
    if jnp.dtype(dtype) == jnp.float64 or finite_differences:
        _require_x64(f"check_layer({layer.name}, dtype=float64)")
    rng = np.random.default_rng(seed)
    init_key, key_default = jax.random.split(jax.random.key(seed))
    params, out_shape = layer.init(init_key, tuple(input_shape))
    params = jax.tree.map(lambda v: jnp.asarray(v, dtype), params)
    if x is None:
        x = rng.normal(size=(batch, *input_shape))
    x = jnp.asarray(x, dtype)
    key = key_default if key is None else key
    y, cache = layer.forward(params, x, key=key, train=train)
    if tuple(y.shape[1:]) != tuple(out_shape):
        raise ValueError(f"{layer.name}: init says the output shape is {tuple(out_shape)} but "
                         f"forward gives {tuple(y.shape[1:])} (batch axis excluded)")
    delta = jnp.asarray(rng.normal(size=y.shape), y.dtype)
    rows = _layer_rows(0, layer, params, x, delta, cache, key, train, finite_differences, rng)
    return GradReport(tuple(rows), _dtype_of(x))


# --- end to end: the whole hand-written chain against jax.grad -------------------------------

def _end_to_end(net: Layer, loss: Loss) -> Callable:
    """``(params, x, targets, key, train) -> (hand-written grads, jax.grad grads)``.

    The two ``grad`` modes of ``step.loss_and_grad`` on the same forward: ``value_and_grad``
    (eq. 6.2) and ``jax.grad`` of ``loss.value(net.apply(...))``.  ``check_grads``' end-to-end
    rows compare them on the host in float64; ``gradient_check`` compares them jitted, on the
    device, where ``fit`` runs it every few steps.
    """
    manual, auto = loss_and_grad(net, loss, "manual"), loss_and_grad(net, loss, "autodiff")

    def both(params, x, targets, key, train):
        return (manual(params, x, targets, key=key, train=train)[1],
                auto(params, x, targets, key=key, train=train)[1])

    return both


class GradCheck(NamedTuple):
    """Per parameter array: ``max|hand - autodiff| / max|autodiff|``, and the worst of them."""

    errors: dict[str, float]
    worst: float
    worst_name: str

    def line(self) -> str:
        """The line ``fit`` prints before training."""
        return (f"gradient check (hand-written vs jax.grad, 1 batch): worst relative error "
                f"{self.worst:.1e} over {len(self.errors)} parameter arrays")

    def report(self, tol: float) -> str:
        """The arrays above ``tol`` (NaN included), worst first."""
        bad = {k: v for k, v in self.errors.items() if not v <= tol}
        return "; ".join(f"{k}: {v:.2e}" for k, v in sorted(bad.items(), key=lambda kv: -kv[1]))


def _array_names(net: Layer, params) -> list[str]:
    """``"serial[0] Conv2D params['w']"`` per parameter leaf, in ``tree_leaves`` order."""
    names = []
    for path, _ in jax.tree_util.tree_leaves_with_path(params):
        if net.layers and path and isinstance(path[0], jax.tree_util.SequenceKey):
            i = path[0].idx
            names.append(f"serial[{i}] {net.layers[i].name} "
                         f"params{jax.tree_util.keystr(tuple(path[1:]))}")
        else:
            names.append("params" + jax.tree_util.keystr(path))
    return names


@memoise
def _relative_errors(net: Layer, loss: Loss) -> Callable:
    """Jitted ``(params, x, targets, key) -> [relative error per parameter leaf]`` of
    ``_end_to_end`` in training mode, computed in the params' dtype on the device."""
    both = _end_to_end(net, loss)

    def relative(a, b):
        scale = jnp.maximum(jnp.max(jnp.abs(b)), jnp.finfo(b.dtype).tiny)
        return jnp.max(jnp.abs(a - b)) / scale

    def errors(params, x, targets, key):
        hand, ref = both(params, x, targets, key, True)
        return [relative(a, b) for a, b in
                zip(jax.tree_util.tree_leaves(hand), jax.tree_util.tree_leaves(ref))]

    return jax.jit(errors)


def gradient_check(net: Layer, loss: Loss, params: Params, x, targets, *,
                   key=None) -> GradCheck:
    """Compare the hand-written gradients with ``jax.grad`` of the same forward on one batch.

    The end-to-end comparison of ``check_grads``, jitted and reduced on the device to one
    relative error per parameter array: cheap enough for ``fit`` to run every few steps.
    A NaN error counts as the worst.
    """
    values = _relative_errors(net, loss)(params, x, targets, key)
    errs = dict(zip(_array_names(net, params), (float(e) for e in values)))
    worst_name = max(errs, key=lambda k: -1.0 if math.isnan(errs[k]) else errs[k]) \
        if errs else "-"
    worst = max((v if not math.isnan(v) else math.inf for v in errs.values()), default=0.0)
    return GradCheck(errs, worst, worst_name)


def default_tolerance(params: Params) -> float:
    """``TOLERANCES`` for the params' widest float dtype: ``1e-4`` relative error for
    float32, ``1e-9`` for float64 (``fit``'s default ``grad_tol``)."""
    widest = max((np.finfo(leaf.dtype).bits for leaf in jax.tree_util.tree_leaves(params)
                  if jnp.issubdtype(leaf.dtype, jnp.floating)), default=32)
    return TOLERANCES["float64" if widest >= 64 else "float32"]

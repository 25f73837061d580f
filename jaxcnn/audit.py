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
``max |hand - ref| / max |ref|`` is at most the tolerance.  In float16 and bfloat16 the
autodiff side rounds its own sums to 8-11 bits (XLA accumulates the transposes of broadcasts
in the dtype), so a layer's reference is ``jax.vjp`` both in the dtype and in float32 at the
same point, and the row compares with the closer (the dtype's is the one for a layer that draws
random numbers in its dtype, stochastic pooling); the end-to-end rows, which would compound the
16-bit rounding of every layer, run in float32 at the same params and input.  A layer's row
that fails is compared again in float64 (``_rounding_rows``): a gradient that cancels to zero
is rounding noise on both sides, not a wrong derivation.  Non-finite
inputs or params are refused (``ValueError``): gradients are compared where they exist.
Max-pooling ties agree by construction (both sides route to the first maximum) and stochastic
pooling uses the same key, hence the same draws, on both sides.  Finite differences are not
defined at kinks and exact ties (ReLU at 0, a max-pooling window of tied zeros after a ReLU):
where the one-sided slopes along ``v`` disagree, the row is marked ``kink`` and not counted --
the ``jax.vjp`` row still is.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.core import (Layer, Params, as_jax, check_array, check_key, check_seed, is_concrete,
                         map_leaves, path_name, positive_int)
from jaxcnn.losses import Loss, check_net_and_loss
from jaxcnn.step import loss_and_grad, memoise

__all__ = ["TOLERANCES", "LOW_PRECISION", "NOISE_ULPS", "ROUNDING_FACTOR", "ROUNDING_SAMPLES",
           "FD_STEP", "Row", "GradReport",
           "compare", "check_grads", "check_layer", "GradCheck", "gradient_check",
           "default_tolerance", "noise_floor"]

TOLERANCES = {"float16": 1e-2, "bfloat16": 5e-2, "float32": 1e-4, "float64": 1e-9,
              "finite differences": 1e-5}
"""Largest relative error that passes: by the dtype of the comparison, and for the float64
central finite differences (step ``FD_STEP``), whose truncation error dominates (or the
gradient's dtype's, where larger).  The 16-bit entries hold a layer's backward against the
closer ``jax.vjp`` reference (see the module docstring): about 10 and 6 units of rounding
(2^-10, 2^-7), above what correct layers show and below the smallest planted mistake
(``docs/audit.md#tolerances`` has the measurements)."""

LOW_PRECISION = ("float16", "bfloat16")
"""Dtypes whose end-to-end comparison runs in float32 and whose layers are also compared with
a float32 ``jax.vjp``."""

FD_STEP = 1e-6


@dataclasses.dataclass(frozen=True)
class Row:
    """One comparison: one gradient (a parameter leaf or the input residual) of one layer."""

    layer: int | None      # index of the top-level layer that holds it; None: end to end
    name: str              # the (leaf) layer's name
    quantity: str          # "params['w']", "dx", ...
    reference: str         # "jax.vjp", "jax.grad", "finite differences"
    max_abs: float
    max_rel: float
    cosine: float
    tolerance: float
    kink: bool = False     # finite differences only: the forward has a kink or tie here
    path: str = ""         # inside combinators: "serial[2] > parallel[0] > serial[1] Sigmoid"

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
        """Index (in ``serial`` order, 0-based) of the first top-level layer with a failing row
        -- the one that holds the wrong leaf, inside a combinator -- or None."""
        bad = [row.layer for row in self.rows if not row.ok and row.layer is not None]
        return min(bad) if bad else None

    @property
    def first_bad_path(self) -> str | None:
        """The first failing leaf named by its path (``serial[2] > parallel[0] > serial[1]
        Sigmoid``), or None."""
        bad = [row for row in self.rows if not row.ok and row.layer is not None]
        return (bad[0].path or bad[0].name) if bad else None

    @property
    def worst(self) -> float:
        """The largest relative error of the rows (a NaN one counts as infinite)."""
        return max((math.inf if math.isnan(row.max_rel) else row.max_rel
                    for row in self.rows if not row.kink), default=0.0)

    def __str__(self) -> str:
        head = ("layer", "name", "gradient", "reference", "max abs err", "max rel err",
                "cosine", "ok")
        body = [("-" if r.layer is None else str(r.layer), r.path or r.name, r.quantity,
                 r.reference,
                 f"{r.max_abs:.2e}", f"{r.max_rel:.2e}", f"{r.cosine:.8f}",
                 "kink" if r.kink else "ok" if r.ok else "FAIL") for r in self.rows]
        widths = [max(len(x) for x in col) for col in zip(head, *body)]
        lines = ["  ".join(x.ljust(w) for x, w in zip(line, widths)) for line in [head, *body]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        kinks = sum(r.kink for r in self.rows)
        if self.ok and kinks:
            verdict = f"{len(self.rows) - kinks} gradients agree, {kinks} not compared at a " \
                      f"kink ({self.dtype}; worst relative error {self.worst:.1e})"
        elif self.ok:
            verdict = f"all {len(self.rows)} gradients agree ({self.dtype}; worst relative " \
                      f"error {self.worst:.1e})"
        else:
            where = self.first_bad_layer
            verdict = (f"FAILED: first wrong layer is {where} ({self.first_bad_path})"
                       if where is not None else "FAILED: the end-to-end gradients disagree")
        return "\n".join([*lines, verdict])

    def rows_of(self, layer: int) -> list[Row]:
        return [row for row in self.rows if row.layer == layer]


def compare(got, want, floor: float = 0.0) -> tuple[float, float, float]:
    """Max absolute error, max relative error (to ``max |want|``, or ``floor`` if larger) and
    cosine similarity."""
    got, want = np.asarray(got, np.float64).ravel(), np.asarray(want, np.float64).ravel()
    if got.shape != want.shape:
        return math.inf, math.inf, 0.0
    abs_err = float(np.max(np.abs(got - want), initial=0.0))
    scale = max(float(np.max(np.abs(want), initial=0.0)), floor)
    rel_err = abs_err / scale if scale > 0 else abs_err
    norms = float(np.linalg.norm(got) * np.linalg.norm(want))
    cosine = float(got @ want) / norms if norms > 0 else (1.0 if abs_err == 0 else 0.0)
    return abs_err, rel_err, cosine


def _leaf_names(tree, prefix: str = "params") -> list[str]:
    return [prefix + jax.tree_util.keystr(path)
            for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _dtype_of(x) -> str:
    """The dtype of ``x``, or of the first array of a tuple of them."""
    return str(jnp.dtype(jax.tree.leaves(x)[0].dtype))


def _widen(tree):
    """The tree's 16-bit floating leaves in float32 (exactly: every 16-bit value is a float32)."""
    return jax.tree.map(lambda v: v.astype(jnp.float32) if hasattr(v, "dtype")
                        and str(jnp.dtype(v.dtype)) in LOW_PRECISION else v, tree)


def _vjp(layer, p, a, delta, key, train):
    """``jax.vjp`` of the layer's ``apply`` at ``delta``, jitted: one program per layer rather
    than one per operation (the inputs were checked while concrete: ``_check_point``,
    ``_run_leaves``)."""
    def vjp(p, a, delta, key):
        _, pullback = jax.vjp(lambda p, a: layer.apply(p, a, key=key, train=train), p, a)
        return pullback(delta)

    return jax.jit(vjp)(p, a, delta, key)


def _pair(layer, fn: str, value, names: str) -> tuple:
    """``value`` as the 2-tuple the layer contract has ``fn`` return (``names``: what is in it);
    a ``TypeError`` naming the layer and the function otherwise, rather than a failure to
    unpack somewhere further on."""
    if not (isinstance(value, tuple) and len(value) == 2):
        got = f"a tuple of {len(value)}" if isinstance(value, tuple) else type(value).__name__
        raise TypeError(f"{layer.name}: {fn} must return the pair {names}, got {got}")
    return value


def _backward(layer, p, cache, delta):
    """``layer.backward`` jitted on the arrays of ``cache``; its other leaves (a shape kept as
    Python ints) stay as they are, as in the layer's own unjitted use."""
    leaves, tree = jax.tree.flatten(cache)
    traced = [isinstance(v, (jax.Array, np.ndarray)) for v in leaves]

    def run(p, arrays, delta):
        it = iter(arrays)
        full = [next(it) if t else v for v, t in zip(leaves, traced)]
        return layer.backward(p, jax.tree.unflatten(tree, full), delta)

    return _pair(layer, "backward", jax.jit(run)(p, [v for v, t in zip(leaves, traced) if t],
                                                delta), "(dparams, dx)")


def _layer_rows(i, layer, p, a, delta, cache, key, train, finite_differences, rng, path="",
                y=None):
    """Compare one layer's backward at its real input ``a`` and reference residual ``delta``
    (either may be a tuple of arrays, for a branch or a merge); and its forward's output
    ``y``, where given, with its ``apply``'s -- a row only where they differ."""
    dtype = _dtype_of(a)
    tol = TOLERANCES.get(dtype, TOLERANCES["float32"])
    got_p, got_x = _backward(layer, p, cache, delta)
    want_p, want_x = _vjp(layer, p, a, delta, key, train)
    for what, got_t, want_t, of in (("dparams", got_p, want_p, "params"),
                                    ("dx", got_x, want_x, "the input")):
        if jax.tree.structure(got_t) != jax.tree.structure(want_t):
            raise ValueError(f"{layer.name}: backward returned {what} with structure "
                             f"{jax.tree.structure(got_t)}, expected that of {of} "
                             f"{jax.tree.structure(want_t)}")
    names = [*_leaf_names(want_p), *_leaf_names(want_x, "dx")]
    got = jax.tree.leaves((got_p, got_x))
    want, reference = jax.tree.leaves((want_p, want_x)), "jax.vjp"
    misfits = {n: _misfit(g, w) for n, g, w in zip(names, got, want)}
    if dtype in LOW_PRECISION:          # the same derivative, without 16-bit sums on its side
        wide = jax.tree.leaves(_vjp(layer, *_widen((p, a, delta)), key, train))
        if _worst(got, wide) < _worst(got, want):
            want, reference = wide, "jax.vjp float32"
    rows = [Row(i, layer.name, quantity + misfits[quantity], reference,
                *_errors(misfits[quantity], g, w), tol, path=path)
            for quantity, g, w in zip(names, got, want)]
    rescue = not all(row.ok for row in rows) and not any(misfits.values())
    hold = dtype in LOW_PRECISION and not any(misfits.values())
    passes = _float64_passes(layer, p, a, delta, key, train) if rescue or hold else None
    if rescue and passes is not None:
        rows = _rounding_rows(rows, layer, p, a, delta, key, train, got, passes)
    if hold and passes is not None:
        rows = _derivation_rows(rows, passes)
    if finite_differences:
        rows += _fd_rows(i, layer, p, a, delta, key, train, names, got, rng, path)
    if y is not None:
        rows += _forward_rows(i, layer, p, a, y, key, train, tol, path)
    return rows


def _misfit(got, want) -> str:
    """``""`` where a hand-written gradient has its reference's shape and dtype; else what it
    has instead, for the row's name (the row fails: an array of another shape or dtype is no
    gradient of those params, whatever its values)."""
    if got.shape == want.shape and got.dtype == want.dtype:
        return ""
    return (f" (shape {tuple(got.shape)} {got.dtype}, expected {tuple(want.shape)} "
            f"{want.dtype})")


def _errors(misfit: str, got, want, floor: float = 0.0) -> tuple[float, float, float]:
    """``compare``'s errors, or a failing row's where the gradient is a ``_misfit``."""
    return compare(got, want, floor) if not misfit else (math.inf, math.inf, 0.0)


def _forward_rows(i, layer, p, a, y, key, train, tol, path) -> list[Row]:
    """``forward``'s output against ``apply``'s at the same point: the backward is checked
    against ``apply``'s derivative, so a forward that computes something else (and the cache
    from it) would train on another function unseen.  A row only where they differ."""
    want = jax.jit(lambda p, a, key: layer.apply(p, a, key=key, train=train))(p, a, key)
    if jax.tree.structure(y) != jax.tree.structure(want):
        raise ValueError(f"{layer.name}: forward returned an output of structure "
                         f"{jax.tree.structure(y)}, apply one of {jax.tree.structure(want)}")
    rows = []
    for quantity, g, w in zip(_leaf_names(want, "y"), jax.tree.leaves(y), jax.tree.leaves(want)):
        misfit = _misfit(g, w)
        row = Row(i, layer.name, quantity + misfit, "apply", *_errors(misfit, g, w), tol,
                  path=path)
        if not row.ok:
            rows.append(row)
    return rows


ROUNDING_FACTOR = 10
"""A layer's row that fails passes as rounding when its error against
``jax.vjp`` in float64 is at most this many times that of the reference it failed against
(the largest over ``ROUNDING_SAMPLES`` scalings of the residual), and the same backward run in
float64 agrees with it there (``_rounding_rows``)."""

ROUNDING_SAMPLES = (1.0, 0.9, 0.75, 0.6)
"""The scalings of the residual at which the reference's own rounding error is measured."""


def _rounding_rows(rows, layer, p, a, delta, key, train, got, passes) -> list[Row]:
    """The failing rows compared again with ``jax.vjp`` in float64 at the same point (where this
    backend has float64).  A gradient that cancels to zero -- ``dx`` of a normalisation over two
    entries, whose output is +-1 whatever they are; a bias's right before a normalisation,
    which subtracts it again -- is rounding noise in any dtype, on the reference's side as on
    the hand-written one's.  Such a row passes (``Row.reference``: "jax.vjp float64") when the
    hand-written backward run in float64 agrees with ``jax.vjp`` there (the derivation) and its
    error in the row's dtype is at most ``ROUNDING_FACTOR`` times the reference's own -- or,
    for a gradient that is 0 to float64's rounding, ``NOISE_ULPS`` rounding units of the
    layer's largest gradient entry (the hand-written sums need not cancel as autodiff's do);
    a gradient of any real size keeps the reference's own rounding as its allowance.  A wrong
    derivation fails the first, which allows only float64's own rounding (``NOISE_ULPS`` units
    of the layer's largest float64 gradient entry), in rows of float64 as in the others: a
    gradient passes on the rounding alone only where its entries are of that size -- at the
    given input and at the same input scaled to entries of at most 1, so that a gradient
    dwarfed by another only at a huge input (a bias's ``sum delta`` beside ``sum delta x`` at
    ``x ~ 1e15``) is compared at its own size too."""
    exact, _, top = passes[0]
    try:
        with jax.enable_x64(True):
            own = [0.0] * len(exact)
            for c in ROUNDING_SAMPLES:
                scaled = jax.tree.map(lambda d: (d * c).astype(d.dtype), delta)
                ref = jax.tree.leaves(_vjp(layer, p, a, scaled, key, train))
                own = [max(o, float(np.max(np.abs(np.asarray(r, np.float64) / c - e),
                                           initial=0.0))) for o, r, e in zip(own, ref, exact)]
    except Exception:               # a backend without float64: the rows stand as they are
        return rows
    out = []
    for i, (row, g, e, o) in enumerate(zip(rows, got, exact, own)):
        noise = ROUNDING_FACTOR * o
        if float(np.max(np.abs(e), initial=0.0)) <= _ulps(np.float64, top):
            # a gradient that is 0 to float64's rounding: any dtype's rounding of the layer's
            # sums, not only autodiff's, which may cancel more exactly
            noise = max(noise, _ulps(np.asarray(g).dtype, top))
        again = dataclasses.replace(row, reference="jax.vjp float64", **dict(zip(
            ("max_abs", "max_rel", "cosine"), compare(g, e, noise / row.tolerance))))
        derivation = _derivation(passes, i)[1] <= TOLERANCES["float64"]
        out.append(again if not row.ok and again.ok and derivation else row)
    return out


def _derivation_rows(rows, passes) -> list[Row]:
    """16-bit rows that passed, checked once more as the derivation: a 16-bit tolerance of a
    percent or two would pass a backward that drops a term that small (a leaky ReLU's slope of
    0.01 left out), so the same backward must also agree with ``jax.vjp`` in float64 at the
    same point (and at the input scaled to at most 1), to float64's rounding; a row that does
    not is shown failing against "jax.vjp float64" at float64's tolerance."""
    out, tol64 = [], TOLERANCES["float64"]
    for i, row in enumerate(rows):
        worst = _derivation(passes, i)
        failed = row.ok and not row.kink and not worst[1] <= tol64
        out.append(dataclasses.replace(row, reference="jax.vjp float64", max_abs=worst[0],
                                       max_rel=worst[1], cosine=worst[2], tolerance=tol64)
                   if failed else row)
    return out


def _derivation(passes, i: int) -> tuple[float, float, float]:
    """The worse, over the float64 ``passes``, of ``compare`` of leaf ``i``'s hand-written
    gradient with ``jax.vjp``'s, at a floor of float64's rounding of the layer's largest entry."""
    return max((compare(hand[i], exact[i], _ulps(np.float64, top) / TOLERANCES["float64"])
                for exact, hand, top in passes), key=lambda errors: errors[1])


def _ulps(dtype, top: float) -> float:
    """``NOISE_ULPS`` rounding units of ``dtype`` at the size ``top``."""
    return NOISE_ULPS * float(np.finfo(dtype).eps) * top


def _float64_passes(layer, p, a, delta, key, train) -> list | None:
    """``_float64_pass`` at the layer's point and at its input scaled to at most 1
    (``_unit_scaled``); ``None`` on a backend without float64."""
    try:
        with jax.enable_x64(True):
            p64, a64, d64 = _to64((p, a, delta))
            return [_float64_pass(layer, p64, a64, d64, key, train),
                    _float64_pass(layer, p64, _unit_scaled(a64), d64, key, train)]
    except Exception:               # the rows then stand as they are
        return None


def _to64(tree):
    """Every floating array of ``tree`` as a float64 NumPy array (under ``enable_x64``)."""
    return jax.tree.map(lambda v: np.asarray(v, np.float64) if hasattr(v, "dtype") and
                        jnp.issubdtype(v.dtype, jnp.floating) else v, tree)


def _float64_pass(layer, p64, a64, d64, key, train) -> tuple[list, list, float]:
    """At one float64 point: ``jax.vjp``'s gradients, the hand-written backward's, and the
    layer's largest gradient entry (the size its rounding is measured at)."""
    exact = [np.asarray(e) for e in jax.tree.leaves(_vjp(layer, p64, a64, d64, key, train))]
    _, cache = layer.forward(p64, a64, key=key, train=train)     # eager: a cache may hold
    hand = [np.asarray(h) for h in jax.tree.leaves(_backward(layer, p64, cache, d64))]  # ints
    return exact, hand, max((float(np.max(np.abs(e), initial=0.0)) for e in exact), default=0.0)


def _unit_scaled(a):
    """Each floating array of the input divided by its largest magnitude (where above 1)."""
    def unit(v):
        if not (hasattr(v, "dtype") and jnp.issubdtype(v.dtype, jnp.floating)) or not v.size:
            return v
        m = float(np.max(np.abs(v)))
        return v / m if np.isfinite(m) and m > 1 else v
    return jax.tree.map(unit, a)


def _worst(got, want) -> float:
    """The largest relative error over matching leaves (NaN counts as infinite)."""
    errors = [compare(g, w)[1] for g, w in zip(got, want)]
    return max((math.inf if math.isnan(e) else e for e in errors), default=0.0)


def _fd_rows(i, layer, p, a, delta, key, train, names, got, rng, path=""):
    """Central differences in float64 of ``<delta, apply(p, a)>`` along one random direction per
    gradient leaf, against the hand-written gradient's inner product with that direction."""
    to64 = lambda t: jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), t)  # noqa: E731
    leaves, treedef = jax.tree.flatten(to64((p, a)))
    d64 = to64(delta)
    # the hand-written side keeps its dtype's rounding: float64 differences cannot ask for less
    tol = max(TOLERANCES["finite differences"], TOLERANCES.get(_dtype_of(a), 0.0))
    rows = []
    for j, (quantity, g) in enumerate(zip(names, got)):
        v = jnp.asarray(rng.normal(size=leaves[j].shape))

        def phi(t, leaves, v, key, j=j):
            p_t, a_t = jax.tree.unflatten(
                treedef, [leaf + t * v if k == j else leaf for k, leaf in enumerate(leaves)])
            y = layer.apply(p_t, a_t, key=key, train=train)
            return sum(jnp.sum(d * o) for d, o in zip(jax.tree.leaves(d64), jax.tree.leaves(y)))

        before, at, after = (float(phi(t, leaves, v, key)) for t in (-FD_STEP, 0.0, FD_STEP))
        numeric = (after - before) / (2 * FD_STEP)
        # one-sided slopes that disagree: no derivative to compare with along v
        right, left = (after - at) / FD_STEP, (at - before) / FD_STEP
        kink = abs(right - left) > 1e-4 * (abs(right) + abs(left)) + 1e-8
        analytic = float(jnp.sum(jnp.asarray(g, jnp.float64) * v))
        rows.append(Row(i, layer.name, quantity, "finite differences",
                        *compare([analytic], [numeric]), tol, kink, path))
    return rows


def _check_point(what: str, params, x, targets=None) -> None:
    """The audit's point: ``x`` an array (or, for a merge, a tuple of them) holding at least one
    example, and ``x``, ``params`` and real ``targets`` finite where concrete.  At NaN or
    infinity gradients are not defined (and ``jax.grad`` itself routes NaNs by convention), so
    no layer could be blamed."""
    xs = tuple(x) if isinstance(x, (tuple, list)) and x else (x,)
    for v in xs:
        check_array(what, "x", v, "with a batch axis")
        if not v.shape:
            raise ValueError(f"{what}: x needs a batch axis, got a scalar (shape ()); give a "
                             f"batch of shape (N, ...)")
        if v.shape[0] == 0:
            raise ValueError(f"{what}: x is an empty batch (shape {tuple(v.shape)}); the audit "
                             f"needs at least one example")
    named = [*(("x", v) for v in xs), *zip(_leaf_names(params), jax.tree.leaves(params))]
    if targets is not None and jnp.issubdtype(getattr(targets, "dtype", int), jnp.floating):
        named.append(("targets", targets))
    for name, value in named:
        if not (hasattr(value, "dtype") and jnp.issubdtype(value.dtype, jnp.inexact)
                and is_concrete(value)):
            continue
        values = np.asarray(value, np.float64 if jnp.issubdtype(value.dtype, jnp.floating)
                            else np.complex128)
        nan, inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
        if nan or inf:
            raise ValueError(f"{what}: the input holds non-finite values: {name} has {nan} NaN "
                             f"and {inf} infinite of its {values.size} entries; gradients are "
                             f"compared where they are defined -- audit a finite batch")


def _rng(what: str, seed) -> np.random.Generator:
    """The random directions' generator for ``seed``, an int of 64 bits (negative ones too, as
    ``jaxcnn train --seed`` takes them)."""
    return np.random.default_rng(check_seed(what, seed) % 2 ** 64)


def _require_x64(what: str) -> None:
    if not jax.config.jax_enable_x64:
        raise ValueError(f"{what} runs in float64: enable it first with "
                         f"jax.config.update('jax_enable_x64', True)")


def check_grads(net: Layer, loss: Loss, params, x, targets, *, key=None, train: bool = True,
                finite_differences: bool = False, seed: int = 0) -> GradReport:
    """Audit ``net``'s hand-written gradients on one batch; see the module docstring.

    Args:
      net: a network (``serial``, and every combinator of ``jaxcnn.graph`` inside it: each
        leaf layer is audited, named by its path) or a single layer.
      loss: ``softmax_cross_entropy``, ``squared_error`` or any ``Loss``.
      params, x, targets: as for ``value_and_grad``; the comparison runs in ``x``'s dtype.
      key, train: as for ``forward`` (stochastic pooling needs a key when ``train``).
      finite_differences: also compare each layer with float64 central differences
        (needs ``jax_enable_x64``).
      seed: for the random finite-difference directions.

    Returns:
      A ``GradReport`` with one row per leaf layer and gradient leaf (plus the input residual;
      ``layer`` is the index of the top-level layer that holds the leaf, ``path`` its path
      when it sits inside a combinator), and end-to-end rows (``layer`` None) for the whole
      hand-written chain.
    """
    check_net_and_loss("check_grads", net, loss)
    params, x, targets = as_jax((params, x, targets))   # as the layers take NumPy arrays
    if finite_differences:
        _require_x64("check_grads(finite_differences=True)")
    _check_point("check_grads", params, x, targets)
    rng = _rng("check_grads", seed)
    seen, y = _run_leaves(net, params, x, key, train)
    loss.value(y, targets)          # the targets' checks, while they are concrete (the rest jits)
    deltas = _reference_deltas(net, loss, params, x, targets, key, train, seen)
    rows = []
    for path, (leaf, p, a, cache, k, y_leaf) in seen.items():
        rows += _layer_rows(path[0] if path else 0, leaf, p, a, deltas[path], cache, k, train,
                            finite_differences, rng,
                            path_name(net, path) if len(path) > 1 else "", y=y_leaf)
    rows += _end_to_end_rows(net, loss, params, x, targets, key, train)
    return GradReport(tuple(rows), _dtype_of(x))


def _run_leaves(net: Layer, params, x, key, train) -> tuple[dict, object]:
    """The net's forward with every leaf instrumented (``core.map_leaves``): per leaf path, in
    the order the forward runs them, ``(leaf, params, input, cache, key, output)`` -- what each
    leaf really sees inside the net -- and the net's output.  Eager, so that the layers check
    their concrete inputs (stochastic pooling's domain); the audit's other passes are jitted,
    one program per layer and pass."""
    seen = {}

    def record(path, leaf):
        def forward(p, a, *, key=None, train=True):
            y, cache = _pair(leaf, "forward", leaf.forward(p, a, key=key, train=train),
                            "(y, cache)")
            seen[path] = (leaf, p, a, cache, key, y)
            return y, cache

        return leaf._replace(forward=forward)

    y, _ = map_leaves(net, record).forward(params, x, key=key, train=train)
    return seen, y


def _reference_deltas(net: Layer, loss: Loss, params, x, targets, key, train, seen) -> dict:
    """The reference residual of every leaf's output, by autodiff through everything above
    it: a zero "tap" added to each leaf's output (in ``apply``) has the gradient
    ``dJ/d(output)``; per leaf path."""
    def loss_with_taps(taps, params, x, targets, key):
        def tapped(path, leaf):
            def apply(p, a, *, key=None, train=True):
                return jax.tree.map(jnp.add, leaf.apply(p, a, key=key, train=train), taps[path])

            return leaf._replace(apply=apply)

        y = map_leaves(net, tapped).apply(params, x, key=key, train=train)
        return loss.value(y, targets)

    return jax.jit(jax.grad(loss_with_taps))(
        {path: jax.tree.map(jnp.zeros_like, item[-1]) for path, item in seen.items()},
        params, x, targets, key)


def _end_to_end_rows(net, loss, params, x, targets, key, train) -> list[Row]:
    """The whole hand-written chain against ``jax.grad`` of the plain forward; in float32 at
    the same point for a 16-bit ``x``, whose chain would compound every layer's rounding."""
    dtype, reference = _dtype_of(x), "jax.grad"
    if dtype in LOW_PRECISION:
        params, x, targets = _widen((params, x, targets))
        dtype, reference = "float32", "jax.grad float32"
    grads, ref = jax.jit(_end_to_end(net, loss), static_argnames="train")(
        params, x, targets, key, train=train)
    tol = TOLERANCES.get(dtype, TOLERANCES["float32"])
    if jax.tree.structure(grads) != jax.tree.structure(ref):
        raise ValueError(f"check_grads: the hand-written gradients have the structure "
                         f"{jax.tree.structure(grads)}, the params {jax.tree.structure(ref)}")
    own = jax.tree.leaves(jax.jit(_own_rounding(net, loss), static_argnames="train")(
        params, x, targets, key, ref, train=train))
    rows = []
    for quantity, g, w, floor, o in zip(_leaf_names(ref), jax.tree.leaves(grads),
                                        jax.tree.leaves(ref), noise_floor(ref, tol), own):
        misfit = _misfit(g, w)
        floor = max(float(floor), ROUNDING_FACTOR * float(o) / tol)
        rows.append(Row(None, "network", quantity + misfit, reference,
                        *_errors(misfit, g, w, floor), tol))
    return rows


def _own_rounding(net: Layer, loss: Loss) -> Callable:
    """``(params, x, targets, key, ref, train) -> per array max |jax.grad(c J) / c - ref|``,
    ``c = _OWN_ROUNDING_SCALE``: how far ``jax.grad``'s own rounding moves each array."""
    c = _OWN_ROUNDING_SCALE
    scaled = loss._replace(value=lambda y, t: loss.value(y, t) * jnp.asarray(c, y.dtype))
    auto = loss_and_grad(net, scaled, "autodiff")

    def own(params, x, targets, key, ref, train):
        again = auto(params, x, targets, key=key, train=train)[1]
        return jax.tree.map(lambda a, r: jnp.max(jnp.abs(a / jnp.asarray(c, a.dtype) - r),
                                                 initial=0.0), again, ref)

    return own


NOISE_ULPS = 100
"""End to end, an error below ``NOISE_ULPS`` rounding units of the largest gradient entry of
the same layer's arrays is rounding (``noise_floor``)."""


def noise_floor(grads, tol: float | None = None) -> list:
    """Per gradient array (in ``tree_leaves`` order), the smallest scale it is compared at end
    to end, so that an error below ``NOISE_ULPS * eps * top`` passes (``top``: the largest entry
    of the arrays of its layer -- the leaves of one params dict): ``NOISE_ULPS * eps * top /
    tol``.  An array whose true gradient is zero -- a bias right before a normalisation, which
    subtracts it again -- holds rounding noise on both sides, which its own scale would call a
    100% error; its layer's kernel gradient sets the noise's size.  Another layer's does not:
    a layer whose gradients are all small (the first of a deep sigmoid net) is compared at
    its own scale.  ``tol=None``: each array's dtype's (``TOLERANCES``).  Float32 scalars,
    traceable (``gradient_check`` runs it under ``jit``).  The end-to-end comparisons also
    allow the reference's own rounding (``_own_rounding``)."""
    leaves, groups = jax.tree.leaves(grads), _layer_groups(grads)
    top = {}
    for g, leaf in zip(groups, leaves):
        m = jnp.max(jnp.abs(leaf), initial=0.0).astype(jnp.float32)
        top[g] = jnp.maximum(top[g], m) if g in top else m
    return [NOISE_ULPS * float(jnp.finfo(leaf.dtype).eps) * top[g]
            / (TOLERANCES[str(jnp.dtype(leaf.dtype))] if tol is None else tol)
            for g, leaf in zip(groups, leaves)]


def _layer_groups(tree) -> list[int]:
    """Per leaf of a params tree, the number of the layer it belongs to: leaves that share
    their path up to a dict key (one layer's params dict) share it."""
    index: dict = {}
    return [index.setdefault(path[:-1] if path and isinstance(path[-1], jax.tree_util.DictKey)
                             else path, len(index))
            for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


_OWN_ROUNDING_SCALE = 0.75
"""The loss scaling at which ``_relative_errors`` measures the reference's own rounding: the
same ``jax.grad`` of ``0.75 J``, divided by 0.75, differs from it by rounding alone."""


def check_layer(layer: Layer, input_shape, *, batch: int = 2, dtype=jnp.float64, key=None,
                train: bool = True, finite_differences: bool = False, seed: int = 0,
                x=None, params=None) -> GradReport:
    """Audit one layer -- any object with the layer protocol -- on random params and inputs.

    The params are ``init(key, input_shape)``'s, each entry moved by a random normal step
    (``_moved``: init's ones and zeros -- a scale, a bias -- would hide a backward or forward
    that leaves them out), cast to ``dtype``, unless given as ``params``; the input is standard
    normal of shape ``(batch, *input_shape)`` unless given as ``x`` (stochastic pooling wants
    non-negative inputs), and the residual of the output is a random normal cotangent.  A
    merge takes a tuple of shapes (and of arrays as ``x``), a branch point gives a tuple of
    outputs.  The layer's ``init`` output shape is checked against its forward, and its
    forward's output against its apply's.  A layer with a state (BatchNorm) is audited in
    training mode and, bound to the state one training step leaves (``Layer.state``), in
    evaluation mode too: rows of path ``"train=False"``.
    """
    what = _layer_what(layer)
    if finite_differences:
        _require_x64(f"{what} with finite_differences=True")
    elif jnp.dtype(dtype) == jnp.float64:
        _require_x64(f"{what} with dtype=float64")
    batch = positive_int(what, "batch", batch)
    shapes = _shapes(what, input_shape)
    rng = _rng(what, seed)
    init_key, key_default = jax.random.split(jax.random.key(seed))
    made, out_shape = _pair(layer, "init", layer.init(init_key, shapes),
                            "(params, output_shape)")
    if params is not None and jax.tree.structure(params) != jax.tree.structure(made):
        raise ValueError(f"{what}: params have the structure {jax.tree.structure(params)}, "
                         f"the layer's init makes {jax.tree.structure(made)}")
    params = jax.tree.map(lambda v: jnp.asarray(v, dtype), _moved(made, seed) if params is None
                          else params)
    many = bool(shapes) and isinstance(shapes[0], tuple)
    if x is None:
        x = tuple(rng.normal(size=(batch, *s)) for s in shapes) if many else \
            rng.normal(size=(batch, *shapes))
    if many and (not isinstance(x, (tuple, list)) or len(x) != len(shapes)):
        raise ValueError(f"{what}: x must be a tuple of {len(shapes)} arrays, one per input "
                         f"shape, got {type(x).__name__}")
    x = tuple(jnp.asarray(v, dtype) for v in x) if many else jnp.asarray(x, dtype)
    _check_point(what, params, x)
    given = tuple(tuple(v.shape[1:]) for v in x) if many else tuple(x.shape[1:])
    if given != shapes:
        raise ValueError(f"{what}: x has the per-example shape {given}, input_shape says "
                         f"{shapes} (batch axis excluded)")
    key = key_default if key is None else check_key(what, key)
    y, cache = _pair(layer, "forward", layer.forward(params, x, key=key, train=train),
                    "(y, cache)")
    got = tuple(tuple(v.shape[1:]) for v in y) if isinstance(y, tuple) else tuple(y.shape[1:])
    want = tuple(tuple(s) for s in out_shape) if isinstance(y, tuple) else tuple(out_shape)
    if got != want:
        raise ValueError(f"{layer.name}: init says the output shape is {want} but forward "
                         f"gives {got} (batch axis excluded)")
    delta = jax.tree.map(lambda v: jnp.asarray(rng.normal(size=v.shape), v.dtype), y)
    rows = _layer_rows(0, layer, params, x, delta, cache, key, train, finite_differences, rng,
                       y=y)
    if train and getattr(layer, "state", None) is not None:
        rows += _evaluated_rows(layer, shapes, params, x, cache, key, finite_differences, rng)
    return GradReport(tuple(rows), _dtype_of(x))


def _moved(params, seed: int):
    """``params`` with every floating entry moved by a normal step of half its array's spread
    (of 1/2 where the entries are all equal: a scale of ones, a bias of zeros), drawn from
    its own generator so that the input and residual are those of ``seed`` as before."""
    rng = np.random.default_rng([int(seed) % 2 ** 64, 1])

    def move(v):
        if not jnp.issubdtype(jnp.asarray(v).dtype, jnp.floating):
            return v
        v = np.asarray(v, np.float64)
        return v + 0.5 * (float(np.std(v)) or 1.0) * rng.normal(size=v.shape)

    return jax.tree.map(move, params)


def _evaluated_rows(layer, shapes, params, x, cache, key, finite_differences, rng) -> list[Row]:
    """The rows of ``layer`` bound to the state one training step on ``x`` leaves (``init``'s
    blended with the batch's statistics, so neither zeros nor ones), evaluated: the backward
    of eq. 7.13 with fixed statistics, which training-mode rows never run -- the layer
    ``state.bind`` makes.  None where the state's ``update`` cannot read ``forward``'s cache
    (a wrapper around a stateful layer, with a cache of its own)."""
    try:
        state = layer.state.update(layer.state.init(shapes), cache)
    except (ValueError, TypeError):     # a wrapper's cache the state cannot read: as before
        return []
    bound = layer.state.bind(state)
    y, cache = _pair(bound, "forward", bound.forward(params, x, key=key, train=False),
                     "(y, cache)")
    delta = jax.tree.map(lambda v: jnp.asarray(rng.normal(size=v.shape), v.dtype), y)
    return _layer_rows(0, bound, params, x, delta, cache, key, False, finite_differences, rng,
                       path=f"{layer.name} (train=False)", y=y)


def _layer_what(layer) -> str:
    """``check_layer(name)`` for messages; a ``TypeError`` unless ``layer`` has the protocol."""
    fns = ("init", "forward", "backward", "apply")
    if not all(callable(getattr(layer, f, None)) for f in fns) or not hasattr(layer, "name"):
        raise TypeError(f"check_layer: expected a layer (init, forward, backward, apply and "
                        f"name; jc.Conv2D(...), jc.serial(...)), got {type(layer).__name__}")
    return f"check_layer({layer.name})"


def _shapes(what: str, input_shape):
    """``input_shape`` as a tuple of ints, or a tuple of such tuples (a merge's inputs)."""
    def one(shape):
        if not isinstance(shape, (tuple, list)) or not all(
                isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in shape):
            raise TypeError(f"{what}: input_shape must be a tuple of ints (one example's "
                            f"shape), or a tuple of such tuples for a merge, got "
                            f"{input_shape!r}")
        return tuple(int(d) for d in shape)

    if isinstance(input_shape, np.ndarray) and input_shape.ndim == 1:
        input_shape = tuple(input_shape.tolist())           # np.array([8, 8, 1]) too
    if isinstance(input_shape, (tuple, list)) and input_shape \
            and all(isinstance(s, (tuple, list)) for s in input_shape):
        return tuple(one(s) for s in input_shape)
    return one(input_shape)


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
    """``"serial[0] Conv2D params['w']"`` per parameter leaf, in ``tree_leaves`` order; inside
    combinators the leaf's path, ``"serial[9] > parallel[0] > serial[0] Conv2D params['w']"``."""
    names = []
    for tree_path, _ in jax.tree_util.tree_leaves_with_path(params):
        layer, path, k = net, [], 0
        while layer.layers and k < len(tree_path) and \
                isinstance(tree_path[k], jax.tree_util.SequenceKey):
            path.append(tree_path[k].idx)
            layer, k = layer.layers[tree_path[k].idx], k + 1
        where = path_name(net, tuple(path)) + " " if path else ""
        names.append(f"{where}params{jax.tree_util.keystr(tuple(tree_path[k:]))}")
    return names


@memoise
def _relative_errors(net: Layer, loss: Loss) -> Callable:
    """Jitted ``(params, x, targets, key) -> [relative error per parameter leaf]`` of
    ``_end_to_end`` in training mode, computed in the params' dtype on the device, each array
    at no smaller a scale than ``noise_floor``'s (for its dtype's tolerance) and than
    ``ROUNDING_FACTOR`` times the reference's own rounding (``_own_rounding``)."""
    both, own_rounding = _end_to_end(net, loss), _own_rounding(net, loss)

    def relative(a, b, floor):
        scale = jnp.maximum(jnp.maximum(jnp.max(jnp.abs(b)), floor), jnp.finfo(b.dtype).tiny)
        return jnp.max(jnp.abs(a - b)) / scale

    def errors(params, x, targets, key):
        hand, ref_tree = both(params, x, targets, key, True)
        own = jax.tree_util.tree_leaves(own_rounding(params, x, targets, key, ref_tree, True))
        ref = jax.tree_util.tree_leaves(ref_tree)
        floors = [jnp.maximum(f, ROUNDING_FACTOR * o.astype(jnp.float32)
                              / TOLERANCES[str(jnp.dtype(b.dtype))]).astype(b.dtype)
                  for f, o, b in zip(noise_floor(ref_tree), own, ref)]
        return [relative(a, b, f) for a, b, f in
                zip(jax.tree_util.tree_leaves(hand), ref, floors)]

    return jax.jit(errors)


def gradient_check(net: Layer, loss: Loss, params: Params, x, targets, *,
                   key=None) -> GradCheck:
    """Compare the hand-written gradients with ``jax.grad`` of the same forward on one batch.

    The end-to-end comparison of ``check_grads``, jitted and reduced on the device to one
    relative error per parameter array: cheap enough for ``fit`` to run every few steps.
    A NaN error counts as the worst.
    """
    check_net_and_loss("gradient_check", net, loss)
    if _dtype_of(x) in LOW_PRECISION:          # as check_grads' end-to-end rows
        params, x, targets = _widen((params, x, targets))
    errors = _relative_errors(net, loss)
    values = [float(e) for e in errors(params, x, targets, key)]
    if any(float(np.max(np.abs(v), initial=0.0)) > 1 for v in jax.tree.leaves(x)):
        # again at the batch scaled to entries of at most 1: a gradient dwarfed by another
        # only at huge inputs (a bias's sum of delta beside sum delta x) is compared at its size
        unit = [float(e) for e in errors(params, _unit_scaled(x), targets, key)]
        values = [math.nan if math.isnan(u) or math.isnan(v) else max(u, v)
                  for u, v in zip(unit, values)]
    errs = dict(zip(_array_names(net, params), values))
    worst_name = max(errs, key=lambda k: math.inf if math.isnan(errs[k]) else errs[k]) \
        if errs else "-"
    worst = max((v if not math.isnan(v) else math.inf for v in errs.values()), default=0.0)
    return GradCheck(errs, worst, worst_name)


def default_tolerance(params: Params) -> float:
    """``TOLERANCES`` for the dtype ``gradient_check`` compares in: ``1e-9`` relative error
    when the params' widest float dtype is float64, else ``1e-4`` (float32, and float16 or
    bfloat16 params, whose end-to-end comparison runs in float32) -- ``fit``'s default
    ``grad_tol``."""
    widest = max((np.finfo(jax.dtypes.canonicalize_dtype(leaf.dtype)).bits  # as JAX computes:
                  for leaf in jax.tree_util.tree_leaves(params)      # float32 without x64
                  if jnp.issubdtype(leaf.dtype, jnp.floating)), default=32)
    return TOLERANCES["float64" if widest >= 64 else "float32"]

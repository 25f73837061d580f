"""Networks that branch and merge: stax-style combinators on the same ``Layer`` contract.

A layer with several inputs or outputs takes or returns a *tuple* of arrays, and its ``init``
takes or returns a tuple of per-example shapes.  Three rules of back-propagation, one per kind
of node (``docs/derivation.md``, eqs. 6.5-6.8), are all a branching network adds to the chain
rule of ``serial`` (eq. 6.1):

- a **branch point** (``FanOut``) sends one array down several paths; its residual is the
  **sum** of the residuals the paths send back (eq. 6.5, the multivariate chain rule);
- a **sum** (``FanInSum``) passes its residual to every input unchanged: it **copies** it
  (eq. 6.6);
- a **concatenation** (``FanInConcat``) passes each input its own slice: it **splits** it
  (eq. 6.7);
- ``parallel`` runs one layer per path, each with its own input, parameters and residual
  (eq. 6.8).

``residual(*layers)`` is He et al.'s block, ``x + F(x)``, built from them.  Errors name the
combinator and the path (``serial[2] parallel[0] Conv2D: ...``) at trace time.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.core import (Layer, Shape, Static, check_cache, check_no_params, config, describe,
                         in_layer, layer_keys, numpy_as_jax, positive_int, split_key)
from jaxcnn.network import _like, serial

__all__ = ["FanOut", "parallel", "FanInSum", "FanInConcat", "Identity", "residual"]


class MergeCache(NamedTuple):
    """What a branch or merge saves: its inputs' shapes and dtype (static)."""

    inputs: Static


def is_shape(shape) -> bool:
    """A per-example shape: a tuple (or list) of ints, as opposed to a tuple of shapes."""
    return isinstance(shape, (tuple, list)) and all(
        isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in shape)


def check_shapes(name: str, shapes, n: int | None = None, nested: bool = False) -> tuple:
    """``init``'s tuple of per-example shapes (of length ``n`` if given); with ``nested``, a
    branch's entry may itself be a tuple of shapes (a branch that branches again), as
    ``check_arrays``'s arrays."""
    def entry(s) -> bool:
        return is_shape(s) or nested and isinstance(s, (tuple, list)) and bool(s) and all(
            map(entry, s))

    def as_tuple(s):
        return tuple(int(d) for d in s) if is_shape(s) else tuple(map(as_tuple, s))

    if is_shape(shapes) or not isinstance(shapes, (tuple, list)) or not all(map(entry, shapes)):
        raise ValueError(f"{name}: expected a tuple of per-example input shapes (one per "
                         f"branch), got {shapes!r} -- put FanOut(n) or parallel(...) before it")
    if n is not None and len(shapes) != n:
        raise ValueError(f"{name}: expected {n} input shapes, one per branch, got {len(shapes)}: "
                         f"{as_tuple(shapes)}")
    return as_tuple(shapes)


def check_arrays(name: str, xs, n: int | None = None, what: str = "inputs",
                 nested: bool = False) -> tuple:
    """A tuple of arrays, one per branch (``n`` of them if given); with ``nested``, a branch's
    entry may itself be a tuple of arrays (the outputs of a branch that branches again)."""
    def entry(x) -> bool:
        return hasattr(x, "shape") or nested and isinstance(x, (tuple, list)) and all(
            entry(e) for e in x)
    if hasattr(xs, "shape") or not isinstance(xs, (tuple, list)) or not all(map(entry, xs)):
        got = f"an array of shape {tuple(xs.shape)}" if hasattr(xs, "shape") else \
            f"a {type(xs).__name__} of {_described(xs)}" if isinstance(xs, (tuple, list)) else \
            type(xs).__name__
        raise TypeError(f"{name}: expected a tuple of arrays (one per branch) as {what}, got "
                        f"{got} -- put FanOut(n) or parallel(...) before it")
    if n is not None and len(xs) != n:
        raise ValueError(f"{name}: expected {n} {what}, one per branch, got {len(xs)} of "
                         f"shapes {_described(xs)}")
    if not xs:
        raise ValueError(f"{name}: expected at least one of the {what}, got an empty "
                         f"{type(xs).__name__}")
    return tuple(xs)


def _described(xs) -> str:
    """The shapes of a (nested) tuple of arrays, ``((2, 3), ((2, 3), (2, 3)))``; anything
    else by its type's name."""
    def one(x):
        if hasattr(x, "shape"):
            return tuple(x.shape)
        if isinstance(x, (tuple, list)):
            return tuple(one(e) for e in x)
        return type(x).__name__
    return str(one(xs))


def check_floating(name: str, xs) -> None:
    """Every array of ``xs`` (one, or a tuple of them) is floating point: the residuals of a
    merge or a branch are real numbers (a sum of bools would be their logical or)."""
    for x in jax.tree.leaves(xs):
        if hasattr(x, "dtype") and not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{name}: expected floating-point inputs, got dtype {x.dtype} -- "
                            f"convert it with x.astype(jnp.float32)")


def _static(xs) -> Static:
    return Static(tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in xs))


def _check_delta(name: str, cache: MergeCache, deltas) -> None:
    want = tuple(tuple(s.shape) for s in cache.inputs.value)
    got = tuple(tuple(getattr(d, "shape", ())) for d in deltas)
    if got != want:
        raise ValueError(f"{name}: backward got deltas of shapes {got}, expected the forward "
                         f"inputs' shapes {want}")
    _check_dtypes(name, cache.inputs.value, deltas)


def _check_dtypes(name: str, inputs, deltas) -> None:
    """Each residual has the dtype of the array it is the residual of, as every layer's."""
    for s, d in zip(inputs, deltas):
        if d.dtype != s.dtype:
            raise TypeError(f"{name}: backward got delta of dtype {d.dtype}, expected {s.dtype}")


def FanOut(n: int) -> Layer:
    """``x -> (x, ..., x)``, ``n`` copies: a branch point.  Backward (eq. 6.5): the residual of
    ``x`` is the sum of the ``n`` residuals, ``dx = delta_1 + ... + delta_n``."""
    name = "FanOut"
    n = positive_int(name, "n", n)

    def init(key, input_shape):
        if not is_shape(input_shape):
            raise ValueError(f"{name}: expected one per-example input shape, got "
                             f"{input_shape!r} -- merge branches with FanInSum or FanInConcat")
        return (), (tuple(input_shape),) * n

    def forward(params, x, *, key=None, train=True):
        check_no_params(name, params)
        if not hasattr(x, "shape"):
            raise TypeError(f"{name}: expected one array, got {type(x).__name__} -- merge "
                            f"branches with FanInSum or FanInConcat")
        check_floating(name, x)
        return (x,) * n, MergeCache(_static((x,)))

    def backward(params, cache, delta):
        check_no_params(name, params)
        check_cache(name, cache, MergeCache)
        deltas = check_arrays(name, delta, n, "deltas")
        _check_delta(name, cache._replace(inputs=Static(cache.inputs.value * n)), deltas)
        return (), sum(deltas[1:], deltas[0])                                    # eq. 6.5

    def apply(params, x, *, key=None, train=True):
        return forward(params, x)[0]

    return numpy_as_jax(Layer(init, forward, backward, apply, name,
                              config=config(kind="fanout", n=n)))


def parallel(*layers: Layer) -> Layer:
    """``(x_1, ..., x_n) -> (layer_1(x_1), ..., layer_n(x_n))``: one layer per branch.

    Params are the tuple of the layers' params; a given ``key`` is split into one per layer.
    Backward (eq. 6.8): each layer turns the residual of its own output into its gradients
    and the residual of its own input.  Errors name the branch: ``parallel[1] Conv2D: ...``.
    """
    if not layers:
        raise ValueError("parallel: needs at least one layer")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"parallel: argument {i} is {type(layer).__name__}, not a Layer")
    n = len(layers)
    name = "parallel(" + ", ".join(layer.name for layer in layers) + ")"

    def checked(params):
        if not isinstance(params, (tuple, list)) or len(params) != n:
            got = len(params) if isinstance(params, (tuple, list)) else type(params).__name__
            raise ValueError(f"parallel: expected params as a tuple of {n} entries, one per "
                             f"branch, got {got} -- params from another network?")
        return params

    def init(key, input_shapes):
        shapes = check_shapes("parallel", input_shapes, n, nested=True)
        params, outs = [], []
        for i, (layer, k, shape) in enumerate(zip(layers, split_key("parallel", key, n), shapes)):
            with in_layer(f"parallel[{i}]"):
                p, out = layer.init(k, shape)
            params.append(p)
            outs.append(out)
        return tuple(params), tuple(outs)

    def forward(params, xs, *, key=None, train=True):
        xs = check_arrays("parallel", xs, n, nested=True)
        ys, caches = [], []
        for i, (layer, p, x, k) in enumerate(zip(layers, checked(params), xs,
                                                 layer_keys(key, n, "parallel"))):
            with in_layer(f"parallel[{i}]"):
                y, cache = layer.forward(p, x, key=k, train=train)
            ys.append(y)
            caches.append(cache)
        return tuple(ys), tuple(caches)

    def backward(params, cache, deltas):
        params = checked(params)
        deltas = check_arrays("parallel", deltas, n, "deltas", nested=True)
        if not isinstance(cache, tuple) or len(cache) != n:
            got = len(cache) if isinstance(cache, tuple) else type(cache).__name__
            raise ValueError(f"parallel: expected a cache of {n} entries from this "
                             f"combinator's forward, got {got}")
        grads, dxs = [], []
        for i, (layer, p, c, d) in enumerate(zip(layers, params, cache, deltas)):   # eq. 6.8
            with in_layer(f"parallel[{i}]"):
                g, dx = layer.backward(p, c, d)
            grads.append(g)
            dxs.append(dx)
        return _like(params, grads), tuple(dxs)

    def apply(params, xs, *, key=None, train=True):
        xs = check_arrays("parallel", xs, n, nested=True)
        ys = []
        for i, (layer, p, x, k) in enumerate(zip(layers, checked(params), xs,
                                                 layer_keys(key, n, "parallel"))):
            with in_layer(f"parallel[{i}]"):
                ys.append(layer.apply(p, x, key=k, train=train))
        return tuple(ys)

    return Layer(init, forward, backward, apply, name, tuple(layers), config(kind="parallel"),
                 build=parallel)


def FanInSum() -> Layer:
    """``(x_1, ..., x_n) -> x_1 + ... + x_n``, inputs of one shape: a sum merge, as the skip
    of a residual block.  Backward (eq. 6.6): every input gets the whole residual,
    ``dx_i = delta``."""
    name = "FanInSum"

    def init(key, input_shapes):
        shapes = check_shapes(name, input_shapes)
        if len(set(shapes)) > 1:
            raise ValueError(f"{name}: the inputs must have one shape to be added, got "
                             f"{', '.join(map(str, shapes))}")
        return (), shapes[0]

    def forward(params, xs, *, key=None, train=True):
        check_no_params(name, params)
        xs = check_arrays(name, xs)
        check_floating(name, xs)
        if len({(tuple(x.shape), x.dtype) for x in xs}) > 1:
            raise ValueError(f"{name}: the inputs must have one shape and dtype to be added, "
                             f"got {', '.join(f'{tuple(x.shape)} {x.dtype}' for x in xs)}")
        return sum(xs[1:], xs[0]), MergeCache(_static(xs))

    def backward(params, cache, delta):
        check_no_params(name, params)
        check_cache(name, cache, MergeCache)
        shapes = cache.inputs.value
        if tuple(getattr(delta, "shape", ())) != tuple(shapes[0].shape):
            raise ValueError(f"{name}: backward got delta of shape "
                             f"{tuple(getattr(delta, 'shape', ()))}, expected the forward "
                             f"output's shape {tuple(shapes[0].shape)}")
        _check_dtypes(name, shapes[:1], (delta,))
        return (), (delta,) * len(shapes)                                        # eq. 6.6

    def apply(params, xs, *, key=None, train=True):
        return forward(params, xs)[0]

    return numpy_as_jax(Layer(init, forward, backward, apply, name,
                              config=config(kind="fanin_sum")))


def FanInConcat(axis: int = -1) -> Layer:
    """``(x_1, ..., x_n) -> concatenate(x_i, axis)`` along a per-example ``axis`` (batch axis
    excluded: ``-1``, the default, is the channels of ``(N, H, W, C)``; ``0`` is ``H``).
    Backward (eq. 6.7): the residual is split back, each input its own slice of ``delta``."""
    name = "FanInConcat"
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        raise TypeError(f"{name}: axis must be an int (a per-example axis), got {axis!r}")
    axis = int(axis)

    def per_example_axis(rank: int) -> int:
        """``axis`` of a per-example shape of ``rank``, as a non-negative int."""
        if not -rank <= axis < rank:
            raise ValueError(f"{name}: axis {axis} is out of range for per-example inputs of "
                             f"rank {rank} (batch axis excluded)")
        return axis % rank

    def merged(shapes) -> Shape:
        ranks = {len(s) for s in shapes}
        if len(ranks) > 1:
            raise ValueError(f"{name}: the inputs must have one rank, got shapes "
                             f"{', '.join(map(str, shapes))}")
        a = per_example_axis(ranks.pop())
        rest = {s[:a] + s[a + 1:] for s in shapes}
        if len(rest) > 1:
            raise ValueError(f"{name}: the inputs must agree on every axis but {axis} to be "
                             f"concatenated, got {', '.join(map(str, shapes))}")
        out = list(shapes[0])
        out[a] = sum(s[a] for s in shapes)
        return tuple(out)

    def init(key, input_shapes):
        return (), merged(check_shapes(name, input_shapes))

    def forward(params, xs, *, key=None, train=True):
        check_no_params(name, params)
        xs = check_arrays(name, xs)
        check_floating(name, xs)
        merged([tuple(x.shape[1:]) for x in xs])
        if len({x.shape[0] for x in xs}) > 1:
            raise ValueError(f"{name}: the inputs must have one batch size, got "
                             f"{', '.join(str(x.shape[0]) for x in xs)}")
        if len({x.dtype for x in xs}) > 1:
            raise TypeError(f"{name}: the inputs must have one dtype, got "
                            f"{', '.join(str(x.dtype) for x in xs)}")
        a = per_example_axis(xs[0].ndim - 1) + 1
        return jnp.concatenate(xs, axis=a), MergeCache(_static(xs))

    def backward(params, cache, delta):
        check_no_params(name, params)
        check_cache(name, cache, MergeCache)
        shapes = [tuple(s.shape) for s in cache.inputs.value]
        want = (shapes[0][0], *merged([s[1:] for s in shapes]))
        if tuple(getattr(delta, "shape", ())) != want:
            raise ValueError(f"{name}: backward got delta of shape "
                             f"{tuple(getattr(delta, 'shape', ()))}, expected the forward "
                             f"output's shape {want}")
        _check_dtypes(name, cache.inputs.value[:1], (delta,))
        a = per_example_axis(len(shapes[0]) - 1) + 1
        cuts = np.cumsum([s[a] for s in shapes])[:-1].tolist()
        return (), tuple(jnp.split(delta, cuts, axis=a))                         # eq. 6.7

    def apply(params, xs, *, key=None, train=True):
        return forward(params, xs)[0]

    return numpy_as_jax(Layer(init, forward, backward, apply, name,
                              config=config(kind="fanin_concat", axis=axis)))


class IdentityCache(NamedTuple):
    """What ``Identity`` saves: its input's shape and dtype (static)."""

    input: Static


def Identity() -> Layer:
    """``x -> x``; backward ``dx = delta``: the skip path of a residual block."""
    name = "Identity"

    def init(key, input_shape):
        if not (is_shape(input_shape) or isinstance(input_shape, (tuple, list)) and all(
                is_shape(s) for s in input_shape)):
            raise TypeError(f"{name}: expected a per-example input shape (a tuple of ints) or a "
                            f"tuple of them, got {input_shape!r}")
        return (), input_shape

    def forward(params, x, *, key=None, train=True):
        check_no_params(name, params)
        if isinstance(x, list):                 # as backward takes a list of residuals
            x = tuple(x)
        for a in x if isinstance(x, tuple) else (x,):
            if not (hasattr(a, "shape") and hasattr(a, "dtype")):
                raise TypeError(f"{name}: expected the input to be an array or a tuple of "
                                f"arrays, got {describe(a)} -- convert it with "
                                f"jnp.asarray(..., dtype)")
        check_floating(name, x)
        return x, IdentityCache(Static(jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), x)))

    def backward(params, cache, delta):
        check_no_params(name, params)
        check_cache(name, cache, IdentityCache)
        if isinstance(delta, list):             # a branch's residuals, as FanOut takes them
            delta = tuple(delta)
        want = jax.tree.map(lambda s: tuple(s.shape), cache.input.value)
        got = jax.tree.map(lambda d: tuple(getattr(d, "shape", ())), delta)
        if got != want:
            raise ValueError(f"{name}: backward got delta of shape {got}, expected the "
                             f"forward output's shape {want}")
        _check_dtypes(name, jax.tree.leaves(cache.input.value), jax.tree.leaves(delta))
        return (), delta

    def apply(params, x, *, key=None, train=True):
        return forward(params, x)[0]

    return numpy_as_jax(Layer(init, forward, backward, apply, name,
                              config=config(kind="identity")))


def residual(*layers: Layer) -> Layer:
    """He et al.'s residual block, ``y = x + F(x)`` with ``F = serial(*layers)``:
    ``serial(FanOut(2), parallel(serial(*layers), Identity()), FanInSum())``.  Its backward
    (eqs. 6.5, 6.6, 6.8) gives ``dx = delta + (dF/dx)^T delta``: the residual reaches ``x``
    both through ``F`` and unchanged along the skip."""
    return serial(FanOut(2), parallel(serial(*layers), Identity()), FanInSum())


"""The layer contract, stated once.

A layer is a ``Layer``: a named tuple of four pure functions over a parameter pytree::

    init(key, input_shape)                       -> (params, output_shape)
    forward(params, x, *, key=None, train=True)  -> (y, cache)
    backward(params, cache, delta)               -> (dparams, dx)
    apply(params, x, *, key=None, train=True)    -> y

Shapes given to and returned by ``init`` exclude the batch axis; arrays passed to ``forward``
carry it.  Images are ``NHWC`` and convolution kernels ``HWIO`` (the lax/Flax convention).

``delta`` is always the back-propagated residual: the gradient of the loss with respect to a
layer's output (``dJ/dy``), and ``dx`` the residual handed on to the layer below.  ``cache`` is
what ``forward`` saves for ``backward``; it is an explicit ``NamedTuple`` per layer, never hidden
state.  ``backward`` is written by hand from the equations of ``docs/derivation.md`` -- it never
calls autodiff -- and ``dparams`` has the structure of ``params``.  Parameter-free layers have
params ``()``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Callable, Iterator, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

NHWC = ("N", "H", "W", "C")
"""Layout of image activations: batch, height, width, channels."""
HWIO = ("H", "W", "I", "O")
"""Layout of convolution kernels: height, width, input channels, output channels."""

Array = jax.Array
Shape = tuple[int, ...]
Params = Any
"""A pytree of arrays: a dict for a layer with weights, ``()`` for one without, a tuple for ``serial``."""
Grads = Any
"""Gradients with the tree structure of ``Params``."""
Cache = Any
"""What ``forward`` saves for ``backward``: a layer-specific ``NamedTuple``."""


class InitFn(Protocol):
    def __call__(self, key: Array, input_shape: Shape) -> tuple[Params, Shape]: ...


class ForwardFn(Protocol):
    def __call__(self, params: Params, x: Array, *, key: Array | None = None,
                 train: bool = True) -> tuple[Array, Cache]: ...


class BackwardFn(Protocol):
    def __call__(self, params: Params, cache: Cache, delta: Array) -> tuple[Grads, Array]: ...


class ApplyFn(Protocol):
    def __call__(self, params: Params, x: Array, *, key: Array | None = None,
                 train: bool = True) -> Array: ...


class Layer(NamedTuple):
    """A layer (or a network of layers): four pure functions and a name for messages.

    ``layers`` holds the sub-layers of a combinator such as ``serial`` or ``parallel``; it is
    empty otherwise, and ``build(*layers)`` then makes the same combinator over other
    sub-layers (the audit rebuilds a net with every leaf instrumented).  ``config`` holds the
    layer's static settings as sorted ``(name, value)`` pairs, so that a layer stays hashable (a
    static argument of ``jax.jit``): ``kind`` and, for a sliding window, ``size``, ``strides``,
    ``dilation``, ``padding``.  ``summary`` reads it; ``()`` for a layer that does not say.
    A layer with several inputs or outputs (``jaxcnn.graph``) takes or returns tuples of
    arrays, and its ``init`` tuples of per-example shapes.
    """

    init: InitFn
    forward: ForwardFn
    backward: BackwardFn
    apply: ApplyFn
    name: str
    layers: tuple["Layer", ...] = ()
    config: tuple[tuple[str, Any], ...] = ()
    build: Any = None
    state: "StateFns | None" = None


State = Any
"""What a layer keeps besides its params and updates as it trains, not by gradients: a pytree
(BatchNorm's running statistics), ``()`` for a layer without; a network's is the tree of its
layers' (``jaxcnn.state``)."""


class StateFns(NamedTuple):
    """The state of a layer that has one (``Layer.state``; ``None`` for the others).

    ``init(input_shape) -> state`` for a per-example input shape; ``update(state, cache) ->
    state`` after a training forward, from what that forward cached (BatchNorm: the batch's
    statistics); ``bind(state) -> Layer``, the same layer evaluating (``train=False``) with that
    state.  Training never needs the state: the contract's four functions run on the batch.
    ``update`` is affine in what it reads from the cache, so averaging the updated states of
    several chunks (``microbatch``) or devices is updating with their averaged statistics.
    """

    init: Callable[[Shape], State]
    update: Callable[[State, Cache], State]
    bind: Callable[[State], Layer]


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class Static:
    """A hashable value carried inside a cache as tree *structure*, not as a leaf.

    Caches keep static facts (an input shape) this way so that a cache returned by one jitted
    function and passed to another keeps them as Python ints rather than traced arrays.
    """

    value: Any


def config(**settings) -> tuple[tuple[str, Any], ...]:
    """A layer's ``config``: its settings as sorted, hashable ``(name, value)`` pairs."""
    return tuple(sorted(settings.items()))


def apply_from_forward(forward: ForwardFn) -> ApplyFn:
    """``apply`` for a layer whose forward has nothing to skip: the output, cache dropped."""

    def apply(params, x, *, key=None, train=True):
        return forward(params, x, key=key, train=train)[0]

    return apply


def as_jax(tree):
    """NumPy arrays in ``tree`` as JAX arrays (``jnp.asarray``), the rest as given."""
    return jax.tree_util.tree_map(
        lambda a: jax.numpy.asarray(a) if isinstance(a, np.ndarray) else a, tree)


def numpy_as_jax(layer: Layer) -> Layer:
    """``layer`` taking NumPy inputs and residuals as ``jax.jit`` does: as ``jnp.asarray``
    makes them.  With 64-bit types off (JAX's default) a NumPy float64 batch is then float32,
    eagerly as under ``jit``, where it never reaches the layer as float64."""

    def forward(params, x, **kw):
        return layer.forward(params, as_jax(x), **kw)

    def apply(params, x, **kw):
        return layer.apply(params, as_jax(x), **kw)

    def backward(params, cache, delta):
        return layer.backward(params, cache, as_jax(delta))

    return layer._replace(forward=forward, backward=backward, apply=apply)


# ---------------------------------------------------------------------------------------------
# Checks at the public boundary.  They read only static facts (shapes, dtypes, Python values),
# so they run once, at trace time, and cost nothing under jit.
# ---------------------------------------------------------------------------------------------

LARGEST = 2**31 - 1
"""The largest window size, stride, dilation or padding a layer takes: sizes computed from
them stay within XLA's 64-bit shapes (a stride of 2**62 would wrap a transposed output)."""


def pair(layer: str, arg: str, value, *, minimum: int = 1) -> tuple[int, int]:
    """Normalise an int or a pair of ints to a pair, each at least ``minimum`` and at most
    ``LARGEST``."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value), int(value))
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)):
        raise TypeError(f"{layer}: {arg} must be an int or a pair of ints, got {value!r}")
    value = (int(value[0]), int(value[1]))
    if min(value) < minimum:
        raise ValueError(f"{layer}: {arg} must be >= {minimum}, got {value}")
    if max(value) > LARGEST:
        raise ValueError(f"{layer}: {arg} must be <= 2**31 - 1, got {value}")
    return value


def positive_int(layer: str, arg: str, value) -> int:
    """A count (features, groups, a microbatch): an int from 1 to ``LARGEST``."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{layer}: {arg} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{layer}: {arg} must be >= 1, got {value}")
    if value > LARGEST:
        raise ValueError(f"{layer}: {arg} must be <= 2**31 - 1, got {value}")
    return int(value)


def check_param_dtype(layer: str, dtype) -> jnp.dtype:
    """The dtype ``init`` makes a layer's params in: a floating-point one (JAX's initialisers
    draw floats), checked when the layer is made."""
    try:
        if dtype is None:                     # NumPy's float64, not a choice
            raise TypeError
        dtype = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(f"{layer}: param_dtype must be a floating-point dtype "
                        f"(jnp.float32, ...), got {describe(dtype)}") from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{layer}: param_dtype must be a floating-point dtype, got {dtype}")
    return dtype


def flag(layer: str, arg: str, value) -> bool:
    """A setting that is ``True`` or ``False`` (``use_bias``, ``count_include_pad``).  Anything
    else is a ``TypeError``: ``bool("False")`` is ``True``, so a layer does not guess."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{layer}: {arg} must be a bool, got {describe(value)}")
    return bool(value)


def check_precision(layer: str, precision):
    """``precision`` as JAX's products and convolutions take it -- ``None``, a
    ``lax.Precision`` or its name (``"highest"``...), a dot algorithm or its name, or a pair of
    precisions -- checked when the layer is made, by JAX itself on a traced 1x1 product, rather
    than at the layer's first product."""
    if precision is None:
        return None
    one = jax.ShapeDtypeStruct((1, 1), np.float32)
    try:
        jax.eval_shape(lambda a: jax.lax.dot(a, a, precision=precision), one)
    except (ValueError, TypeError):
        raise ValueError(f"{layer}: precision must be None, a jax.lax.Precision or its name "
                         f"('default', 'high', 'highest', ...), a dot algorithm, or a pair of "
                         f"precisions, got {precision!r}") from None
    return precision


def check_train(layer: str, train) -> bool:
    """``train`` is a Python bool: it picks the code a layer traces (a mask drawn or not, the
    batch's statistics or the running ones), so it cannot be a traced array under ``jit``."""
    if not isinstance(train, (bool, np.bool_)):
        got = "a traced array" if isinstance(train, jax.core.Tracer) else describe(train)
        raise TypeError(f"{layer}: train must be True or False, got {got} -- under jax.jit "
                        f"make it static: jax.jit(f, static_argnames='train')")
    return bool(train)


def describe(value) -> str:
    """A short description of a non-array argument for an error message: ``None``,
    ``int 3``, ``a list of 2 entries``, or the type's name."""
    if value is None:
        return "None"
    if isinstance(value, (bool, int, float, complex, str, np.generic)):
        return f"{type(value).__name__} {value!r}"
    if isinstance(value, (list, tuple)):
        n = len(value)
        return f"a {type(value).__name__} of {n} entr{'y' if n == 1 else 'ies'}"
    return type(value).__name__


def wide(dtype) -> jnp.dtype:
    """The dtype sums of ``dtype`` accumulate in: float32 for a 16-bit float, else ``dtype``
    itself (XLA's own reductions do the same; a 16-bit running sum overflows or rounds away)."""
    return jnp.dtype(jnp.float32) if jnp.finfo(dtype).bits < 32 else jnp.dtype(dtype)


def static_number(layer: str, arg: str, value, expected: str = "a number",
                  built: str = "the layer") -> float:
    """A layer's hyperparameter (a rate, a momentum; a step's loss scale, ``built`` "the
    step") as a Python float: an int, a float, a NumPy number or a concrete 0-d real array.  It
    is fixed when ``built`` is built, so a traced value (inside ``jit``/``grad``) is refused, as
    are bools and everything else."""
    if isinstance(value, jax.core.Tracer):
        raise TypeError(f"{layer}: {arg} must be {expected} fixed when {built} is built, got "
                        f"a traced value (inside jit or grad); build {built} outside the "
                        f"transformation, or pass {arg} as a static argument")
    if hasattr(value, "shape") and hasattr(value, "dtype") and np.ndim(value) == 0 and \
            (jnp.issubdtype(value.dtype, jnp.integer) or jnp.issubdtype(value.dtype, jnp.floating)):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        shape = f" of shape {tuple(value.shape)} and dtype {value.dtype}" \
            if hasattr(value, "shape") and hasattr(value, "dtype") else ""
        raise TypeError(f"{layer}: {arg} must be {expected}, got {describe(value)}{shape}")
    try:
        return float(value)
    except OverflowError:                   # an int past float64's range
        raise ValueError(f"{layer}: {arg} must be {expected}, got an int of "
                         f"{len(str(abs(value)))} digits, past a float's range") from None


def check_array(layer: str, arg: str, x, what: str = "") -> None:
    """``x`` is an array (a ``jax.Array``, a tracer or a NumPy array): anything with a shape
    and a dtype.  Lists, tuples, scalars and ``None`` are refused with a ``TypeError``: a list
    has no dtype to check, and a layer does not guess one."""
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        raise TypeError(f"{layer}: expected {arg} to be an array{' ' + what if what else ''}, "
                        f"got {describe(x)} -- convert it with jnp.asarray(..., dtype)")


def is_concrete(x) -> bool:
    """Whether ``x`` holds values now (an array, not a tracer under ``jit``/``grad``/``vmap``):
    value checks (labels in range, stochastic pooling's inputs >= 0) run only then."""
    return not isinstance(x, jax.core.Tracer)


def check_input(layer: str, x, rank: int, what: str) -> None:
    """``x`` is a floating array of the given rank (batch axis included).  An empty batch
    (``N = 0``) is allowed: every layer maps it to an empty output."""
    check_array(layer, "the input", x, what.split(";")[0])      # the layout, not the advice
    if not jax.numpy.issubdtype(x.dtype, jax.numpy.floating):
        raise TypeError(f"{layer}: expected a floating-point input, got dtype {x.dtype}")
    if len(x.shape) != rank:
        raise ValueError(f"{layer}: expected input of rank {rank} {what}, got shape "
                         f"{tuple(x.shape)}")


def check_input_shape(layer: str, input_shape, rank: int, what: str) -> Shape:
    """``init``'s per-example shape: a tuple of positive ints of the given rank."""
    if (not isinstance(input_shape, (tuple, list))
            or not all(isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_))
                       for d in input_shape)):
        raise TypeError(f"{layer}: input_shape must be a tuple of ints, got {input_shape!r}")
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != rank:
        raise ValueError(f"{layer}: expected a per-example input shape of rank {rank} {what} "
                         f"(batch axis excluded), got {input_shape}")
    if min(input_shape, default=1) < 1:
        raise ValueError(f"{layer}: input_shape entries must be >= 1, got {input_shape}")
    return input_shape


def check_delta(layer: str, delta, expected: Shape, dtype=None) -> None:
    """The residual handed to ``backward`` has the shape of the forward output."""
    check_array(layer, "backward's delta", delta)
    shape = tuple(delta.shape)
    if shape != tuple(expected):
        raise ValueError(f"{layer}: backward got delta of shape {shape}, "
                         f"expected the forward output's shape {tuple(expected)}")
    if dtype is not None and delta.dtype != dtype:
        raise TypeError(f"{layer}: backward got delta of dtype {delta.dtype}, expected {dtype}")


def check_cache(layer: str, cache, kind: type, made_by: Static | None = None) -> None:
    """``backward``'s cache is the ``kind`` its forward returns -- and, where a cache type is
    shared by layers whose caches differ (the poolings' routes, the normalisations' sets),
    made by this layer: ``made_by`` (``made_by(name, config)``) against the cache's ``layer``."""
    if not isinstance(cache, kind):
        raise TypeError(f"{layer}: backward expects the cache its forward returned "
                        f"({kind.__name__}), got {describe(cache)}")
    made = getattr(cache, "layer", None)
    if made_by is not None and made is not None and made != made_by:
        def named(tag):
            return f"{tag.value[0]}({', '.join(f'{k}={v!r}' for k, v in tag.value[1])})"
        raise TypeError(f"{layer}: backward expects the cache its own forward returned, got "
                        f"one made by {named(made)}, not by this {named(made_by)}")


def made_by(name: str, settings: tuple) -> Static:
    """The tag a shared cache type carries in its ``layer`` field: the layer's name and
    ``config``, checked by ``check_cache``."""
    return Static((name, settings))


def check_no_params(layer: str, params) -> None:
    if params != () and not (isinstance(params, (tuple, list)) and len(params) == 0):
        raise ValueError(f"{layer}: this layer has no parameters and expects params (), got "
                         f"{type(params).__name__} -- params from another network?")


def check_param_keys(layer: str, params, names: tuple[str, ...], settings: str = "") -> None:
    """``params`` is a dict with exactly the keys ``names`` (``settings``: the layer's options
    that decide them, for the message).  A key too many is refused too: its gradient would be
    missing from the backward's tree, which would no longer match the params'."""
    if not isinstance(params, dict) or set(params) != set(names):
        got = sorted(params, key=str) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"{layer}: expected params with keys {sorted(names)}"
                         f"{' (' + settings + ')' if settings else ''}, got {got} "
                         f"-- params from another network?")


def check_param(layer: str, params, name: str, shape: Shape, dtype) -> Array:
    """``params[name]`` is an array of the expected shape and the input's dtype; its key is
    there (``check_param_keys`` first; a missing one is named here too)."""
    if not isinstance(params, dict) or name not in params:
        got = sorted(params, key=str) if isinstance(params, dict) else describe(params)
        raise ValueError(f"{layer}: expected params with the key {name!r}, got {got} -- params "
                         f"from another network?")
    p = params[name]
    check_array(layer, f"params[{name!r}]", p, f"of shape {tuple(shape)}")
    if tuple(p.shape) != tuple(shape):
        raise ValueError(f"{layer}: params[{name!r}] has shape {tuple(p.shape)}, expected "
                         f"{tuple(shape)} for this input -- params from another network?")
    if p.dtype != dtype:
        raise TypeError(f"{layer}: params[{name!r}] has dtype {p.dtype} but the input is {dtype}")
    return p


def layer_error(where: str, err: Exception) -> Exception:
    """``err`` with the position of the failing layer in front of its message.

    Only plain ``ValueError`` / ``TypeError`` (the layers' own checks) are re-made; any other
    exception comes back unchanged.
    """
    if type(err) in (ValueError, TypeError):
        return type(err)(f"{where} {err}")
    return err


@contextlib.contextmanager
def in_layer(where: str) -> Iterator[None]:
    """Run a sub-layer's pass; its ``ValueError`` / ``TypeError`` is raised again with
    ``where`` (e.g. ``serial[3]``) in front of the message (``layer_error``)."""
    try:
        yield
    except (ValueError, TypeError) as err:
        raise layer_error(where, err) from err


def check_seed(where: str, seed) -> int:
    """``seed`` as an ``int`` if it is an integer of 64 bits, signed (``jax.random.key``'s
    range; ``jaxcnn train --seed`` takes the same)."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, (bool, np.bool_)):
        raise TypeError(f"{where}: seed must be an int, got {seed!r}")
    if not -2 ** 63 <= seed < 2 ** 63:
        raise ValueError(f"{where}: seed must be an int of 64 bits, in [-2**63, 2**63), got "
                         f"{seed}")
    return int(seed)


def check_key(layer: str, key) -> Array:
    """``key`` is one JAX random key: ``jax.random.key(seed)``, or the raw ``uint32`` vector of
    ``jax.random.PRNGKey`` (two words for threefry, four for rbg)."""
    dtype, shape = getattr(key, "dtype", None), tuple(getattr(key, "shape", (None,)))
    typed = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
    raw = dtype == np.uint32 and shape == _raw_key_shape(jax.config.jax_default_prng_impl)
    if not (typed and shape == () or raw):
        got = f"an array of shape {shape} and dtype {dtype}" if dtype is not None \
            else describe(key)
        raise TypeError(f"{layer}: key must be one JAX random key, jax.random.key(seed), got "
                        f"{got}")
    return key


@functools.cache
def _raw_key_shape(impl: str) -> tuple[int, ...]:
    """The shape of ``jax.random.PRNGKey``'s raw key under the default implementation ``impl``."""
    return tuple(jax.eval_shape(lambda: jax.random.PRNGKey(0)).shape)


def split_key(layer: str, key, n: int) -> Array:
    """``n`` keys split from ``key`` (``check_key``)."""
    return jax.random.split(check_key(layer, key), n)


def layer_keys(key: Array | None, n: int, layer: str = "serial") -> list:
    """One key per sub-layer, split from ``key``; ``None`` for each when no key is given."""
    return [None] * n if key is None else list(split_key(layer, key, n))



# ---------------------------------------------------------------------------------------------
# Walking a network's tree of layers: the leaves (layers without sub-layers) in order, and the
# same network rebuilt with every leaf replaced -- how the audit and the figures instrument a
# net without knowing its combinators.
# ---------------------------------------------------------------------------------------------

def leaves(layer: Layer, path: tuple[int, ...] = ()) -> list[tuple[tuple[int, ...], Layer]]:
    """``(path, leaf)`` for every leaf of ``layer``, depth first in the order its forward runs
    them; ``path`` is the leaf's position, one index per combinator level."""
    if not layer.layers:
        return [(path, layer)]
    return [item for i, sub in enumerate(layer.layers) for item in leaves(sub, (*path, i))]


def map_leaves(layer: Layer, fn, path: tuple[int, ...] = ()) -> Layer:
    """``layer`` rebuilt (``Layer.build``) with every leaf replaced by ``fn(path, leaf)``."""
    if not layer.layers:
        return fn(path, layer)
    if layer.build is None:
        raise TypeError(f"{layer.name}: a combinator without build cannot be rebuilt over "
                        f"new sub-layers")
    return layer.build(*(map_leaves(sub, fn, (*path, i)) for i, sub in enumerate(layer.layers)))


def path_name(layer: Layer, path: tuple[int, ...]) -> str:
    """``"serial[2] > parallel[0] > serial[1] Sigmoid"``: the leaf at ``path``, named by the
    combinators it sits in and its own name."""
    parts = []
    for i in path:
        parts.append(f"{dict(layer.config).get('kind', layer.name)}[{i}]")
        layer = layer.layers[i]
    return " > ".join(parts) + (" " if parts else "") + layer.name

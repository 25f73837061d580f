"""Networks that branch and merge (``jaxcnn.graph``): each combinator's backward equals
``jax.vjp`` of its forward, whole branching nets equal ``jax.grad`` (float64 tight, float32),
nested combinators and stochastic layers inside branches work under ``jit``/``vmap``/
``microbatch``/``bridge``, and bad wiring is refused at trace time naming the path."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn as jc
from harness import rel_err

LOSS = jc.softmax_cross_entropy


def random_like(tree, rng, dtype=None):
    return jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), dtype or a.dtype), tree)


def init_jitted(net, shape, seed=0):
    """``net.init`` jitted (one compile rather than one per random op); ``(params, out)``."""
    shapes = []

    def init(key):
        params, out = net.init(key, shape)
        shapes.append(out)                      # static: kept outside the trace
        return params

    return jax.jit(init)(jax.random.key(seed)), shapes[0]


def init64(net, shape, seed=0):
    params, out = init_jitted(net, shape, seed)
    return jax.tree.map(lambda p: p.astype(jnp.float64), params), out


def assert_tree_close(got, want, tol):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert rel_err(a, b) <= tol, f"relative error {rel_err(a, b)} > {tol}"


def check_layer_vjp(layer, params, x, *, key=None, train=True, tol=1e-12):
    """``backward`` (jitted) equals ``jax.vjp`` of ``apply`` for a random cotangent tree."""
    y, cache = jax.jit(lambda p, x: layer.forward(p, x, key=key, train=train))(params, x)
    delta = random_like(y, np.random.default_rng(3))
    got = jax.jit(layer.backward)(params, cache, delta)
    want_y, want = jax.jit(lambda p, x, delta: _apply_and_vjp(layer, p, x, delta, key, train))(
        params, x, delta)
    assert_tree_close(y, want_y, tol)
    assert_tree_close(got, want, tol)


def _apply_and_vjp(layer, params, x, delta, key, train):
    y, vjp = jax.vjp(lambda p, x: layer.apply(p, x, key=key, train=train), params, x)
    return y, vjp(delta)


# --- each combinator, against jax.vjp --------------------------------------------------------

def test_fan_out_sums_the_residuals_of_its_branches():
    """Eq. 6.5, by hand: the residual of a copied input is the sum of the copies' residuals."""
    fan = jc.FanOut(3)
    x = jnp.arange(6.0).reshape(2, 3)
    ys, cache = fan.forward((), x)
    assert len(ys) == 3 and all(y is x for y in ys)
    deltas = (jnp.ones((2, 3)), 2 * jnp.ones((2, 3)), 10 * jnp.ones((2, 3)))
    np.testing.assert_array_equal(fan.backward((), cache, deltas)[1], 13 * jnp.ones((2, 3)))
    check_layer_vjp(fan, (), jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 3, 2))))


def test_fan_in_sum_copies_and_concat_splits():
    """Eqs. 6.6 and 6.7 by hand, and against ``jax.vjp``."""
    rng = np.random.default_rng(1)
    xs = tuple(jnp.asarray(rng.normal(size=(2, 4, 4, c))) for c in (3, 3))
    _, cache = jc.FanInSum().forward((), xs)
    delta = jnp.asarray(rng.normal(size=(2, 4, 4, 3)))
    assert all(d is delta for d in jc.FanInSum().backward((), cache, delta)[1])
    check_layer_vjp(jc.FanInSum(), (), xs)
    xs = tuple(jnp.asarray(rng.normal(size=(2, 4, 4, c))) for c in (1, 3, 2))
    y, cache = jc.FanInConcat().forward((), xs)
    assert y.shape == (2, 4, 4, 6)
    delta = jnp.arange(2 * 4 * 4 * 6.0).reshape(2, 4, 4, 6)
    parts = jc.FanInConcat().backward((), cache, delta)[1]
    for part, (lo, hi) in zip(parts, [(0, 1), (1, 4), (4, 6)]):
        np.testing.assert_array_equal(part, delta[..., lo:hi])
    for axis in (-1, 0, 1, 2):
        check_layer_vjp(jc.FanInConcat(axis), (), tuple(
            jnp.asarray(rng.normal(size=(2, 3, 3, 2))) for _ in range(2)))


def test_parallel_and_identity_and_global_pooling():
    """Eq. 6.8: each branch's layer gets its own residual; ``GlobalAvgPool2D`` (eq. 5.10)."""
    rng = np.random.default_rng(2)
    net = jc.parallel(jc.Conv2D(2, 3, padding="SAME"), jc.Identity(), jc.serial(
        jc.MaxPool2D(2), jc.Tanh()))
    params, shapes = init64(net, ((6, 6, 3), (5,), (6, 6, 2)))
    assert shapes == ((6, 6, 2), (5,), (3, 3, 2))
    xs = (jnp.asarray(rng.normal(size=(2, 6, 6, 3))), jnp.asarray(rng.normal(size=(2, 5))),
          jnp.asarray(rng.normal(size=(2, 6, 6, 2))))
    check_layer_vjp(net, params, xs)
    gap = jc.GlobalAvgPool2D()
    assert gap.init(None, (5, 4, 3)) == ((), (3,))
    x = jnp.asarray(rng.normal(size=(2, 5, 4, 3)))
    np.testing.assert_allclose(gap.apply((), x), x.mean(axis=(1, 2)), rtol=1e-14)
    check_layer_vjp(gap, (), x)


def test_identity_takes_arrays_and_a_list_of_them_both_ways():
    """A Python number, a string or None is a ``TypeError`` naming Identity (inside ``serial``
    too), never a raw AttributeError later; a list of arrays passes as a tuple, so that its
    residuals, as a list or a tuple, match it."""
    ident, x = jc.Identity(), jnp.ones((2, 3))
    for bad, got in [(3.0, "float 3.0"), ("abc", "str 'abc'"), (None, "None"),
                     ([x, 1.0], "float 1.0")]:
        with pytest.raises(TypeError, match=rf"^Identity: expected the input to be an array or "
                                            rf"a tuple of arrays, got {got} "):
            ident.forward((), bad)
    with pytest.raises(TypeError, match=r"^serial\[0\] Identity: expected the input"):
        jc.serial(ident).apply(((),), 3.0)
    y, cache = ident.forward((), [x, 2 * x])
    assert isinstance(y, tuple)
    for delta in ([x, x], (x, x)):
        _, dx = ident.backward((), cache, delta)
        assert isinstance(dx, tuple) and [d.shape for d in dx] == [(2, 3), (2, 3)]


# --- whole nets against jax.grad ---------------------------------------------------------------

def inception(c):
    """Three branches (1x1; 1x1 then 3x3; 3x3 max pool then 1x1) concatenated by channels."""
    return jc.serial(
        jc.FanOut(3),
        jc.parallel(jc.serial(jc.Conv2D(c, 1), jc.ReLU()),
                    jc.serial(jc.Conv2D(c, 1), jc.ReLU(), jc.Conv2D(c, 3, padding="SAME"),
                              jc.ReLU()),
                    jc.serial(jc.MaxPool2D(3, 1, padding="SAME"), jc.Conv2D(c, 1), jc.ReLU())),
        jc.FanInConcat())


NETS = {
    "residual": (lambda: jc.serial(
        jc.Conv2D(4, 3, padding="SAME"), jc.ReLU(),
        jc.residual(jc.Conv2D(4, 3, padding="SAME"), jc.ReLU(), jc.Conv2D(4, 3, padding="SAME")),
        jc.ReLU(), jc.GlobalAvgPool2D(), jc.Dense(10)), (8, 8, 1)),
    "inception": (lambda: jc.serial(jc.Conv2D(4, 3), jc.ReLU(), inception(2), jc.AvgPool2D(2),
                                    jc.Flatten(), jc.Dense(10)), (9, 9, 2)),
    "nested": (lambda: jc.serial(
        jc.FanOut(2),
        jc.parallel(jc.residual(jc.Conv2D(3, 3, padding="SAME"), jc.Sigmoid()),
                    jc.serial(jc.FanOut(2), jc.parallel(jc.Identity(), jc.Tanh()),
                              jc.FanInSum())),
        jc.FanInConcat(), jc.Flatten(), jc.Dense(10)), (6, 6, 3)),
    "deepid": (lambda: jc.zoo.deepid((39, 31, 1)), (39, 31, 1)),
    "resnet": (lambda: jc.zoo.resnet((8, 8, 1)), (8, 8, 1)),
}


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_branching_nets_equal_jax_grad(name, dtype):
    make, shape = NETS[name]
    net = make()
    params, out = init_jitted(net, shape)
    assert out == (10,)
    rng = np.random.default_rng(0)
    params = random_like(params, rng, dtype) if name not in ("deepid", "resnet") else \
        jax.tree.map(lambda p: p.astype(dtype), params)
    x = jnp.asarray(rng.normal(size=(3, *shape)), dtype)
    labels = jnp.asarray([1, 7, 3], jnp.int32)
    value, grads = jax.jit(jc.value_and_grad(net, LOSS))(params, x, labels)
    ref_value, ref = jax.jit(jax.value_and_grad(
        lambda p, x, labels: LOSS.value(net.apply(p, x), labels)))(params, x, labels)
    tol = {jnp.float64: 1e-10, jnp.float32: 1e-5}[dtype]
    assert abs(float(value) - float(ref_value)) <= tol * abs(float(ref_value))
    assert_tree_close(grads, ref, tol)


def test_stochastic_branch_vmap_microbatch_and_bridge():
    """A stochastic pooling layer inside a branch draws from its own key in forward and apply
    alike; per-example gradients by ``vmap``; ``microbatch``; ``bridge`` under ``jax.grad``."""
    net = jc.serial(jc.Conv2D(3, 3, padding="SAME"), jc.ReLU(), jc.FanOut(2),
                    jc.parallel(jc.StochasticPool2D(2), jc.AvgPool2D(2)), jc.FanInConcat(),
                    jc.Flatten(), jc.Dense(10))
    params, _ = init64(net, (6, 6, 1))
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(4, 6, 6, 1)))
    labels = jnp.asarray([0, 1, 2, 3], jnp.int32)
    key = jax.random.key(9)
    # everything jitted: op by op, each shape compiles every operation of the net
    f = jax.jit(jc.value_and_grad(net, LOSS))
    _, grads = f(params, x, labels, key=key)
    ref = jax.jit(jax.grad(lambda p, x, labels, key: LOSS.value(net.apply(p, x, key=key),
                                                                labels)))(params, x, labels, key)
    assert_tree_close(grads, ref, 1e-10)
    per_example = jax.jit(jax.vmap(lambda x, t: f(params, x[None], t[None], key=key)[1]))(
        x, labels)
    one = f(params, x[1:2], labels[1:2], key=key)[1]
    assert_tree_close(jax.tree.map(lambda g: g[1], per_example), one, 1e-12)
    _, chunked = jax.jit(jc.value_and_grad(net, LOSS, microbatch=2))(params, x, labels, key=key)
    keys = jax.random.split(key, 2)
    halves = [f(params, x[i:i + 2], labels[i:i + 2], key=k)[1] for i, k in zip((0, 2), keys)]
    assert_tree_close(chunked, jax.tree.map(lambda a, b: (a + b) / 2, *halves), 1e-12)
    bridged = jc.bridge(net, key=key)
    g = jax.jit(jax.grad(lambda p, x, labels: LOSS.value(bridged(p, x), labels)))(
        params, x, labels)
    assert_tree_close(g, ref, 1e-10)


# --- bad wiring --------------------------------------------------------------------------------

@pytest.mark.parametrize("net, shape, message", [
    (jc.serial(jc.FanOut(2), jc.parallel(jc.Conv2D(2, 3), jc.Identity()), jc.FanInSum()),
     (6, 6, 1), r"serial\[2\] FanInSum: the inputs must have one shape to be added, got "
                r"\(4, 4, 2\), \(6, 6, 1\)"),
    (jc.serial(jc.FanOut(2), jc.parallel(jc.MaxPool2D(2), jc.Identity()), jc.FanInConcat()),
     (6, 6, 1), r"serial\[2\] FanInConcat: the inputs must agree on every axis but -1 to be "
                r"concatenated, got \(3, 3, 1\), \(6, 6, 1\)"),
    (jc.serial(jc.FanOut(3), jc.parallel(jc.Identity(), jc.Identity())), (4, 4, 1),
     r"serial\[1\] parallel: expected 2 input shapes, one per branch, got 3"),
    (jc.serial(jc.FanOut(2), jc.Conv2D(2, 3)), (6, 6, 1),
     r"serial\[1\] Conv2D: .*tuple"),
    (jc.serial(jc.Conv2D(2, 3), jc.FanInSum()), (6, 6, 1),
     r"serial\[1\] FanInSum: expected a tuple of per-example input shapes"),
])
def test_bad_wiring_is_refused_at_init_and_forward(net, shape, message):
    with pytest.raises((ValueError, TypeError), match=message):
        net.init(jax.random.key(0), shape)


@pytest.mark.parametrize("layer, xs, message", [
    (jc.FanInSum(), (jnp.ones((2, 4, 4, 3)), jnp.ones((2, 4, 4, 2))),
     r"FanInSum: the inputs must have one shape and dtype to be added, got \(2, 4, 4, 3\) "
     r"float64, \(2, 4, 4, 2\) float64"),
    (jc.FanInConcat(), (jnp.ones((2, 4, 4, 3)), jnp.ones((3, 4, 4, 2))),
     r"FanInConcat: the inputs must have one batch size, got 2, 3"),
    (jc.FanInSum(), jnp.ones((2, 4)),
     r"FanInSum: expected a tuple of arrays \(one per branch\) as inputs, got an array of "
     r"shape \(2, 4\)"),
    (jc.parallel(jc.Identity(), jc.Identity()), (jnp.ones((2, 4)),) * 3,
     r"parallel: expected 2 inputs, one per branch, got 3 of shapes \(\(2, 4\), \(2, 4\), "
     r"\(2, 4\)\)"),
    (jc.FanOut(2), (jnp.ones((2, 4)), jnp.ones((2, 4))), r"FanOut: expected one array"),
    (jc.FanInSum(), (jnp.ones((2, 4), bool),) * 2,
     r"^FanInSum: expected floating-point inputs, got dtype bool"),
    (jc.FanInConcat(), (jnp.ones((2, 4), jnp.int32),) * 2,
     r"^FanInConcat: expected floating-point inputs, got dtype int32"),
    (jc.Identity(), jnp.ones((2, 4), jnp.int32), r"^Identity: expected floating-point inputs"),
    (jc.FanOut(2), jnp.ones((2, 4), jnp.int32), r"^FanOut: expected floating-point inputs"),
])
def test_bad_wiring_is_refused_under_jit(layer, xs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        jax.jit(lambda xs: layer.apply((), xs))(xs)


def test_a_branch_that_branches_again_inside_parallel():
    """``parallel`` takes and returns a branch's tuple as that branch's entry: its backward
    hands each branch its own (nested) residuals, equal to ``jax.vjp``; and a list of
    residuals is taken as the tuple it stands for."""
    net = jc.serial(jc.FanOut(2), jc.parallel(jc.FanOut(2), jc.serial(jc.Dense(3), jc.Tanh())))
    params, out = init64(net, (4,))
    assert out == (((4,), (4,)), (3,))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 4)))
    check_layer_vjp(net, params, x)
    identity = jc.Identity()
    _, cache = identity.forward((), (x, x))
    _, dx = identity.backward((), cache, [x, 2 * x])
    assert isinstance(dx, tuple) and len(dx) == 2
    with pytest.raises(TypeError, match=r"^parallel: expected a tuple of arrays \(one per "
                                        r"branch\) as inputs, got a list of \(\(2, 4\), 'int'\)"):
        jc.parallel(jc.Identity(), jc.Identity()).apply(((), ()), [x, 3])


def test_a_nested_branch_is_initialised_merged_and_given_its_state():
    """A branch that branches again, then merged branch by branch: ``init`` takes the nested
    shapes ``forward`` takes arrays of (and ``init_state`` too, for a BatchNorm inside), and
    the backward equals ``jax.vjp``."""
    net = jc.serial(jc.FanOut(2),
                    jc.parallel(jc.serial(jc.FanOut(2), jc.Identity()),
                                jc.serial(jc.Conv2D(2, 1, use_bias=False), jc.BatchNorm())),
                    jc.parallel(jc.FanInSum(), jc.Identity()), jc.FanInSum())
    params, out = init64(net, (4, 4, 2))
    assert out == (4, 4, 2)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 4, 4, 2)))
    assert net.apply(params, x).shape == (3, *out)
    check_layer_vjp(net, params, x)
    state = jc.init_state(net, (4, 4, 2))
    assert len(jax.tree.leaves(state)) == 2        # BatchNorm's running mean and variance
    with pytest.raises(ValueError, match=r"^parallel: expected a tuple of per-example input "
                                         r"shapes \(one per branch\), got \(\(\(4, 4, 2\), "
                                         r"'a'\), \(4, 4, 2\)\)"):
        jc.parallel(jc.Identity(), jc.Identity()).init(jax.random.key(0), (((4, 4, 2), "a"),
                                                                           (4, 4, 2)))


def test_residual_is_the_composition_it_names():
    block = jc.residual(jc.Conv2D(2, 3, padding="SAME"), jc.ReLU())
    assert block.name == "serial(FanOut, parallel(serial(Conv2D, ReLU), Identity), FanInSum)"
    params, out = init64(block, (5, 5, 2))
    x = jnp.asarray(np.random.default_rng(5).normal(size=(1, 5, 5, 2)))
    inner = jc.serial(jc.Conv2D(2, 3, padding="SAME"), jc.ReLU())
    np.testing.assert_allclose(block.apply(params, x), x + inner.apply(params[1][0], x),
                               rtol=1e-14)


@pytest.mark.parametrize("microbatch", [None, 4])
def test_a_net_with_two_inputs_takes_a_tuple_in_value_and_grad(microbatch):
    """A net whose own input is a tuple (two inputs into ``parallel``): ``value_and_grad``, in
    chunks too, equals ``jax.grad``; inputs of two batch sizes are refused, naming the shapes."""
    net = jc.serial(jc.parallel(jc.Dense(3), jc.Dense(3)), jc.FanInSum())
    params, _ = init_jitted(net, ((5,), (4,)))
    rng = np.random.default_rng(0)
    x = (jnp.asarray(rng.normal(size=(8, 5)), jnp.float32),
         jnp.asarray(rng.normal(size=(8, 4)), jnp.float32))
    y = jnp.arange(8, dtype=jnp.int32) % 3
    vg = jax.jit(jc.value_and_grad(net, LOSS, microbatch=microbatch))
    value, grads = vg(params, x, y)
    want = jax.grad(lambda p: LOSS.value(net.apply(p, x), y))(params)
    assert_tree_close(grads, want, 1e-5)
    with pytest.raises(ValueError, match=r"^value_and_grad: the inputs in x must share one batch "
                                         r"size, got shapes \(\(8, 5\), \(4, 4\)\)"):
        vg(params, (x[0], x[1][:4]), y)

"""A network's state (``jaxcnn.state``): built, updated and bound along the net's tree, carried
by ``fit`` -- updated every step, used for evaluation, checkpointed and resumed bitwise --
and averaged over chunks as over devices.

The plumbing is tested with ``Centre``, a small stateful layer of the test's own (BatchNorm's
own tests are in ``test_norm.py``): ``y = x - mean`` with the batch's mean per channel in
training and the running mean in evaluation.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn as jc
from jaxcnn import data, train
from jaxcnn.core import StateFns, check_no_params, config


class CentreCache(NamedTuple):
    mean: jax.Array            # the batch's mean per channel (training); None in evaluation
    n: int = 0


def Centre(momentum=0.5, running=None):
    """``y = x - mean``: the batch mean per channel in training (its backward
    ``dx = delta - mean(delta)``), the running mean in evaluation (``dx = delta``)."""
    name = "Centre"

    def init(key, input_shape):
        return (), tuple(input_shape)

    def forward(params, x, *, key=None, train=True):
        check_no_params(name, params)
        if not train:
            if running is None:
                raise ValueError(f"{name}: evaluation needs the running mean: jc.with_state")
            return x - running.astype(x.dtype).reshape((1,) * (x.ndim - 1) + (-1,)), \
                CentreCache(None)
        mean = jnp.mean(x, axis=tuple(range(x.ndim - 1)))
        return x - mean.reshape((1,) * (x.ndim - 1) + (-1,)), CentreCache(mean,
                                                                          x.size // x.shape[-1])

    def backward(params, cache, delta):
        if cache.mean is None:
            return (), delta
        return (), delta - jnp.sum(delta, axis=tuple(range(delta.ndim - 1)),
                                   keepdims=True) / cache.n

    def apply(params, x, *, key=None, train=True):
        return forward(params, x, key=key, train=train)[0]

    state = StateFns(init=lambda shape: jnp.zeros(shape[-1:], jnp.float32),
                     update=lambda s, cache: momentum * s + (1 - momentum) * cache.mean,
                     bind=lambda s: Centre(momentum, s))
    return jc.Layer(init, forward, backward, apply, name, config=config(kind="elementwise"),
                    state=state)


def net_with_centres():
    return jc.serial(jc.Conv2D(3, 3, padding="SAME"), Centre(), jc.ReLU(), jc.FanOut(2),
                     jc.parallel(jc.serial(Centre(0.9), jc.Tanh()), jc.Identity()),
                     jc.FanInConcat(), jc.Flatten(), jc.Dense(10))


def test_the_state_follows_the_tree_of_the_net():
    net = net_with_centres()
    assert jc.has_state(net) and not jc.has_state(jc.zoo.small())
    state = jc.init_state(net, (8, 8, 1))
    assert jax.tree.structure(state) == jax.tree.structure(
        ((), jnp.zeros(3), (), (), ((jnp.zeros(3), ()), ()), (), (), ()))
    assert jc.init_state(jc.zoo.small(), (8, 8, 1)) == ((),) * len(jc.zoo.small().layers)
    params, _ = net.init(jax.random.key(0), (8, 8, 1))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 1)), jnp.float32)
    _, cache = net.forward(params, x)
    new = jc.update_state(net, state, cache)
    np.testing.assert_allclose(new[1], 0.5 * cache[1].mean, rtol=1e-6)
    np.testing.assert_allclose(new[4][0][0], 0.1 * cache[4][0][0].mean, rtol=1e-6)
    with pytest.raises(ValueError, match="Centre: evaluation needs the running mean"):
        net.apply(params, x, train=False)
    bound = jc.with_state(net, new)
    assert bound.apply(params, x, train=False).shape == (4, 10)
    with pytest.raises(ValueError, match=r"expected a state of 8 entries, one per layer, got "
                                         r"2 entries -- a state from another network\?"):
        jc.update_state(net, ((), ()), cache)
    for short in (cache[:1], list(cache), None):        # every running statistic kept or none
        with pytest.raises(ValueError, match=r"expected the cache of this network's training "
                                             r"forward, 8 entries, one per layer, got "):
            jc.update_state(net, state, short)
    with pytest.raises(ValueError, match=r"parallel\(.*\): expected the cache .* 2 entries"):
        jc.update_state(net, state, (*cache[:4], cache[4][:1], *cache[5:]))


@pytest.mark.parametrize("call, where", [
    (lambda net: jc.has_state(jc.Dense), "has_state"),
    (lambda net: jc.init_state("net", (8, 8, 1)), "init_state"),
    (lambda net: jc.update_state(None, (), ()), "update_state"),
    (lambda net: jc.with_state(jc.BatchNorm, ()), "with_state"),
    (lambda net: jc.value_grad_and_state(jc.Dense, jc.softmax_cross_entropy),
     "value_grad_and_state"),
])
def test_the_state_functions_refuse_what_is_not_a_net(call, where):
    with pytest.raises(TypeError, match=rf"^{where}: net must be a jaxcnn Layer "
                                        rf"\(jc.serial\(\.\.\.\), a zoo net\), got "):
        call(net_with_centres())


def test_the_state_functions_refuse_a_bad_loss_or_shape_when_built():
    net = net_with_centres()
    with pytest.raises(TypeError, match=r"^value_grad_and_state: loss must be a jaxcnn Loss"):
        jc.value_grad_and_state(net, lambda y, t: y.mean())
    with pytest.raises(TypeError, match=r"^init_state: input_shape must be a tuple, the "
                                        r"per-example shape such as \(28, 28, 1\), got None"):
        jc.init_state(net, None)


def test_chunks_average_their_updated_states():
    """``microbatch``: each chunk centres on its own statistics and the new state is the mean
    of the chunks' updated states, as devices do (``jaxcnn.distributed``)."""
    net = net_with_centres()
    params, _ = net.init(jax.random.key(1), (8, 8, 1))
    state = jc.init_state(net, (8, 8, 1))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(6, 8, 8, 1)), jnp.float32)
    labels = jnp.arange(6, dtype=jnp.int32)
    f = jax.jit(jc.value_grad_and_state(net, jc.softmax_cross_entropy))
    halves = [f(params, state, x[i:i + 3], labels[i:i + 3]) for i in (0, 3)]
    value, grads, new = jax.jit(jc.value_grad_and_state(net, jc.softmax_cross_entropy,
                                                        microbatch=3))(params, state, x, labels)
    mean = lambda a, b: (a + b) / 2  # noqa: E731
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7),
                 (value, grads, new), jax.tree.map(mean, *halves))
    whole, grads_whole, _ = f(params, state, x, labels)
    assert not np.allclose(grads_whole[0]["w"], grads[0]["w"]), "chunks use their own stats"
    # the hand-written gradients equal jax.grad of the training-mode forward, state aside
    ref = jax.grad(lambda p: jc.softmax_cross_entropy.value(net.apply(p, x), labels))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 grads_whole, ref)


@pytest.mark.parametrize("grad", train.GRADS)
def test_the_empty_state_stands_for_a_net_that_keeps_none(grad):
    """``()`` as the whole state of a net without one, as ``with_state`` and ``evaluate``
    take it: fit's step runs with it in either gradient mode and returns it."""
    import optax
    net = jc.serial(jc.Conv2D(2, 3), jc.ReLU(), jc.Flatten(), jc.Dense(10))
    params, _ = net.init(jax.random.key(0), (6, 6, 1))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 6, 6, 1)), jnp.float32)
    y = jnp.arange(8, dtype=jnp.int32) % 10
    assert jc.update_state(net, (), None) == ()
    opt = optax.sgd(0.1)
    out = train.fit_step(net, jc.softmax_cross_entropy, opt, grad)(
        params, opt.init(params), (), x, y, jnp.arange(8), jax.random.key(0), 0)
    assert out[2] == () and np.isfinite(float(out[3]))
    with pytest.raises(ValueError, match=r"expected a state of 4 entries, one per layer, got "
                                         r"2 entries"):
        jc.update_state(net, ((), ()), None)


def net_with_batchnorm():
    return jc.serial(jc.Conv2D(3, 3, padding="SAME", use_bias=False), jc.BatchNorm(),
                     jc.ReLU(), jc.Flatten(), jc.Dense(10))


@pytest.mark.parametrize("make", [net_with_centres, net_with_batchnorm])
def test_fit_updates_evaluates_checkpoints_and_resumes_the_state(tmp_path, make):
    """``fit`` updates the state every step (the final state is the momentum average of every
    step's statistics), evaluates with it, checkpoints it, and a run resumed from a checkpoint
    ends with bitwise the same state and params as a run never interrupted -- for the toy
    ``Centre`` and for BatchNorm's running mean and variance."""
    ds = data.load_digits()
    x, y = ds.x_train[:96], ds.y_train[:96]
    net = make()
    params, _ = train.init_params(net, ds.image_shape)
    straight = jc.fit(net, params, x, y, ds.x_test[:50], ds.y_test[:50], epochs=2,
                      batch_size=32, verbose=False, out=tmp_path / "a")
    init = jax.tree.leaves(jc.init_state(net, ds.image_shape))
    assert all(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(straight.state), init))
    loss, acc = train.evaluate(net, jc.softmax_cross_entropy, straight.params, ds.x_test[:50],
                               ds.y_test[:50], state=straight.state)
    assert straight.history[-1]["test_loss"] == pytest.approx(loss, rel=1e-6)
    saved, _ = train.load_checkpoint(tmp_path / "a")
    for a, b in zip(jax.tree.leaves(saved["net_state"]), jax.tree.leaves(straight.state)):
        np.testing.assert_array_equal(a, b)
    first = jc.fit(net, params, x, y, epochs=1, batch_size=32, verbose=False,
                   out=tmp_path / "b")
    assert not np.array_equal(jax.tree.leaves(first.state)[0], jax.tree.leaves(straight.state)[0])
    resumed = jc.fit(net, params, x, y, epochs=2, batch_size=32, verbose=False,
                     out=tmp_path / "b", resume=True)
    for a, b in zip(jax.tree.leaves((resumed.params, resumed.state)),
                    jax.tree.leaves((straight.params, straight.state))):
        np.testing.assert_array_equal(a, b)

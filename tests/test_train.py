"""The training loop: the jitted step, fit, checkpoints and resume, faults, and the zoo.

Nets and data are tiny (8x8 digits, a few hundred images, a few epochs) so that the whole file
runs in seconds; the figures that need real training are in docs/training.md.
"""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcnn as jc
from jaxcnn import data, report, train, zoo
from jaxcnn.core import Layer


@pytest.fixture(scope="module")
def digits():
    return data.load_digits()


def tiny_net(stochastic: bool = False):
    """conv 3x3x6, ReLU, 2x2 pooling (stochastic: the forward draws from the step's key), dense."""
    pool = jc.StochasticPool2D(2) if stochastic else jc.MaxPool2D(2)
    return jc.serial(jc.Conv2D(6, 3, padding="SAME"), jc.ReLU(), pool, jc.Flatten(),
                     jc.Dense(10))


# One object per net for the whole module: fit reuses its compiled steps for an equal net,
# loss, optimizer and batch shape (batches of 20 throughout), which keeps this file fast.
NET, STOCHASTIC_NET = tiny_net(), tiny_net(stochastic=True)
ADAM = optax.adam(1e-2)
BATCH = 20


def leaves_equal(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                      for x, y in zip(la, lb))


def subset(ds, n_train=200, n_test=100):
    return ds.x_train[:n_train], ds.y_train[:n_train], ds.x_test[:n_test], ds.y_test[:n_test]


# --- the step and the gradient check -------------------------------------------------------

def test_make_step_manual_and_autodiff_agree_and_descend(digits):
    net = NET
    params, _ = train.init_params(net, (8, 8, 1), seed=0)
    x, y = digits.x_train[:32], digits.y_train[:32]
    opt = ADAM
    runs = {}
    for grad in train.GRADS:
        step = train.make_step(net, jc.softmax_cross_entropy, opt, grad)
        p, s, losses = params, opt.init(params), []
        for _ in range(10):
            p, s, value = step(p, s, x, y, None)
            losses.append(float(value))
        runs[grad] = (p, losses)
    assert runs["manual"][1][-1] < 0.7 * runs["manual"][1][0]
    np.testing.assert_allclose(runs["manual"][1], runs["autodiff"][1], rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(runs["manual"][0]),
                    jax.tree_util.tree_leaves(runs["autodiff"][0])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_gradient_check_line_and_leaf_names(digits):
    net = STOCHASTIC_NET
    params, _ = train.init_params(net, (8, 8, 1))
    c = train.gradient_check(net, jc.softmax_cross_entropy, params, digits.x_train[:BATCH],
                             digits.y_train[:BATCH], key=jax.random.key(1))
    assert set(c.errors) == {"serial[0] Conv2D params['w']", "serial[0] Conv2D params['b']",
                             "serial[4] Dense params['w']", "serial[4] Dense params['b']"}
    assert 0 <= c.worst < 1e-5
    assert c.line().startswith("gradient check (hand-written vs jax.grad, 1 batch): "
                               "worst relative error ")
    assert c.line().endswith("over 4 parameter arrays")


def _scaled_backward(layer: Layer, factor: float, when=None, scale_grads=False) -> Layer:
    """A mutant: ``layer`` whose input residual -- or, with ``scale_grads``, whose parameter
    gradients -- are multiplied by ``factor`` (only for inputs ``x`` where ``when(x)``)."""

    def forward(params, x, *, key=None, train=True):
        y, cache = layer.forward(params, x, key=key, train=train)
        return y, (cache, x)

    def backward(params, cache, delta):
        grads, dx = layer.backward(params, cache[0], delta)
        scale = factor if when is None else jnp.where(when(cache[1]), factor, 1.0)
        if scale_grads:
            return jax.tree_util.tree_map(lambda g: g * jnp.asarray(scale, g.dtype), grads), dx
        return grads, dx * jnp.asarray(scale, dx.dtype)

    return Layer(layer.init, forward, backward, layer.apply, "Mutant" + layer.name)


def test_wrong_backward_stops_before_training(digits, tmp_path):
    net = jc.serial(jc.Conv2D(4, 3), _scaled_backward(jc.ReLU(), 2.0), jc.Flatten(), jc.Dense(10))
    params, _ = train.init_params(net, (8, 8, 1))
    with pytest.raises(train.GradientMismatchError,
                       match=r"gradient check before training: .* diverge at step 0: relative "
                             r"error above 1e-04 in serial\[0\] Conv2D params\['[wb]'\]"
                       ) as err:
        train.fit(net, params, *subset(digits), epochs=1, batch_size=BATCH, out=tmp_path,
                  verbose=False)
    assert err.value.audit.first_bad_layer == 1                  # the audit pins the mutant
    assert "FAILED: first wrong layer is 1 (MutantReLU)" in str(err.value)
    assert not os.path.exists(tmp_path / "summary.json")


def test_check_grads_every_n_steps_names_the_step(digits):
    # the mutant backward is wrong only for inputs above 50: one image, at step 4 of the order
    x, y = digits.x_train[:100].copy(), digits.y_train[:100]
    order = train.epoch_order(jax.random.key(0), 0, 100)
    x[order[4 * 10]] = 60.0
    net = jc.serial(_scaled_backward(jc.Conv2D(4, 3), 3.0, lambda a: jnp.max(a) > 50, True),
                    jc.ReLU(), jc.Flatten(), jc.Dense(10))
    params, _ = train.init_params(net, (8, 8, 1))
    with pytest.raises(train.GradientMismatchError,
                       match=r"^gradient check: .* diverge at step 4: "):
        train.fit(net, params, x, y, epochs=1, batch_size=10, check_grads=2, verbose=False)
    result = train.fit(net, params, x, y, epochs=1, batch_size=10, check_grads=3,
                       verbose=False)                      # steps 0, 3, 6, 9 miss the image
    assert result.summary["steps"] == 10


# --- fit -----------------------------------------------------------------------------------

def test_fit_learns_well_above_chance(digits, tmp_path, capsys):
    net = NET
    params, _ = train.init_params(net, (8, 8, 1))
    x, y, xt, yt = subset(digits, 400, 200)
    result = train.fit(net, params, x, y, xt, yt, optimizer=ADAM, epochs=3, batch_size=BATCH,
                       out=tmp_path, info={"dataset": "digits", "arch": "tiny"})
    s = result.summary
    assert s["test_accuracy"] > 0.7                               # chance: 0.1
    assert s["epochs"] == 3 and s["steps"] == 60 and len(result.history) == 3
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    for k in ("test_accuracy", "test_loss", "epochs", "steps", "seconds", "dataset", "arch",
              "grad", "seed", "jax_version", "jaxcnn_version"):
        assert k in on_disk, k
    assert on_disk["jax_version"] == jax.__version__ and on_disk["jaxcnn_version"] == jc.__version__
    assert on_disk["dataset"] == "digits" and on_disk["grad"] == "manual"
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert {"train_loss", "train_accuracy", "test_accuracy", "seconds"} <= set(json.loads(lines[0]))
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "gradient check (hand-written vs jax.grad, 1 batch): worst relative error" in out
    assert "test accuracy" in out


def test_fit_autodiff_and_evaluate(digits):
    net = NET
    params, _ = train.init_params(net, (8, 8, 1))
    x, y, xt, yt = subset(digits)
    result = train.fit(net, params, x, y, xt, yt, optimizer=ADAM, epochs=1, batch_size=BATCH,
                       grad="autodiff", verbose=False)
    loss, acc = train.evaluate(net, jc.softmax_cross_entropy, result.params, xt, yt,
                               batch_size=30)                  # 100 = 3 chunks + a padded one
    assert math.isclose(loss, result.summary["test_loss"], rel_tol=1e-5)
    assert acc == result.summary["test_accuracy"]


def test_evaluate_refuses_what_it_cannot_score(digits):
    """Labels out of range, non-finite images, an empty set, one label too few, a net with a
    state given none: a ValueError naming ``evaluate`` or the state -- never a loss of NaN
    reported with an accuracy, nor a raw ZeroDivisionError or vmap error."""
    params, _ = train.init_params(NET, (8, 8, 1))
    _, _, xt, yt = subset(digits)
    xent = jc.softmax_cross_entropy
    nan = xt.copy()
    nan[3, 2, 2, 0] = np.nan
    for x, y, match in [(xt, yt - 1, r"^evaluate: labels must lie in \[0, 10\), got values in "
                                     r"\[-1, 8\]"),
                        (nan, yt, r"^evaluate: images must be finite, image 3 holds NaN"),
                        (xt[:0], yt[:0], r"^evaluate: no examples \(x of shape \(0, 8, 8, 1\)\)"),
                        (xt, yt[:5], r"^evaluate: expected one label per image, shape \(100,\), "
                                     r"got labels of shape \(5,\)")]:
        with pytest.raises(ValueError, match=match):
            train.evaluate(NET, xent, params, x, y)
    with pytest.raises(TypeError, match=r"^evaluate: loss must be a jaxcnn Loss"):
        train.evaluate(NET, lambda o, t: 0.0, params, xt, yt)
    two = (r"^{}: expected one array of examples, got a tuple; a net of several inputs trains "
           r"through value_and_grad or make_step")
    with pytest.raises(TypeError, match=two.format("evaluate")):
        train.evaluate(NET, xent, params, (xt, xt), yt)
    with pytest.raises(TypeError, match=two.format("fit")):
        train.fit(NET, params, (xt, xt), yt, verbose=False)
    with pytest.raises(ValueError, match=r"^value_grad_and_state: the state is updated in "
                                         r"training mode only, got train=False"):
        jc.value_grad_and_state(NET, xent)(params, (), xt, yt, train=False)
    with pytest.raises(TypeError, match=r"^gradient_check: net must be a jaxcnn Layer"):
        jc.audit.gradient_check(None, xent, params, xt, yt)
    bn = jc.serial(jc.Conv2D(2, 3), jc.BatchNorm(), jc.Flatten(), jc.Dense(10))
    bn_params, _ = bn.init(jax.random.key(0), (8, 8, 1))
    with pytest.raises(ValueError, match=r"keeps a state \(such as BatchNorm's running "
                                         r"statistics\) to evaluate with, and none was given"):
        train.evaluate(bn, xent, bn_params, xt, yt)
    assert train.evaluate(bn, xent, bn_params, xt, yt, state=jc.init_state(bn, (8, 8, 1)))[1] >= 0


def test_evaluate_refuses_targets_the_loss_does_not_take(digits):
    """Class indices for squared error, one-hot floats for cross-entropy: the loss's own
    message on the whole set's shapes, named after ``evaluate`` (and the set, in ``fit``)."""
    params, _ = train.init_params(NET, (8, 8, 1))
    _, _, xt, yt = subset(digits)
    with pytest.raises(ValueError, match=r"^evaluate: its targets \(int32, shape \(100,\)\) do "
                                         r"not suit the loss: squared_error: targets must have the "
                                         r"outputs' shape \(100, 10\), got \(100,\)"):
        train.evaluate(NET, jc.squared_error, params, xt, yt.astype(np.int32))
    one_hot = np.eye(10, dtype=np.float32)[yt]
    with pytest.raises(TypeError, match=r"^training set: its targets \(float32, shape \(100, "
                                        r"10\)\) do not suit the loss: softmax_cross_entropy: "
                                        r"labels must be an integer array"):
        train.fit(NET, params, xt, one_hot, epochs=1, batch_size=BATCH, verbose=False)


def test_a_dense_net_trains_and_evaluates_on_vectors_with_class_labels():
    """Inputs ``(N, F)`` with integer labels: the labels are checked as for images (in range,
    one per row), not refused for the inputs' rank; the run scores as evaluate does."""
    net = jc.serial(jc.Dense(16), jc.ReLU(), jc.Dense(3))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5)).astype(np.float32)
    y = ((x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 1)).astype(np.int32)
    params, _ = train.init_params(net, (5,))
    result = train.fit(net, params, x, y, x, y, optimizer=ADAM, epochs=2, batch_size=20,
                       verbose=False)
    loss, accuracy = train.evaluate(net, jc.softmax_cross_entropy, result.params, x, y)
    assert math.isclose(loss, result.summary["test_loss"], rel_tol=1e-5)
    assert accuracy == result.summary["test_accuracy"]
    with pytest.raises(ValueError, match=r"^evaluate: labels must lie in \[0, 3\), got values "
                                         r"in \[5, 7\]"):
        train.evaluate(net, jc.softmax_cross_entropy, result.params, x, y + 5)
    with pytest.raises(ValueError, match=r"^training set: images must be an array with a "
                                         r"batch axis, e.g. \(N, H, W, C\), got \(5,\)"):
        train.fit(net, params, x[0], y, epochs=1, batch_size=20, verbose=False)


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.int8])
def test_accuracy_compares_classes_past_the_labels_dtype(dtype):
    """301 classes, every prediction class 300, every label 44: no hit in any label dtype
    (class 300 cast to 8 bits would wrap to 44); a row whose output is NaN hits nothing."""
    net = jc.serial(jc.Flatten(), jc.Dense(301))
    params, _ = train.init_params(net, (2, 2, 1))
    params = (params[0], {"w": jnp.zeros_like(params[1]["w"]),
                          "b": jnp.zeros(301, jnp.float32).at[300].set(10.0)})
    x = np.zeros((5, 2, 2, 1), np.float32)
    assert train.evaluate(net, jc.softmax_cross_entropy, params, x, np.full(5, 44, dtype))[1] == 0
    assert train.evaluate(net, jc.softmax_cross_entropy, params, x, np.full(5, 300))[1] == 1
    nan = (params[0], {"w": params[1]["w"], "b": jnp.full(301, jnp.nan, jnp.float32)})
    loss, accuracy = train.evaluate(net, jc.softmax_cross_entropy, nan, x, np.zeros(5, dtype))
    assert math.isnan(loss) and accuracy == 0


@pytest.mark.parametrize("grad", train.GRADS)
def test_fit_in_microbatches_makes_the_whole_batch_updates(digits, grad):
    """``microbatch=5`` runs each batch of 20 as four chunks, averaged: the same training run
    up to float32 rounding (same data order, same updates)."""
    net = NET
    params, _ = train.init_params(net, (8, 8, 1), seed=1)
    x, y, xt, yt = subset(digits)
    kw = dict(optimizer=ADAM, epochs=2, batch_size=BATCH, seed=1, grad=grad, verbose=False)
    whole = train.fit(net, params, x, y, xt, yt, **kw)
    chunked = train.fit(net, params, x, y, xt, yt, **kw, microbatch=5)
    assert chunked.summary["microbatch"] == 5 and whole.summary["microbatch"] is None
    for a, b in zip(jax.tree_util.tree_leaves(chunked.params),
                    jax.tree_util.tree_leaves(whole.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([h["train_loss"] for h in chunked.history],
                               [h["train_loss"] for h in whole.history], rtol=1e-5)
    assert not leaves_equal(chunked.params, params)


def test_fit_hands_microbatch_to_the_step(digits):
    """With stochastic pooling each chunk draws from its own split key, so a run in
    microbatches differs from the whole-batch run: ``microbatch`` reaches the step (the
    deterministic runs above are equal either way).  A microbatch of the whole batch is the
    plain step."""
    net = STOCHASTIC_NET
    params, _ = train.init_params(net, (8, 8, 1), seed=2)
    x, y = digits.x_train[:200], digits.y_train[:200]
    kw = dict(optimizer=ADAM, epochs=1, batch_size=BATCH, seed=2, verbose=False)
    whole = train.fit(net, params, x, y, **kw)
    assert not leaves_equal(train.fit(net, params, x, y, **kw, microbatch=5).params,
                            whole.params)
    same = train.fit(net, params, x, y, **kw, microbatch=BATCH)
    assert leaves_equal(same.params, whole.params) and same.summary["microbatch"] is None


@pytest.mark.parametrize("grad", train.GRADS)
def test_make_step_splits_the_batch_into_microbatches(digits, grad):
    params, _ = train.init_params(NET, (8, 8, 1))
    step = train.make_step(NET, jc.softmax_cross_entropy, ADAM, grad, microbatch=3)
    with pytest.raises(ValueError, match=r"value_and_grad: the batch \(20\) must be a multiple "
                                         r"of microbatch=3 or at most it"):
        step(params, ADAM.init(params), digits.x_train[:20], digits.y_train[:20], None)


def test_a_run_resumes_only_with_its_microbatch(digits, tmp_path):
    net = NET
    params, _ = train.init_params(net, (8, 8, 1))
    x, y = digits.x_train[:200], digits.y_train[:200]
    kw = dict(optimizer=ADAM, batch_size=BATCH, verbose=False, out=tmp_path)
    train.fit(net, params, x, y, epochs=1, microbatch=10, **kw)
    with pytest.raises(ValueError, match=r"was made with microbatch=10, this run has "
                                         r"microbatch=None"):
        train.fit(net, params, x, y, epochs=2, resume=True, **kw)
    resumed = train.fit(net, params, x, y, epochs=2, resume=True, microbatch=10, **kw)
    assert resumed.summary["steps"] == 20


def test_a_resume_trains_on_with_the_hyperparameters_of_the_optimizer_passed(digits,
                                                                              tmp_path):
    """``optax.inject_hyperparams`` keeps them in the optimizer state: on resume the rate of
    the optimizer passed applies (as a plain optimizer's, held in its closure, does), so the
    summary's record of the change is true; a scheduled rate continues from the checkpoint's
    count, and the same optimizer resumes bitwise as a run never stopped."""
    params, _ = train.init_params(NET, (8, 8, 1))
    x, y = digits.x_train[:64], digits.y_train[:64]
    kw = dict(batch_size=16, verbose=False)

    def adam(lr):
        return optax.chain(optax.clip_by_global_norm(1.0),
                           optax.inject_hyperparams(optax.adam)(learning_rate=lr, b1=0.8))
    train.fit(NET, params, x, y, epochs=1, optimizer=adam(1e-3), info={"lr": 1e-3},
              out=tmp_path / "a", **kw)
    lines = []
    changed = train.fit(NET, params, x, y, epochs=2, optimizer=adam(1e-1), info={"lr": 1e-1},
                        resume_may_change=("lr",), resume=True, out=tmp_path / "a",
                        **{**kw, "verbose": True}, progress=False, print_fn=lines.append)
    assert float(changed.opt_state[1].hyperparams["learning_rate"]) == np.float32(1e-1)
    assert float(changed.opt_state[1].hyperparams["b1"]) == np.float32(0.8)
    assert changed.summary["changes"] == [{"step": 4, "setting": "lr", "from": 1e-3,
                                           "to": 1e-1}]
    assert "taking the optimizer's learning_rate = 0.1 (the checkpoint's optimizer state held " \
           "0.001)" in lines
    scheduled = optax.inject_hyperparams(optax.adam)(
        learning_rate=optax.linear_schedule(1e-2, 1e-3, 8))
    train.fit(NET, params, x, y, epochs=1, optimizer=scheduled, out=tmp_path / "b", **kw)
    resumed = train.fit(NET, params, x, y, epochs=2, optimizer=scheduled, out=tmp_path / "b",
                        resume=True, **kw)
    straight = train.fit(NET, params, x, y, epochs=2, optimizer=scheduled, **kw)
    for a, b in zip(jax.tree.leaves((resumed.params, resumed.opt_state)),
                    jax.tree.leaves((straight.params, straight.opt_state))):
        np.testing.assert_array_equal(a, b)


def test_resume_equals_uninterrupted(digits, tmp_path):
    net = STOCHASTIC_NET      # the step keys matter too
    params, _ = train.init_params(net, (8, 8, 1), seed=3)
    x, y, xt, yt = subset(digits)
    kw = dict(optimizer=ADAM, epochs=3, batch_size=BATCH, seed=3, verbose=False)
    straight = train.fit(net, params, x, y, xt, yt, **kw)
    part = train.fit(net, params, x, y, xt, yt, **{**kw, "epochs": 1}, out=tmp_path)
    assert part.summary["steps"] == 10
    # a save killed half-way leaves a temporary directory; resume must ignore it
    junk = tmp_path / "checkpoints" / "7.orbax-checkpoint-tmp-1700000000000000"
    (junk / "state").mkdir(parents=True)
    (junk / "state" / "partial").write_bytes(b"\0" * 10)
    resumed = train.fit(net, params, x, y, xt, yt, **kw, out=tmp_path, resume=True)
    assert leaves_equal(resumed.params, straight.params)
    assert leaves_equal(resumed.opt_state, straight.opt_state)
    assert resumed.history == [{**h, "seconds": r["seconds"]}
                               for h, r in zip(straight.history, resumed.history)]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3
    assert not junk.exists()


def test_resume_mid_epoch_after_a_kill(digits, tmp_path, monkeypatch):
    net = STOCHASTIC_NET
    params, _ = train.init_params(net, (8, 8, 1))
    x, y, _, _ = subset(digits)
    kw = dict(optimizer=ADAM, epochs=2, batch_size=BATCH, verbose=False, out=tmp_path)
    straight = train.fit(net, params, x, y, **{**kw, "out": None})

    class Killed(_Bar):
        def update(self, n):
            self.n += n
            if self.n == 13:                   # after step 13: the checkpoint of step 12 exists
                raise KeyboardInterrupt
    monkeypatch.setattr(report, "progress_bar", lambda *a: Killed())
    with pytest.raises(KeyboardInterrupt):
        train.fit(net, params, x, y, **kw, checkpoint_every=4)
    state, meta = train.load_checkpoint(tmp_path)
    assert meta["step"] == 12 and meta["epoch"] == 1 and len(meta["epoch_losses"]) == 2
    monkeypatch.undo()
    resumed = train.fit(net, params, x, y, **kw, checkpoint_every=4, resume=True)
    assert leaves_equal(resumed.params, straight.params)
    assert resumed.history[1]["train_loss"] == straight.history[1]["train_loss"]


class _Bar:
    n = 0

    def update(self, n):
        self.n += n

    def set_postfix_str(self, s, refresh=True):
        pass

    def close(self):
        pass


def test_out_dir_rules(digits, tmp_path):
    net = NET
    params, _ = train.init_params(net, (8, 8, 1))
    x, y, _, _ = subset(digits, 40)
    kw = dict(optimizer=ADAM, epochs=1, batch_size=BATCH, verbose=False, out=tmp_path)
    with pytest.raises(ValueError, match="nothing to resume: no checkpoint in .*checkpoints"):
        train.fit(net, params, x, y, **kw, resume=True)
    train.fit(net, params, x, y, **kw)
    with pytest.raises(ValueError, match="already holds a run"):
        train.fit(net, params, x, y, **kw)
    with pytest.raises(ValueError, match=r"cannot resume: .* made with batch_size=20, "
                                         r"this run has batch_size=10"):
        train.fit(net, params, x, y, **{**kw, "batch_size": 10}, resume=True)
    assert train.fit(net, params, x, y, **kw, overwrite=True).summary["epochs"] == 1
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["0", "2"]


def test_non_finite_loss_names_the_step_and_keeps_the_checkpoint(digits, tmp_path):
    net = NET
    params, _ = train.init_params(net, (8, 8, 1))
    x, y, _, _ = subset(digits)
    x = x.copy()
    order = train.epoch_order(jax.random.key(0), 0, len(x))
    x[order[5 * 20]] = 3e38                    # finite, but the forward overflows at step 5
    with pytest.raises(train.NonFiniteLossError,
                       match=r"non-finite loss \(nan\) at step 5 \(epoch 1, batch 6 of 10\); "
                             r"training stopped; the last good checkpoint \(step 4\) is kept"
                       ) as err:
        train.fit(net, params, x, y, optimizer=ADAM, epochs=2, batch_size=BATCH, out=tmp_path,
                  checkpoint_every=2, verbose=False)
    assert err.value.step == 5
    state, meta = train.load_checkpoint(tmp_path)
    assert meta["step"] == 4
    assert all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(state["params"]))


def test_real_targets_and_their_images_are_checked_finite_before_training(digits, tmp_path):
    """``squared_error``'s real targets take the branch without class labels: a NaN in an
    image, a target or the test set is named before the first step, as it is for labels --
    not a divergence at step 1, nor a data overflow blamed on finite images, nor a NaN test
    loss in the summary."""
    params, _ = train.init_params(NET, (8, 8, 1))
    x = digits.x_train[:40].copy()
    t, tt = np.eye(10, dtype=np.float32)[digits.y_train[:40]], \
        np.eye(10, dtype=np.float32)[digits.y_test[:20]]
    x[30, 3, 3, 0], t[5, 2], tt[7, 0] = np.nan, np.inf, np.nan
    kw = dict(loss=jc.squared_error, epochs=1, batch_size=BATCH, verbose=False)
    clean_x, clean_t = digits.x_train[:40], np.eye(10, dtype=np.float32)[digits.y_train[:40]]
    for args, message in [((x, clean_t), r"^training set: images must be finite, image 30 "),
                          ((clean_x, t), r"^training set: targets must be finite, target 5 "),
                          ((clean_x, clean_t, digits.x_test[:20], tt),
                           r"^test set: targets must be finite, target 7 ")]:
        with pytest.raises(ValueError, match=message):
            train.fit(NET, params, *args, out=tmp_path / "o", **kw)
        assert not (tmp_path / "o" / "checkpoints").exists()


@pytest.mark.parametrize("change, exc, message", [
    (dict(y=np.full(200, 10, np.int32)), ValueError,
     r"training set: labels must lie in \[0, 10\), got values in \[10, 10\]"),
    (dict(y=np.arange(200, dtype=np.int32) - 1), ValueError,
     r"labels must lie in \[0, 10\), got values in \[-1, 198\] \(190 out of range, first at "
     r"index 0\)"),
    (dict(x=np.zeros((200, 8, 8), np.float32)), ValueError,
     r"training set: images of shape \(200, 8, 8\) .* do not fit the network: serial\[0\] "
     r"Conv2D: expected input of rank 4 \(N, H, W, C\), got shape \(200, 8, 8\)"),
    (dict(x=np.zeros((200, 1, 1, 1), np.float32)), ValueError,
     r"images of shape \(200, 1, 1, 1\) .* do not fit the network: serial\[2\] MaxPool2D"),
    (dict(x=np.zeros((200, 8, 8, 3), np.float32)), ValueError,
     r"do not fit the network: .*input has 3 channels but the kernel expects 1"),
    (dict(x=np.zeros((200, 8, 8, 1), np.float64)), TypeError,
     r"images of shape \(200, 8, 8, 1\) and dtype float64 do not fit the network: .*float32"),
    (dict(y=np.zeros(199, np.int32)), ValueError, r"expected one label per image, shape \(200,\)"),
    (dict(y=np.zeros(200, np.float32)), TypeError,
     r"class labels must be an integer array \(cast with .astype\(np.int32\)\), got float32; "
     r"real targets need the outputs' shape \(200, 10\)"),
    (dict(y=np.zeros((200, 3), np.float32)), ValueError, r"targets must have shape \(200, 10\)"),
    (dict(epochs=0), ValueError, "epochs must be a positive integer, got 0"),
    (dict(batch_size=0), ValueError, "batch_size must be a positive integer, got 0"),
    (dict(batch_size=2.5), TypeError, "batch_size must be an int, got 2.5"),
    (dict(batch_size=201), ValueError,
     r"batch_size \(201\) exceeds the number of training examples \(200\)"),
    (dict(grad="numeric"), ValueError, "grad must be one of manual, autodiff, got 'numeric'"),
    (dict(microbatch=6), ValueError,
     r"batch_size \(20\) must be a multiple of microbatch \(6\) or at most it"),
    (dict(microbatch=0), ValueError, "microbatch must be a positive integer, got 0"),
    (dict(optimizer=optax.adam), TypeError,
     r"optimizer must be an optax GradientTransformation \(init and update\), e.g. "
     r"optax.adam\(1e-3\) \(called\), got function"),
    (dict(optimizer="adam"), TypeError, r"optimizer must be an optax .* got str 'adam'"),
    (dict(info=[("a", 1)]), TypeError, r"info must be a dict of JSON values, got a list"),
    (dict(info={"seed": 1, "batch_size": 8, "epochs": 3}), ValueError,
     r"info may not hold \['batch_size', 'epochs', 'seed'\]: fit records those itself"),
    (dict(info={"batch_statistics_rows": 1, "loss_name": "l1", "net_settings": []}), ValueError,
     r"info may not hold \['batch_statistics_rows', 'loss_name', 'net_settings'\]"),  # also
    #                 without BatchNorm: else its resume would skip the microbatch check
    (dict(optimizer=optax.MultiSteps(optax.adam(1e-2), 2), epochs=1), None, None),
    (dict(info={"net": "mine"}), None, None),                       # not fit's own entry
    (dict(print_fn=None), TypeError, r"print_fn must be callable"),
    (dict(check_grads=1.5), TypeError, r"check_grads must be an int \(0: never\), got 1.5"),
    (dict(check_grads=True), TypeError, r"check_grads must be an int \(0: never\), got True"),
    (dict(checkpoint_every="3"), TypeError, r"checkpoint_every must be an int .* got '3'"),
    (dict(grad_tol="1e-3"), TypeError, r"grad_tol must be a number, got '1e-3'"),
    (dict(optimizer=optax.noisy_sgd(1e-2, key=jax.random.key(0))), TypeError,
     r"optimizer: its state holds a PRNG key .* optimizers that draw noise .* not supported"),
    (dict(optimizer=optax.lbfgs()), ValueError,
     r"optimizer: its initial state holds non-finite values in opt_state/.*optax.lbfgs"),
])
def test_bad_input_is_refused_before_training(digits, tmp_path, change, exc, message):
    net = NET
    params, _ = train.init_params(net, (8, 8, 1))
    args = dict(x=digits.x_train[:200], y=digits.y_train[:200], epochs=1, batch_size=BATCH)
    args.update(change)
    if exc is None:                                    # accepted: trains
        train.fit(net, params, args.pop("x"), args.pop("y"), out=tmp_path, verbose=False,
                  **args)
        return
    with pytest.raises(exc, match=message):
        train.fit(net, params, args.pop("x"), args.pop("y"), out=tmp_path, verbose=False,
                  **args)
    assert not os.path.exists(tmp_path / "checkpoints")


def test_a_runs_layer_settings_are_plain_values_that_survive_json():
    """What a checkpoint records of each layer, compared on resume: plain values only (a
    function's text holds its address, a set's order the hash seed), as JSON gives them back;
    every setting that changes what a layer computes (count_include_pad, a NumPy bool's
    ceil_mode as the bool); a setting one side lacks (newer than the checkpoint) not compared."""
    custom = jc.Layer(*jc.Tanh()[:4], "MyTanh", config=(("fn", jnp.tanh), ("kind", "elementwise"),
                                                        ("names", frozenset("abc")),
                                                        ("scale", np.float32(2.0))))
    net = jc.serial(jc.Conv2D(2, 3, method="lax"), custom,
                    jc.AvgPool2D(2, count_include_pad=False), jc.MaxPool2D(2, ceil_mode=np.True_))
    settings = train._net_settings(net)
    assert json.loads(json.dumps(settings)) == settings
    assert settings[0] == ["[]", "serial", {}]
    assert "method" not in settings[1][2] and settings[1][2]["dilation"] == [1, 1]
    assert settings[2] == ["[1]", "MyTanh", {"scale": 2.0}]
    assert settings[3][2]["count_include_pad"] is False and settings[4][2]["ceil_mode"] is True
    same = jc.serial(jc.Conv2D(2, 3), custom, jc.AvgPool2D(2, count_include_pad=False),
                     jc.MaxPool2D(2, ceil_mode=True))
    assert train._net_settings(same) == settings
    included = jc.serial(*same.layers[:2], jc.AvgPool2D(2), same.layers[3])
    was, now = train._settings_differ(settings, train._net_settings(included))
    assert was.startswith("[2] AvgPool2D ceil_mode=False count_include_pad=False ")
    assert now.startswith("[2] AvgPool2D ceil_mode=False count_include_pad=True ")
    older = json.loads(json.dumps(settings))
    del older[3][2]["count_include_pad"]             # a checkpoint before the setting existed
    assert train._settings_differ(older, settings) is None
    assert train._settings_differ(settings, settings[:-1]) == (
        "[3] MaxPool2D ceil_mode=True dilation=[1, 1] padding='VALID' size=[2, 2] "
        "strides=[2, 2]", None)


def test_what_fit_cannot_take_for_net_out_or_a_resume(digits, tmp_path):
    """Not a net; an ``out`` that is bytes, empty or a file; a resume with another net of the
    same shapes (its name differs) or another optimizer of the same arrays (its tree differs):
    errors naming them, not a raw AttributeError, nor a checkpoint called corrupt."""
    params, _ = train.init_params(NET, (8, 8, 1))
    x, y, _, _ = subset(digits)
    kw = dict(optimizer=ADAM, epochs=1, batch_size=BATCH, verbose=False)
    with pytest.raises(TypeError, match=r"^fit: net must be a jaxcnn Layer"):
        train.fit("small", params, x, y, **kw)
    (tmp_path / "file").write_text("")
    for out, exc, match in [(b"run", TypeError, r"out must be a directory path .* got bytes"),
                            ("", ValueError, r"out must name a directory, got an empty path"),
                            (tmp_path / "file", ValueError, r"out must be a directory, .* is a "
                                                            r"file")]:
        with pytest.raises(exc, match=match):
            train.fit(NET, params, x, y, out=out, **kw)
    out = tmp_path / "run"
    train.fit(NET, params, x, y, out=out, **kw)
    other = jc.serial(*NET.layers[:1], jc.Tanh(), *NET.layers[2:])
    assert other.name != NET.name
    with pytest.raises(ValueError, match=r"cannot resume: the checkpoint at step 10 .* was made "
                                         r"with net_layers='serial\(Conv2D, ReLU, "):
        train.fit(other, params, x, y, out=out, resume=True, **{**kw, "epochs": 2})
    with pytest.raises(ValueError, match=r"holds the arrays this run has, in another tree "
                                         r"\(another optimizer"):
        train.fit(NET, params, x, y, out=out, resume=True,
                  **{**kw, "epochs": 2, "optimizer": optax.adamw(1e-2)})
    assert (out / "checkpoints" / "10").is_dir()          # nothing set aside as corrupt
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at step 3 in .*; it holds steps "
                                                r"\[0, 10\]"):
        train.load_checkpoint(out, step=3)
    with pytest.raises(ValueError, match=r"^zoo.get\('small'\): num_classes must be >= 1, got 0"):
        zoo.get("small", (8, 8, 1), 0)


def test_a_loaded_checkpoint_evaluates_a_net_with_state(digits, tmp_path):
    """``load_checkpoint`` without a template gives ``net_state`` as the tuples
    ``jc.with_state`` takes (orbax reads tuples back as lists)."""
    net = jc.serial(jc.Conv2D(2, 3), jc.BatchNorm(), jc.ReLU(), jc.Flatten(), jc.Dense(10))
    params, _ = train.init_params(net, (8, 8, 1))
    x, y, xt, _ = subset(digits)
    result = train.fit(net, params, x, y, optimizer=ADAM, epochs=1, batch_size=BATCH,
                       verbose=False, out=tmp_path)
    state, meta = train.load_checkpoint(tmp_path)
    bound = jc.with_state(net, state["net_state"]).apply(state["params"], xt, train=False)
    want = jc.with_state(net, result.state).apply(result.params, xt, train=False)
    np.testing.assert_array_equal(bound, want)
    assert meta["changes"] == []


def test_make_optimizer_rejects_unknown_names_and_rates():
    assert isinstance(train.make_optimizer("momentum", 0.1), optax.GradientTransformation)
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'; expected one of sgd, "
                                         "momentum, adam"):
        train.make_optimizer("rmsprop", 0.1)
    with pytest.raises(ValueError, match="learning rate must be a positive number, got -1"):
        train.make_optimizer("sgd", -1)


# --- the zoo -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(zoo.ARCHS))
@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1)])
def test_zoo_nets_adapt_to_the_input_size(name, shape):
    net = zoo.get(name, shape)
    assert zoo._output_shape(net, shape) == (10,)
    params = jax.eval_shape(lambda k: net.init(k, shape)[0], jax.random.key(0))
    evaluated = jc.with_state(net, jc.init_state(net, shape))     # resnet-bn: its statistics
    y = jax.eval_shape(lambda p, x: evaluated.apply(p, x, train=False), params,
                       jax.ShapeDtypeStruct((2, *shape), jnp.float32))
    assert y.shape == (2, 10)


@pytest.mark.parametrize("name", list(zoo.ARCHS))
def test_zoo_nets_hand_written_gradients_match_autodiff(name, rng):
    net = zoo.get(name, (8, 8, 1))
    params, _ = net.init(jax.random.key(0), (8, 8, 1))
    x = rng.uniform(size=(3, 8, 8, 1)).astype(np.float32)
    c = train.gradient_check(net, jc.softmax_cross_entropy, params, x,
                             np.array([0, 3, 9], np.int32))
    assert c.worst < 1e-4, c.errors


def test_zoo_layouts():
    # LeNet-5 at 28x28: C1 28 -> S2 14 -> C3 10 -> S4 5 -> C5 (5x5 kernel) 1x1x120
    params, _ = zoo.lenet5((28, 28, 1)).init(jax.random.key(0), (28, 28, 1))
    assert params[6]["w"].shape == (5, 5, 16, 120)
    # UFLDL: 9x9x20 on 28x28 -> 20x20 -> pooled 10x10x20 = 2000 features
    params, _ = zoo.ufldl((28, 28, 1)).init(jax.random.key(0), (28, 28, 1))
    assert params[0]["w"].shape == (9, 9, 1, 20) and params[4]["w"].shape == (2000, 10)
    # DeepID at its 39x31 patches: pool3 gives 3x2x60 = 360 features, conv4 2x1x80 = 160, and
    # the 160-unit layer reads both, concatenated (the paper's skip connection): 520
    params, _ = zoo.deepid((39, 31, 1)).init(jax.random.key(0), (39, 31, 1))
    assert params[10][0][0]["w"].shape == (2, 2, 60, 80)
    assert params[12]["w"].shape == (360 + 160, 160)
    with pytest.raises(ValueError, match="unknown architecture 'vgg'; expected one of small, "
                                         "lenet5, ufldl, deepid"):
        zoo.get("vgg", (8, 8, 1))

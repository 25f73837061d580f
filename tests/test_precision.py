"""Mixed precision (jaxcnn.precision): 16-bit forward and backward, float32 params, loss and
optimizer state.

On a CPU, 16-bit arithmetic is emulated, so these tests check correctness only: under the same
policy the hand-written gradients equal ``jax.grad``'s within the dtype's audit tolerance and
stay close to the float32 gradients, everything the optimizer sees is float32, the compiled
step really convolves and multiplies in 16 bits, float16's loss scale keeps small gradients
from underflowing, and ``fit`` and ``jaxcnn train --precision`` train and resume with it.
Nets and batches are tiny; every step is jitted.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcnn as jc
from jaxcnn import audit, cli, data, distributed, train
from jaxcnn.precision import LOSS_SCALES, PRECISIONS, Policy, policy

LOW = ("bfloat16", "float16")
XENT = jc.softmax_cross_entropy
# convolutions, BatchNorm (state; no bias before it), ReLU, max pooling, sigmoid, dense
NET = jc.serial(jc.Conv2D(8, 3, padding="SAME", use_bias=False), jc.BatchNorm(), jc.ReLU(),
                jc.MaxPool2D(2), jc.Conv2D(8, 3, padding="SAME"), jc.Sigmoid(), jc.Flatten(),
                jc.Dense(10))
ADAM = optax.adam(1e-2)


@pytest.fixture(scope="module")
def digits():
    return data.load_digits()


@pytest.fixture(scope="module")
def batch(digits):
    params, _ = train.init_params(NET, (8, 8, 1))
    return (params, jc.init_state(NET, (8, 8, 1)), jnp.asarray(digits.x_train[:32]),
            jnp.asarray(digits.y_train[:32]))


def dtypes(tree) -> set[str]:
    return {str(jnp.dtype(a.dtype)) for a in jax.tree.leaves(tree)}


def errors(got, want) -> list[tuple[float, float]]:
    """Per gradient array: the largest error relative to the network's largest gradient entry
    (16-bit rounding scales with the largest values flowing through a layer, and an array
    whose gradient is a near-cancellation would otherwise be all noise), and the cosine."""
    want = jax.tree.leaves(want)
    top = max(float(jnp.max(jnp.abs(w))) for w in want)
    return [audit.compare(g, w, top)[1:] for g, w in zip(jax.tree.leaves(got), want)]


def step(grad, precision):
    return jax.jit(train.loss_grad_and_state(NET, XENT, grad, None, precision))


# --- the policy and its errors --------------------------------------------------------------

def test_policies_by_name():
    assert policy() == policy("float32") == Policy("float32", 1.0)
    assert not policy("float32").active and policy("bfloat16").active
    assert policy("bfloat16").loss_scale == 1.0
    assert policy("float16") == Policy("float16", LOSS_SCALES["float16"]) == Policy("float16",
                                                                                    1024.0)
    assert policy(Policy("float16", 256)) == Policy("float16", 256.0)
    assert PRECISIONS == ("float32", "bfloat16", "float16")
    tiny = jnp.full((2,), 1e-8, jnp.float32)            # below float16's smallest subnormal
    assert not jnp.any(Policy("float16", 1.0).delta(tiny))
    np.testing.assert_allclose(policy("float16").delta(tiny).astype(jnp.float32), 1024e-8,
                               rtol=1e-2)                # a subnormal: 10 bits at most


@pytest.mark.parametrize("make, message", [
    (lambda: jc.value_and_grad(NET, XENT, precision="fp8"),
     r"value_and_grad: precision must be one of float32, bfloat16, float16, got 'fp8'"),
    (lambda: train.loss_and_grad(NET, XENT, "autodiff", None, "float64"),
     r"^loss_and_grad: precision must be one of float32, bfloat16, float16, got 'float64'"),
    (lambda: train.loss_grad_and_state(NET, XENT, "manual", None, "fp16"),
     r"^loss_grad_and_state: precision must be one of .* got 'fp16'"),
    (lambda: train.make_step(jc.serial(jc.Flatten(), jc.Dense(3)), XENT, ADAM, precision="half"),
     r"precision must be one of float32, bfloat16, float16, got 'half'"),
    (lambda: jc.value_grad_and_state(NET, XENT, precision=Policy("float8")),
     r"^value_grad_and_state: precision must be one of float32, bfloat16, float16, got 'float8'"),
    (lambda: jc.value_and_grad(NET, XENT, precision=Policy("float16", 0.0)),
     r"the loss scale must be a positive finite number .*got 0.0"),
    (lambda: jc.value_and_grad(NET, XENT, precision=Policy("float16", float("inf"))),
     r"the loss scale must be a positive finite number .*got inf"),
    (lambda: jc.value_and_grad(NET, XENT, precision=Policy("float16", 1e-8)),   # all would be 0
     r"the loss scale .* must be a normal float16 number, in \[6.10352e-05, 65504\], got 1e-08"),
    (lambda: jc.value_and_grad(NET, XENT, precision=Policy("bfloat16", 1e39)),
     r"must be a normal bfloat16 number, in \[1.17549e-38, 3.38953e\+38\], got 1e\+39"),
    (lambda: jc.value_and_grad(NET, XENT, precision=Policy("float32", 1024)),   # never applied
     r"a float32 policy casts nothing and scales nothing, so its loss scale must be 1"),
    (lambda: train.make_step(NET, XENT, ADAM),                     # the BatchNorm's state lost
     r"^make_step: .* keeps a state .* use state_step\(loss_grad_and_state"),
    (lambda: train.train_step(NET, XENT, ADAM),
     r"^train_step: .* keeps a state .* use state_step\(loss_grad_and_state"),
])
def test_an_unknown_precision_is_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_precision_that_is_no_name_is_refused():
    with pytest.raises(TypeError, match=r"precision must be one of float32, bfloat16, float16 "
                                        r"or a jaxcnn.precision.Policy, got int"):
        jc.value_and_grad(NET, XENT, precision=16)


def test_fit_refuses_an_unknown_precision(digits):
    params, _ = train.init_params(NET, (8, 8, 1))
    with pytest.raises(ValueError, match=r"^precision must be one of float32, bfloat16, "
                                         r"float16, got 'bf16'"):
        train.fit(NET, params, digits.x_train[:40], digits.y_train[:40], epochs=1,
                  batch_size=20, precision="bf16", verbose=False)


def test_float32_is_no_policy(batch):
    """``"float32"`` adds no operation: the same program as no precision at all, and float64
    params stay float64."""
    params, _, x, y = batch
    plain, named = jc.value_and_grad(NET, XENT), jc.value_and_grad(NET, XENT, precision="float32")
    assert str(jax.make_jaxpr(plain)(params, x, y)) == str(jax.make_jaxpr(named)(params, x, y))
    wide = jax.tree.map(lambda a: a.astype(jnp.float64), (params, x))
    value, grads = jax.jit(named)(*wide, y)
    assert dtypes((value, grads)) == {"float64"}


# --- the gradients ----------------------------------------------------------------------------

@pytest.mark.parametrize("precision", LOW)
def test_hand_written_equals_autodiff_under_the_policy(batch, precision):
    """Under the same policy the hand-written backward and ``jax.grad`` agree within the
    dtype's audit tolerance (``audit.TOLERANCES``), and both stay within it of the float32
    gradient; the loss, the gradients and the new state come back float32."""
    params, state, x, y = batch
    manual = step("manual", precision)(params, state, x, y)
    auto = step("autodiff", precision)(params, state, x, y)
    exact = step("manual", None)(params, state, x, y)
    tol = audit.TOLERANCES[precision]
    for got in (manual, auto):
        assert dtypes(got) == {"float32"}
        assert jax.tree.structure(got[1]) == jax.tree.structure(params)
    assert float(manual[0]) == float(auto[0])                       # the same forward
    np.testing.assert_allclose(float(manual[0]), float(exact[0]), rtol=tol / 10)
    for (rel, cosine), (rel32, cosine32) in zip(errors(manual[1], auto[1]),
                                                errors(manual[1], exact[1])):
        assert rel <= tol and rel32 <= tol, (rel, rel32)
        assert cosine > 0.999 and cosine32 > 0.999, (cosine, cosine32)
    for new, old in zip(jax.tree.leaves(manual[2]), jax.tree.leaves(exact[2])):
        np.testing.assert_allclose(new, old, rtol=tol, atol=tol)   # the running statistics


def test_bfloat16_gradients_are_close_to_float32(batch):
    """The brief's figure: relative to the largest gradient entry, every array of the bfloat16
    gradient within 3e-2 of float32's (measured 1.8e-2 on this batch, in the first kernel,
    whose gradient through BatchNorm is a near-cancellation)."""
    params, _, x, y = batch
    half = jax.jit(jc.value_and_grad(NET, XENT, precision="bfloat16"))(params, x, y)
    exact = jax.jit(jc.value_and_grad(NET, XENT))(params, x, y)
    assert max(rel for rel, _ in errors(half[1], exact[1])) < 3e-2


def test_loss_scale_keeps_float16_gradients_from_underflowing(digits):
    """Eight sigmoids shrink the residual by 4^8 and more: unscaled, the first layer's kernel
    gradient underflows in float16; scaled by the default 2^10 it is within float16's audit
    tolerance of float32's."""
    net = jc.serial(jc.Flatten(), *[layer for _ in range(8) for layer in (jc.Dense(16),
                                                                          jc.Sigmoid())],
                    jc.Dense(10))
    params, _ = train.init_params(net, (8, 8, 1))
    x, y = jnp.asarray(digits.x_train[:64]), jnp.asarray(digits.y_train[:64])
    exact = jax.jit(jc.value_and_grad(net, XENT))(params, x, y)[1][1]["w"]

    def first_kernel_error(precision):
        got = jax.jit(jc.value_and_grad(net, XENT, precision=precision))(params, x, y)[1][1]["w"]
        return audit.compare(got, exact)[1]

    assert first_kernel_error(Policy("float16", 1.0)) > 0.1
    assert first_kernel_error("float16") < audit.TOLERANCES["float16"]


def test_check_grads_audits_the_layers_as_the_policy_runs_them(batch):
    """Each layer's backward on the bfloat16 params and input the policy hands the net,
    against ``jax.vjp`` with the dtype's tolerance (float16 layers: tests/test_audit.py)."""
    params, _, x, y = batch
    precision = "bfloat16"
    pol = policy(precision)
    report = jc.check_grads(NET, XENT, pol.cast(params), pol.cast(x[:4]), y[:4])
    assert report.ok and report.dtype == precision, str(report)


# --- the compiled step ------------------------------------------------------------------------

def equations(jaxpr):
    """Every equation of ``jaxpr`` and of the jaxprs inside it (jit, scan, custom rules)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from equations(inner)


@pytest.mark.parametrize("grad", train.GRADS)
@pytest.mark.parametrize("precision", [*LOW, "float32"])
def test_the_step_convolves_and_multiplies_in_the_compute_dtype(batch, grad, precision):
    """Every convolution and matrix product of the jitted training step (forward and backward)
    takes operands in the compute dtype; the params and optimizer state it returns are
    float32."""
    params, state, x, y = batch
    update = train.state_step(train.loss_grad_and_state(NET, XENT, grad, None, precision), ADAM)
    closed = jax.make_jaxpr(update)(params, ADAM.init(params), state, x, y, None)
    products = [eqn for eqn in equations(closed.jaxpr)
                if eqn.primitive.name in ("conv_general_dilated", "dot_general")]
    assert len(products) >= 6                     # 3 layers x (forward, kernel, residual)
    operands = {str(v.aval.dtype) for eqn in products for v in eqn.invars}
    assert operands == {precision}
    assert {str(v.aval.dtype) for v in closed.jaxpr.outvars} == {"float32", "int32"}


def test_a_mesh_of_one_device_computes_as_one_device(batch):
    """``jaxcnn.distributed`` under the policy: on a mesh of one device, the single-device
    result."""
    params, state, x, y = batch
    plan = distributed.data_parallel(1)
    for grad in train.GRADS:
        sharded = jax.jit(distributed.loss_grad_and_state(NET, XENT, plan, grad, None,
                                                          "bfloat16"))(params, state, x, y)
        local = step(grad, "bfloat16")(params, state, x, y)
        assert dtypes(sharded) == {"float32"}
        for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(local)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


# --- fit and jaxcnn train ---------------------------------------------------------------------

def test_fit_in_bfloat16_learns_with_float32_state(digits):
    net = jc.serial(jc.Conv2D(6, 3, padding="SAME", use_bias=False), jc.BatchNorm(), jc.ReLU(),
                    jc.MaxPool2D(2), jc.Flatten(), jc.Dense(10))
    params, _ = train.init_params(net, (8, 8, 1))
    result = train.fit(net, params, digits.x_train[:400], digits.y_train[:400],
                       digits.x_test[:200], digits.y_test[:200], optimizer=ADAM, epochs=2,
                       batch_size=20, precision="bfloat16", verbose=False)
    assert result.summary["test_accuracy"] > 0.7                    # chance: 0.1
    assert result.summary["precision"] == "bfloat16" and result.summary["loss_scale"] == 1.0
    assert result.summary["gradient_check_worst_relative_error"] < audit.TOLERANCES["float32"]
    assert dtypes((result.params, result.state)) == {"float32"}
    assert dtypes(result.opt_state) <= {"float32", "int32"}


def test_jaxcnn_train_precision_runs_and_resumes_only_with_it(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--arch", "ufldl", "--precision", "bfloat16", "--quiet", "--out", str(out)]
    assert cli.main([*args, "--epochs", "1"]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "1 epochs, manual gradients in bfloat16;" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["precision"] == "bfloat16" and summary["test_accuracy"] > 0.3
    assert cli.main(["train", "--arch", "ufldl", "--quiet", "--out", str(out), "--resume",
                     "--epochs", "2"]) == 2
    assert ("was made with precision='bfloat16', this run has precision='float32'; repeat its "
            "--precision, or --overwrite to start again" in capsys.readouterr().err)
    assert cli.main([*args, "--epochs", "2", "--resume"]) == 0
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2


def test_a_checkpoint_from_before_precision_resumes_as_float32():
    """A checkpoint whose config predates ``precision`` and ``loss_scale`` was made in float32:
    it resumes a float32 run and is refused by a bfloat16 one."""
    older = {"config": {"grad": "manual"}}
    run = type("Run", (), {"ckpt": type("Ckpt", (), {"path": staticmethod(str)}),
                           "may_change": ()})
    run.config = {"grad": "manual", "precision": "float32", "loss_scale": 1.0}
    train._check_config(run, 44, older)
    run.config = {**run.config, "precision": "bfloat16"}
    with pytest.raises(ValueError, match=r"at step 44 in 44 was made with precision='float32', "
                                         r"this run has precision='bfloat16'"):
        train._check_config(run, 44, older)


def test_a_resume_names_the_precision_before_the_loss_scale_it_sets():
    """A float16 run (loss scale 1024) resumed in float32 (scale 1): the message names the
    precision -- the setting one gives -- not the scale that follows from it."""
    run = type("Run", (), {"ckpt": type("Ckpt", (), {"path": staticmethod(str)}),
                           "may_change": ()})
    run.config = {"grad": "manual", "precision": "float32", "loss_scale": 1.0}
    saved = {"config": {"grad": "manual", "precision": "float16", "loss_scale": 1024.0}}
    with pytest.raises(ValueError, match=r"was made with precision='float16', this run has "
                                         r"precision='float32'$"):
        train._check_config(run, 4, saved)
    run.config = {**run.config, "precision": "float16", "loss_scale": 256.0}
    with pytest.raises(ValueError, match=r"was made with loss_scale=1024.0, this run has "
                                         r"loss_scale=256.0 \(a Policy's loss_scale=None means "
                                         r"its dtype's default; pass Policy\('float16', "
                                         r"loss_scale=1024.0\) to go on with the checkpoint's\)$"):
        train._check_config(run, 4, saved)


def test_a_policy_without_a_scale_takes_its_dtypes_default():
    """``Policy("float16")`` scales as ``"float16"`` does (it used to scale by 1, silently
    losing small gradients); a concrete 0-d array is a scale, a bool or a string is not."""
    assert Policy("float16").loss_scale == LOSS_SCALES["float16"] == 1024.0
    assert Policy("float16") == Policy("float16", 1024.0) == policy("float16")
    assert hash(Policy("float16")) == hash(Policy("float16", 1024.0))    # one compiled step
    assert Policy() == policy(None) == Policy("float32", 1.0)
    assert policy(Policy("bfloat16")) == Policy("bfloat16", 1.0)
    assert Policy("float16")._replace(loss_scale=8.0) == Policy("float16", 8.0)
    tiny = jnp.full((2,), 1e-8, jnp.float32)
    np.testing.assert_allclose(Policy("float16").delta(tiny).astype(jnp.float32), 1024e-8,
                               rtol=1e-2)
    assert policy(Policy("float16", jnp.float32(256.0))) == Policy("float16", 256.0)
    assert policy(Policy("float16", jnp.array(512.0, jnp.bfloat16))) == Policy("float16", 512.0)
    for scale in (True, "256"):
        with pytest.raises(TypeError, match=r"^precision: the loss scale must be a positive "
                                            r"finite number, got"):
            policy(Policy("float16", scale))


def test_float16_refuses_images_beyond_its_range(digits):
    """An image entry of 7e4 is finite in float32 and infinite once a float16 step casts it:
    fit names the set and the number before training, instead of a NaN loss at step 0."""
    net = jc.serial(jc.Flatten(), jc.Dense(10))
    params, _ = train.init_params(net, (8, 8, 1))
    x = digits.x_train[:8].copy()
    x[3, 2, 2, 0] = 7e4
    with pytest.raises(ValueError, match=r"^training set: images reach 70000, beyond float16's "
                                         r"largest number 65504"):
        train.fit(net, params, x, digits.y_train[:8], epochs=1, batch_size=4,
                  precision="float16", verbose=False)
    result = train.fit(net, params, x, digits.y_train[:8], epochs=1, batch_size=4,
                       precision="bfloat16", verbose=False)        # bfloat16 holds 7e4
    assert np.isfinite(result.summary["train_loss"])


@pytest.mark.parametrize("precision", ["float16", Policy("float16", 1.0)])
def test_images_in_range_that_overflow_a_float16_forward_are_a_data_problem(digits, precision):
    """Images of at most 6e4 pass float16's range, but the forward's sums pass 65504: the
    loss of step 0 -- the initial parameters' forward, no update yet, the loss scale not yet
    applied -- is not finite.  A ValueError naming the data, with or without a loss scale,
    never a divergence blamed on the scale."""
    net = jc.serial(jc.Flatten(), jc.Dense(10))
    params, _ = train.init_params(net, (8, 8, 1))
    x = np.full((8, 8, 8, 1), 6e4, np.float32)
    with pytest.raises(ValueError, match=r"^step 0: the loss of the first batch is (nan|inf) with the "
                                         r"initial parameters, on finite images \(largest "
                                         r"magnitude 6e\+04\): the data overflow the network's "
                                         r"forward in float16 .* or compute in bfloat16 or "
                                         r"float32 \(float16's largest finite value is 65504\)"):
        train.fit(net, params, x, digits.y_train[:8], epochs=1, batch_size=4, verbose=False,
                  precision=precision)
    result = train.fit(net, params, x, digits.y_train[:8], epochs=1, batch_size=4,
                       verbose=False, optimizer=optax.sgd(0.0))
    assert np.isfinite(result.summary["train_loss"])


def test_a_loss_scale_past_a_float_is_refused():
    with pytest.raises(ValueError, match=r"^precision: the loss scale must be a positive finite "
                                         r"number, got an int of 401 digits, past a float's "
                                         r"range"):
        policy(Policy("float16", 10 ** 400))


def test_an_overflowing_loss_scale_is_named_when_the_run_diverges():
    net = jc.serial(jc.Flatten(), jc.Dense(32), jc.ReLU(), jc.Dense(10))
    params, _ = train.init_params(net, (4, 4, 1))
    x = np.random.default_rng(0).uniform(0, 4, (64, 4, 4, 1)).astype(np.float32)
    y = np.arange(64, dtype=np.int32) % 10
    with pytest.raises(train.TrainingError, match=r"under precision='float16' the loss scale "
                                                  r"32768 multiplies every delta and may have "
                                                  r"overflowed float16"):
        train.fit(net, params, x, y, epochs=2, batch_size=4, verbose=False,
                  precision=Policy("float16", 2.0 ** 15))

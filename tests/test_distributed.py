"""Data-parallel training (jaxcnn.distributed): on 8 emulated CPU devices, and over two
jax.distributed processes on the loopback interface.

This process started JAX with one CPU device, and the device count is fixed at start-up, so
the multi-device checks run in subprocesses: ``tests/distributed_worker.py`` (8 devices, once
per module; its results are asserted here) and the two-process example of docs/scaling.md.
Every subprocess is bounded by a timeout.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import jaxcnn as jc
from jaxcnn import cli, data, distributed as dist, train

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300            # seconds for any one subprocess; the whole file takes well under 60 s
F32 = dict(rtol=1e-5, atol=1e-7)     # one step, float32
RUN_F32 = dict(rtol=1e-4, atol=1e-6)  # a few epochs of steps, float32
# the worker's nets and optimizer (tests/distributed_worker.py), for runs continued here
NET = jc.serial(jc.Conv2D(6, 3, padding="SAME"), jc.ReLU(), jc.MaxPool2D(2), jc.Flatten(),
                jc.Dense(10))
BN_NET = jc.serial(jc.Conv2D(6, 3, padding="SAME", use_bias=False), jc.BatchNorm(), jc.ReLU(),
                   jc.MaxPool2D(2), jc.Flatten(), jc.Dense(10))
ADAM = optax.adam(1e-2)


def env(devices: int = 1, **extra) -> dict:
    """The suite's environment (``conftest.py``) for a fresh process on ``devices`` CPU devices,
    without a distributed set-up of its own."""
    e = {k: v for k, v in os.environ.items() if k not in dist.ENV}
    e.update(JAX_PLATFORMS="cpu", MPLBACKEND="Agg", PYTHONPATH=str(ROOT), **extra)
    flags = [f for f in e.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    e["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
    return e


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """Run every check of tests/distributed_worker.py on 8 devices; their arrays by name."""
    out = tmp_path_factory.mktemp("worker")
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "distributed_worker.py"),
                           str(out)], capture_output=True, text=True, timeout=TIMEOUT,
                          env=env(devices=8), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]

    def load(name):
        with np.load(out / f"{name}.npz") as f:
            flat = {k: f[k] for k in f.files}
        arrays = {}
        for k, v in flat.items():
            if "/" in k:
                key, i = k.split("/")
                arrays.setdefault(key, {})[int(i)] = v
            else:
                arrays[k] = v[()] if v.dtype.kind == "U" else v
        return {k: [v[i] for i in sorted(v)] if isinstance(v, dict) else v
                for k, v in arrays.items()}

    results = {name: load(name) for name in ("step", "stochastic", "fit", "state", "precision")}
    results["run8"], results["runbn8"] = out / "run8", out / "runbn8"
    return results


def leaves(tree) -> list[np.ndarray]:
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(tree)]


def assert_trees_close(a, b, tol):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, **tol)


# --- one step on 8 devices ------------------------------------------------------------------

def test_the_batch_is_sharded_and_the_params_replicated(worker):
    r = worker["step"]
    assert r["devices"] == 8
    assert "spec=P('batch',)" in r["x_sharding"] and r["x_shard_rows"] == 4      # 32 / 8
    assert "spec=P()" in r["params8_sharding"]


@pytest.mark.parametrize("grad", ["manual", "autodiff"])
def test_averaged_gradient_equals_the_single_device_gradient(worker, grad):
    r = worker["step"]
    np.testing.assert_allclose(r[f"value_{grad}"], r["value1"], **F32)
    assert_trees_close(r[f"grads_{grad}"], r["grads1"], F32)


@pytest.mark.parametrize("grad", ["manual", "autodiff"])
def test_microbatches_on_each_device_give_the_same_gradient(worker, grad):
    r = worker["step"]
    np.testing.assert_allclose(r[f"value_chunked_{grad}"], r["value1"], **F32)
    assert_trees_close(r[f"grads_chunked_{grad}"], r["grads1"], F32)


def test_jax_grad_of_each_device_loss_is_summed_over_devices(worker):
    # the subtlety the autodiff mode avoids: with check_vma, jax.grad with respect to the
    # replicated params already sums the per-device gradients, so a pmean after it leaves a
    # factor D = 8 that the hand-written (per-device) gradients do not have
    r = worker["step"]
    assert_trees_close(r["grads_naive"], [8 * g for g in r["grads1"]], F32)


def test_a_forgotten_pmean_fails_at_trace_time(worker):
    message = worker["step"]["no_pmean"]
    assert message.startswith("ValueError: shard_map applied to the function")
    assert "out_specs is P() which implies that the corresponding output value is replicated " \
           "across mesh axis 'batch'" in message


def test_one_sharded_step_equals_the_single_device_step(worker):
    r = worker["step"]
    np.testing.assert_allclose(r["loss8"], r["loss1"], **F32)
    assert_trees_close(r["params8"], r["params1"], F32)


# --- stochastic pooling --------------------------------------------------------------------

def test_shards_draw_differently_from_the_same_images(worker):
    r = worker["stochastic"]
    pooled = r["pooled"].reshape(8, 4, *r["pooled"].shape[1:])    # 8 shards of the same 4 images
    for a in range(8):
        for b in range(a):
            assert not np.array_equal(pooled[a], pooled[b]), (a, b)
    assert not np.allclose(r["shard_grads0"][0], r["shard_grads1"][0])


def test_the_step_uses_fold_in_of_the_shard_index(worker):
    # the 8-device gradient is the mean of single-device gradients with keys fold_in(key, d)
    r = worker["stochastic"]
    np.testing.assert_allclose(r["value8"], np.mean(r["values1"]), **F32)
    assert_trees_close(r["grads8"], r["mean_grads"], F32)


def test_a_sharded_stochastic_run_is_reproducible_from_its_seed(worker):
    r = worker["stochastic"]
    assert all(np.array_equal(a, b) for a, b in zip(r["run_a"], r["run_b"]))
    assert not np.allclose(r["run_a"][0], r["run_c"][0])


# --- state: BatchNorm's running statistics ---------------------------------------------------

@pytest.mark.parametrize("grad", train.GRADS)
def test_batch_statistics_are_per_device_as_microbatches_are(worker, grad):
    """With BatchNorm, the 8-device step (each device normalising its 4 rows, the running
    statistics averaged over devices) is the single-device step in microbatches of 4: the same
    loss, gradients and new state -- and not the whole batch's (whose statistics are global)."""
    r = worker["state"]
    assert_trees_close(r[f"sharded_{grad}"], r[f"chunked_{grad}"], F32)
    assert not np.allclose(r["whole"][1], r["chunked_manual"][1], **F32)


@pytest.mark.parametrize("grad", train.GRADS)
def test_loss_and_grad_of_a_batchnorm_net_on_devices_is_the_microbatched_one(worker, grad):
    """``loss_and_grad`` keeps no state; on a net with BatchNorm each device still normalises
    its own rows, in either gradient mode: the single-device gradient in microbatches of 4."""
    r = worker["state"]
    assert_trees_close(r[f"lg_sharded_{grad}"], r[f"lg_chunked_{grad}"], F32)


def test_a_sharded_batchnorm_run_ends_where_the_microbatched_run_does(worker):
    r = worker["state"]
    assert_trees_close(r["fit_sharded"], r["fit_single"], RUN_F32)


def test_a_batchnorm_run_resumes_on_one_device_with_the_per_device_rows(worker, tmp_path):
    """Its first epoch on 8 devices (statistics over 4 rows each), then the second here on one
    device: with microbatch=4 it ends where the single-device microbatched run does; without,
    the statistics would span all 32 rows, and the resume is refused naming them."""
    params, _ = train.init_params(BN_NET, (8, 8, 1))
    digits = data.load_digits()
    x, y = digits.x_train[:160], digits.y_train[:160]
    kw = dict(optimizer=ADAM, epochs=2, batch_size=32, verbose=False, out=tmp_path / "run",
              resume=True)
    shutil.copytree(worker["runbn8"], tmp_path / "run")
    with pytest.raises(ValueError, match=r"was made with batch_statistics_rows=4, this run has "
                                         r"batch_statistics_rows=32 \(the rows each BatchNorm"):
        train.fit(BN_NET, params, x, y, **kw)
    resumed = train.fit(BN_NET, params, x, y, microbatch=4, **kw)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.summary["batch_statistics_rows"] == 4
    assert_trees_close(leaves((resumed.params, resumed.state)), worker["state"]["fit_single"],
                       RUN_F32)


# --- mixed precision -------------------------------------------------------------------------

@pytest.mark.parametrize("grad", train.GRADS)
@pytest.mark.parametrize("microbatch", [None, 2])
def test_a_16_bit_device_mean_is_taken_of_float32_gradients(worker, grad, microbatch):
    """bfloat16 on 8 devices, either gradient mode: each device's float32 gradients averaged,
    every psum of float32 -- the single-device step whose chunks are the devices' rows, to
    float32 rounding (a sum of bfloat16 gradients inside the backward differs by about 4e-3)."""
    r = worker["precision"]
    assert_trees_close(r[f"{grad}_{microbatch}"], r[f"{grad}_{microbatch}_single"], F32)
    assert str(r[f"{grad}_{microbatch}_reduced"]) == "f32"


@pytest.mark.parametrize("grad", train.GRADS)
def test_a_16_bit_batchnorm_step_on_devices_is_the_microbatched_one(worker, grad):
    r = worker["precision"]
    assert_trees_close(r[f"{grad}_state"], r[f"{grad}_state_single"], F32)


# --- fit -----------------------------------------------------------------------------------

def test_a_short_sharded_run_ends_where_the_single_device_run_does(worker):
    r = worker["fit"]
    np.testing.assert_allclose(r["sharded_losses"], r["single_losses"], **RUN_F32)
    assert_trees_close(r["sharded"], r["single"], RUN_F32)
    assert list(r["summary_devices"]) == [8, 2]


def test_a_checkpoint_resumes_on_another_device_count(worker, tmp_path):
    # 1 epoch on 8 devices, then epochs 2-3 on 2 devices (in the worker) ...
    r = worker["fit"]
    assert_trees_close(r["resumed"], r["single"], RUN_F32)
    # ... then epoch 4 here, on this process's one device, without devices=
    digits = data.load_digits()
    x, y = digits.x_train[:160], digits.y_train[:160]
    xt, yt = digits.x_test[:80], digits.y_test[:80]
    params, _ = train.init_params(NET, (8, 8, 1))
    kw = dict(optimizer=ADAM, epochs=4, batch_size=16, verbose=False)
    shutil.copytree(worker["run8"], tmp_path / "run")
    resumed = train.fit(NET, params, x, y, xt, yt, **kw, out=tmp_path / "run", resume=True)
    straight = train.fit(NET, params, x, y, xt, yt, **kw)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert "devices" not in resumed.summary
    assert_trees_close(leaves(resumed.params), leaves(straight.params), RUN_F32)


def test_device_and_batch_errors_name_the_numbers(worker):
    r = worker["fit"]
    assert r["odd_batch"] == ("ValueError: batch_size (20) must divide by the number of devices "
                              "(8): each device takes batch_size / 8 rows; try 16, 24")
    assert r["too_many"] == ("ValueError: devices=9, but 8 devices are available (cpu); pass "
                             "devices='all' or a number from 1 to 8")
    assert r["odd_microbatch"] == ("ValueError: the per-device batch (6 = batch_size / 8) must "
                                   "be a multiple of microbatch (4) or at most it")
    assert r["repeated"] == "ValueError: devices: each device may appear once, got [0, 0]"
    assert r["unknown"] == ("ValueError: devices: no device with id 99; the ids are "
                            "[0, 1, 2, 3, 4, 5, 6, 7]")
    odd = ("ValueError: batch_size (5) must divide by the number of devices (8): each device "
           "takes batch_size / 8 rows; try 8")
    assert r["odd_step_batch"] == r["odd_state_batch"] == r["odd_index"] == odd
    assert r["list_index"] == ("TypeError: shard_batch: index must be a 1-D array of row "
                               "numbers, got int64 of shape (1, 2)")
    assert r["no_plan"] == ("TypeError: loss_and_grad: plan must be a DataParallel (jaxcnn."
                            "distributed.data_parallel(devices)), got str")
    assert r["odd_targets"] == ("ValueError: loss_and_grad: targets must have x's global "
                                "batch of 16 rows along their first axis, got shape (12,)")
    assert r["sharded_copy"].startswith("ValueError: host_copy: expected replicated arrays "
                                        "(params, optimizer state), got an array of shape "
                                        "(16, 8, 8, 1) sharded as NamedSharding(")
    assert r["cli_odd_batch"] == ("ValueError: --batch-size 20 must divide by the number of "
                                  "devices (8): each takes an equal share of every batch; try "
                                  "16, 24")
    assert r["odd_local_rows"] == ("ValueError: batch_size (6) must divide by the number of "
                                   "devices (8): each device takes batch_size / 8 rows; try 8")
    assert r["other_devices"] == ("ValueError: loss_and_grad: x and targets must lie on the "
                                  "plan's devices (4 cpu devices): shard them with "
                                  "shard_batch(plan, ...)")
    assert r["negative_index"] == ("ValueError: shard_batch: index must hold row numbers in "
                                   "[0, 160) of the array, got values in [-8, -1]")


# --- in this process: one device -----------------------------------------------------------

def test_the_step_builders_check_their_arguments_when_built():
    """A missing loss or optimizer, a plan that is not one, a batch size that is not a count:
    a TypeError/ValueError naming the function -- never an AttributeError at the first call."""
    plan = dist.data_parallel(1)
    bn = jc.serial(jc.Conv2D(2, 3), jc.BatchNorm(), jc.Flatten(), jc.Dense(10))
    for build, exc, message in [
            (lambda: dist.loss_grad_and_state(bn, None, plan, "autodiff"), TypeError,
             r"^distributed.loss_grad_and_state: loss must be a jaxcnn Loss"),
            (lambda: dist.loss_and_grad(NET, None, plan), TypeError,
             r"^distributed.loss_and_grad: loss must be a jaxcnn Loss"),
            (lambda: dist.make_step(NET, jc.softmax_cross_entropy, None, plan), TypeError,
             r"^distributed.make_step: optimizer must be an optax GradientTransformation .* "
             r"got None"),
            (lambda: train.make_step(NET, jc.softmax_cross_entropy, optax.adam), TypeError,
             r"^make_step: optimizer must be an optax GradientTransformation"),
            (lambda: train.update_step(lambda *a, **k: None, None), TypeError,
             r"^update_step: optimizer must be an optax GradientTransformation"),
            (lambda: dist.replicate(None, {}), TypeError,
             r"^replicate: plan must be a DataParallel"),
            (lambda: dist.check_batch_size(plan, -1), ValueError,
             r"^check_batch_size: batch_size must be a positive integer, got -1"),
            (lambda: dist.check_batch_size(plan, 2.5), TypeError,
             r"^check_batch_size: batch_size must be an int, got 2.5"),
            (lambda: dist.check_batch_size(plan, None), TypeError,
             r"^check_batch_size: batch_size must be an int, got None")]:
        with pytest.raises(exc, match=message):
            build()


def test_a_sharded_step_checks_what_the_plain_step_checks():
    """Labels out of range, a key that is not one key, a mesh of another axis, a batch given
    as a list: the single-device step's errors, before ``shard_map`` (where the labels are
    traced and would give a NaN loss, and the key a raw JAX error)."""
    plan = dist.data_parallel(1)
    digits = data.load_digits()
    x, y = digits.x_train[:8], digits.y_train[:8].copy()
    y[3], y[5] = 12, -1
    params, _ = train.init_params(NET, (8, 8, 1))
    state = jc.init_state(NET, (8, 8, 1))
    labels = r"softmax_cross_entropy: labels must lie in \[0, 10\), got values in \[-1, 12\]"
    for grad in train.GRADS:
        with pytest.raises(ValueError, match=labels):
            dist.loss_and_grad(NET, jc.softmax_cross_entropy, plan, grad)(params, x, y)
        with pytest.raises(ValueError, match=labels):
            dist.loss_grad_and_state(NET, jc.softmax_cross_entropy, plan, grad)(
                params, state, x, y)
    step = dist.loss_and_grad(NET, jc.softmax_cross_entropy, plan)
    y = digits.y_train[:8]
    for key, got in [(jax.random.split(jax.random.key(0), 2), r"an array of shape \(2,\)"),
                     (0, "int 0")]:
        with pytest.raises(TypeError, match=r"^loss_and_grad: key must be one JAX random key, "
                                            r"jax.random.key\(seed\), got " + got):
            step(params, x, y, key=key)
    other = dist.DataParallel(jax.make_mesh((1,), ("data",)))
    with pytest.raises(ValueError, match=r"^loss_and_grad: plan must hold a mesh of one axis "
                                         r"'batch' .*, got axes \('data',\)"):
        dist.loss_and_grad(NET, jc.softmax_cross_entropy, other)
    with pytest.raises(TypeError, match=r"^shard_batch: array must be a NumPy or JAX array, "
                                        r"got list"):
        dist.shard_batch(plan, x.tolist(), np.arange(4))
    with pytest.raises(TypeError, match=r"^distributed.make_step: net must be"):
        dist.make_step(None, jc.softmax_cross_entropy, ADAM, plan)
    copied = dist.host_copy({"w": np.ones(3), "b": dist.replicate(plan, np.zeros(2))})
    assert all(type(a) is np.ndarray for a in copied.values())
    np.testing.assert_array_equal(copied["w"], np.ones(3))


@pytest.mark.parametrize("args, message", [
    ((1234, 2, 0), r"the coordinator address must be a string host:port, got int 1234"),
    (("127.0.0.1:1234", 2.5, 0), r"num_processes must be an int, got float 2.5"),
    (("127.0.0.1:1234", 2, True), r"process_id must be an int, got bool True"),
    (("127.0.0.1:1234", 2, "0"), r"process_id must be an int, got str '0'"),
])
def test_initialize_refuses_arguments_of_the_wrong_type(no_distributed_env, args, message):
    with pytest.raises(TypeError, match=message):
        dist.initialize(*args)
    assert not jax.distributed.is_initialized()


@pytest.mark.parametrize("devices, exc, message", [
    (2, ValueError, r"devices=2, but 1 device is available \(cpu\); pass devices='all' or a "
                    r"number from 1 to 1"),
    ("some", ValueError, "devices must be 'all', a number of devices or a list of devices, "
                         "got 'some'"),
    (True, TypeError, "devices must be 'all', a number of devices or a non-empty list"),
    ([], TypeError, "devices must be 'all', a number of devices or a non-empty list"),
    (["cpu:0"], TypeError, "devices: expected jax.Device objects or device ids, got str"),
])
def test_bad_devices_are_refused(devices, exc, message):
    with pytest.raises(exc, match=message):
        dist.data_parallel(devices)


def test_one_device_mesh_trains_like_the_plain_path():
    digits = data.load_digits()
    x, y = digits.x_train[:64], digits.y_train[:64]
    params, _ = train.init_params(NET, (8, 8, 1))
    kw = dict(optimizer=ADAM, epochs=1, batch_size=16, verbose=False)
    meshed = train.fit(NET, params, x, y, devices="all", **kw)
    plain = train.fit(NET, params, x, y, **kw)
    assert meshed.summary["devices"] == 1 and meshed.summary["processes"] == 1
    assert_trees_close(leaves(meshed.params), leaves(plain.params), F32)


@pytest.fixture
def no_distributed_env(monkeypatch):
    for name in dist.ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_initialize_without_flags_or_environment_is_a_no_op(no_distributed_env):
    assert dist.initialize() is False
    assert not jax.distributed.is_initialized()


@pytest.mark.parametrize("args, environ, message", [
    (("127.0.0.1:1234",), {}, "missing num_processes, process_id"),
    ((None, 2, 0), {}, "missing coordinator"),
    ((), {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_PROCESS_ID": "0"},
     "missing num_processes"),
    ((), {"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES must be an integer, got 'two'"),
    (("127.0.0.1", 2, 0), {}, "the coordinator address must be host:port with a port in "
                              "1..65535, got '127.0.0.1'"),
    (("localhost:notaport", 1, 0), {}, "with a port in 1..65535, got 'localhost:notaport'"),
    (("localhost:0", 1, 0), {}, "with a port in 1..65535, got 'localhost:0'"),
    (("localhost:\u00b2", 1, 0), {}, "with a port in 1..65535, got 'localhost:\u00b2'"),
    (("localhost:\u0663", 1, 0), {}, "with a port in 1..65535"),     # not port 3
    (("127.0.0.1:1234", 2, 2), {}, r"process_id must lie in \[0, num_processes\), got "
                                   r"process_id=2, num_processes=2"),
    (("auto", -3, "x"), {}, r"coordinator 'auto' leaves the number of processes and this "
                            r"process's id to JAX's cluster detection; got also "
                            r"num_processes=-3, process_id='x'"),
])
def test_initialize_says_what_is_missing(no_distributed_env, args, environ, message):
    for name, value in environ.items():
        no_distributed_env.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        dist.initialize(*args)
    assert not jax.distributed.is_initialized()


@pytest.mark.parametrize("args, message", [
    (["--devices", "0"], "argument --devices: must be 'all' or a positive integer, got '0'"),
    (["--devices", "2"], "--devices 2, but 1 device is available (cpu)"),
    (["--devices", "1", "--batch-size", "0"], "must be a positive integer, got '0'"),
    (["--coordinator", "127.0.0.1:1234"], "jax.distributed: a run over several processes needs "
                                          "the coordinator address"),
    (["--num-processes", "2", "--process-id", "0"], "missing coordinator"),
])
def test_cli_refuses_bad_scaling_options(no_distributed_env, tmp_path, capsys, args, message):
    code = cli.main(["train", *args, "--epochs", "1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert "jaxcnn train: error: " in err and message in err
    assert not (tmp_path / "o" / "checkpoints").exists()


# --- two processes, jax.distributed over the loopback interface ----------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def final_params(out: Path) -> list[np.ndarray]:
    state, _ = train.load_checkpoint(out)
    return leaves(state["params"])


def test_two_processes_train_as_one(tmp_path, capsys):
    """docs/scaling.md's two-process example: ``jaxcnn train`` twice on this machine, one CPU
    device each, process 0 the coordinator on 127.0.0.1; the same run in one process over two
    emulated devices, and on one device."""
    options = ["train", "--arch", "ufldl", "--epochs", "1", "--lr", "0.001", "--quiet"]
    port = free_port()
    two = [subprocess.Popen(
        [sys.executable, "-m", "jaxcnn.cli", *options, "--out", str(tmp_path / "two"),
         "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env=env(JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}")) for i in range(2)]
    outputs = []
    try:
        for proc in two:
            outputs.append(proc.communicate(timeout=120))
    finally:
        for proc in two:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for proc, (_, err) in zip(two, outputs):
        assert proc.returncode == 0, err[-4000:]
    one = subprocess.run([sys.executable, "-m", "jaxcnn.cli", *options, "--devices", "all",
                          "--out", str(tmp_path / "one")], capture_output=True, text=True,
                         timeout=TIMEOUT, cwd=ROOT, env=env(devices=2))
    assert one.returncode == 0, one.stderr[-4000:]
    assert cli.main([*options, "--out", str(tmp_path / "plain")]) == 0
    capsys.readouterr()

    out0, out1 = outputs[0][0], outputs[1][0]
    assert "data-parallel over 2 cpu devices in 2 processes: batch 32, 16 per device" in out0
    assert "test accuracy" in out0                            # only process 0 prints
    assert "parameters" not in out1 and "test accuracy" not in out1
    assert "data-parallel over 2 cpu devices: batch 32, 16 per device" in one.stdout
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert (summary["devices"], summary["processes"], summary["steps"]) == (2, 2, 44)
    two_params = final_params(tmp_path / "two")
    # the same program: two processes over gloo or one over two threads, bit for bit
    assert all(np.array_equal(a, b) for a, b in zip(two_params, final_params(tmp_path / "one")))
    assert_trees_close(two_params, final_params(tmp_path / "plain"), RUN_F32)

"""Faults a run must survive, each injected: kills at chosen moments (subprocesses that SIGKILL
themselves), corrupt and partial checkpoints, divergence, data that overflow, a second run on a
live output directory, ``overwrite`` beside foreign files, planted symbolic links, mismatched
resumes, finished runs, and the command line's first hour (fresh output directories).

Tiny runs: a conv net with stochastic pooling (the step keys matter) on 100 8x8 digits, batches
of 20 (5 steps an epoch), 2-3 epochs.  This file is also the worker the kill tests start:
``python tests/test_faults.py OUT KIND:STEP CHECKPOINT_EVERY`` (see ``_worker``).
"""
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcnn as jc
from jaxcnn import checkpoints, cli, data, train

ROOT = Path(__file__).resolve().parent.parent
NET = jc.serial(jc.Conv2D(4, 3, padding="SAME"), jc.ReLU(), jc.StochasticPool2D(2),
                jc.Flatten(), jc.Dense(10))
ADAM = optax.adam(1e-2)
BATCH, N_TRAIN, N_TEST, EPOCHS = 20, 100, 50, 2     # 5 steps an epoch, 10 in all
INFO = {"dataset": "digits", "arch": "tiny"}
GRAD_LINE = "gradient check (hand-written vs jax.grad, 1 batch)"


def _config_like_conftest():
    """The worker computes under the test process's JAX settings (tests/conftest.py), so that
    its steps are bit for bit those of the runs in this process."""
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    jax.config.update("jax_numpy_rank_promotion", "raise")
    jax.config.update("jax_default_matmul_precision", "highest")


def sets():
    ds = data.load_digits()
    return ds.x_train[:N_TRAIN], ds.y_train[:N_TRAIN], ds.x_test[:N_TEST], ds.y_test[:N_TEST]


def run_fit(out=None, *, epochs=EPOCHS, every=0, sets_=None, net=NET, params=None, **kw):
    x, y, xt, yt = sets_ if sets_ is not None else sets()
    if params is None:
        params, _ = train.init_params(net, x.shape[1:], seed=0)
    return train.fit(net, params, x, y, xt, yt, optimizer=kw.pop("optimizer", ADAM),
                     epochs=epochs, batch_size=kw.pop("batch_size", BATCH),
                     checkpoint_every=every, out=out, info=kw.pop("info", INFO),
                     verbose=kw.pop("verbose", False), **kw)


def leaves(tree):
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(tree)]


def bitwise(a, b) -> bool:
    la, lb = leaves(a), leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def metrics(out) -> list[dict]:
    """``metrics.jsonl`` without the seconds (which differ from run to run)."""
    lines = Path(out, "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def steps_in(out) -> list[str]:
    return sorted(os.listdir(Path(out, "checkpoints")), key=lambda n: (len(n), n))


# --- the worker: a run that kills itself --------------------------------------------------

def _worker(out: str, kill: str, every: int) -> None:
    """Train as ``run_fit(out, every=every)`` and SIGKILL this process at ``kill``:
    ``step:K`` when step K starts; ``save-during:K`` inside orbax's save of step K, all written
    but the rename of its temporary directory; ``save-after:K`` just after step K's checkpoint
    is complete, before anything else is written."""
    kind, k = kill.split(":")
    k = int(k)

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if kind == "step":
        real_step = train.fit_step

        def fit_step(*args):
            step_fn = real_step(*args)

            def killing(*step_args):        # (params, opt_state, net_state, ..., step)
                if step_args[-1] == k:
                    die()
                return step_fn(*step_args)
            return killing
        train.fit_step = fit_step
    elif kind == "save-during":
        from orbax.checkpoint._src.path import atomicity
        real_finalize = atomicity.AtomicRenameTemporaryPath.finalize

        async def finalize(self):
            if self.get_final().name == str(k):
                die()
            return await real_finalize(self)
        atomicity.AtomicRenameTemporaryPath.finalize = finalize
    elif kind == "save-after":
        real_save = checkpoints.Checkpoints.save

        def save(self, step, state, meta):
            real_save(self, step, state, meta)
            if step == k:
                die()
        checkpoints.Checkpoints.save = save
    run_fit(out, every=every)
    sys.exit("the run was not killed")


KILLS = {   # name: (kill, checkpoint_every, the step resumed from, metrics.jsonl lines left)
    "inside epoch 1": ("step:2", 0, 0, 0),          # only checkpoints/0 exists
    "mid-epoch 2": ("step:8", 3, 6, 1),
    "during a save": ("save-during:6", 3, 5, 1),    # 6's temporary directory left behind
    "after the last checkpoint": ("save-after:10", 3, 10, 1),     # epoch 2's line not written
}


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """One killed run per ``KILLS`` entry (started together), and the run never interrupted."""
    root = tmp_path_factory.mktemp("killed")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg"}
    procs = {name: subprocess.Popen(
        [sys.executable, __file__, str(root / str(i)), kill, str(every)], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i, (name, (kill, every, _, _)) in enumerate(KILLS.items())}
    straight = run_fit(root / "straight", every=3)
    outs = {}
    for i, (name, proc) in enumerate(procs.items()):
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == -signal.SIGKILL, f"{name}: {err[-3000:]}"
        outs[name] = root / str(i)
    return outs, straight, root / "straight"


@pytest.mark.parametrize("name", list(KILLS))
def test_a_killed_run_resumes_bitwise(killed, name, tmp_path):
    outs, straight, straight_out = killed
    out = tmp_path / "run"
    shutil.copytree(outs[name], out)
    kill, every, resumed_from, lines_left = KILLS[name]
    if name == "during a save":
        assert any(n.startswith("6.orbax-checkpoint-tmp") for n in os.listdir(out / "checkpoints"))
    _, meta = train.load_checkpoint(out)
    assert meta["step"] == resumed_from
    before = metrics(out) if (out / "metrics.jsonl").exists() else []
    assert len(before) == lines_left
    assert not (out / "summary.json").exists()
    lines = []
    resumed = run_fit(out, every=every, resume=True, verbose=True, print_fn=lines.append)
    assert lines[0].startswith(f"resuming from the checkpoint at step {resumed_from} ")
    assert bitwise(resumed.params, straight.params)
    assert bitwise(resumed.opt_state, straight.opt_state)
    assert metrics(out) == metrics(straight_out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 10 and summary["epochs"] == 2
    assert summary["test_loss"] == straight.summary["test_loss"]
    assert (out / "curves.png").exists()
    assert not any("orbax-checkpoint-tmp" in n for n in os.listdir(out / "checkpoints"))
    if name == "after the last checkpoint":             # nothing left but the outputs
        assert lines[1].startswith("nothing to do: the checkpoint at step 10 ")
        assert not any(GRAD_LINE in line for line in lines)


# --- corrupt and partial checkpoints ------------------------------------------------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-epoch run (checkpoints 5 and 10 kept) and a 3-epoch run never stopped."""
    out = tmp_path_factory.mktemp("finished") / "run"
    run_fit(out)
    assert steps_in(out) == ["5", "10"]
    return out, run_fit(epochs=3)


def copy_of(finished, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished[0], out)
    return out


def largest_file(step_dir: Path) -> Path:
    return max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _flip(step):
    f = largest_file(step)
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0x01
    f.write_bytes(bytes(b))


def _reseal(step):
    """Rewrite the step's file checksums for what it now holds: only the inner checks are left."""
    checkpoints.write_atomic(str(step / checkpoints.FILES), json.dumps(
        {"format": 1, "step": int(step.name), "files": checkpoints._step_files(str(step))}))


def _edit_meta(step, change):
    path = step / "meta" / "metadata"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))
    _reseal(step)


def _zero_order_checksum(step):
    """As if the saved data order were all zeros: its recorded SHA-256 is that of zeros, and
    the meta's own checksum is redone, so only the check of the restored array is left."""
    def change(meta):
        zeros = np.zeros(N_TRAIN, np.int32)
        meta["arrays"]["order"]["sha256"] = checkpoints.array_checksums(
            {"order": zeros})["order"]["sha256"]
        meta["sha256"] = checkpoints._digest({k: v for k, v in meta.items() if k != "sha256"})
    _edit_meta(step, change)


def _without_settings(meta):
    """As a checkpoint made before the config held every layer's settings and the loss."""
    del meta["config"]["net_settings"], meta["config"]["loss_name"]
    meta["sha256"] = checkpoints._digest({k: v for k, v in meta.items() if k != "sha256"})


CORRUPTIONS = {
    "a flipped byte": (_flip, r"the file state/.* does not match its SHA-256 \(altered\)"),
    "a truncated file": (lambda s: os.truncate(largest_file(s), 10),
                         r"the file state/.* has 10 bytes, \d+ were written \(truncated"),
    "a deleted file": (lambda s: largest_file(s).unlink(), r"the file state/.* is missing"),
    "no state": (lambda s: shutil.rmtree(s / "state"), r"the file state/.* is missing"),
    "garbled meta": (lambda s: (s / "meta" / "metadata").write_text("{garbled"),
                     r"the file meta/metadata has 8 bytes"),
    "an interrupted save": (lambda s: (s / checkpoints.FILES).unlink(),
                            r"it has no jaxcnn-files.json: its save was interrupted"),
    "an edited history": (lambda s: _edit_meta(s, lambda m: m["history"][0].update(epoch=7)),
                          r"its meta does not match its SHA-256 \(altered\)"),
    "another data order": (_zero_order_checksum, r"the array order does not match its SHA-256"),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_a_corrupt_latest_checkpoint_falls_back_to_the_one_before(finished, tmp_path, kind,
                                                                   capfd):
    out = copy_of(finished, tmp_path)
    corrupt, why = CORRUPTIONS[kind]
    corrupt(out / "checkpoints" / "10")
    step10 = str(out / "checkpoints" / "10")
    with pytest.warns(train.CheckpointWarning) as warned:
        state, meta = train.load_checkpoint(out)
    assert meta["step"] == 5 and len(warned) == 1
    message = str(warned[0].message)
    assert message.startswith(f"the checkpoint at step 10 ({step10}) is corrupt or partial: ")
    assert message.endswith("; using the one at step 5 instead")
    assert re.search(why, message), message
    with pytest.warns(train.CheckpointWarning, match=r"step 10 .*\(kept aside as 10\.corrupt\)"):
        resumed = run_fit(out, epochs=3, resume=True)
    assert bitwise(resumed.params, finished[1].params)
    assert steps_in(out) == ["10", "15", "10.corrupt"]
    assert [h["epoch"] for h in metrics(out)] == [1, 2, 3]
    assert "Traceback" not in capfd.readouterr().err            # nothing raw from tensorstore


def test_no_good_checkpoint_refuses_to_resume(finished, tmp_path, capfd):
    out = copy_of(finished, tmp_path)
    os.truncate(largest_file(out / "checkpoints" / "10"), 10)
    _flip(out / "checkpoints" / "5")
    with pytest.raises(train.CheckpointError,
                       match=r"^cannot resume: no good checkpoint in .*checkpoints; the "
                             r"checkpoint at step 10 \(.*10\) is corrupt or partial: the file "
                             r".* has 10 bytes.*; at step 5 \(.*5\) is corrupt or partial: "):
        run_fit(out, epochs=3, resume=True)
    with pytest.raises(train.CheckpointError, match="no good checkpoint"):
        train.load_checkpoint(out)
    with pytest.raises(train.CheckpointError, match=r"the checkpoint at step 5 in .* is corrupt"):
        train.load_checkpoint(out, step=5)
    assert steps_in(out) == ["5", "10"]                          # nothing set aside or lost
    assert "Traceback" not in capfd.readouterr().err


# --- divergence, strict JSON, data that overflow ------------------------------------------

# an update of 3e48 times the gradient: the first step's loss is finite, its parameters are not
EXPLODING = optax.chain(optax.sgd(3e38), optax.scale(1e10))


def test_a_diverged_run_stops_and_saves_nothing_non_finite(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(train.NonFiniteStateError,
                       match=r"^the run diverged: non-finite values after step 0 \(epoch 1 of "
                             r"2\) in params/0/b, params/0/w, .*; nothing of it was saved; "
                             r"training stopped; the last good checkpoint \(step 0\) is kept "
                             rf"in {out / 'checkpoints'}$") as err:
        run_fit(out, optimizer=EXPLODING, batch_size=N_TRAIN, every=1)
    assert err.value.step == 1 and isinstance(err.value, train.TrainingError)
    assert steps_in(out) == ["0"]
    state, meta = train.load_checkpoint(out)
    assert meta["step"] == 0 and all(np.isfinite(a).all() for a in leaves(state))
    assert not (out / "summary.json").exists()
    with pytest.raises(train.NonFiniteStateError, match="no checkpoints: out=None"):
        run_fit(optimizer=EXPLODING, batch_size=N_TRAIN)


def test_a_diverged_run_resumes_with_a_smaller_learning_rate_and_says_so(tmp_path):
    """The run's progress is not lost to a divergence: a resume that may change ``lr``
    (``jaxcnn train --resume --lr X``) trains on from the last finite checkpoint with the new
    optimizer; the change (step, from, to) is in every later checkpoint and in the summary,
    and a later resume compares with the new value.  Without ``resume_may_change`` the old
    refusal stands; a change that would apply to no step is refused."""
    out = tmp_path / "run"
    sgd = lambda lr: optax.chain(optax.sgd(lr), optax.scale(1e10 if lr > 1 else 1.0))  # noqa
    with pytest.raises(train.TrainingError, match=r"the last good checkpoint \(step 0\)"):
        run_fit(out, optimizer=sgd(3e38), every=5, info={**INFO, "lr": 3e38})
    assert steps_in(out) == ["0"]
    with pytest.raises(ValueError, match=r"was made with lr=3e\+38, this run has lr=0.01"):
        run_fit(out, optimizer=sgd(1e-2), resume=True, info={**INFO, "lr": 1e-2})
    result = run_fit(out, optimizer=sgd(1e-2), every=5, resume=True, info={**INFO, "lr": 1e-2},
                     resume_may_change=("lr",))
    change = {"step": 0, "setting": "lr", "from": 3e38, "to": 1e-2}
    assert result.summary["changes"] == [change] and result.summary["lr"] == 1e-2
    assert json.loads((out / "summary.json").read_text())["changes"] == [change]
    assert all(np.isfinite(a).all() for a in leaves(result.params))
    assert train.load_checkpoint(out)[1]["changes"] == [change]
    fresh = run_fit(tmp_path / "fresh", optimizer=sgd(1e-2), info={**INFO, "lr": 1e-2})
    assert bitwise(result.params, fresh.params)       # from step 0: the same steps
    assert fresh.summary["changes"] == []
    again = run_fit(out, optimizer=sgd(1e-2), epochs=3, resume=True, info={**INFO, "lr": 1e-2})
    assert again.summary["changes"] == [change]                   # kept; no new one
    with pytest.raises(ValueError, match=r"^cannot resume with lr=0.001: the checkpoint at step "
                                         r"15 .* has done its 3 epochs, so the change would "
                                         r"apply to no step; pass epochs > 3"):
        run_fit(out, optimizer=sgd(1e-3), epochs=3, resume=True, info={**INFO, "lr": 1e-3},
                resume_may_change=("lr",))
    assert json.loads((out / "summary.json").read_text())["changes"] == [change]
    for names, error, match in [(("seed",), ValueError, r"resume_may_change names \['seed'\], "
                                                       r"which are not entries of info"),
                                ("lr", TypeError, r"must be a sequence of info's keys")]:
        with pytest.raises(error, match=match):
            run_fit(info={**INFO, "lr": 1e-2}, resume_may_change=names)


def test_non_finite_numbers_are_written_as_strict_json(tmp_path):
    x, y, xt, yt = sets()
    xt = xt.copy()
    xt[0] = 3e38                      # finite, but the test loss overflows; training is fine
    net = jc.serial(jc.Flatten(), jc.Dense(10))     # weights all > 0: the logits overflow
    params = ((), {"w": jnp.full((64, 10), 0.1, jnp.float32), "b": jnp.zeros(10, jnp.float32)})
    out = tmp_path / "run"
    result = run_fit(out, epochs=1, sets_=(x, y, xt, yt), net=net, params=params)
    assert not np.isfinite(result.summary["test_loss"])

    def no_constants(token):
        raise AssertionError(f"bare {token} in JSON")
    summary = json.loads((out / "summary.json").read_text(), parse_constant=no_constants)
    assert summary["test_loss"] in ("NaN", "Infinity")
    assert np.isnan(float(summary["test_loss"])) or float(summary["test_loss"]) == np.inf
    line = json.loads((out / "metrics.jsonl").read_text(), parse_constant=no_constants)
    assert line["test_loss"] == summary["test_loss"]
    _, meta = train.load_checkpoint(out)           # read back as the float it was
    assert not np.isfinite(meta["history"][0]["test_loss"])
    assert checkpoints.strict_json({"a": float("-inf"), "b": (np.float32(1.5),)}) == \
        '{"a": "-Infinity", "b": [1.5]}'


def test_data_that_overflow_are_a_data_problem_not_a_gradient_one(tmp_path):
    x, y, xt, yt = sets()
    x = x.copy()
    x[train.epoch_order(jax.random.key(0), 0, N_TRAIN)[0]] = 3e38     # in step 0's batch
    with pytest.raises(ValueError, match=r"^gradient check before training: the loss of the "
                                         r"first batch is (nan|inf) with the initial parameters, "
                                         r"on "
                                         r"finite images \(largest magnitude 3e\+38\): the data "
                                         r"overflow the network's forward in float32 -- a "
                                         r"problem of the data, not of the gradients"):
        run_fit(tmp_path / "run", sets_=(x, y, xt, yt))
    assert not [n for n in os.listdir(tmp_path / "run" / "checkpoints") if n.isdigit()]


def test_float_options_must_be_finite_in_float32(tmp_path, capsys):
    for rate in (1e39, 1e-50):
        with pytest.raises(ValueError, match=r"learning rate must be a positive number that "
                                             r"is finite in float32"):
            train.make_optimizer("sgd", rate)
    assert train.make_optimizer("sgd", 3e38) is train.make_optimizer("sgd", 3e38)
    with pytest.raises(ValueError, match=r"grad_tol must be a positive number, finite in "
                                         r"float32, got 1e\+39"):
        run_fit(grad_tol=1e39)
    params, _ = train.init_params(NET, (8, 8, 1))
    params[0]["w"] = params[0]["w"].at[0, 0, 0, 0].set(np.nan)
    with pytest.raises(ValueError, match=r"params: non-finite values in 0/w"):
        run_fit(params=params)
    unused = tmp_path / "unused"
    assert cli.main(["train", "--optimizer", "sgd", "--lr", "1e39", "--out", str(unused)]) == 2
    assert ("jaxcnn train: error: --lr 1e+39: the learning rate must be a positive number that "
            "is finite in float32") in capsys.readouterr().err
    assert not unused.exists()


# --- one run per directory; overwrite; symbolic links -------------------------------------

def test_a_live_run_holds_its_directory(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from jaxcnn.checkpoints import lock_out; "
                               "lock_out(sys.argv[1]); print('locked', flush=True); "
                               "time.sleep(300)", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    try:
        assert holder.stdout.readline() == "locked\n"
        before = steps_in(out)
        assert checkpoints.is_locked(str(out))
        in_use = (rf"^{out} is in use by another jaxcnn run: process {holder.pid} on host "
                  rf".* holds its lock {out / 'jaxcnn.lock'}; wait for it to end")
        for kw in ({}, {"resume": True}, {"overwrite": True}):
            with pytest.raises(ValueError, match=in_use):
                run_fit(out, **kw)
        assert steps_in(out) == before and (out / "summary.json").exists()
    finally:
        holder.kill()                      # SIGKILL: the kernel releases the lock
        holder.wait()
        holder.stdout.close()
    assert not checkpoints.is_locked(str(out))
    assert run_fit(out, resume=True).summary["steps"] == 10      # nothing to do, but allowed


def test_overwrite_removes_only_what_jaxcnn_wrote(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    foreign = [out / "notes.txt", out / "checkpoints" / "README", out / "checkpoints" / "mine" / "x",
               out / "checkpoints" / "12abc", *(out / "checkpoints" / name / "x" for name in
                                                ("03", "\u0663", "007.corrupt"))]   # not steps
    for path in foreign:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("mine")
    (out / "checkpoints" / "7.orbax-checkpoint-tmp-1700000000").mkdir()     # a killed save
    (out / "checkpoints" / "3.corrupt").mkdir()                              # set aside earlier
    (out / ".summary.json.x1y2.tmp").write_text("half")                     # a killed write
    result = run_fit(out, epochs=1, overwrite=True)
    assert result.summary["epochs"] == 1
    assert all(path.read_text() == "mine" for path in foreign)
    assert set(steps_in(out)) == {"0", "5", "mine", "12abc", "README", "03", "\u0663",
                                  "007.corrupt"}
    assert [h["epoch"] for h in metrics(out)] == [1]
    assert not (out / ".summary.json.x1y2.tmp").exists()
    other = out / "checkpoints" / "100"            # named as a step, another program's files
    other.mkdir()
    (other / "flax_model.msgpack").write_text("theirs")
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    with pytest.raises(ValueError, match=r"checkpoints/100 holds files jaxcnn does not write "
                                         r"\(flax_model.msgpack\); overwrite removes only "
                                         r"jaxcnn's checkpoints: move it away first"):
        run_fit(out, epochs=1, overwrite=True)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == kept
    assert (out / "summary.json").exists()


def test_writes_never_follow_a_planted_symbolic_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "run"
    out.mkdir()
    for name in ("summary.json", "metrics.jsonl", "curves.png", "summary.json.tmp",
                 "metrics.jsonl.tmp"):
        (out / name).symlink_to(victim)
    run_fit(out, epochs=1)
    assert victim.read_text() == "precious"
    for name in ("summary.json", "metrics.jsonl", "curves.png"):
        assert not (out / name).is_symlink()
    assert json.loads((out / "summary.json").read_text())["epochs"] == 1
    other = tmp_path / "other"
    other.mkdir()
    (other / "jaxcnn.lock").symlink_to(victim)
    with pytest.raises(ValueError, match=r"jaxcnn.lock is a symbolic link; jaxcnn keeps its "
                                         r"lock there as a plain file: remove the link"):
        run_fit(other, epochs=1)
    assert victim.read_text() == "precious"
    (tmp_path / "dir-lock" / "jaxcnn.lock").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"jaxcnn.lock is a directory; jaxcnn keeps its lock "
                                         r"there as a plain file: move it away"):
        run_fit(tmp_path / "dir-lock", epochs=1)
    out, lock = checkpoints.claim_fresh_out(str(tmp_path / "dir-lock"))    # passed over
    lock.release()
    assert out == str(tmp_path / "dir-lock-2")


# --- resumes that cannot, or need not, continue -------------------------------------------

def test_a_mismatched_resume_is_refused_before_any_array_is_read(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    step10 = out / "checkpoints" / "10"
    with pytest.raises(ValueError, match=rf"^cannot resume: the checkpoint at step 10 in "
                                         rf"{step10} was made with arch='tiny', this run has "
                                         rf"arch='other'$"):
        run_fit(out, epochs=3, resume=True, info={**INFO, "arch": "other"})
    x, y, xt, yt = sets()
    small = (x[:, :6, :6], y, xt[:, :6, :6], yt)
    with pytest.raises(ValueError, match=r"was made with image_shape=\[8, 8, 1\], this run has "
                                         r"image_shape=\[6, 6, 1\]"):
        run_fit(out, epochs=3, resume=True, sets_=small)
    wider = jc.serial(jc.Conv2D(5, 3, padding="SAME"), *NET.layers[1:])
    with pytest.raises(ValueError, match=r"was made with net_settings \[0\] Conv2D "
                                         r"dilation=\[1, 1\] features=4 groups=1 "
                                         r"padding='SAME' size=\[3, 3\] strides=\[1, 1\] "
                                         r"use_bias=True, this run has net_settings \[0\] "
                                         r"Conv2D dilation=\[1, 1\] features=5 "):  # the first
        run_fit(out, epochs=3, resume=True, net=wider)             # layer that differs only
    dilated = jc.serial(jc.Conv2D(4, 3, padding="SAME", dilation=2), *NET.layers[1:])
    assert dilated.name == NET.name                    # the same layers and arrays, not the net
    with pytest.raises(ValueError, match=r"was made with net_settings \[0\] Conv2D "
                                         r"dilation=\[1, 1\] .*, this run has net_settings "
                                         r"\[0\] Conv2D dilation=\[2, 2\] "):
        run_fit(out, epochs=3, resume=True, net=dilated)
    old = tmp_path / "old"                     # made before checkpoints recorded the settings
    shutil.copytree(out, old)
    for step in (5, 10):
        _edit_meta(old / "checkpoints" / str(step), _without_settings)
    with pytest.raises(ValueError, match=rf"^cannot resume: the checkpoint at step 10 in "
                                         rf"{old}/checkpoints/10 holds shape \(4,\) and dtype "
                                         rf"float32 for the array params/0/b, this run has shape "
                                         rf"\(5,\) and dtype float32 \(another net"):
        run_fit(old, epochs=3, resume=True, net=wider)
    assert run_fit(old, epochs=3, resume=True).summary["epochs"] == 3      # old ones resume
    renamed = jc.Loss(jc.softmax_cross_entropy.value, jc.softmax_cross_entropy.delta, "mine")
    with pytest.raises(ValueError, match=r"was made with loss_name='softmax_cross_entropy', "
                                         r"this run has loss_name='mine'$"):
        run_fit(out, epochs=3, resume=True, loss=renamed)
    assert steps_in(out) == ["5", "10"]


def test_a_finished_run_has_nothing_to_do(finished, tmp_path, monkeypatch):
    out = copy_of(finished, tmp_path)
    (out / "summary.json").unlink()

    def no_check(*args, **kw):
        raise AssertionError("a finished run was checked again")
    monkeypatch.setattr(train, "gradient_check", no_check)
    lines = []
    result = run_fit(out, resume=True, verbose=True, print_fn=lines.append)
    assert lines[1] == (f"nothing to do: the checkpoint at step 10 in {out / 'checkpoints'} "
                        f"has done 2 of epochs=2; pass more epochs to train further")
    assert lines[2].startswith("test accuracy ")
    assert result.summary["steps"] == 10 and (out / "summary.json").exists()


def test_a_resume_on_other_data_of_the_same_size_is_refused(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    x, y, xt, yt = sets()
    shuffled = (x[::-1].copy(), y[::-1].copy(), xt, yt)        # same size, shape and dtype
    other_test = (x, y, xt[::-1].copy(), yt[::-1].copy())
    for other in (shuffled, other_test):
        with pytest.raises(ValueError, match=r"^cannot resume: the checkpoint at step 10 in .* "
                                             r"was made with data_sha256='[0-9a-f]{64}', this "
                                             r"run has data_sha256='[0-9a-f]{64}'$"):
            run_fit(out, epochs=3, resume=True, sets_=other)
    assert steps_in(out) == ["5", "10"]
    # a checkpoint made before the digest was recorded is not compared on it
    for step in ("5", "10"):
        def drop(meta):
            del meta["config"]["data_sha256"]
            meta["sha256"] = checkpoints._digest({k: v for k, v in meta.items() if k != "sha256"})
        _edit_meta(out / "checkpoints" / step, drop)
    assert run_fit(out, epochs=3, resume=True).summary["steps"] == 15


def test_a_checkpoint_inside_an_epoch_past_epochs_is_refused(tmp_path):
    out = tmp_path / "run"
    with _stopped_at(8):                               # checkpoints 7 and 8 kept
        run_fit(out, every=1)
    assert steps_in(out) == ["7", "8"]                 # 8 steps done: inside epoch 2
    with pytest.raises(ValueError, match=rf"^cannot resume with epochs=1: the checkpoint at "
                                         rf"step 8 in {out / 'checkpoints'} is inside epoch 2, "
                                         rf"past the 5 steps of 1 epochs; pass epochs >= 2"):
        run_fit(out, epochs=1, resume=True)
    assert not (out / "summary.json").exists()
    assert run_fit(out, every=1, resume=True).summary["steps"] == 10      # epochs=2 finishes it


LOCK = checkpoints.LOCK_FILE


def test_a_refused_resume_changes_nothing_in_out(tmp_path):
    """The newest checkpoint corrupt and the one before inside an epoch past ``epochs``: the
    resume is refused before the corrupt one is set aside or ``metrics.jsonl`` rewritten, so
    ``summary.json`` still matches the checkpoints it certified."""
    out = tmp_path / "run"
    run_fit(out, epochs=2, every=3)
    assert steps_in(out) == ["9", "10"]
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != LOCK}
    (out / "checkpoints" / "10" / "jaxcnn-files.json").unlink()
    del before[out / "checkpoints" / "10" / "jaxcnn-files.json"]
    with pytest.warns(train.CheckpointWarning), \
            pytest.raises(ValueError, match=r"^cannot resume with epochs=1: the checkpoint at "
                                            r"step 9 .* is inside epoch 2"):
        run_fit(out, epochs=1, resume=True)
    assert steps_in(out) == ["9", "10"]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != LOCK} \
        == before                                  # the lock file records its last holder


class _Stop(Exception):
    pass


@contextlib.contextmanager
def _stopped_at(k: int):
    """``fit`` interrupted (``_Stop``) as step ``k`` starts, as the kill tests' worker does."""
    real_step = train.fit_step

    def fit_step(*args):
        step_fn = real_step(*args)

        def stopping(*step_args):
            if step_args[-1] == k:
                raise _Stop
            return step_fn(*step_args)
        return stopping
    train.fit_step = fit_step
    try:
        with pytest.raises(_Stop):
            yield
    finally:
        train.fit_step = real_step


def test_a_resume_that_trains_on_retracts_the_finished_summary(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2
    with _stopped_at(12):                              # killed in epoch 3, in effect
        run_fit(out, epochs=3, resume=True)
    assert not (out / "summary.json").exists()          # it certified 2 epochs, now passed
    assert steps_in(out)[-1] == "10"


def test_a_resume_back_at_step_0_retracts_the_finished_summary(tmp_path):
    """The newest checkpoint corrupt, a finished one-epoch run resumes from step 0 with a new
    setting: its summary certified the old end, which this run may never reach."""
    out = tmp_path / "run"
    run_fit(out, epochs=1, info={**INFO, "lr": 0.01})
    assert steps_in(out) == ["0", "5"] and (out / "summary.json").exists()
    _flip(out / "checkpoints" / "5")
    with pytest.warns(train.CheckpointWarning, match=r"step 5 .*using the one at step 0"), \
            _stopped_at(1):
        run_fit(out, epochs=1, resume=True, info={**INFO, "lr": 0.001},
                resume_may_change=("lr",))
    assert not (out / "summary.json").exists()


def test_output_directories_orbax_or_a_run_cannot_share(finished, tmp_path):
    outputs_only = copy_of(finished, tmp_path)
    shutil.rmtree(outputs_only / "checkpoints")
    summary = (outputs_only / "summary.json").read_text()
    with pytest.raises(ValueError, match=rf"^{outputs_only} already holds the outputs of a run "
                                         rf"\(summary.json, metrics.jsonl, curves.png\) but no "
                                         rf"checkpoint to resume; choose another"):
        run_fit(outputs_only, epochs=1)
    assert (outputs_only / "summary.json").read_text() == summary
    with pytest.raises(ValueError, match=r"orbax-checkpoint reads a path holding '\[' or '\]' "
                                         r"as a pattern"):
        run_fit(tmp_path / "run[1]", epochs=1)
    assert not (tmp_path / "run[1]").exists()
    with pytest.raises(ValueError, match=r"tensorstore reads a backslash in a path as a "
                                         r"separator"):       # its arrays would land in a/b/
        run_fit(tmp_path / "a\\b", epochs=1)
    assert not (tmp_path / "a\\b").exists() and not (tmp_path / "a").exists()
    with pytest.raises(ValueError, match=r"^gs://bucket/run/checkpoints: a URL; jaxcnn writes "
                                         r"its runs to a local directory"):
        run_fit("gs://bucket/run", epochs=1)
    with pytest.raises(ValueError, match=r"resume continues the run in out and overwrite "
                                         r"replaces it: pass one of them"):
        run_fit(outputs_only, resume=True, overwrite=True)
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "checkpoints").symlink_to(finished[0] / "checkpoints")
    for kw in (dict(overwrite=True), dict(resume=True, epochs=3), {}):
        # out's lock does not cover where the link points: two runs could write one directory
        with pytest.raises(ValueError, match=r"checkpoints is a symbolic link: this run's lock "
                                             r"covers .*linked, not where the link points"):
            run_fit(linked, **{"epochs": 1, **kw})
    assert steps_in(finished[0]) == ["5", "10"] and not (linked / "summary.json").exists()


def test_data_of_any_dtype_and_one_example_tests_train_with_checkpoints(tmp_path):
    """The data's digest reads bfloat16 arrays; a test set of one example is checked as a batch
    of two, since it is evaluated (with running statistics), never trained on."""
    import ml_dtypes
    x, _, xt, _ = sets()
    bf16 = np.dtype(ml_dtypes.bfloat16)
    net = jc.serial(jc.Flatten(), jc.Dense(4, param_dtype=bf16), jc.BatchNorm(param_dtype=bf16),
                    jc.Dense(3, param_dtype=bf16))
    params, _ = train.init_params(net, x.shape[1:], seed=0)
    targets = np.zeros((len(x), 3), bf16)
    result = train.fit(net, params, x.astype(bf16), targets, xt[:1].astype(bf16),
                       targets[:1], loss=jc.squared_error, optimizer=ADAM, epochs=1,
                       batch_size=BATCH, out=tmp_path / "run", verbose=False)
    assert result.summary["n_test"] == 1
    digest = train._data_digest
    assert digest((x.astype(bf16),)) != digest((x[::-1].astype(bf16),)) != digest((x,))
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "run" / "summary.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_outputs_that_cannot_be_written_stop_the_run_naming_the_file(tmp_path, monkeypatch):
    real = checkpoints.replace_atomic

    def full_disk(path, write):
        if os.path.basename(path) == "summary.json":
            raise OSError(28, "No space left on device")
        return real(path, write)
    monkeypatch.setattr(train, "write_atomic",
                        lambda path, text: full_disk(path, lambda f: f.write(text.encode())))
    out = tmp_path / "run"
    with pytest.raises(train.TrainingError, match=rf"^could not write {out / 'summary.json'}: No "
                                                  rf"space left on device; the run stopped; "
                                                  rf"the last good checkpoint \(step 10\)"):
        run_fit(out)
    _, meta = train.load_checkpoint(out)
    assert meta["step"] == 10


@pytest.mark.parametrize("fails_at", [0, 1])       # the first line, or every line after it
def test_a_print_fn_that_raises_costs_the_run_nothing(fails_at):
    lines = []

    def broken_log(line):
        if len(lines) >= fails_at:
            raise BrokenPipeError(32, "Broken pipe")
        lines.append(line)
    quiet = run_fit()
    with pytest.warns(RuntimeWarning, match=r"^fit: print_fn raised BrokenPipeError: .*Broken "
                                            r"pipe; training goes on without its lines$") as got:
        loud = run_fit(verbose=True, progress=False, print_fn=broken_log)
    assert len([w for w in got if w.category is RuntimeWarning]) == 1
    assert len(lines) == fails_at
    def timeless(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]
    assert bitwise(loud.params, quiet.params)
    assert timeless(loud.history) == timeless(quiet.history)
    assert loud.summary["test_accuracy"] == quiet.summary["test_accuracy"]


def test_a_checkpoint_write_that_fails_prints_no_orbax_log(tmp_path, capfd, monkeypatch):
    import orbax.checkpoint as ocp
    real = ocp.CheckpointManager.save

    def failing(self, step, *args, **kw):
        if step == 5:
            import logging
            logging.getLogger("absl").error("orbax's own traceback", exc_info=True)
            raise OSError(28, "No space left on device")
        return real(self, step, *args, **kw)
    monkeypatch.setattr(ocp.CheckpointManager, "save", failing)
    with pytest.raises(train.TrainingError, match=r"could not write the checkpoint at step 5 "):
        run_fit(tmp_path / "run")
    assert "orbax's own traceback" not in capfd.readouterr().err


def test_fresh_directories_are_claimed_as_they_are_chosen(tmp_path, capsys, monkeypatch):
    base = str(tmp_path / "runs" / "digits-small")
    holder = subprocess.Popen(      # another run that has just chosen base, and holds it
        [sys.executable, "-c", "import sys, time; from jaxcnn.checkpoints import lock_out; "
                               "lock_out(sys.argv[1]); print('locked', flush=True); "
                               "time.sleep(300)", base],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    try:
        assert holder.stdout.readline() == "locked\n"
        out, lock = checkpoints.claim_fresh_out(base)
        assert out == base + "-2" and checkpoints.is_locked(out)
        taken = checkpoints.lock_out(out)           # the run it was claimed for takes it over
        assert taken is lock and checkpoints.is_locked(out)
        with pytest.raises(ValueError, match=r"is in use by another jaxcnn run"):
            checkpoints.lock_out(out)               # a second run, even in this process
        taken.release()
        lock.release()                              # once is enough; twice does nothing
        assert not checkpoints.is_locked(out)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    monkeypatch.chdir(tmp_path)

    def interrupted(args, out, prepared):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "_train", interrupted)
    assert cli.main(["train", "--quiet"]) == 130
    assert capsys.readouterr().err == ("jaxcnn train: error: interrupted before the first "
                                       "checkpoint: nothing to resume\n")
    assert not checkpoints.is_locked(base)          # the claimed directory is let go
    shutil.copytree(finished_run_dir(tmp_path), tmp_path / "done")
    assert cli.main(["train", "--quiet", "--out", str(tmp_path / "done")]) == 130
    assert capsys.readouterr().err == (f"jaxcnn train: error: interrupted; the last checkpoint "
                                       f"in {tmp_path / 'done'} is intact, continue with "
                                       f"--resume\n")


def test_claims_and_the_newest_run_without_out(tmp_path):
    """Two claims in one process get two directories; ``--resume`` without ``--out`` takes the
    run whose newest checkpoint was written last, whatever the numbers and gaps -- a fresh run
    fills the first free name, here the gap ``-2`` left between ``base`` and ``base-12``."""
    base = str(tmp_path / "runs" / "digits-small")
    first, lock1 = checkpoints.claim_fresh_out(base)
    second, lock2 = checkpoints.claim_fresh_out(base)
    assert (first, second) == (base, base + "-2")
    for lock in (lock1, lock2):
        lock.release()
    assert checkpoints.latest_out(base) is None
    for name, when in (("digits-small", 100), ("digits-small-12", 200),
                       ("digits-small-2", 300), ("digits-small-extra", 400)):
        step = tmp_path / "runs" / name / "checkpoints" / "5"
        step.mkdir(parents=True)
        os.utime(step, (when, when))
    assert checkpoints.latest_out(base) == base + "-2"
    os.utime(tmp_path / "runs" / "digits-small-12" / "checkpoints" / "5", (500, 500))
    assert checkpoints.latest_out(base) == base + "-12"


def test_an_out_that_cannot_be_created_is_named(tmp_path, capsys):
    (tmp_path / "afile").write_text("not a directory")
    out = tmp_path / "afile" / "run"
    name = re.escape(str(out))
    with pytest.raises(OSError, match=rf"^cannot create the output directory {name}: Not a "
                                      rf"directory \({name}\)$"):
        run_fit(out)
    assert cli.main(["train", "--quiet", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"jaxcnn train: error: cannot create the output directory "
                                       f"{out}: Not a directory ({out})\n")


def test_sigterm_stops_the_command_as_ctrl_c_does(tmp_path, capsys, monkeypatch):
    """SIGTERM (a scheduler's stop) during ``jaxcnn train`` unwinds as Ctrl-C: exit 143, the
    directory let go, the previous handler back."""
    monkeypatch.chdir(tmp_path)
    before = signal.getsignal(signal.SIGTERM)

    def terminated(args, out, prepared):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):               # the handler runs at the next bytecode
            pass
        raise AssertionError("SIGTERM did not stop the run")
    monkeypatch.setattr(cli, "_train", terminated)
    assert cli.main(["train", "--quiet"]) == 143
    assert capsys.readouterr().err == ("jaxcnn train: error: terminated (SIGTERM) before the "
                                       "first checkpoint: nothing to resume\n")
    assert not checkpoints.is_locked(tmp_path / "runs" / "digits-small")
    assert signal.getsignal(signal.SIGTERM) is before
    step0 = tmp_path / "runs" / "digits-small" / "checkpoints" / "0"   # a save cut short:
    step0.mkdir(parents=True)                                         # no jaxcnn-files.json
    assert cli.main(["train", "--quiet", "--out", "runs/digits-small"]) == 143
    assert capsys.readouterr().err.endswith("before the first checkpoint: nothing to resume\n")
    (step0 / checkpoints.FILES).write_text("{}")
    assert cli.main(["train", "--quiet", "--out", "runs/digits-small", "--resume"]) == 143
    assert "the last checkpoint in runs/digits-small is intact, continue with --resume" in \
        capsys.readouterr().err


def test_a_real_sigterm_mid_run_leaves_a_run_that_resumes(tmp_path):
    """``jaxcnn train`` in its own process, SIGTERM once its first epoch's checkpoint is there
    and sealed: exit 143 naming it, and ``--resume`` finishes the run.  (A SIGTERM between
    orbax's rename and the seal leaves a partial step, passed over with a warning on resume:
    ``test_a_corrupt_latest_checkpoint_falls_back_to_the_one_before`` and the kills above.)"""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "jaxcnn.cli", "train", "--quiet", "--epochs", "40",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    try:
        ckpts = out / "checkpoints"
        for _ in range(1200):                           # up to 2 minutes
            if proc.poll() is not None or (ckpts.is_dir() and any(     # saved and sealed
                    n.isdigit() and int(n) > 0 and (ckpts / n / checkpoints.FILES).exists()
                    for n in os.listdir(ckpts))):
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert err.endswith(f"jaxcnn train: error: terminated (SIGTERM); the last checkpoint in "
                        f"{out} is intact, continue with --resume\n"), err[-2000:]
    assert not checkpoints.is_locked(out)
    epochs = train.load_checkpoint(out)[1]["epoch"] + 1         # one more than it kept
    done = subprocess.run([*cmd, "--resume", "--epochs", str(epochs)], capture_output=True,
                          text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"after {epochs} epochs ({44 * epochs} steps)" in done.stdout, done.stdout[-2000:]


def finished_run_dir(tmp_path) -> Path:
    out = tmp_path / "finished-one-epoch"
    run_fit(out, epochs=1)
    return out


# --- the command line's first hour --------------------------------------------------------

def _tiny_mnist(directory: Path) -> None:
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True)
    for split, n in (("train", 40), ("t10k", 20)):
        data.write_idx(str(directory / f"{split}-images-idx3-ubyte"),
                       rng.integers(0, 256, size=(n, 8, 8), dtype=np.uint8))
        data.write_idx(str(directory / f"{split}-labels-idx1-ubyte"),
                       rng.integers(0, 10, size=n).astype(np.uint8))


def test_command_line_defaults_resumes_and_refusals(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    _tiny_mnist(tmp_path / "data" / "mnist")
    base = ["train", "--dataset", "mnist", "--arch", "ufldl", "--batch-size", "10", "--quiet"]

    def run(*args):
        code = cli.main([*base, *args])
        return (code, *capfd.readouterr())

    code, out, err = run("--epochs", "1")
    assert code == 0, err
    assert "outputs in runs/mnist-ufldl\n" in out
    code, out, err = run("--epochs", "1")                   # the README's command, twice
    assert code == 0, err
    assert "outputs in runs/mnist-ufldl-2\n" in out
    assert (tmp_path / "runs" / "mnist-ufldl" / "summary.json").exists()
    code, out, err = run("--epochs", "1", "--resume")        # the newest run, finished
    assert code == 0, err
    assert "nothing to do: the checkpoint at step 4 in " \
           f"{tmp_path / 'runs' / 'mnist-ufldl-2' / 'checkpoints'}" in out
    assert GRAD_LINE not in out
    code, out, err = run("--epochs", "1", "--resume", "--out", "runs/mnist-ufldl",
                         "--arch", "lenet5")
    assert code == 2 and "Traceback" not in err
    assert err.startswith("jaxcnn train: error: cannot resume: the checkpoint at step 4 in "
                          f"{tmp_path / 'runs' / 'mnist-ufldl' / 'checkpoints' / '4'} was made "
                          "with arch='ufldl', this run has arch='lenet5'")
    os.truncate(largest_file(tmp_path / "runs" / "mnist-ufldl" / "checkpoints" / "4"), 10)
    code, out, err = run("--epochs", "2", "--resume", "--out", "runs/mnist-ufldl")
    assert code == 0, err
    assert "jaxcnn train: warning: the checkpoint at step 4 (" in err
    assert "using the one at step 0 instead (kept aside as 4.corrupt)" in err
    assert "Traceback" not in err
    assert "resuming from the checkpoint at step 0 (epoch 0 of 2)" in out


if __name__ == "__main__":
    _config_like_conftest()
    _worker(sys.argv[1], sys.argv[2], int(sys.argv[3]))

"""``jaxcnn train`` end to end, in-process through ``jaxcnn.cli.main`` (which returns the exit
code), plus one run of the installed console script.  Tiny settings: 1-2 epochs, tiny IDX sets."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxcnn import cli, data, train

GRAD_LINE = "gradient check (hand-written vs jax.grad, 1 batch): worst relative error "


def tiny_idx(directory, size=8, n_train=40, n_test=20, train_labels=None):
    """An MNIST-style set of random images, train files gzipped and test files raw."""
    rng = np.random.default_rng(0)
    os.makedirs(directory, exist_ok=True)
    for split, n, gz in (("train", n_train, ".gz"), ("t10k", n_test, "")):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        if split == "train" and train_labels is not None:
            labels = train_labels
        data.write_idx(os.path.join(directory, f"{split}-images-idx3-ubyte{gz}"),
                       rng.integers(0, 256, size=(n, size, size), dtype=np.uint8))
        data.write_idx(os.path.join(directory, f"{split}-labels-idx1-ubyte{gz}"), labels)
    return str(directory)


def run(capsys, *args):
    code = cli.main(["train", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def worst_error(out: str) -> float:
    return float(out.split(GRAD_LINE, 1)[1].split()[0])


def test_defaults_on_digits_then_resume_equals_straight(tmp_path, capsys):
    code, out, err = run(capsys, "--epochs", 1, "--out", tmp_path / "a")
    assert code == 0, err
    assert out.startswith("digits: 1437 train + 360 test images, 8x8x1, 10 classes\n"
                          "small: 97,802 parameters; adam lr 0.001, batch 32, 1 epochs, manual "
                          "gradients;")
    assert worst_error(out) < 1e-4
    assert "44/44" in err                                        # the progress bar, on stderr
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["dataset"] == "digits" and summary["arch"] == "small"
    assert summary["epochs"] == 1 and summary["steps"] == 44 and summary["seed"] == 0
    assert summary["grad"] == "manual" and summary["test_accuracy"] > 0.5
    assert {"test_loss", "seconds", "jax_version", "jaxcnn_version"} <= set(summary)
    assert f"test accuracy {100 * summary['test_accuracy']:.2f}%" in out
    assert (tmp_path / "a" / "curves.png").exists()

    code, out, err = run(capsys, "--epochs", 2, "--out", tmp_path / "a", "--resume", "--quiet")
    assert code == 0, err
    assert "resuming from the checkpoint at step 44 (epoch 1 of 2)" in out
    assert len((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()) == 2

    code, _, err = run(capsys, "--epochs", 2, "--out", tmp_path / "b", "--quiet")
    assert code == 0, err
    resumed, _ = train.load_checkpoint(tmp_path / "a")
    straight, _ = train.load_checkpoint(tmp_path / "b")
    for a, b in zip(_leaves(resumed["params"]), _leaves(straight["params"])):
        assert np.array_equal(a, b)

    code, _, err = run(capsys, "--epochs", 2, "--out", tmp_path / "b", "--quiet")
    assert code == 2
    assert err.startswith(f"jaxcnn train: error: {tmp_path / 'b'} already holds a run")
    assert "pass --resume to continue it, --overwrite to start again, or --out DIR" in err
    assert run(capsys, "--epochs", 1, "--out", tmp_path / "b", "--quiet", "--overwrite")[0] == 0


def _leaves(tree):
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(tree)]


def test_resume_changes_the_learning_rate_only_when_given(tmp_path, capsys):
    """``--resume --lr X`` may change the rate (after a divergence, say), recorded in the
    summary; ``--resume`` without ``--lr`` still has to match the checkpoint's."""
    a = tmp_path / "a"
    assert run(capsys, "--epochs", 1, "--lr", "0.01", "--out", a, "--quiet")[0] == 0
    code, _, err = run(capsys, "--epochs", 2, "--out", a, "--resume", "--quiet")
    assert code == 2 and err.endswith(
        "was made with lr=0.01, this run has lr=0.001; repeat its --lr, or give another --lr to "
        "change it from here (recorded)\n")
    code, out, err = run(capsys, "--epochs", 2, "--lr", "0.002", "--out", a, "--resume",
                         "--quiet")
    assert code == 0, err
    assert "changing lr from 0.01 to 0.002 at step 44: the summary records it" in out
    summary = json.loads((a / "summary.json").read_text())
    assert summary["lr"] == 0.002 and summary["epochs"] == 2
    assert summary["changes"] == [{"step": 44, "setting": "lr", "from": 0.01, "to": 0.002}]
    code, out, err = run(capsys, "--epochs", 2, "--lr", "0.001", "--out", a, "--resume",
                         "--quiet")               # nothing to train: refused, not announced
    assert code == 2 and "the change would apply to no step" in err
    assert "changing lr" not in out


def test_mnist_style_files_autodiff_and_periodic_checks(tmp_path, capsys):
    code, out, err = run(capsys, "--dataset", "mnist", "--data-dir", tiny_idx(tmp_path / "d"),
                         "--arch", "ufldl", "--epochs", 2, "--batch-size", 10, "--microbatch", 5,
                         "--grad", "autodiff", "--check-grads", 3, "--optimizer", "momentum",
                         "--lr", 0.01, "--out", tmp_path / "o", "--quiet")
    assert code == 0, err
    assert out.startswith("mnist: 40 train + 20 test images, 8x8x1, 10 classes\nufldl: ")
    assert "batch 10 in microbatches of 5, 2 epochs, autodiff gradients" in out
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["microbatch"] == 5
    assert (summary["dataset"], summary["arch"], summary["grad"]) == ("mnist", "ufldl",
                                                                    "autodiff")
    assert summary["optimizer"] == "momentum" and summary["steps"] == 8


def test_default_out_dir(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny_idx(tmp_path / "data" / "fashion-mnist")
    code, out, err = run(capsys, "--dataset", "fashion-mnist", "--epochs", 1, "--batch-size",
                         10, "--quiet")
    assert code == 0, err
    assert (tmp_path / "runs" / "fashion-mnist-small" / "summary.json").exists()


def test_a_run_refused_for_its_data_leaves_no_directory(tmp_path, capsys, monkeypatch):
    """Without ``--out`` the run's directory is chosen and locked, but only once the data are
    read: missing files leave no ``runs/...`` behind, and the command the error suggests can
    be pasted as it is (its directory quoted)."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "--dataset", "mnist", "--data-dir", "no such")
    assert code == 2 and not (tmp_path / "runs").exists()
    assert "download them with: jaxcnn data download mnist --data-dir 'no such' (or" in err


def test_a_resume_that_adds_an_option_says_to_drop_it(tmp_path, capsys):
    a = tmp_path / "a"
    assert run(capsys, "--epochs", 1, "--out", a, "--quiet")[0] == 0
    code, _, err = run(capsys, "--epochs", 2, "--out", a, "--resume", "--microbatch", 8,
                       "--quiet")
    assert code == 2 and err.endswith("was made with microbatch=None, this run has "
                                      "microbatch=8; drop --microbatch, or --overwrite to start "
                                      "again\n"), err


def test_non_finite_loss_exits_1_naming_the_step(tmp_path, capsys, monkeypatch):
    # one finite but huge image overflows the forward (the IDX loader refuses floats outside
    # [0, 1], so it is put in after loading)
    directory = tiny_idx(tmp_path / "d")
    ds = data.load("mnist", directory)
    x_train = np.random.default_rng(1).uniform(size=ds.x_train.shape).astype(np.float32)
    x_train[train.epoch_order(jax.random.key(0), 0, 40)[3 * 10]] = 3e38    # in step 3's batch
    monkeypatch.setattr(data, "load", lambda name, data_dir: ds._replace(x_train=x_train))
    code, _, err = run(capsys, "--dataset", "mnist", "--data-dir", directory, "--batch-size", 10,
                       "--checkpoint-every", 2, "--out", tmp_path / "o", "--quiet")
    assert code == 1
    assert err == ("jaxcnn train: error: non-finite loss (nan) at step 3 (epoch 1, batch 4 of 4); "
                   "training stopped; the last good checkpoint (step 2) is kept in "
                   f"{tmp_path / 'o' / 'checkpoints'}\n")
    _, meta = train.load_checkpoint(tmp_path / "o")
    assert meta["step"] == 2


def _bad(directory, kind):
    if kind == "labels":
        return tiny_idx(directory, train_labels=np.arange(40, dtype=np.uint8) % 11)
    tiny_idx(directory)
    if kind == "rank":
        data.write_idx(os.path.join(directory, "t10k-images-idx3-ubyte"),
                       np.zeros((20, 64), np.uint8))
    elif kind == "size":
        tiny_idx(directory, size=2)
    elif kind == "header":
        Path(directory, "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08")
    elif kind == "float":           # pixels of 0..255 stored as floats: not scaled, refused
        data.write_idx(os.path.join(directory, "t10k-images-idx3-ubyte"),
                       np.full((20, 8, 8), 255, np.float64))
    elif kind == "empty":
        for name in os.listdir(directory):
            os.remove(os.path.join(directory, name))
    return str(directory)


@pytest.mark.parametrize("kind, message", [
    ("labels", r"mnist train set .*: labels must lie in \[0, 10\), got values in \[0, 10\] "
               r"\(3 out of range, first at index 10\)"),
    ("rank", r"t10k-images-idx3-ubyte: expected images of rank 3 \(N, rows, cols\), rows and "
             r"cols >= 1, got shape \(20, 64\)"),
    ("size", r"--arch small does not fit the mnist images \(2x2x1\): serial\[7\] MaxPool2D"),
    ("header", r"t10k-labels-idx1-ubyte: corrupt IDX header: the file has 3 bytes"),
    ("float", r"t10k-images-idx3-ubyte: float images must lie in \[0, 1\] \(they are kept as "
              r"they are\), got values in \[255, 255\]; scale them first"),
    ("empty", r"the data directory '.*' is empty; an MNIST-style data set needs the four IDX "
              r"files train-images-idx3-ubyte\[\.gz\], "),
    ("missing", r"cannot read the data directory '.*nowhere'"),
])
def test_bad_data_exits_2_before_training(tmp_path, capsys, kind, message):
    directory = tmp_path / "nowhere" if kind == "missing" else _bad(tmp_path / "d", kind)
    code, out, err = run(capsys, "--dataset", "mnist", "--data-dir", directory,
                         "--out", tmp_path / "o")
    assert code == 2
    assert err.startswith("jaxcnn train: error: ")
    assert re.search(message, err), err
    assert GRAD_LINE not in out and not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "argument --batch-size: must be a positive integer, got '0'"),
    (["--epochs", "0"], "argument --epochs: must be a positive integer, got '0'"),
    (["--epochs", "-2"], "argument --epochs: must be a positive integer, got '-2'"),
    (["--epochs", "two"], "argument --epochs: must be a positive integer, got 'two'"),
    (["--lr", "0"], "argument --lr: must be a positive number, got '0'"),
    (["--lr", "nan"], "argument --lr: must be a positive number, got 'nan'"),
    (["--check-grads", "-1"], "argument --check-grads: must be an integer >= 0, got '-1'"),
    (["--arch", "vgg"], "argument --arch: invalid choice: 'vgg'"),
    (["--dataset", "cifar"], "argument --dataset: invalid choice: 'cifar'"),
    (["--batch-size", "5000"], "--batch-size 5000 exceeds the 1437 training images of digits"),
    (["--resume"], "nothing to resume: no checkpoint in "),
    (["--microbatch", "0"], "argument --microbatch: must be a positive integer, got '0'"),
    (["--microbatch", "7"], "--batch-size 32 must be a multiple of --microbatch 7, or at most it"),
    (["--devices", "9"], "--devices 9, but 1 device is available (cpu)"),
    (["--lr", "1e39"], "--lr 1e+39"),
    (["--seed", str(2 ** 63)], f"argument --seed: must be an integer of 64 bits, got '{2 ** 63}'"),
    (["--resume", "--overwrite"], "argument --overwrite: not allowed with argument --resume"),
    (["--data-dir", "d"], "--data-dir applies to mnist and fashion-mnist, whose IDX files it "
                          "holds; the digits ship with scikit-learn"),
])
def test_bad_options_exit_2_before_training(tmp_path, capsys, args, message):
    code, out, err = run(capsys, *args, "--out", tmp_path / "o")
    assert code == 2
    assert "jaxcnn train: error: " in err and message in err
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_subcommands_and_help(capsys):
    assert cli.main([]) == 2
    assert "the following arguments are required: COMMAND" in capsys.readouterr().err
    assert cli.main(["train", "--help"]) == 0
    usage = capsys.readouterr().out
    for option in ("--dataset", "--data-dir", "--arch", "--epochs", "--batch-size",
                   "--microbatch", "--lr", "--optimizer", "--seed", "--out", "--grad", "--check-grads", "--resume"):
        assert option in usage


def test_installed_console_script(tmp_path):
    script = Path(sys.executable).with_name("jaxcnn")
    assert script.exists(), "the jaxcnn console script is not installed next to python"
    proc = subprocess.run(
        [str(script), "train", "--dataset", "mnist", "--data-dir", tiny_idx(tmp_path / "d"),
         "--epochs", "1", "--batch-size", "10", "--out", str(tmp_path / "o"), "--quiet"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg"})
    assert proc.returncode == 0, proc.stderr
    assert worst_error(proc.stdout) < 1e-4
    assert "test accuracy" in proc.stdout
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["steps"] == 4


def test_version_and_every_option_has_help_with_its_default_once(capsys):
    """``jaxcnn --version``; every option of every command has help, a default is printed at
    most once and never as ``None``."""
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(["--version"])
    assert exit_.value.code == 0
    assert re.fullmatch(r"jaxcnn \d+\.\d+\.\d+\n", capsys.readouterr().out)
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    parsers = [commands["train"], commands["check"], commands["show"],
               commands["data"]._subparsers._group_actions[0].choices["download"]]
    for p in parsers:
        text = p.format_help()
        assert "(default: None)" not in text, p.prog
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{p.prog} {action.option_strings[0]} has no help"
                shown = p._get_formatter()._expand_help(action) if action.help else ""
                assert shown.count("default") <= 1, (p.prog, action.option_strings, shown)


@pytest.mark.parametrize("missing", ["sklearn", "matplotlib", "tqdm"])
def test_a_missing_extra_is_named_in_one_line(tmp_path, capsys, monkeypatch, missing):
    """Without a module of the train extra, one line names the extra -- before anything is
    trained or written (matplotlib draws only the last epoch's curves, tqdm the first bar)."""
    for module in [m for m in sys.modules if m == missing or m.startswith(missing + ".")]:
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setitem(sys.modules, missing, None)
    code, out, err = run(capsys, "--out", tmp_path / "o")
    assert code == 2 and out == "" and not (tmp_path / "o").exists()
    assert err == (f"jaxcnn train: error: this command needs the 'train' extra ({missing} is "
                   f"not installed): pip install 'jaxcnn[train]'\n")


def test_a_reader_that_goes_away_ends_check_quietly(tmp_path):
    """``jaxcnn check | head -1``: the pipe closes before the table is printed -- exit 141
    (SIGPIPE's code), no traceback, never the 1 of a failed check."""
    with subprocess.Popen([sys.executable, "-m", "jaxcnn.cli", "check"], cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}) as proc:
        proc.stdout.close()
        err = proc.stderr.read()
        assert proc.wait(timeout=300) == 141 and err == b"", err.decode()[-2000:]


def test_each_zoo_net_carries_a_recipe_and_lenet5_learns_with_it(optimized_xla):
    """``--lr``/``--epochs`` default to the arch's recipe; LeNet-5's (sigmoid units) leaves
    chance well within its epochs, where the small net's learning rate leaves it at chance."""
    from jaxcnn import zoo

    assert set(zoo.RECIPES) == set(zoo.ARCHS)
    ds = data.load_digits()
    net = zoo.get("lenet5", ds.image_shape)
    params, _ = train.init_params(net, ds.image_shape)
    result = train.fit(net, params, ds.x_train, ds.y_train, ds.x_test, ds.y_test,
                       optimizer=train.make_optimizer("adam", zoo.RECIPES["lenet5"].lr),
                       epochs=20, verbose=False)
    assert result.summary["test_accuracy"] > 0.5


@pytest.mark.parametrize("fault, code, message", [
    (KeyboardInterrupt, 130, "jaxcnn check: error: interrupted\n"),
    (MemoryError, 2, "jaxcnn check: error: out of memory: the batch or image is too large for "
                     "this machine; ask for a smaller one\n"),
    (lambda: jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to "
                                        "allocate 4398046511104 bytes."), 2,
     "jaxcnn check: error: out of memory: the batch or image is too large for this machine; "
     "ask for a smaller one\n"),
])
def test_an_interrupt_or_exhausted_memory_is_one_line(monkeypatch, capsys, fault, code, message):
    """Ctrl-C in check (or show) exits 130 and a batch too large for the machine exits 2 --
    one line each, never a traceback, and never 1, which says a gradient check failed."""
    from jaxcnn import audit

    def fail(*args, **kwargs):
        raise fault()

    monkeypatch.setattr(audit, "check_grads", fail)
    assert cli.main(["check", "--arch", "small"]) == code
    assert capsys.readouterr().err == message


def test_show_prints_a_checkpoint_warning_as_one_line(monkeypatch, capsys, tmp_path):
    import warnings

    from jaxcnn import show
    from jaxcnn.checkpoints import CheckpointWarning

    def render(*args, **kwargs):
        warnings.warn("the checkpoint at step 44 is corrupt; using step 0", CheckpointWarning)
        return []

    monkeypatch.setattr(show, "render", render)
    assert cli.main(["show", "kernels", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().err == ("jaxcnn show: warning: the checkpoint at step 44 is "
                                       "corrupt; using step 0\n")


def test_another_xla_runtime_error_is_not_called_out_of_memory(monkeypatch):
    from jaxcnn import audit

    def fail(*args, **kwargs):
        raise jax.errors.JaxRuntimeError("INTERNAL: something else")

    monkeypatch.setattr(audit, "check_grads", fail)
    with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL: something else"):
        cli.main(["check", "--arch", "small"])


def test_main_names_the_whole_command_data_download(monkeypatch, capsys, tmp_path):
    def fail(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(data, "download", fail)
    assert cli.main(["data", "download", "mnist", "--data-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("jaxcnn data download: error: out of memory")

"""The examples run and print what they promise."""
import os
import subprocess
import sys
from pathlib import Path

from test_show import assert_picture

ROOT = Path(__file__).resolve().parents[1]


def run_example(name, *args, timeout=300, optimize=False):
    """Run ``examples/<name>`` in a fresh process, as a user would; its stdout.  ``optimize``:
    with XLA's optimisations and code generator (which the suite trades for compile time,
    ``conftest.py``), for an example that trains for long enough to gain from them."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg",
           "JAX_DISABLE_MOST_OPTIMIZATIONS": "0" if optimize else "1"}
    if optimize:
        fast_compile = os.environ.get("JAXCNN_TESTS_XLA_FLAGS", "").split()
        env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                    if f not in fast_compile)
    out = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args],
                         capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_seed_walkthrough(tmp_path):
    out = run_example("seed_walkthrough.py", "--out", str(tmp_path))
    for name in ("seed_convolution_5x5.png", "seed_pooling.png"):
        assert_picture(tmp_path / name)
    assert "[1, 3, 2] * [2, 5] = [2, 11, 19, 10]" in out
    assert "delta = [1, 3, 2]: [2, 11, 19, 10]" in out
    assert "[[4 3 4]\n [2 4 3]\n [2 3 4]]" in out
    assert "first entry: 1 + 0 + 1 + 0 + 1 + 0 + 0 + 0 + 1 = 4" in out
    worst = float(out.rsplit("hand-written vs jax.grad: ", 1)[1].split()[0])
    assert worst < 1e-12


def test_audit_walkthrough_names_each_planted_mistake(tmp_path):
    out = run_example("audit_a_new_layer.py", "--out", str(tmp_path))
    assert_picture(tmp_path / "audit_planted_mistakes.png", min_hw=(200, 500))
    sections = out.split("== ")
    assert "all 2 gradients agree" in sections[1] and "FAIL" not in sections[1]
    assert "all 19 gradients agree" in sections[2]
    assert "FAILED: first wrong layer is 1 (ScaledTanh)" in sections[3]
    assert "FAILED: first wrong layer is 4 (Sigmoid)" in sections[4]
    assert "FAILED: first wrong layer is 0 (Conv2D)" in sections[5]


def test_train_digits_reaches_98_percent():
    """The default net on the bundled digits: at least 98% test accuracy (not a timed test)."""
    out = run_example("train_digits.py", optimize=True)
    lines = [line for line in out.splitlines() if "test accuracy" in line]
    assert len(lines) == 2
    for line in lines:
        accuracy = float(line.split("test accuracy")[1].split("%")[0])
        assert accuracy >= 98.0, line
        assert float(line.rsplit("grad check", 1)[1]) < 1e-4, line


def test_train_digits_evaluates_a_net_with_batchnorm(capsys):
    """``--zoo`` reaches resnet-bn: its evaluation uses the running statistics ``fit`` returns
    (one epoch on 64 training and 64 test digits: what is checked is that it evaluates)."""
    import importlib.util

    from jaxcnn import data, train, zoo
    spec = importlib.util.spec_from_file_location("train_digits", ROOT / "examples" / "train_digits.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    ds = data.load_digits()
    ds = ds._replace(x_train=ds.x_train[:64], y_train=ds.y_train[:64], x_test=ds.x_test[:64],
                     y_test=ds.y_test[:64])
    accuracy = example.run("resnet-bn", zoo.get("resnet-bn", ds.image_shape), ds,
                           train.make_optimizer("adam", 1e-3), epochs=1)
    assert 0.0 <= accuracy <= 1.0
    assert "resnet-bn" in capsys.readouterr().out

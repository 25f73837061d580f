"""The training, autoencoder, per-example-gradient and bridge examples run in their fast mode, the
BatchNorm terms example as it is; each prints what it promises and writes real figures."""
import os
import re
import subprocess
import sys
from pathlib import Path

from test_show import assert_picture

ROOT = Path(__file__).resolve().parents[1]


def run_example(name, *args, timeout=300):
    """Run ``examples/<name>`` in a fresh process, as a user would; its stdout.

    XLA's backend optimisations are turned off: on a CPU they cost more compile time than the
    fast mode's few steps gain, and they do not change what is computed.
    """
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg",
           "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "")
                         + " --xla_backend_optimization_level=0").strip()}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args],
                         capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout


def number(pattern, text):
    return float(re.search(pattern, text).group(1))


def test_train_zoo(tmp_path):
    out = run_example("train_zoo.py", "--fast", "--out", str(tmp_path))
    for net in ("lenet5", "deepid", "resnet", "resnet-bn"):
        assert f"== {net}\ninput (8, 8, 1)" in out
        assert_picture(tmp_path / f"train_zoo_{net}_kernels.png", min_hw=(150, 400))
    assert "total: 21,386 parameters" in out and "total: 72,690 parameters" in out
    assert "total: 77,418 parameters" in out
    assert "FanInConcat" in out and "GlobalAvgPool2D" in out      # the branching nets' summaries
    assert "total: 77,754 parameters" in out and "BatchNorm" in out
    assert out.count("2 epochs in") == 4
    for worst in re.findall(r"worst relative error ([0-9.e+-]+)", out):
        assert float(worst) < 1e-4
    assert_picture(tmp_path / "train_zoo_curves.png")
    assert "first epoch above 50% test accuracy: lenet5" in out


def test_autoencoder(tmp_path):
    out = run_example("autoencoder.py", "--fast", "--out", str(tmp_path))
    assert "ConvTranspose2D  (4, 4, 16)" in out and "ConvTranspose2D  (8, 8, 1)" in out
    assert "total: 2,633 parameters" in out
    assert number(r"worst relative error ([0-9.e+-]+)", out) < 1e-4
    # three epochs already beat both baselines: the decoder paints the digits back
    decoded = number(r"per pixel: ([0-9.]+)", out)
    assert decoded < number(r"the mean image: ([0-9.]+)", out) < number(
        r"its training mean: ([0-9.]+)", out)
    assert_picture(tmp_path / "autoencoder_reconstructions.png")


def test_per_example_gradients(tmp_path):
    out = run_example("per_example_gradients.py", "--fast", "--out", str(tmp_path))
    assert "one array per parameter with a leading axis of 360" in out
    assert number(r"batch gradient: max relative difference ([0-9.e+-]+)", out) < 1e-5
    assert number(r"jax.grad, per example: max relative difference ([0-9.e+-]+)", out) < 1e-5
    right = number(r"median ([0-9.]+) over the \d+ right", out)
    wrong = number(r"([0-9.]+) over the \d+ wrong", out)
    assert wrong > right                   # the mistakes pull hardest
    assert_picture(tmp_path / "per_example_gradients.png")


def test_bridge_in_plain_jax(tmp_path):
    out = run_example("bridge_in_plain_jax.py", "--fast", "--out", str(tmp_path))
    assert number(r"through net.apply: max relative difference ([0-9.e+-]+)", out) < 1e-5
    moved = re.search(r"the gradient moves by ([0-9.]+) \(relative\); by autodiff by "
                      r"([0-9.e+-]+)", out)
    assert float(moved.group(1)) > 0.5 and float(moved.group(2)) < 1e-5
    assert number(r"d logit / d pixels through the bridge vs autodiff: max relative "
                  r"difference ([0-9.e+-]+)", out) < 1e-5
    losses = [float(v) for v in re.findall(r"step +\d+: loss ([0-9.]+)", out)]
    assert len(losses) == 5 and losses[-1] < losses[0]
    assert "jax.jvp through the bridge: TypeError" in out
    assert_picture(tmp_path / "bridge_saliency.png")


def test_batchnorm_backward_terms_sum_to_the_layers_backward(tmp_path):
    out = run_example("batchnorm_backward.py", "--out", str(tmp_path))
    assert "dy (64, 8, 8, 16), M = 4096 entries a channel" in out
    assert number(r"sum of the three terms vs BatchNorm.backward: max relative difference "
                  r"([0-9.e+-]+)", out) < 1e-5
    assert number(r"BatchNorm.backward vs jax.vjp: max relative difference ([0-9.e+-]+)",
                  out) < 1e-5
    # the classic mistake, the statistics taken as constants, is far off
    assert number(r"the direct term alone \(the statistics taken as constants\) vs jax.vjp: "
                  r"max relative difference ([0-9.e+-]+)", out) > 1e-3
    norms = [float(v) for v in re.findall(r"^  through [a-z_ ]+ norm ([0-9.e+-]+)$", out, re.M)]
    assert len(norms) == 3 and all(v > 0 for v in norms)
    assert_picture(tmp_path / "batchnorm_terms.png")

"""Test configuration: strict, jitted, and exact enough to compare with autodiff.

- float64 is enabled so that tolerances can be tight (float32 is tested too, explicitly);
- ``jax_numpy_dtype_promotion="strict"`` and ``jax_numpy_rank_promotion="raise"`` turn silent
  casts and broadcasts in the library into errors;
- ``jax_default_matmul_precision="highest"`` keeps float32 convolutions and matmuls exact on
  GPU/TPU (TF32 / bf16 passes otherwise), so the same tolerances hold on every backend;
- warnings are errors (``pyproject.toml``).
"""
import os
import subprocess
import sys
import tempfile

FAST_COMPILE = "--xla_cpu_use_fusion_emitters=false"
"""XLA's older CPU code generator: it compiles the suite's many small programs 2-3 times
faster than the fusion emitters (the same arithmetic, to the tolerances)."""


def _fast_compile_flags() -> str:
    """``FAST_COMPILE`` where this jaxlib knows the flag (XLA aborts on an unknown one), else ''."""
    probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], capture_output=True,
                           env={**os.environ, "JAX_PLATFORMS": "cpu",
                                "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}"})
    return FAST_COMPILE if probe.returncode == 0 else ""


# Before jax is imported, so that every test process inherits them -- the xdist workers and the
# examples, jaxcnn commands and kill-and-resume runs the tests start: the suite's programs are
# small and mostly run once, so XLA's optimisation passes cost more than they save, and one
# compilation cache for the session lets the many processes that compile the same training
# step (tests/test_faults.py, tests/test_cli.py) compile it once.  Results stay exact to the
# tolerances; bitwise comparisons are between runs under the same settings.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
if "JAXCNN_TESTS_XLA_FLAGS" not in os.environ:      # decided once, by the first process
    os.environ["JAXCNN_TESTS_XLA_FLAGS"] = _fast_compile_flags()
    os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""),
                                                     os.environ["JAXCNN_TESTS_XLA_FLAGS"]]))
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxcnn-tests-xla-")
    os.environ["JAXCNN_TESTS_OWN_CACHE"] = os.environ["JAX_COMPILATION_CACHE_DIR"]
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")

settings.register_profile(          # the default run: a fixed, fast draw of every grid
    "ci", max_examples=10, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "sweep", max_examples=300, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def optimized_xla():
    """XLA's optimisations back on for one test that trains for many steps, where they save
    more run time than they cost to compile (the suite turns them off, above)."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture
def rng():
    import numpy as np
    return np.random.default_rng(0)


def pytest_unconfigure(config):
    """The session's compilation cache goes with the process that made it (the controller)."""
    own = os.environ.get("JAXCNN_TESTS_OWN_CACHE")
    if own and not hasattr(config, "workerinput"):
        import shutil
        shutil.rmtree(own, ignore_errors=True)

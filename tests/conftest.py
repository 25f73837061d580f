"""Test configuration: strict, jitted, and exact enough to compare with autodiff.

- float64 is enabled so that tolerances can be tight (float32 is tested too, explicitly);
- ``jax_numpy_dtype_promotion="strict"`` and ``jax_numpy_rank_promotion="raise"`` turn silent
  casts and broadcasts in the library into errors;
- ``jax_default_matmul_precision="highest"`` keeps float32 convolutions and matmuls exact on
  GPU/TPU (TF32 / bf16 passes otherwise), so the same tolerances hold on every backend;
- warnings are errors (``pyproject.toml``).
"""
import os

import jax
import pytest
from hypothesis import HealthCheck, settings

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
def rng():
    import numpy as np
    return np.random.default_rng(0)

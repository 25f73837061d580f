"""How ``fit``'s steps compile: ``jit`` with the XLA options chosen per backend.

On the CPU, XLA (jaxlib 0.10) hands single matrix products, reductions, and 2-D convolutions of
more than 16 channels whose output is no larger than its input to YNNPACK (its default fusion
types), and the rest to Eigen.  Measured on the project's CPU machine, YNNPACK's convolutions
took up to twice Eigen's time on those of the CIFAR-size nets, and its matrix products made
the Toeplitz-lowered nets 5-10% slower (``benchmarks/xla_options.py``, ``docs/performance.md``),
so jaxcnn's steps compile with XLA's default list less those two: YNNPACK keeps the
reductions, where it is the faster.  The choice is XLA's configuration, not the derivation:
both compute the same sums (to float rounding).

A script that jits its own step gets the same with ``jax.jit(step,
compiler_options=jc.compiler_options())``.  Setting the flag in ``XLA_FLAGS`` (any value,
``--xla_cpu_experimental_ynn_fusion_type=...``) leaves the choice to it.
"""
from __future__ import annotations

import functools
import os
from typing import Callable

import jax
import jax.numpy as jnp

YNN_FLAG = "xla_cpu_experimental_ynn_fusion_type"
CPU_OPTIONS = {YNN_FLAG: "LIBRARY_FUSION_TYPE_REDUCE"}
"""The XLA options of jaxcnn's CPU steps: of XLA's YNNPACK fusions, the reductions only."""


def compiler_options(backend: str | None = None) -> dict[str, str]:
    """The XLA options jaxcnn's steps compile with on ``backend`` (JAX's default if None):
    ``CPU_OPTIONS`` on a CPU whose XLA knows them, unless ``XLA_FLAGS`` sets the flag itself;
    none elsewhere."""
    if (backend or jax.default_backend()) != "cpu" or YNN_FLAG in os.environ.get("XLA_FLAGS", ""):
        return {}
    return dict(CPU_OPTIONS) if _known(tuple(CPU_OPTIONS.items())) else {}


def jit(fn: Callable, **kwargs) -> Callable:
    """``jax.jit(fn, **kwargs)`` with ``compiler_options()``: ``fit``'s steps and evaluator,
    which run only at the top level -- JAX refuses compiler options on a jit nested in
    another transformation, so the public step builders (``train.make_step``) stay plain."""
    return jax.jit(fn, compiler_options=compiler_options() or None, **kwargs)


@functools.cache
def _known(options: tuple) -> bool:
    """Whether this XLA accepts ``options`` (an older or newer one may not know the flag)."""
    try:
        jax.jit(jnp.negative, compiler_options=dict(options)).lower(
            jnp.zeros((), jnp.float32)).compile()
    except Exception:           # XLA's error for an unknown option: compile without it
        return False
    return True

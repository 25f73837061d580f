"""The allocator settings of a benchmark process, for every contender in it alike (glibc only).

XLA's CPU runtime allocates a compiled step's temporaries as one block per call; PyTorch
allocates per tensor.  glibc serves any block above its mmap threshold (at most 32 MiB, adjusted
dynamically) with a fresh ``mmap``, whose pages fault in again on every step (LeNet-5 at batch
512, 44 MiB of temporaries; ``docs/performance.md``, section 7), and PyTorch eager turns
bimodal.  Raising the threshold and the trim threshold keeps freed blocks in the heap for reuse
(``keep_freed_blocks``; up to 1 GiB: autodiff's step of the wide nets at batch 128 has 338-466
MiB of temporaries).  The same effect, for any program, comes from
``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824`` in the environment.

Past 64 MiB that holds for the main thread's arena only.  JAX runs each CPU call on a worker
thread of its own (async dispatch), and glibc gives such a thread an arena of heaps of at most
64 MiB: a larger block is mmapped afresh on every call whatever the threshold (resnet's step at
batch 128, 82 MiB of temporaries, faulted in 20,917 pages a step).  ``run_inline`` turns async
dispatch off, so each call runs on the calling thread and its block comes from the main arena,
which keeps it (``docs/performance.md#why-inline``).  ``settle_allocator`` does both.
"""
from __future__ import annotations

import ctypes
import ctypes.util

import jax

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def keep_freed_blocks(mmap_threshold: int = 1 << 30, trim_threshold: int = 1 << 30) -> bool:
    """Set glibc's mmap and trim thresholds for this process; False where there is no glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and \
        bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))


def run_inline() -> None:
    """Run each CPU call on the calling thread (``jax_cpu_enable_async_dispatch`` off).  JAX
    reads the flag when it starts its CPU client, so this must come before the first
    computation (``RuntimeError`` after it)."""
    from jax._src import xla_bridge          # no public test for "has JAX started its client?"
    if xla_bridge.backends_are_initialized():
        raise RuntimeError("run_inline: JAX's CPU client is already running; call it before "
                           "the first computation")
    jax.config.update("jax_cpu_enable_async_dispatch", False)


def settle_allocator() -> str:
    """``run_inline`` and ``keep_freed_blocks``, before JAX's first computation: a line
    saying what was set, for the benchmark's log."""
    run_inline()
    return (f"allocator (see _malloc.py): CPU calls inline, glibc keeps freed blocks: "
            f"{keep_freed_blocks()}")

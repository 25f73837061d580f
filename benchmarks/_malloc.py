"""One allocator setting for every contender in a benchmark process (glibc only).

XLA's CPU runtime allocates a compiled step's temporaries as one block per call; PyTorch
allocates per tensor.  glibc serves any block above its mmap threshold (at most 32 MiB, adjusted
dynamically) with a fresh ``mmap``, whose pages fault in again on every step: a LeNet-5 step at
batch 512 (38 MiB of temporaries) then runs about 1.5x slower, and PyTorch eager turns bimodal.
Raising the threshold and the trim threshold keeps freed blocks in the heap for reuse.  The
same effect, for any program, comes from ``MALLOC_MMAP_THRESHOLD_=268435456
MALLOC_TRIM_THRESHOLD_=1073741824`` in the environment.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def keep_freed_blocks(mmap_threshold: int = 256 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Set glibc's mmap and trim thresholds for this process; False where there is no glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and \
        bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))

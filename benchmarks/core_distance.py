"""Whether the two-core machine's slow state is the distance between its cores (CPU, Linux).

    python benchmarks/core_distance.py [--seconds 360] [--batch 128] [--csv out.csv]

Round after round, in one process: ten calls each of jaxcnn's LeNet-5 training step, of
PyTorch's ``torch.compile`` step where it runs (the steps of ``peers.py``), and of a 32 MiB
elementwise pass (XLA), with the median of the last nine; after each of those, a cache-line
round trip between two threads pinned to CPUs 0 and 1 (the mean of 2000 round trips after 200
untimed ones), and the round's median of those.  The round trip is a few lines of C,
compiled with the system's C compiler (``cc``) into a temporary directory: Python's threads
cannot time a single cache-line transfer.

On the 2-core VM of ``docs/performance.md`` the round trip is either about 80 ns (the two
cores near each other on the host) or 380-880 ns, and the far rounds are the rounds where
jaxcnn's step is slow (section 7 there).  Prints a CSV row per round, then the medians of each
column over the near rounds and over the far ones (``--far-ns``, default 300).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from _malloc import settle_allocator

ROUND_TRIP_C = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>
#define WARM_UP 200
static _Alignas(64) atomic_int flag;
static int trips, pinned[2];
static void pin(int cpu) {
    cpu_set_t set; CPU_ZERO(&set); CPU_SET(cpu, &set);
    pinned[cpu] = pthread_setaffinity_np(pthread_self(), sizeof set, &set) == 0;
}
static void *pong(void *unused) {          /* answers every ping, warm-up trips included */
    pin(1);
    for (int i = 0; i < WARM_UP + trips; i++) {
        while (atomic_load_explicit(&flag, memory_order_acquire) != 1) ;
        atomic_store_explicit(&flag, 0, memory_order_release);
    }
    return 0;
}
static void trip(void) {
    atomic_store_explicit(&flag, 1, memory_order_release);
    while (atomic_load_explicit(&flag, memory_order_acquire) != 0) ;
}
static void *ping(void *out) {
    struct timespec a, b;
    pin(0);
    for (int i = 0; i < WARM_UP; i++) trip();   /* both threads pinned and running */
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < trips; i++) trip();
    clock_gettime(CLOCK_MONOTONIC, &b);
    *(double *)out = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / trips;
    return 0;
}
double round_trip_ns(int n) {             /* -1 where a thread could not be pinned */
    pthread_t a, b; double out;
    trips = n; atomic_store(&flag, 0);
    pthread_create(&b, 0, pong, 0); pthread_create(&a, 0, ping, &out);
    pthread_join(a, 0); pthread_join(b, 0);
    return pinned[0] && pinned[1] ? out : -1.0;
}
"""


def round_trip(tmp: str):
    """``f(n)``: ns per cache-line round trip between CPUs 0 and 1, over ``n`` round trips."""
    src, lib = os.path.join(tmp, "round_trip.c"), os.path.join(tmp, "round_trip.so")
    with open(src, "w") as f:
        f.write(ROUND_TRIP_C)
    try:
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-pthread", src, "-o", lib], check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"core_distance.py: could not compile the round-trip probe with cc "
                         f"({e}); it needs a C compiler") from e
    fn = ctypes.CDLL(lib).round_trip_ns
    fn.restype, fn.argtypes = ctypes.c_double, [ctypes.c_int]

    def timed(n: int) -> float:
        ns = fn(n)
        if ns < 0:
            raise SystemExit("core_distance.py: could not pin a thread to CPU 0 or 1")
        return ns
    return timed


def contenders(batch: int) -> dict:
    import jax
    import jax.numpy as jnp

    import peers
    rng = np.random.default_rng(batch)
    x_np = rng.normal(size=(batch, 28, 28, 1)).astype(np.float32)
    y_np = rng.integers(0, 10, size=batch).astype(np.int32)
    out = {}

    def runner(step, state, args):
        box = [state]

        def call():
            box[0], value = step(box[0], *args)
            jax.block_until_ready(value)
        return call

    out["jaxcnn_ms"] = runner(*peers.jaxcnn_step("hand"), (jnp.asarray(x_np), jnp.asarray(y_np)))
    try:
        import torch  # noqa: F401  (installed?)
        call = runner(*peers.torch_step(True), peers.to_torch(x_np, y_np))
        call()                                       # compiles
        out["torch_compile_ms"] = call
    except ImportError:
        print("PyTorch: not installed, skipped", file=sys.stderr)
    except Exception as e:      # another version's API: the rest still runs, as in peers.py
        print(f"torch.compile: failed ({type(e).__name__}: {e}), skipped", file=sys.stderr)
    big = jnp.ones((8 << 20,), jnp.float32)
    stream = jax.jit(lambda v: v * 1.0001 + 1.0)
    out["elementwise_ms"] = lambda: stream(big).block_until_ready()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=360.0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--far-ns", type=float, default=300.0)
    ap.add_argument("--csv", default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    if not {0, 1} <= os.sched_getaffinity(0):
        raise SystemExit(f"core_distance.py needs CPUs 0 and 1, this process may run on "
                         f"{sorted(os.sched_getaffinity(0))}")
    print(settle_allocator())
    with tempfile.TemporaryDirectory() as tmp:
        trip = round_trip(tmp)
        calls = contenders(args.batch)
        for call in calls.values():                  # compile and warm up
            for _ in range(5):
                call()
        names = [*calls, "round_trip_ns"]
        lines, rows = [",".join(["t_s", *names])], []
        print(lines[0], flush=True)
        start = time.time()
        while time.time() - start < args.seconds:
            row, trips = [], []
            for call in calls.values():
                times = []
                for _ in range(10):
                    t = time.perf_counter()
                    call()
                    times.append(time.perf_counter() - t)
                row.append(float(np.median(times[1:])) * 1e3)
                trips.append(trip(2000))
            row.append(float(np.median(trips)))
            rows.append(row)
            lines.append(f"{time.time() - start:.1f}," + ",".join(f"{v:.3f}" for v in row))
            print(lines[-1], flush=True)
    if args.csv:
        with open(args.csv, "w") as f:
            f.write("\n".join(lines) + "\n")
    if not rows:
        raise SystemExit("core_distance.py: no round finished within --seconds")
    data = np.asarray(rows)
    far = data[:, -1] > args.far_ns
    print(f"{int(far.sum())} far rounds (round trip > {args.far_ns:.0f} ns) of {len(data)}; "
          f"round trip 5th-95th percentile: near "
          f"{np.percentile(data[~far, -1], [5, 95]).round().tolist() if (~far).any() else '-'}, "
          f"far {np.percentile(data[far, -1], [5, 95]).round().tolist() if far.any() else '-'}")
    for i, name in enumerate(names):
        near_m = np.median(data[~far, i]) if (~far).any() else float("nan")
        far_m = np.median(data[far, i]) if far.any() else float("nan")
        print(f"{name:18s} near {near_m:9.3f}  far {far_m:9.3f}")


if __name__ == "__main__":
    main()

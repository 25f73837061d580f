"""JAX's CPU calls on its worker thread (async dispatch) against inline, and the page faults
of each: one child process per setting, alternated.

    python benchmarks/dispatch.py [--steps lenet5:32,lenet5:128,resnet:32,resnet:128,...]
                                  [--alternations 4] [--seconds 3] [--json out.json]

JAX reads ``jax_cpu_enable_async_dispatch`` when it starts its CPU client, so the two settings
cannot share a process (``ab_versions.py``'s paired rounds are not possible here): each
alternation runs one child with JAX's default, async dispatch, then one with
``_malloc.run_inline``, both with ``_malloc.keep_freed_blocks``.  A child times the
hand-written step of each ``NET:BATCH`` of ``grad_vs_autodiff.py`` (jitted with
``jc.compiler_options()``) call by call for about ``--seconds`` and reports the median and
the minor page faults per step (``getrusage``), with XLA's temporaries for the step.  Printed
per step: the medians over the alternations, and the range of the ratio inline / async over
them.  The machine's state drifts between children, hence the alternation and the ranges
rather than intervals (``docs/performance.md#why-inline``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

SETTINGS = ("async", "inline")


def child(setting: str, specs: list[str], seconds: float) -> dict:
    """In this process: the median step time (ms), minor faults per step and temporaries (MiB)
    of each ``NET:BATCH`` under ``setting``."""
    from _malloc import keep_freed_blocks, run_inline
    if setting == "inline":
        run_inline()
    keep_freed_blocks()
    import jax
    import optax
    import jaxcnn as jc
    from jaxcnn import backend
    from grad_vs_autodiff import NETS, RECONSTRUCT, steps

    out = {}
    for spec in specs:
        name, batch = spec.split(":")
        make, shape = NETS[name]
        net, opt = make(shape, 10), optax.sgd(0.01, momentum=0.9)
        loss = jc.squared_error if name in RECONSTRUCT else jc.softmax_cross_entropy
        hand, _ = steps(net, loss, opt)
        params, _ = net.init(jax.random.key(0), shape)
        x = jax.random.normal(jax.random.key(1), (int(batch), *shape))
        y = x if name in RECONSTRUCT else jax.random.randint(jax.random.key(2), x.shape[:1], 0, 10)
        args = (params, opt.init(params), x, y)
        step = backend.jit(hand)            # the temporaries of the program timed, its options
        temp = step.lower(*args).compile().memory_analysis().temp_size_in_bytes
        for _ in range(3):
            jax.block_until_ready(step(*args))
        times, faults = [], resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 5:
            t = time.perf_counter()
            jax.block_until_ready(step(*args))
            times.append(time.perf_counter() - t)
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / len(times)
        out[spec] = {"ms": float(np.median(times)) * 1e3, "faults_per_step": faults,
                     "temp_mib": temp / 2**20, "steps": len(times)}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="lenet5:32,lenet5:128,resnet:32,resnet:128,"
                                       "resnet-bn:128,vgg:128")
    ap.add_argument("--alternations", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    specs = [s for s in args.steps.split(",") if s]
    if args.child:
        with open(args.out, "w") as f:
            json.dump(child(args.child, specs, args.seconds), f)
        return
    runs = {s: [] for s in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "child.json")
        for i in range(args.alternations):
            for setting in SETTINGS:
                subprocess.run([sys.executable, os.path.abspath(__file__), "--child", setting,
                                "--out", out, "--steps", args.steps,
                                "--seconds", str(args.seconds)], check=True)
                with open(out) as f:
                    runs[setting].append(json.load(f))
                print(f"alternation {i + 1}, {setting}: " + ", ".join(
                    f"{k} {v['ms']:.2f} ms ({v['faults_per_step']:.0f} faults)"
                    for k, v in runs[setting][-1].items()), flush=True)
    rows = []
    for spec in specs:
        ms = {s: [r[spec]["ms"] for r in runs[s]] for s in SETTINGS}
        ratios = [b / a for a, b in zip(ms["async"], ms["inline"])]
        rows.append({"step": spec, "temp_mib": runs["async"][0][spec]["temp_mib"],
                     **{f"{s}_ms": ms[s] for s in SETTINGS},
                     **{f"{s}_faults_per_step": [r[spec]["faults_per_step"] for r in runs[s]]
                        for s in SETTINGS},
                     "inline_over_async": ratios})
        faults = [np.median(rows[-1][f"{s}_faults_per_step"]) for s in SETTINGS]
        print(f"{spec:14s} temp {rows[-1]['temp_mib']:6.1f} MiB  async "
              f"{np.median(ms['async']):8.2f} ms  inline {np.median(ms['inline']):8.2f} ms  "
              f"inline / async {min(ratios):.3f}-{max(ratios):.3f}  faults per step "
              f"{faults[0]:.0f} / {faults[1]:.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": platform.machine(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

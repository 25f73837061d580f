"""Data-parallel scaling: training-step throughput (images/s) against the device count.

    python benchmarks/scaling.py [--devices 1,2,4,8] [--batch 256] [--json scaling.json]
    python benchmarks/scaling.py --real [--json ...]       # the machine's own devices (GPUs)

Default (emulated): one subprocess per device count D, each with
``XLA_FLAGS=--xla_force_host_platform_device_count=D`` -- D "devices" that are threads of ONE
CPU, sharing its cores.  One emulated device leaves cores idle, so images/s may rise up to the
core count, and cannot beyond it: this is a correctness-of-scaling figure, not a speed claim.
It shows that the same global batch runs on 1..8 devices, what the
sharding costs on top of the single-device step (``jaxcnn.train.make_step``, the "plain" row),
and -- the point -- that every D computes the plain step's gradient: the largest relative
difference of the averaged gradient from the single-device one, per parameter array, is float32
rounding (summation order: each device sums over its slice, then the slices are averaged).

``--real``: in this process, over 1, 2, 4, ... of the default backend's devices (on a GPU
machine: the GPUs), the same figures with real speed-ups.

Each step is ``jaxcnn.distributed.make_step`` (shard_map of the hand-written
``value_and_grad``, pmean, SGD with momentum) on a fixed global batch of random images; the time
is the median over ``--steps`` steps after a compiling warm-up step, each step waited for.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()}"


def measure(counts, batch, steps, arch, image, plain):
    """Rows for each device count in ``counts``, in this process (devices already set)."""
    import jax
    import numpy as np
    import optax

    import jaxcnn as jc
    from jaxcnn import distributed, train, zoo

    shape = (image, image, 1)
    net, loss, opt = zoo.get(arch, shape), jc.softmax_cross_entropy, optax.sgd(1e-3, momentum=0.9)
    params, _ = train.init_params(net, shape, seed=0)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(batch, *shape)).astype(np.float32)
    y = rng.integers(0, 10, size=batch).astype(np.int32)
    index = np.arange(batch)

    def run(step, p, s, xs, ys):
        t = time.perf_counter()
        p, s, value = jax.block_until_ready(step(p, s, xs, ys, None))
        compile_s, times = time.perf_counter() - t, []
        for _ in range(steps):
            t = time.perf_counter()
            p, s, value = jax.block_until_ready(step(p, s, xs, ys, None))
            times.append(time.perf_counter() - t)
        return p, float(value), compile_s, float(np.median(times))

    p, value, compile_s, t = run(train.make_step(net, loss, opt), params, opt.init(params),
                                 jax.device_put(x), jax.device_put(y))     # on the device, too
    rows = [_row("plain", batch, value, compile_s, t, 0.0, jax)] if plain else []
    _, grads = jax.jit(jc.value_and_grad(net, loss))(params, x, y)
    for d in counts:
        plan = distributed.data_parallel(d)
        distributed.check_batch_size(plan, batch)
        rparams, xs, ys = (distributed.replicate(plan, params),
                           distributed.shard_batch(plan, x, index),
                           distributed.shard_batch(plan, y, index))
        _, sharded = jax.jit(distributed.loss_and_grad(net, loss, plan))(rparams, xs, ys)
        error = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b)))
                    for a, b in zip(jax.tree_util.tree_leaves(sharded),
                                    jax.tree_util.tree_leaves(grads)))
        _, value, compile_s, t = run(distributed.make_step(net, loss, opt, plan), rparams,
                                     distributed.replicate(plan, opt.init(params)), xs, ys)
        rows.append(_row(d, batch, value, compile_s, t, error, jax))
    return rows


def _row(devices, batch, value, compile_s, seconds, error, jax):
    return {"devices": devices, "batch": batch, "images_per_s": batch / seconds,
            "step_ms": seconds * 1e3, "compile_s": compile_s, "final_loss": value,
            "grad_error_vs_plain": error, "device_kind": jax.devices()[0].device_kind}


def table(rows) -> str:
    lines = ["| devices | batch per device | images/s | step (ms) | first step, compiling (s) "
             "| gradient vs plain (max rel. error) | loss after the steps |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        per = r["batch"] if r["devices"] == "plain" else r["batch"] // r["devices"]
        lines.append(f"| {r['devices']} | {per} | {r['images_per_s']:,.0f} | "
                     f"{r['step_ms']:.1f} | {r['compile_s']:.2f} | "
                     f"{r['grad_error_vs_plain']:.1e} | {r['final_loss']:.6f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", default="1,2,4,8", help="device counts (emulated mode)")
    ap.add_argument("--batch", type=int, default=256, help="global batch; divides by each count")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per device count")
    ap.add_argument("--arch", default="small", help="a jaxcnn.zoo net")
    ap.add_argument("--image", type=int, default=28, help="square one-channel images, this wide")
    ap.add_argument("--real", action="store_true",
                    help="use this machine's devices in this process instead of emulating")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    settings = dict(batch=args.batch, steps=args.steps, arch=args.arch, image=args.image)

    if args.child is not None:              # one emulated device count, in its own process
        rows = measure([args.child], plain=args.child == 1, **settings)
        print(json.dumps(rows))
        return

    if args.real:
        import jax
        n = jax.device_count()
        counts = [d for d in (1, 2, 4, 8, 16, 32, 64) if d <= n]
        rows = measure(counts, plain=True, **settings)
        kind = f"{n} x {jax.devices()[0].device_kind} ({jax.default_backend()}), measured"
    else:
        rows = []
        for d in (int(c) for c in args.devices.split(",")):
            env = {**os.environ, "JAX_PLATFORMS": "cpu",
                   "XLA_FLAGS": f"--xla_force_host_platform_device_count={d}"}
            proc = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--child", str(d),
                 *(f"--{k}={v}" for k, v in settings.items())],
                capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
            if proc.returncode:
                sys.exit(f"device count {d} failed:\n{proc.stderr}")
            rows += json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"devices {d}: {rows[-1]['images_per_s']:,.0f} images/s", flush=True)
        kind = (f"1..{max(r['devices'] for r in rows if r['devices'] != 'plain')} emulated CPU "
                f"devices (threads sharing the CPU): a correctness-of-scaling figure, not a "
                f"speed claim")
    import jax
    header = (f"machine: {machine()}; jax {jax.__version__}\n{kind}\n{args.arch} on "
              f"{args.image}x{args.image}x1, global batch {args.batch}, SGD lr 1e-3 momentum "
              f"0.9, median of {args.steps} steps")
    print(header)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "jax": jax.__version__, "mode": kind,
                       "emulated": not args.real, **settings, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

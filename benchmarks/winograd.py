"""Winograd's F(2x2, 3x3) (``Conv2D(method="winograd")``) against XLA's convolutions
(``method="lax"``), pass by pass, in one process.

    python benchmarks/winograd.py [--batch 64] [--repeats 15] [--seconds 1] [--json out.json]

For each 3x3 stride-1 ``"SAME"`` convolution of the CIFAR-size nets (``vgg``, ``resnet``),
three jitted functions per method, compiled with ``jc.compiler_options()``: the layer's
forward; its backward's kernel gradient; its backward's input residual (eqs. 4.14, 4.16,
4.17 against 4.2, 4.4, 4.5).  The two methods run in turn, round after round (``samples``);
the ratio is winograd / lax, the median over the rounds with its 95% bootstrap interval.
The results are compared too (they agree to float32 rounding).
"""
from __future__ import annotations

import argparse
import json
import platform

import jax
import jax.numpy as jnp
import numpy as np

import jaxcnn as jc
from jaxcnn import backend
from _malloc import settle_allocator
from grad_vs_autodiff import matmul_ceiling, paired_ratio, samples

SHAPES = {   # name: (H, W, C, F), 3x3 "SAME" at stride 1
    "resnet 32x32x16->16": (32, 32, 16, 16),
    "vgg 32x32x32->32": (32, 32, 32, 32),
    "resnet 16x16x32->32": (16, 16, 32, 32),
    "vgg 16x16x64->64": (16, 16, 64, 64),
    "resnet 8x8x64->64": (8, 8, 64, 64),
    "vgg 8x8x64->128": (8, 8, 64, 128),
    "8x8x128->128": (8, 8, 128, 128),
}


def passes(method):
    """The three passes of a ``method`` layer, each its own jitted function of
    ``(params, x, delta)``."""
    def make(shape):
        layer = jc.Conv2D(shape[3], 3, padding="SAME", method=method)

        def fwd(p, x, d):
            return layer.forward(p, x)[0]

        def kernel(p, x, d):
            return layer.backward(p, jc.conv.ConvCache(x), d)[0]["w"]

        def residual(p, x, d):
            return layer.backward(p, jc.conv.ConvCache(x), d)[1]

        return layer, {k: backend.jit(f) for k, f in
                       (("forward", fwd), ("kernel", kernel), ("input", residual))}
    return make


def bench(batch, repeats, seconds):
    rows = []
    for name, shape in SHAPES.items():
        (layer, wino), (_, lax_) = passes("winograd")(shape), passes("lax")(shape)
        rng = np.random.default_rng(0)
        params, _ = layer.init(jax.random.key(0), shape[:3])
        x = jnp.asarray(rng.normal(size=(batch, *shape[:3])), jnp.float32)
        d = jnp.asarray(rng.normal(size=(batch, *shape[:2], shape[3])), jnp.float32)
        for kind in ("forward", "kernel", "input"):
            fns = [wino[kind], lax_[kind]]
            outs = [f(params, x, d) for f in fns]
            err = float(jnp.max(jnp.abs(outs[0] - outs[1])) / jnp.max(jnp.abs(outs[1])))
            times = samples(fns, (params, x, d), repeats, seconds)
            (tw, tl), (ratio, ci) = np.median(times, axis=1), paired_ratio(times[0], times[1])
            print(f"{name:22s} {kind:8s} batch {batch}: winograd {tw * 1e3:7.2f} ms  lax "
                  f"{tl * 1e3:7.2f} ms  ratio {ratio:5.2f} [{ci[0]:.2f}, {ci[1]:.2f}]  "
                  f"(agree to {err:.1e})", flush=True)
            rows.append({"conv": name, "pass": kind, "batch": batch, "winograd_ms": tw * 1e3,
                         "lax_ms": tl * 1e3, "ratio": ratio, "ratio_95": ci,
                         "rounds": times.shape[1], "relative_difference": err})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.batch < 1 or args.repeats < 2:
        ap.error(f"--batch must be >= 1 and --repeats >= 2, got {args.batch}, {args.repeats}")
    print(settle_allocator())
    machine = f"{platform.machine()}, {jax.default_backend()}, jax {jax.__version__}"
    ceiling = matmul_ceiling(10)
    print(f"machine: {machine}\nfloat32 matmul ceiling (2048x2048): {ceiling:.0f} GFLOP/s")
    rows = bench(args.batch, args.repeats, args.seconds)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "matmul_gflops": ceiling,
                       "options": jc.compiler_options(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

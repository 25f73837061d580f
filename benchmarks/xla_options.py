"""XLA's defaults against ``jc.compiler_options()`` (jaxcnn's steps), in one process.

    python benchmarks/xla_options.py [--nets lenet5,vgg,resnet,resnet-bn,wide,autoencoder]
                                     [--batches 32,128] [--repeats 20] [--seconds 2]
                                     [--base FLAG=VALUE ...] [--json out.json]

On the CPU, ``jc.compiler_options()`` keeps XLA's YNNPACK fusions to reductions, so matrix
products and convolutions of more than 16 channels run Eigen's code (``jaxcnn/backend.py``).  Per-jit compiler options let both
builds of the same program run in one process, interleaved call by call (``samples``):

- each distinct convolution of the VGG-style net and of resnet, its three passes
  (``jax.vjp`` of ``lax.conv_general_dilated``: forward, kernel gradient, input residual);
- each net's whole step (hand-written ``value_and_grad`` + SGD-momentum), and the autodiff step.

Each ratio is options / defaults, the median over the paired rounds with its 95% bootstrap
interval; below 1.00 the options are faster.  ``--base`` replaces XLA's defaults as the
baseline by the options given (an earlier choice, say, to measure one change of the list).  Both builds' results are compared (they must
agree to float rounding).
"""
from __future__ import annotations

import argparse
import json
import platform

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import jaxcnn as jc
from jaxcnn import backend
from _malloc import settle_allocator
from grad_vs_autodiff import NETS, RECONSTRUCT, matmul_ceiling, paired_ratio, samples, steps

CONVS = {   # name: (per-example input, kernel (kh, kw, C, F), stride); "SAME" padding
    "vgg 32x32x3->32": ((32, 32, 3), (3, 3, 3, 32), 1),
    "vgg 32x32x32->32": ((32, 32, 32), (3, 3, 32, 32), 1),
    "vgg 16x16x32->64": ((16, 16, 32), (3, 3, 32, 64), 1),
    "vgg 16x16x64->64": ((16, 16, 64), (3, 3, 64, 64), 1),
    "vgg 8x8x64->128": ((8, 8, 64), (3, 3, 64, 128), 1),
    "resnet 32x32x16->16": ((32, 32, 16), (3, 3, 16, 16), 1),
    "resnet 32x32x16->32 s2": ((32, 32, 16), (3, 3, 16, 32), 2),
    "resnet 16x16x32->32": ((16, 16, 32), (3, 3, 32, 32), 1),
    "resnet 16x16x32->64 s2": ((16, 16, 32), (3, 3, 32, 64), 2),
    "resnet 8x8x64->64": ((8, 8, 64), (3, 3, 64, 64), 1),
}


BASE: dict = {}
"""The baseline build's XLA options (``--base``; empty: XLA's defaults)."""


def both(fn):
    """``fn`` jitted under the baseline's options and under ``jc.compiler_options()``."""
    return [jax.jit(fn, compiler_options=BASE or None), backend.jit(fn)]


def row(kind, name, batch, times, outs):
    (td, to), (ratio, ci) = np.median(times, axis=1), paired_ratio(times[1], times[0])
    agree = max(float(jnp.max(jnp.abs(a - b)) / (1e-30 + float(jnp.max(jnp.abs(a)))))
                for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])))
    print(f"{kind:5s} {name:26s} batch {batch:4d}: baseline {td * 1e3:8.2f} ms  options "
          f"{to * 1e3:8.2f} ms  ratio {ratio:5.3f} [{ci[0]:.3f}, {ci[1]:.3f}]  "
          f"(agree to {agree:.1e})", flush=True)
    return {"kind": kind, "name": name, "batch": batch, "defaults_ms": td * 1e3,
            "options_ms": to * 1e3, "ratio": ratio, "ratio_95": ci, "rounds": times.shape[1],
            "relative_difference": agree}


def bench_convs(batches, repeats, seconds):
    rows = []
    for name, (shape, kernel, s) in CONVS.items():
        rng = np.random.default_rng(0)
        w = jnp.asarray(rng.normal(size=kernel), jnp.float32)
        for batch in batches:
            x = jnp.asarray(rng.normal(size=(batch, *shape)), jnp.float32)

            def passes(x, w):
                y, vjp = jax.vjp(lambda x, w: lax.conv_general_dilated(
                    x, w, (s, s), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")), x, w)
                return y, vjp(jnp.ones_like(y))

            fns = both(passes)
            times = samples(fns, (x, w), repeats, seconds)
            rows.append(row("conv", name, batch, times, [f(x, w) for f in fns]))
    return rows


def bench_nets(names, batches, repeats, seconds):
    rows = []
    optimizer = optax.sgd(0.01, momentum=0.9)
    for name in names:
        make, shape = NETS[name]
        loss = jc.squared_error if name in RECONSTRUCT else jc.softmax_cross_entropy
        net = make(shape, 10)
        params, _ = net.init(jax.random.key(0), shape)
        hand, auto = steps(net, loss, optimizer)
        for batch in batches:
            rng = np.random.default_rng(batch)
            x = jnp.asarray(rng.normal(size=(batch, *shape)), jnp.float32)
            y = x if name in RECONSTRUCT else jnp.asarray(rng.integers(0, 10, size=batch),
                                                          jnp.int32)
            args = (params, optimizer.init(params), x, y)
            for kind, step in (("hand", hand), ("auto", auto)):
                fns = both(step)
                times = samples(fns, args, repeats, seconds)
                rows.append(row(kind, name, batch, times, [f(*args) for f in fns]))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="lenet5,vgg,resnet,resnet-bn,wide,autoencoder")
    ap.add_argument("--batches", default="32,128")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--no-convs", action="store_true", help="the nets only")
    ap.add_argument("--base", nargs="*", default=[], metavar="FLAG=VALUE",
                    help="the baseline's XLA options instead of XLA's defaults")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    bad = [b for b in args.base if "=" not in b]
    if bad:
        ap.error(f"--base takes FLAG=VALUE pairs, got {bad}")
    BASE.update(b.split("=", 1) for b in args.base)
    names = [n for n in args.nets.split(",") if n]
    unknown = sorted(set(names) - set(NETS))
    if unknown:
        ap.error(f"unknown nets {unknown}; expected some of {sorted(NETS)}")
    batches = [int(b) for b in args.batches.split(",")]
    print(settle_allocator())
    machine = f"{platform.machine()}, {jax.default_backend()}, jax {jax.__version__}"
    ceiling = matmul_ceiling(10)
    print(f"machine: {machine}\nfloat32 matmul ceiling (2048x2048): {ceiling:.0f} GFLOP/s")
    print(f"options: {jc.compiler_options()}\nbaseline: {BASE or 'XLA defaults'}")
    rows = [] if args.no_convs else bench_convs(batches, args.repeats, args.seconds)
    rows += bench_nets(names, batches, args.repeats, args.seconds)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "matmul_gflops": ceiling,
                       "options": jc.compiler_options(), "baseline": BASE, "rows": rows},
                      f, indent=1)


if __name__ == "__main__":
    main()

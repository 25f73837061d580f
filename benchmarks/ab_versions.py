"""Two versions of jaxcnn in one process: the hand-written training step of an older commit
against the working tree's, call by call.

    python benchmarks/ab_versions.py --old REV [--nets lenet5,ufldl,deepid,wide]
                                     [--batches 32,128,512] [--repeats 30] [--seconds 6]
                                     [--json out.json]

For a change that must not change speed (a refactor), this is the direct test: ``git archive``
extracts ``REV``'s ``jaxcnn/`` into a temporary directory as the package ``jaxcnn_old`` (its
imports renamed), both versions build the same zoo net with the same parameters and batch, and
their jitted steps (``value_and_grad`` + SGD-momentum, as ``grad_vs_autodiff.py``) are timed in
turn, round after round (``samples``).  The ratio is new / old, the median over the paired
rounds with its 95% bootstrap interval (``paired_ratio``): 1.00 is no change.  The losses and
updated parameters of the two steps are also compared (they must agree to float rounding).
"""
from __future__ import annotations

import argparse
import importlib
import io
import json
import platform
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxcnn
from _malloc import settle_allocator
from grad_vs_autodiff import (OPTIONS, RECONSTRUCT, bottleneck, grouped, jit, paired_ratio,
                              samples, vgg, wide)

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"lenet5": (28, 28, 1), "ufldl": (28, 28, 1), "deepid": (39, 31, 1),
          "small": (8, 8, 1), "wide": (32, 32, 3), "resnet": (32, 32, 3),
          "resnet-bn": (32, 32, 3), "vgg": (32, 32, 3), "bottleneck": (32, 32, 3),
          "wide-gn": (32, 32, 3), "autoencoder": (28, 28, 1)}


def old_package(rev: str, into: Path):
    """``rev``'s ``jaxcnn`` package, importable as ``jaxcnn_old``."""
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "jaxcnn"], check=True,
                         capture_output=True).stdout
    tarfile.open(fileobj=io.BytesIO(tar)).extractall(into, filter="data")
    (into / "jaxcnn").rename(into / "jaxcnn_old")
    for path in (into / "jaxcnn_old").rglob("*.py"):
        path.write_text(re.sub(r"\bjaxcnn\b(?=[.\s])", "jaxcnn_old", path.read_text()))
    sys.path.insert(0, str(into))
    return importlib.import_module("jaxcnn_old")


def net_of(jc, name: str):
    """The zoo net ``name``, or ``grad_vs_autodiff``'s ``wide``, ``vgg``, ``bottleneck`` or
    ``wide-gn``, built by version ``jc``."""
    local = {"wide": wide, "vgg": vgg, "bottleneck": bottleneck, "wide-gn": grouped}
    if name in local:
        return local[name](SHAPES[name], 10, lib=jc)
    if name in RECONSTRUCT:
        return jc.zoo.autoencoder(SHAPES[name])
    return jc.zoo.get(name, SHAPES[name], 10)


def step(jc, net, reconstruct: bool = False):
    """The jitted step; ``reconstruct``: ``squared_error`` against the input, as
    ``grad_vs_autodiff.py`` trains the autoencoder."""
    optimizer = optax.sgd(0.01, momentum=0.9)
    loss = jc.squared_error if reconstruct else jc.softmax_cross_entropy

    def fn(params, opt_state, x, y):
        value, grads = jc.value_and_grad(net, loss)(params, x, x if reconstruct else y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return jit(fn), optimizer


def compare(name: str, batch: int, old, repeats: int, seconds: float) -> dict:
    shape = SHAPES[name]
    nets = {v: net_of(jc, name) for v, jc in (("old", old), ("new", jaxcnn))}
    params, _ = nets["new"].init(jax.random.key(0), shape)
    rng = np.random.default_rng(batch)
    x = jnp.asarray(rng.normal(size=(batch, *shape)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, size=batch), jnp.int32)
    fns, results = [], {}
    for version, jc in (("old", old), ("new", jaxcnn)):
        fn, optimizer = step(jc, nets[version], name in RECONSTRUCT)
        args = (params, optimizer.init(params), x, y)
        results[version] = fn(*args)
        fns.append(lambda fn=fn, args=args: fn(*args))
    agree = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
                for a, b in zip(jax.tree.leaves(results["new"]), jax.tree.leaves(results["old"])))
    times = samples(fns, (), repeats, seconds)
    ratio, ci = paired_ratio(times[1], times[0])
    old_ms, new_ms = np.median(times, axis=1) * 1e3
    print(f"{name:7s} batch {batch:4d}: old {old_ms:8.2f} ms  new {new_ms:8.2f} ms  "
          f"new/old {ratio:5.3f} [{ci[0]:.3f}, {ci[1]:.3f}]  ({times.shape[1]} rounds; "
          f"results agree to {agree:.1e})", flush=True)
    return {"net": name, "batch": batch, "old_ms": old_ms, "new_ms": new_ms, "ratio": ratio,
            "ratio_95": ci, "rounds": times.shape[1], "max_relative_difference": agree}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", required=True, help="the older commit (any git revision)")
    ap.add_argument("--nets", default="lenet5,ufldl,deepid,wide")
    ap.add_argument("--batches", default="32,128,512")
    ap.add_argument("--repeats", type=int, default=30, help="rounds (at least)")
    ap.add_argument("--seconds", type=float, default=6.0, help="seconds of calls per contender")
    ap.add_argument("--json", default=None)
    ap.add_argument("--xla-defaults", action="store_true",
                    help="compile under XLA's defaults, not jc.compiler_options()")
    args = ap.parse_args(argv)
    print(settle_allocator())
    OPTIONS.update({} if args.xla_defaults else jaxcnn.compiler_options())
    print(f"XLA options: {OPTIONS or 'defaults'}")
    nets = [n for n in args.nets.split(",") if n]
    unknown = sorted(set(nets) - set(SHAPES))
    if unknown:
        ap.error(f"unknown nets {unknown}; expected some of {sorted(SHAPES)}")
    with tempfile.TemporaryDirectory() as tmp:
        old = old_package(args.old, Path(tmp))
        rows = [compare(n, int(b), old, args.repeats, args.seconds)
                for n in nets for b in args.batches.split(",")]
    if args.json:
        Path(args.json).write_text(json.dumps({
            "old": args.old, "machine": platform.machine(), "processor": platform.processor(),
            "jax": jax.__version__, "cpus": len(jax.devices("cpu")), "xla_options": OPTIONS,
            "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

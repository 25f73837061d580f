"""Hand-written backward vs autodiff: training-step time, compile time, memory, GFLOP/s.

    python benchmarks/grad_vs_autodiff.py [--quick] [--parts steps,layers,forward]
                                          [--json results.json]

Everything is measured in ONE process with the contenders interleaved call by call, so machine
noise hits both alike; the figures that matter are the ratios (hand-written / autodiff, median
over the rounds), each with a 95% bootstrap interval over the paired rounds.  Fast calls get
more rounds than ``--repeats``, about ``--seconds`` of calls each (``samples``).  Each step is
``value_and_grad`` + an optax SGD-momentum update, jitted:

- hand-written: ``jc.value_and_grad(net, loss)`` (forward, output residual, backward);
- autodiff: ``jax.value_and_grad`` of ``loss.value(net.apply(params, x), y)`` -- the same forward
  (the same values; ``Conv2D.forward`` may add its bias to the Toeplitz product's rows,
  ``apply`` after the reshape).

Also measured:

- each layer's forward + ``backward`` against ``jax.vjp`` of its ``apply`` (the LeNet-5 and
  UFLDL convolutions both with ``method="auto"``, the formulation ``conv_plan`` picks, and with
  ``method="lax"``, XLA's convolutions -- compare the rows);
- each convolution's forward (``apply``) against ``lax.conv_general_dilated``, and each net's
  ``apply`` against the same net with every convolution ``method="lax"``;
- compile time of the first step; the compiled step's temporary memory (XLA's memory analysis);
  what the backward keeps from the forward (the layer caches against the residuals ``jax.vjp``
  saves);
- achieved GFLOP/s (3x the forward FLOPs of ``jc.summary``, the usual forward + backward
  estimate) as a fraction of the float32 matmul ceiling (``jnp.dot`` of 2048x2048) measured in
  the same run.

JAX runs each call on the calling thread and glibc is told to keep freed blocks
(``_malloc.py``), for both contenders alike, and both compile with the XLA options of jaxcnn's
own steps (``jc.compiler_options()``; ``--xla-defaults``: XLA's defaults).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import platform
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxcnn as jc
from jaxcnn import zoo
from _malloc import settle_allocator


def wide(input_shape=(32, 32, 3), num_classes=10, lib=jc):
    """Two 3x3 convolutions with 64 channels on 32x32x3, max pooling, dense.  ``lib``: the
    jaxcnn package that builds it (``ab_versions.py`` passes an older one)."""
    return lib.serial(lib.zoo.Conv2D(64, 3, padding="SAME"), lib.ReLU(),
                      lib.zoo.Conv2D(64, 3, padding="SAME"), lib.ReLU(), lib.MaxPool2D(2),
                      lib.Flatten(), lib.Dense(num_classes))


def grouped(input_shape=(32, 32, 3), num_classes=10, lib=jc):
    """``wide`` with GroupNorm (8 groups) after each convolution (Wu & He 2018's placement).
    ``lib`` as for ``wide``."""
    return lib.serial(lib.zoo.Conv2D(64, 3, padding="SAME", use_bias=False), lib.GroupNorm(8),
                      lib.ReLU(), lib.zoo.Conv2D(64, 3, padding="SAME", use_bias=False),
                      lib.GroupNorm(8), lib.ReLU(), lib.MaxPool2D(2), lib.Flatten(),
                      lib.Dense(num_classes))


def vgg(input_shape=(32, 32, 3), num_classes=10, lib=jc):
    """A VGG-style net (Simonyan & Zisserman 2015) for 32x32x3: 3x3 ``"SAME"`` convolutions of
    32, 32, 64, 64 and 128 features, each with ReLU, 2x2 max pooling after the 2nd, 4th and
    5th, a dense layer of ``num_classes``.  ``lib`` as for ``wide``."""
    layers = []
    for features, pool in ((32, False), (32, True), (64, False), (64, True), (128, True)):
        layers += [lib.zoo.Conv2D(features, 3, padding="SAME"), lib.ReLU()]
        layers += [lib.MaxPool2D(2)] if pool else []
    return lib.serial(*layers, lib.Flatten(), lib.Dense(num_classes))


def bottleneck(input_shape=(32, 32, 3), num_classes=10, lib=jc):
    """The 1x1-3x3-1x1 blocks of He et al. (2016)'s deeper ResNets, without their skips: a 3x3
    ``"SAME"`` convolution of 64 features, then three blocks of 1x1 to 16, 3x3 to 16 and 1x1
    back to 64 features, each with ReLU, 2x2 max pooling between blocks, a dense layer of
    ``num_classes``.  Six stride-1 1x1 convolutions.  ``lib`` as for ``wide``."""
    layers = [lib.zoo.Conv2D(64, 3, padding="SAME"), lib.ReLU()]
    for block in range(3):
        layers += [lib.MaxPool2D(2)] if block else []
        for features, k in ((16, 1), (16, 3), (64, 1)):
            layers += [lib.zoo.Conv2D(features, k, padding="SAME"), lib.ReLU()]
    return lib.serial(*layers, lib.Flatten(), lib.Dense(num_classes))


@contextlib.contextmanager
def convolutions(method):
    """Nets built inside are built with ``Conv2D(..., method=method)`` (the zoo's, ``wide``'s)."""
    saved, zoo.Conv2D = zoo.Conv2D, functools.partial(jc.Conv2D, method=method)
    try:
        yield
    finally:
        zoo.Conv2D = saved


MAX_ROUNDS = 2000   # samples(): the most rounds a fast call gets

NETS = {"lenet5": (zoo.lenet5, (28, 28, 1)), "ufldl": (zoo.ufldl, (28, 28, 1)),
        "deepid": (zoo.deepid, (39, 31, 1)), "wide": (wide, (32, 32, 3)),
        "vgg": (vgg, (32, 32, 3)), "bottleneck": (bottleneck, (32, 32, 3)),
        "resnet": (zoo.resnet, (32, 32, 3)), "resnet-bn": (zoo.resnet_bn, (32, 32, 3)),
        "wide-gn": (grouped, (32, 32, 3)),
        "autoencoder": (lambda shape, _: zoo.autoencoder(shape), (28, 28, 1))}
"""The nets of the whole-step table; deepid with its skip connection and the residual net
branch and merge (``jaxcnn.graph``); ``resnet-bn`` normalises by batch statistics, ``wide-gn``
by group statistics (both steps in training mode, the running statistics' update left out on
both sides); ``autoencoder`` decodes with transposed convolutions, under ``squared_error``
against its input (``RECONSTRUCT``)."""

RECONSTRUCT = {"autoencoder"}
"""Nets trained to output their input: ``squared_error`` against ``x`` instead of labels."""


def samples(fns, args, repeats, seconds=0.0):
    """Seconds of each call: the functions called in turn, round after round, after a warm-up;
    ``(len(fns), rounds)``, column ``r`` one round.  Every other round runs them in reverse
    order, so that running first or last (after the other's call) favours none of them.

    ``rounds`` is ``repeats``, or more where the calls are fast: enough for every function to
    run about ``seconds`` in all (at most ``MAX_ROUNDS``).  A millisecond call timed 30 times
    gives a median of whatever state the machine was in for those few milliseconds (on the
    2-core VM of ``docs/performance.md``, UFLDL's convolution at batch 32 took 0.40 or
    0.56 ms, switching every few dozen calls).  The warm-up, a tenth of that time per
    function (at least two calls) after a first call that compiles, gives the estimate of a
    call's time."""
    per_call = []
    for f in fns:
        jax.block_until_ready(f(*args))          # compiles: not part of the estimate
        warm, start = [], time.perf_counter()
        while len(warm) < 2 or time.perf_counter() - start < seconds / 10:
            t = time.perf_counter()
            jax.block_until_ready(f(*args))
            warm.append(time.perf_counter() - t)
        per_call.append(np.median(warm))
    rounds = repeats if seconds <= 0 else \
        max(repeats, min(MAX_ROUNDS, int(seconds / max(per_call))))
    times = np.zeros((len(fns), rounds))
    for r in range(rounds):
        order = list(enumerate(fns))
        for i, f in (order if r % 2 == 0 else order[::-1]):
            t = time.perf_counter()
            jax.block_until_ready(f(*args))
            times[i, r] = time.perf_counter() - t
    return times


def interleaved(fns, args, repeats):
    """Median seconds of each function (``samples``)."""
    return [float(t) for t in np.median(samples(fns, args, repeats), axis=1)]


def paired_ratio(a, b, resamples=4000):
    """``median(a) / median(b)`` and its 95% bootstrap interval, resampling whole rounds (the
    pairs measured side by side) so that noise common to a round cancels as in the ratio."""
    rng = np.random.default_rng(0)
    rounds = rng.integers(0, len(a), size=(resamples, len(a)))
    boot = np.median(a[rounds], axis=1) / np.median(b[rounds], axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(np.median(a) / np.median(b)), (float(lo), float(hi))


OPTIONS: dict = {}
"""The XLA options every contender compiles with: ``jc.compiler_options()``, the ones jaxcnn's
steps use, unless ``--xla-defaults`` (set by ``main``)."""


def jit(fn):
    """``jax.jit`` with ``OPTIONS``: the hand-written and autodiff contenders alike."""
    return jax.jit(fn, compiler_options=OPTIONS or None)


def matmul_ceiling(repeats):
    a = jnp.asarray(np.random.default_rng(0).normal(size=(2048, 2048)), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    (t,) = interleaved([f], (a,), repeats)
    return 2 * 2048 ** 3 / t / 1e9


def steps(net, loss, optimizer):
    def hand(params, opt_state, x, y):
        value, grads = jc.value_and_grad(net, loss)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    def auto(params, opt_state, x, y):
        value, grads = jax.value_and_grad(lambda p: loss.value(net.apply(p, x), y))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return hand, auto


def compile_seconds_and_memory(fn, args):
    t = time.perf_counter()
    compiled = jit(fn).lower(*args).compile()
    seconds = time.perf_counter() - t
    mem = compiled.memory_analysis()
    temp = getattr(mem, "temp_size_in_bytes", None) if mem is not None else None
    return seconds, temp


def saved_mib(net, loss, params, x, y):
    """MiB the backward needs from the forward: the hand-written step's layer caches, and the
    residuals ``jax.vjp`` of the autodiff loss saves (the leaves of its VJP function)."""
    def mib(tree):
        return sum(np.prod(a.shape) * a.dtype.itemsize for a in jax.tree.leaves(tree)) / 2**20

    cache = jax.eval_shape(lambda p: net.forward(p, x)[1], params)
    residuals = jax.eval_shape(
        lambda p: jax.vjp(lambda p: loss.value(net.apply(p, x), y), p)[1], params)
    return mib(cache), mib(residuals)


def bench_nets(batches, repeats, names, seconds=0.0):
    rows = []
    optimizer = optax.sgd(0.01, momentum=0.9)
    for n, name in enumerate(names):
        make, shape = NETS[name]
        loss = jc.squared_error if name in RECONSTRUCT else jc.softmax_cross_entropy
        net = make(shape, 10)
        params, _ = net.init(jax.random.key(0), shape)
        opt_state = optimizer.init(params)
        flops = jc.summary(net, shape).flops
        hand, auto = steps(net, loss, optimizer)
        for b, batch in enumerate(batches):
            rng = np.random.default_rng(batch)
            x = jnp.asarray(rng.normal(size=(batch, *shape)), jnp.float32)
            y = x if name in RECONSTRUCT else jnp.asarray(rng.integers(0, 10, size=batch),
                                                          jnp.int32)
            args = (params, opt_state, x, y)
            # compiled first by turns, across batches and nets alike: on a GPU, XLA's
            # autotuning results for a convolution or matrix product stay in the process, so
            # the second compile of the same shapes may reuse them
            first = "hand" if (n + b) % 2 == 0 else "autodiff"
            order = (hand, auto) if first == "hand" else (auto, hand)
            compiled = dict(zip(order, (compile_seconds_and_memory(f, args) for f in order)))
            (ch, mh), (ca, ma) = compiled[hand], compiled[auto]
            cache_mib, residual_mib = saved_mib(net, loss, params, x, y)
            times = samples([jit(hand), jit(auto)], args, repeats, seconds)
            (th, ta), (ratio, ci) = np.median(times, axis=1), paired_ratio(*times)
            rows.append({"net": name, "batch": batch, "hand_ms": th * 1e3, "autodiff_ms": ta * 1e3,
                         "ratio": ratio, "ratio_95": ci, "rounds": times.shape[1],
                         "images_per_s": batch / th,
                         "gflops": 3 * flops * batch / th / 1e9,
                         "compile_hand_s": ch, "compile_autodiff_s": ca, "compiled_first": first,
                         "temp_bytes_hand": mh, "temp_bytes_autodiff": ma,
                         "cache_mib": cache_mib, "autodiff_residual_mib": residual_mib})
            print(f"{name:7s} batch {batch:4d}: hand {th * 1e3:8.2f} ms  autodiff {ta * 1e3:8.2f} ms"
                  f"  ratio {ratio:5.3f} [{ci[0]:.3f}, {ci[1]:.3f}]  {batch / th:9.0f} img/s  "
                  f"compile {ch:.2f}/{ca:.2f} s ({first} first)  temp MiB {_mib(mh)}/{_mib(ma)}  "
                  f"cache/residual MiB {cache_mib:.1f}/{residual_mib:.1f}", flush=True)
    return rows


def _mib(n):
    return "?" if n is None else f"{n / 2**20:.1f}"


LAYERS = {
    "conv 3x3 s1": (lambda: jc.Conv2D(32, 3, padding="SAME"), (32, 32, 16)),
    "conv 3x3 stride 2": (lambda: jc.Conv2D(32, 3, strides=2, padding="SAME"), (32, 32, 16)),
    "conv 3x3 dilation 2": (lambda: jc.Conv2D(32, 3, dilation=2, padding="SAME"), (32, 32, 16)),
    "conv 3x3 groups 4": (lambda: jc.Conv2D(32, 3, groups=4, padding="SAME"), (32, 32, 16)),
    "conv 3x3 groups 4 [lax]":
        (lambda: jc.Conv2D(32, 3, groups=4, padding="SAME", method="lax"), (32, 32, 16)),
    "conv 3x3 C=3 (wide, first layer)": (lambda: jc.Conv2D(64, 3, padding="SAME"), (32, 32, 3)),
}
for _m in ("auto", "lax"):   # LeNet-5's convolutions in the chosen form and in XLA's
    LAYERS.update({
        f"LeNet C1 5x5 28x28x1->6 [{_m}]":
            ((lambda m: lambda: jc.Conv2D(6, 5, padding="SAME", method=m))(_m), (28, 28, 1)),
        f"LeNet C3 5x5 14x14x6->16 [{_m}]":
            ((lambda m: lambda: jc.Conv2D(16, 5, method=m))(_m), (14, 14, 6)),
        f"LeNet C5 5x5 5x5x16->120 [{_m}]":
            ((lambda m: lambda: jc.Conv2D(120, 5, method=m))(_m), (5, 5, 16)),
        f"UFLDL 9x9 28x28x1->20 [{_m}]":
            ((lambda m: lambda: jc.Conv2D(20, 9, method=m))(_m), (28, 28, 1))})
LAYERS.update({
    "avg pool 2": (lambda: jc.AvgPool2D(2), (32, 32, 16)),
    "avg pool 3 s2 (overlap)": (lambda: jc.AvgPool2D(3, 2, "SAME"), (32, 32, 16)),
    "avg pool 3 s1 (overlap)": (lambda: jc.AvgPool2D(3, 1, "SAME"), (32, 32, 16)),
    "max pool 2": (lambda: jc.MaxPool2D(2), (32, 32, 16)),
    "max pool 3 s2 (overlap)": (lambda: jc.MaxPool2D(3, 2, "SAME"), (32, 32, 16)),
    "stochastic pool 2": (lambda: jc.StochasticPool2D(2), (32, 32, 16)),
    "sigmoid": (jc.Sigmoid, (32, 32, 16)),
    "batchnorm": (jc.BatchNorm, (32, 32, 16)),
    "layernorm": (jc.LayerNorm, (32, 32, 16)),
    "groupnorm 4": (lambda: jc.GroupNorm(4), (32, 32, 16)),
})


def bench_layers(batch, repeats, only="", seconds=0.0):
    rows = []
    for name, (make, shape) in LAYERS.items():
        if only not in name:
            continue
        layer = make()
        params, _ = layer.init(jax.random.key(0), shape)
        rng = np.random.default_rng(0)
        x = jnp.asarray(np.abs(rng.normal(size=(batch, *shape))), jnp.float32)
        key = jax.random.key(1)
        y, cache = jit(lambda p, x: layer.forward(p, x, key=key))(params, x)
        delta = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
        hand = jit(lambda p, x, d: layer.backward(p, layer.forward(p, x, key=key)[1], d))
        auto = jit(lambda p, x, d: jax.vjp(lambda p, x: layer.apply(p, x, key=key), p, x)[1](d))
        times = samples([hand, auto], (params, x, delta), repeats, seconds)
        (th, ta), (ratio, ci) = np.median(times, axis=1), paired_ratio(*times)
        rows.append({"layer": name, "batch": batch, "hand_ms": th * 1e3, "autodiff_ms": ta * 1e3,
                     "ratio": ratio, "ratio_95": ci, "rounds": times.shape[1]})
        print(f"{name:34s} forward+backward: hand {th * 1e3:7.2f} ms  autodiff {ta * 1e3:7.2f} ms"
              f"  ratio {ratio:5.3f} [{ci[0]:.3f}, {ci[1]:.3f}]", flush=True)
    return rows


FORWARD = {   # name: (Conv2D args, per-example input shape)
    "LeNet C1 5x5 28x28x1->6": ((6, 5, 1, "SAME"), (28, 28, 1)),
    "LeNet C3 5x5 14x14x6->16": ((16, 5), (14, 14, 6)),
    "LeNet C5 5x5 5x5x16->120": ((120, 5), (5, 5, 16)),
    "UFLDL 9x9 28x28x1->20": ((20, 9), (28, 28, 1)),
    "conv 3x3 32x32x16->32": ((32, 3, 1, "SAME"), (32, 32, 16)),
    "conv 3x3 groups 4": ((32, 3, 1, "SAME", 1, 4), (32, 32, 16)),
}


def same_program(f, g, args):
    """Whether ``jax.jit`` compiles ``f`` and ``g`` to the same XLA instructions (metadata
    aside): then a ratio between them is the timing noise of one program."""
    def instructions(fn):
        text = jit(fn).lower(*args).compile().as_text()
        return [re.sub(r", (metadata=\{[^}]*\}|stack_frame_id=\d+)", "", line)
                for line in text.splitlines() if " = " in line]

    return instructions(f) == instructions(g)


def bench_forward(batches, repeats, only="", seconds=0.0):
    """``Conv2D.apply`` with ``method="auto"`` against ``lax.conv_general_dilated`` itself
    (``method="lax"``), forward only: the forward must never be slower."""
    rows = []
    for name, (conv_args, shape) in FORWARD.items():
        if only not in name:
            continue
        auto, lax_conv = (jc.Conv2D(*conv_args, method=m) for m in ("auto", "lax"))
        params, _ = auto.init(jax.random.key(0), shape)
        for batch in batches:
            x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, *shape)), jnp.float32)
            times = samples([jit(auto.apply), jit(lax_conv.apply)], (params, x),
                            repeats, seconds)
            (ta, tl), (ratio, ci) = np.median(times, axis=1), paired_ratio(*times)
            same = same_program(auto.apply, lax_conv.apply, (params, x))
            rows.append({"layer": name, "batch": batch, "auto_ms": ta * 1e3,
                         "lax_ms": tl * 1e3, "ratio": ratio, "ratio_95": ci,
                         "rounds": times.shape[1],
                         "same_program": same})
            print(f"{name:28s} batch {batch:4d} forward: auto {ta * 1e3:7.2f} ms  lax.conv "
                  f"{tl * 1e3:7.2f} ms  ratio {ratio:5.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
                  f"{'  (same program)' if same else ''}", flush=True)
    return rows


def bench_net_forward(batches, repeats, names, seconds=0.0):
    """Each net's ``apply`` (evaluation) against the same net whose convolutions are all
    ``lax.conv_general_dilated`` (``method="lax"``), the same parameters."""
    rows = []
    for name in names:
        make, shape = NETS[name]
        net = make(shape, 10)
        with convolutions("lax"):
            lax_net = make(shape, 10)
        params, _ = net.init(jax.random.key(0), shape)
        for batch in batches:
            x = jnp.asarray(np.random.default_rng(batch).normal(size=(batch, *shape)),
                            jnp.float32)
            times = samples([jit(net.apply), jit(lax_net.apply)], (params, x), repeats,
                            seconds)
            (ta, tl), (ratio, ci) = np.median(times, axis=1), paired_ratio(*times)
            same = same_program(net.apply, lax_net.apply, (params, x))
            rows.append({"net": name, "batch": batch, "auto_ms": ta * 1e3, "lax_ms": tl * 1e3,
                         "ratio": ratio, "ratio_95": ci, "rounds": times.shape[1],
                         "same_program": same})
            print(f"{name:7s} batch {batch:4d} apply: auto {ta * 1e3:7.2f} ms  lax.conv "
                  f"{tl * 1e3:7.2f} ms  ratio {ratio:5.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
                  f"{'  (same program)' if same else ''}", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="batch 32 and 128, fewer repeats")
    ap.add_argument("--nets", default=",".join(NETS), help="comma-separated; '' for none")
    ap.add_argument("--layers", default="", help="only the layer rows whose name contains this")
    ap.add_argument("--repeats", type=int, default=None, help="rounds (at least)")
    ap.add_argument("--seconds", type=float, default=None,
                    help="more rounds for fast calls: each contender runs about this long")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--xla-defaults", action="store_true",
                    help="compile under XLA's defaults, not jc.compiler_options()")
    ap.add_argument("--parts", default="steps,layers,forward",
                    help="which tables: steps (the nets' whole steps), layers, forward (each "
                         "convolution's and each net's apply)")
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    if not parts <= {"steps", "layers", "forward"}:
        ap.error(f"--parts takes steps, layers and forward, got {args.parts!r}")
    print(settle_allocator())
    OPTIONS.clear()
    OPTIONS.update({} if args.xla_defaults else jc.compiler_options())
    print(f"XLA options: {OPTIONS or 'defaults'}")
    repeats = args.repeats or (10 if args.quick else 30)
    seconds = args.seconds if args.seconds is not None else (0.5 if args.quick else 2.0)
    batches = (32, 128) if args.quick else (32, 128, 512)
    machine = f"{platform.processor() or platform.machine()}, {jax.devices()[0].device_kind}, " \
              f"jax {jax.__version__}"
    if jax.default_backend() != "cpu":      # float32 convolutions may use TF32 there
        machine += f", matmul precision {jax.config.jax_default_matmul_precision or 'default'}"
    print(f"machine: {machine}")
    ceiling = matmul_ceiling(repeats)
    print(f"float32 matmul ceiling (2048x2048): {ceiling:.0f} GFLOP/s")
    names = [n for n in args.nets.split(",") if n]
    nets = bench_nets(batches, repeats, names, seconds) if "steps" in parts else []
    for row in nets:
        row["fraction_of_ceiling"] = row["gflops"] / ceiling
    layers = bench_layers(128, repeats, args.layers, seconds) if "layers" in parts else []
    forward, net_forward = [], []
    if "forward" in parts:
        forward = bench_forward(batches, repeats, args.layers, seconds)
        net_forward = bench_net_forward(batches, repeats, names, seconds)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "matmul_gflops": ceiling, "xla_options": OPTIONS,
                       "nets": nets,
                       "layers": layers, "forward": forward, "net_forward": net_forward}, f,
                      indent=1)


if __name__ == "__main__":
    main()

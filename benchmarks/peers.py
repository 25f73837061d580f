"""Training throughput: jaxcnn against the same net in plain JAX, Flax, Equinox and PyTorch,
every contender in ONE process with the others, interleaved in blocks of steps.

    python benchmarks/peers.py [--net lenet5|vgg|resnet|resnet-bn] [--batches 32,128,512]
                               [--repeats 30] [--block 10] [--json out.json]
                               [--precision default|highest] [--same-process] [--xla-defaults]

The net: LeNet-5 with sigmoid units and average pooling on 28x28x1 (``jaxcnn.zoo.lenet5``:
C1 conv 5x5x6 SAME, S2 avg 2, C3 conv 5x5x16, S4 avg 2, C5 conv 5x5x120, F6 dense 84, dense 10),
float32, softmax cross-entropy, SGD with momentum 0.9; every JAX step is one jitted
value-and-grad plus optax update, compiled with the XLA options of jaxcnn's own steps
(``jc.compiler_options()``; ``--xla-defaults``: XLA's defaults).

``--net`` picks the larger nets of ``docs/performance.md`` instead, each against PyTorch only
(jaxcnn's hand-written step and its ``apply`` + ``jax.grad``, PyTorch eager and
``torch.compile``), on 32x32x3: ``vgg``, the VGG-style net of ``grad_vs_autodiff.vgg`` (3x3
convolutions of 32, 32, 64, 64, 128 features, ReLU, max pooling after the 2nd, 4th and 5th,
dense 10); ``resnet``, ``jaxcnn.zoo.resnet`` (ResNet-8: a 3x3 stem of 16, basic blocks of 16,
32, 64 maps, the last two strided with 1x1 projections, global average pooling, dense 10);
``resnet-bn``, the same with BatchNorm after every convolution, on batch statistics in both
frameworks (PyTorch's ``track_running_stats=False``; jaxcnn's step leaves the running
statistics out).  PyTorch pads a strided 3x3 convolution by one on each side where ``"SAME"``
pads only after; the products are the same in number.  Above batch 128 (LeNet-5; 32 for vgg
and resnet, ``MICROBATCH``), jaxcnn also runs with ``jc.value_and_grad(..., microbatch=128)``
(32): the same gradient, a chunk at a time.  Peers that
are not installed are skipped (they are benchmark-only: ``pip install flax equinox
torch==2.13.0``).  JAX runs each call on the calling thread and glibc is told to keep freed
blocks, for every contender alike (``_malloc.py``): without both, large steps page-fault their
memory in afresh each time.  Images
per second from the median over the rounds of each round's median step time; jaxcnn's speed-ups
are ratios of the same medians, with 95% bootstrap intervals over the rounds.

A peer that fails to build, or to run its first steps at a batch size, is skipped there with
the reason (``skipped`` in the JSON); the others still run.

On a GPU machine (JAX's default backend a GPU), PyTorch runs on CUDA too, and also as
``torch.compile(mode="reduce-overhead")``, which replays the step's kernels as CUDA graphs.
``--precision`` states the float32 arithmetic there (on a CPU it changes nothing):
``default`` is each framework's own default -- JAX's convolutions and matrix products may use
TF32, as may PyTorch's cuDNN convolutions, while its matrix products stay float32 -- and
``highest`` is full float32 in both (``jax_default_matmul_precision="highest"``; PyTorch's
``allow_tf32 = False`` for cuDNN and for matrix products).

Each batch size runs in a fresh child process (``--same-process`` runs them all in this one).
A batch measured after another in the same process inherits its heap, its threads' state and,
for ``torch.compile``, a recompilation with the batch dimension made dynamic: at batch 128 after
batch 32, every contender ran slower than at batch 128 alone, and by different amounts from run
to run (``docs/performance-log.md``, section 4).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxcnn as jc
from jaxcnn import zoo
from _malloc import settle_allocator
from grad_vs_autodiff import OPTIONS, jit, paired_ratio, vgg   # OPTIONS: set by main

LR, MOMENTUM = 0.01, 0.9
NETS = {"lenet5": (zoo.lenet5, (28, 28, 1)), "vgg": (vgg, (32, 32, 3)),
        "resnet": (zoo.resnet, (32, 32, 3)), "resnet-bn": (zoo.resnet_bn, (32, 32, 3))}
"""``--net``: jaxcnn's net and its per-example input shape."""
NET = ["lenet5"]                  # the net of this process (``--net``)


def autodiff_step(loss, params):
    """The jitted step ``(state, x, y) -> (state, J)`` of ``jax.value_and_grad(loss)`` + SGD."""
    opt = optax.sgd(LR, momentum=MOMENTUM)

    @jit
    def step(state, x, y):
        params, opt_state = state
        value, grads = jax.value_and_grad(loss)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    return step, (params, opt.init(params))


def jaxcnn_step(grad, microbatch=None):
    make, shape = NETS[NET[0]]
    net = make(shape, 10)
    loss = jc.softmax_cross_entropy
    opt = optax.sgd(LR, momentum=MOMENTUM)
    params, _ = net.init(jax.random.key(0), shape)

    if grad == "hand":
        vg = jc.value_and_grad(net, loss, microbatch=microbatch)
    else:
        vg = jax.value_and_grad(lambda p, x, y: loss.value(net.apply(p, x), y))

    @jit
    def step(state, x, y):
        params, opt_state = state
        value, grads = vg(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    return step, (params, opt.init(params))


def plain_jax_step():
    """The same net written with lax.conv_general_dilated and jax.value_and_grad."""
    from jax import lax

    def conv(x, w, b, padding):
        y = lax.conv_general_dilated(x, w, (1, 1), padding,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + b

    def pool(x):
        return lax.reduce_window(x, 0.0, lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4

    def forward(p, x):
        x = pool(jax.nn.sigmoid(conv(x, *p[0], "SAME")))
        x = pool(jax.nn.sigmoid(conv(x, *p[1], "VALID")))
        x = jax.nn.sigmoid(conv(x, *p[2], "VALID")).reshape(x.shape[0], -1)
        x = jax.nn.sigmoid(x @ p[3][0] + p[3][1])
        return x @ p[4][0] + p[4][1]

    k = jax.random.split(jax.random.key(0), 5)
    g = jax.nn.initializers.glorot_normal()
    shapes = [(5, 5, 1, 6), (5, 5, 6, 16), (5, 5, 16, 120), (120, 84), (84, 10)]
    params = [(g(ki, s, jnp.float32), jnp.zeros(s[-1], jnp.float32)) for ki, s in zip(k, shapes)]

    def loss(p, x, y):
        logits = forward(p, x)
        return jnp.mean(jax.nn.logsumexp(logits, axis=1)
                        - jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0])

    return autodiff_step(loss, params)


def flax_step():
    import flax.linen as nn

    class LeNet5(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.avg_pool(nn.sigmoid(nn.Conv(6, (5, 5), padding="SAME")(x)), (2, 2), (2, 2))
            x = nn.avg_pool(nn.sigmoid(nn.Conv(16, (5, 5), padding="VALID")(x)), (2, 2), (2, 2))
            x = nn.sigmoid(nn.Conv(120, (5, 5), padding="VALID")(x)).reshape(x.shape[0], -1)
            return nn.Dense(10)(nn.sigmoid(nn.Dense(84)(x)))

    model = LeNet5()
    params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1), jnp.float32))

    def loss(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()

    return autodiff_step(loss, params)


def equinox_step():
    import equinox as eqx

    k = jax.random.split(jax.random.key(0), 5)
    model = eqx.nn.Sequential([
        eqx.nn.Conv2d(1, 6, 5, padding=2, key=k[0]), eqx.nn.Lambda(jax.nn.sigmoid),
        eqx.nn.AvgPool2d(2, 2),
        eqx.nn.Conv2d(6, 16, 5, key=k[1]), eqx.nn.Lambda(jax.nn.sigmoid), eqx.nn.AvgPool2d(2, 2),
        eqx.nn.Conv2d(16, 120, 5, key=k[2]), eqx.nn.Lambda(jax.nn.sigmoid),
        eqx.nn.Lambda(jnp.ravel),
        eqx.nn.Linear(120, 84, key=k[3]), eqx.nn.Lambda(jax.nn.sigmoid),
        eqx.nn.Linear(84, 10, key=k[4])])
    opt = optax.sgd(LR, momentum=MOMENTUM)

    def loss(m, x, y):      # equinox layers take one example, channels first
        logits = jax.vmap(m)(jnp.transpose(x, (0, 3, 1, 2)))
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @functools.partial(eqx.filter_jit, compiler_options=OPTIONS or None)
    def step(state, x, y):
        m, opt_state = state
        value, grads = eqx.filter_value_and_grad(loss)(m, x, y)
        updates, opt_state = opt.update(grads, opt_state, eqx.filter(m, eqx.is_array))
        return (eqx.apply_updates(m, updates), opt_state), value

    return step, (model, opt.init(eqx.filter(model, eqx.is_array)))


def torch_device():
    """CUDA where JAX runs on a GPU and PyTorch sees one, else the CPU."""
    import torch
    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def torch_lenet5(nn):
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.Sigmoid(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5), nn.Sigmoid(), nn.AvgPool2d(2),
        nn.Conv2d(16, 120, 5), nn.Sigmoid(), nn.Flatten(),
        nn.Linear(120, 84), nn.Sigmoid(), nn.Linear(84, 10))


def torch_vgg(nn):
    layers, c = [], 3
    for f, pool in ((32, False), (32, True), (64, False), (64, True), (128, True)):
        layers += [nn.Conv2d(c, f, 3, padding=1), nn.ReLU()] + ([nn.MaxPool2d(2)] if pool else [])
        c = f
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(128 * 4 * 4, 10))


def torch_resnet(nn, batch_norm=False):
    """``zoo.resnet``'s ResNet-8 (``batch_norm``: ``zoo.resnet_bn``, on batch statistics)."""
    def conv(c, f, k, s):
        out = [nn.Conv2d(c, f, k, s, padding=k // 2, bias=not batch_norm)]
        return out + [nn.BatchNorm2d(f, track_running_stats=False)] if batch_norm else out

    class Block(nn.Module):
        def __init__(self, c, f, s):
            super().__init__()
            self.body = nn.Sequential(*conv(c, f, 3, s), nn.ReLU(), *conv(f, f, 3, 1))
            self.skip = nn.Identity() if s == 1 and c == f else nn.Sequential(*conv(c, f, 1, s))

        def forward(self, x):
            return nn.functional.relu(self.body(x) + self.skip(x))

    return nn.Sequential(*conv(3, 16, 3, 1), nn.ReLU(), Block(16, 16, 1), Block(16, 32, 2),
                         Block(32, 64, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, 10))


TORCH_NETS = {"lenet5": torch_lenet5, "vgg": torch_vgg, "resnet": torch_resnet,
              "resnet-bn": functools.partial(torch_resnet, batch_norm=True)}


def torch_step(compiled, mode=None):
    """PyTorch's step of ``--net``: eager, or ``torch.compile`` in ``mode``
    (``"reduce-overhead"``: CUDA graphs, so the step's kernels launch as one graph instead of
    one by one)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = TORCH_NETS[NET[0]](nn).to(torch_device())
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    loss_fn = nn.CrossEntropyLoss()

    def train(x, y):
        opt.zero_grad(set_to_none=True)
        value = loss_fn(model(x), y)
        value.backward()
        opt.step()
        return value

    fn = torch.compile(train, mode=mode) if compiled else train

    def step(state, x, y):
        return state, fn(x, y).item()        # .item() waits for the device

    return step, None


def to_torch(x, y):
    import torch
    device = torch_device()
    return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))).to(device), \
        torch.from_numpy(y.astype(np.int64)).to(device)


def set_precision(precision):
    """``--precision`` for JAX and, where installed, PyTorch (see the module docstring)."""
    if precision == "highest":
        jax.config.update("jax_default_matmul_precision", "highest")
        try:
            import torch
        except ImportError:
            return
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


MICROBATCH = {"lenet5": 128, "vgg": 32, "resnet": 32}
"""The chunk of jaxcnn's ``microbatch`` contender per net, run for batches above it only (below
it is the same step); none for resnet-bn, whose BatchNorm would take each chunk's statistics,
not the batch's."""


def micro() -> str:
    return f"jaxcnn, microbatch {MICROBATCH.get(NET[0])}"


REDUCE_OVERHEAD = "PyTorch torch.compile reduce-overhead"      # on CUDA only
NAME_WIDTH = len(REDUCE_OVERHEAD)


def contenders():
    """The step makers of the contenders that run here, and why each other one does not
    (not installed, or failed to build with this version)."""
    skipped = {}
    out = {"jaxcnn (hand-written)": lambda: jaxcnn_step("hand")}
    if NET[0] in MICROBATCH:
        out[micro()] = lambda: jaxcnn_step("hand", microbatch=MICROBATCH[NET[0]])
    out["jaxcnn apply + jax.grad"] = lambda: jaxcnn_step("auto")
    jax_peers = [("Flax linen", flax_step), ("Equinox", equinox_step)]
    if NET[0] == "lenet5":       # the JAX peers are written for LeNet-5 only
        out["JAX lax.conv + jax.grad"] = plain_jax_step
    else:
        jax_peers = []
    for name, make in jax_peers:
        try:
            make()
            out[name] = make
        except ImportError:
            skipped[name] = "not installed"
        except Exception as e:      # another version's API: the other contenders still run
            skipped[name] = f"could not be built ({type(e).__name__}: {e})"
    try:
        import torch  # noqa: F401  (installed?)
        out["PyTorch eager"] = lambda: torch_step(False)
        out["PyTorch torch.compile"] = lambda: torch_step(True)
        if torch_device() == "cuda":        # CUDA graphs: nothing to replay on a CPU
            out[REDUCE_OVERHEAD] = lambda: torch_step(True, mode="reduce-overhead")
    except ImportError:
        skipped["PyTorch"] = "not installed"
    for name, why in skipped.items():
        print(f"{name}: {why}, skipped")
    return out, skipped


def run(batches, repeats, block=10):
    rows = []
    makers, skipped = contenders()
    for batch in batches:
        rng = np.random.default_rng(batch)
        x_np = rng.normal(size=(batch, *NETS[NET[0]][1])).astype(np.float32)
        y_np = rng.integers(0, 10, size=batch).astype(np.int32)
        steps = {}
        for name, make in makers.items():
            if name == micro() and batch <= MICROBATCH[NET[0]]:
                continue
            try:
                step, state = make()
                if name.startswith("PyTorch"):
                    args = to_torch(x_np, y_np)
                else:
                    args = (jnp.asarray(x_np), jnp.asarray(y_np))
                for _ in range(3):                   # compile and warm up
                    state, value = step(state, *args)
                jax.block_until_ready(value)
            except Exception as e:   # a peer this library version cannot run: the others still run
                if not name.startswith(("PyTorch", "Flax", "Equinox")):
                    raise
                why = skipped[f"{name} at batch {batch}"] = f"failed ({type(e).__name__}: {e})"
                print(f"{name} at batch {batch}: {why}, skipped", flush=True)
                continue
            steps[name] = [step, state, args, []]
        names = list(steps)
        for r in range(repeats):
            # rotate the order each round, and run each contender for a block of `block` steps,
            # timing all but the first: the first absorbs the hand-over from the previous
            # contender (PyTorch's OpenMP threads spin for a while after its step, XLA's thread
            # pool parks), the rest are that contender's own steady state, as in a training loop
            for name in names[r % len(names):] + names[:r % len(names)]:
                entry = steps[name]
                step, state, args, times = entry
                for i in range(block):
                    t = time.perf_counter()
                    state, value = step(state, *args)
                    jax.block_until_ready(value)
                    if i:
                        times.append(time.perf_counter() - t)
                entry[1] = state
        rounds = {name: np.asarray(entry[3]).reshape(repeats, block - 1)
                  for name, entry in steps.items()}
        for name, times in rounds.items():
            round_s = np.median(times, axis=1)
            ips = batch / float(np.median(round_s))
            rows.append({"peer": name, "batch": batch, "images_per_s": ips,
                         "round_ms": [float(t) * 1e3 for t in round_s]})
            print(f"batch {batch:4d}  {name:{NAME_WIDTH}s} {ips:9.0f} images/s", flush=True)
    return rows, skipped


JAX_PEERS = ("JAX lax.conv + jax.grad", "Flax linen", "Equinox")


def speedups(rows, batch):
    """jaxcnn's hand-written step (whole batch and chunked) against ``torch.compile`` (each
    mode that ran) and the fastest JAX peer at ``batch``: the ratio of their median step times
    over the rounds, with a 95% bootstrap interval that resamples whole rounds
    (``paired_ratio``; each round runs every contender's block once, so noise common to a
    round cancels as in the ratio)."""
    at = {r["peer"]: np.asarray(r["round_ms"]) for r in rows if r["batch"] == batch}
    peers = [p for p in JAX_PEERS if p in at]
    against = ([min(peers, key=lambda p: np.median(at[p]))] if peers else []) + \
        [p for p in ("PyTorch torch.compile", REDUCE_OVERHEAD) if p in at]
    out = []
    for mine in ("jaxcnn (hand-written)", micro()):
        for theirs in against if mine in at else []:
            speedup, ci = paired_ratio(at[theirs], at[mine])
            out.append({"peer": mine, "against": theirs, "batch": batch,
                        "speedup": speedup, "speedup_95": ci})
    return out


def speedup_line(row):
    return (f"batch {row['batch']:4d}  {row['peer']:{NAME_WIDTH}s} {row['speedup']:5.2f}x "
            f"[{row['speedup_95'][0]:.2f}, {row['speedup_95'][1]:.2f}] of {row['against']}")


def run_each_in_own_process(batches, repeats, block, precision, xla_defaults):
    """``run`` for each batch in a fresh child process: the machine and the rows of all of
    them, the batches whose process failed (their error is on stderr), and the peers that
    were skipped, with why."""
    machine, rows, failed = None, [], []
    skipped = {}
    for batch in batches:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "rows.json")
            child = subprocess.run([sys.executable, os.path.abspath(__file__), "--same-process",
                                    "--batches", str(batch), "--repeats", str(repeats),
                                    "--block", str(block), "--precision", precision,
                                    "--net", NET[0], "--json", out]
                                   + (["--xla-defaults"] if xla_defaults else []))
            if child.returncode:
                print(f"batch {batch}: its process failed (exit status {child.returncode})",
                      file=sys.stderr)
                failed.append(batch)
                continue
            with open(out) as f:
                result = json.load(f)
            machine, rows = result["machine"], rows + result["rows"]
            skipped.update(result.get("skipped", {}))
    return machine, rows, failed, skipped


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="32,128,512")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--block", type=int, default=10,
                    help="consecutive steps per contender per round; the first is not timed")
    ap.add_argument("--json", default=None)
    ap.add_argument("--precision", choices=("default", "highest"), default="default",
                    help="float32 arithmetic on a GPU: each framework's default (TF32 allowed) "
                         "or full float32 everywhere")
    ap.add_argument("--same-process", action="store_true",
                    help="run every batch size in this process, one after another")
    ap.add_argument("--net", choices=sorted(NETS), default="lenet5")
    ap.add_argument("--xla-defaults", action="store_true",
                    help="compile the JAX contenders under XLA's defaults, not "
                         "jc.compiler_options()")
    args = ap.parse_args(argv)
    NET[0] = args.net
    if args.block < 2:
        ap.error(f"--block must be at least 2 (its first step is not timed), got {args.block}")
    if args.repeats < 2:
        ap.error(f"--repeats must be at least 2 (the intervals resample rounds), "
                 f"got {args.repeats}")
    batches = list(dict.fromkeys(int(b) for b in args.batches.split(",")))
    if min(batches) < 1:
        ap.error(f"--batches must be positive, got {args.batches}")
    failed = []
    if args.same_process or len(batches) == 1:
        # JAX starts here only: a parent of child processes would hold a GPU's memory
        print(settle_allocator())
        set_precision(args.precision)
        OPTIONS.update({} if args.xla_defaults else jc.compiler_options())
        machine = f"{platform.machine()}, jax {jax.__version__}, {jax.devices()[0].device_kind}"
        if jax.default_backend() != "cpu":
            machine += f", precision {args.precision}"
        try:
            import torch
            machine += f", torch {torch.__version__} on {torch_device()}"
        except ImportError:
            pass
        print(f"machine: {machine}\nnet: {args.net}; XLA options: {OPTIONS or 'defaults'}")
        rows, skipped = run(batches, args.repeats, args.block)
    else:
        machine, rows, failed, skipped = run_each_in_own_process(
            batches, args.repeats, args.block, args.precision, args.xla_defaults)
        batches = [b for b in batches if b not in failed]
    ratios = [r for b in batches for r in speedups(rows, b)]
    print("\n".join(speedup_line(r) for r in ratios))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "net": args.net,
                       "xla_options": {} if args.xla_defaults else jc.compiler_options(),
                       "rows": rows, "speedups": ratios,
                       "skipped": skipped}, f, indent=1)
    if failed:
        sys.exit(f"failed: the process of batch {', '.join(map(str, failed))}")


if __name__ == "__main__":
    main()

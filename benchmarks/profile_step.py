"""Where one jitted training step spends its time: XLA's fusions, ranked (CPU).

    XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true \\
        python benchmarks/profile_step.py lenet5 --batch 512 [--autodiff] [--steps 30] [--hlo F]

Traces ``--steps`` calls of the step of ``grad_vs_autodiff.py`` (hand-written, or with
``--autodiff`` the autodiff one) with ``jax.profiler`` and prints the microseconds per step of
each traced event, largest first (the runtime's own events, such as the thunk executor's
wait, span the whole step).  The flag makes XLA's CPU runtime emit one trace event per
fusion (named as in the optimized HLO, which ``--hlo`` writes out).  Reading the trace needs
the ``xprof`` package (benchmark-only, like the peers: ``pip install xprof``); without it the
trace directory is left for TensorBoard.  Tracing adds its own overhead, so compare the events
within one profile, not with the timings of the benchmarks.
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import tempfile

import jax
import optax

import jaxcnn as jc
from jaxcnn import backend
from _malloc import settle_allocator
from grad_vs_autodiff import NETS, steps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("net", choices=sorted(NETS))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--autodiff", action="store_true", help="profile jax.value_and_grad's step")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--hlo", default=None, help="write the optimized HLO of the step here")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error(f"--steps must be >= 1, got {args.steps}")
    if "xla_cpu_enable_xprof_traceme" not in os.environ.get("XLA_FLAGS", ""):
        print("note: XLA_FLAGS lacks --xla_cpu_enable_xprof_traceme=true, so the trace has no "
              "per-fusion events")
    print(settle_allocator())
    make, shape = NETS[args.net]
    net, loss, optimizer = make(shape, 10), jc.softmax_cross_entropy, optax.sgd(0.01, momentum=0.9)
    hand, auto = steps(net, loss, optimizer)
    step = backend.jit(auto if args.autodiff else hand)
    params, _ = net.init(jax.random.key(0), shape)
    state = optimizer.init(params)
    x = jax.random.normal(jax.random.key(1), (args.batch, *shape))
    y = jax.random.randint(jax.random.key(2), (args.batch,), 0, 10)
    if args.hlo:
        with open(args.hlo, "w") as f:
            f.write(step.lower(params, state, x, y).compile().as_text())
    for _ in range(5):
        jax.block_until_ready(step(params, state, x, y))
    trace_dir = tempfile.mkdtemp(prefix="jaxcnn-profile-")
    with jax.profiler.trace(trace_dir):
        for _ in range(args.steps):
            jax.block_until_ready(step(params, state, x, y))
    try:
        from xprof.convert import raw_to_tool_data
    except ImportError:
        print(f"trace written to {trace_dir} (pip install xprof to have it summarised here)")
        return
    xspace = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)
    data, _ = raw_to_tool_data.xspace_to_tool_data(xspace, "trace_viewer", {})
    if not data:
        print(f"xprof could not read the trace in {trace_dir}")
        return
    events = json.loads(data)["traceEvents"]
    total, count = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and not e["name"].startswith("$"):      # "$": Python frames
            total[e["name"]] += e.get("dur", 0.0)
            count[e["name"]] += 1
    print(f"{args.net}, batch {args.batch}, {'autodiff' if args.autodiff else 'hand-written'}: "
          f"microseconds per step (trace: {trace_dir})")
    for name, us in total.most_common(args.top):
        print(f"{us / args.steps:10.1f}  x{count[name] / args.steps:4.1f}  {name}")


if __name__ == "__main__":
    main()

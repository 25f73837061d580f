"""First-step compile time of the hand-written and the autodiff training step, each compiled in
a fresh process of its own.

    python benchmarks/compile_time.py [--nets lenet5,deepid] [--batch 128] [--repeats 2]
                                      [--json out.json]

``grad_vs_autodiff.py`` compiles both steps in one process, and on a GPU XLA keeps its
autotuning results (per convolution and matrix product) in the process, so the step compiled
second may reuse the first's work (``docs/performance.md``, section 6).  Here nothing is
shared: every compilation runs in a new Python process that builds the net and times the step
of ``grad_vs_autodiff.steps`` (hand-written or autodiff, with the optax update) as
``grad_vs_autodiff.py`` does, lowering and compiling (``compile_seconds_and_memory``), after
a warm-up compilation of an unrelated function that initialises the backend.  The two steps
take turns, ``--repeats`` processes each; prints and records each process's seconds, and the
ratio of the medians.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def compile_once(net_name: str, batch: int, which: str) -> float:
    """In this process: seconds to compile ``which`` step ("hand" or "autodiff")."""
    import jax
    import jax.numpy as jnp
    import optax

    import jaxcnn as jc
    from grad_vs_autodiff import NETS, compile_seconds_and_memory, steps
    jax.jit(lambda v: v + 1).lower(jnp.zeros(3)).compile()      # the backend is up
    make, shape = NETS[net_name]
    net = make(shape, 10)
    loss, optimizer = jc.softmax_cross_entropy, optax.sgd(0.01, momentum=0.9)
    params, _ = net.init(jax.random.key(0), shape)
    args = (params, optimizer.init(params), jnp.zeros((batch, *shape), jnp.float32),
            jnp.zeros((batch,), jnp.int32))
    hand, auto = steps(net, loss, optimizer)
    return compile_seconds_and_memory(hand if which == "hand" else auto, args)[0]


def in_fresh_process(net_name: str, batch: int, which: str) -> float:
    child = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", which,
                            "--nets", net_name, "--batch", str(batch)],
                           capture_output=True, text=True, cwd=HERE)
    if child.returncode:
        sys.stderr.write(child.stderr)
        raise SystemExit(f"compile_time.py: the {which} step of {net_name} failed to compile "
                         f"(exit status {child.returncode})")
    return float(child.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="lenet5,deepid", help="comma-separated")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2, help="fresh processes per step")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", choices=("hand", "autodiff"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(compile_once(args.nets, args.batch, args.child))
        return
    import jax
    print(f"compile time in fresh processes, jax {jax.__version__} on {jax.default_backend()}, "
          f"batch {args.batch}", flush=True)
    rows = []
    for name in args.nets.split(","):
        seconds = {"hand": [], "autodiff": []}
        for r in range(args.repeats):       # take turns, starting with each side in turn
            for which in (("hand", "autodiff") if r % 2 == 0 else ("autodiff", "hand")):
                seconds[which].append(in_fresh_process(name, args.batch, which))
        hand, auto = (float(np.median(seconds[k])) for k in ("hand", "autodiff"))
        rows.append({"net": name, "batch": args.batch, "hand_s": seconds["hand"],
                     "autodiff_s": seconds["autodiff"], "ratio": hand / auto})
        print(f"{name:7s} hand-written {' '.join(f'{s:.2f}' for s in seconds['hand'])} s   "
              f"autodiff {' '.join(f'{s:.2f}' for s in seconds['autodiff'])} s   "
              f"ratio of medians {hand / auto:.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"jax": jax.__version__, "backend": jax.default_backend(), "rows": rows},
                      f, indent=1)


if __name__ == "__main__":
    main()

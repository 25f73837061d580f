"""How many of the hand-written step's convolutions and matrix products autodiff's step also
has, instruction for instruction: the same StableHLO ``convolution`` or ``dot_general``
(operand types, window, dimension numbers, contracting dimensions).

    python benchmarks/shared_instructions.py [--method lax] [--batch 32]

On a GPU, XLA autotunes each distinct convolution and matrix product when it compiles a step,
and keeps the results in the process: of two steps that share them, the one compiled second
may compile faster (``docs/performance.md``, section 8, "the hand-written step asks XLA for
autodiff's own instructions").  With ``--method lax`` (what ``"auto"`` is off the CPU) the
hand-written step shares all of them: its input residuals and dense gradients are written
with the dimension numbers of ``jax.grad``'s transpose rules (``tests/test_networks.py``
checks it).  ``--method auto`` counts the CPU's formulations where this runs on a CPU.  On a
CPU the backward passes in XLA's form swap axes by transposes (``xla.canonical_layouts``);
``--cpu-layouts`` counts that form, which shares fewer instructions, instead of the one the
other backends lower to.  Only lowering, no compilation: it runs on any backend.
"""
from __future__ import annotations

import argparse
import collections
import re

import jax
import jax.numpy as jnp
import optax

import jaxcnn as jc
from jaxcnn.lowering import xla
from grad_vs_autodiff import NETS, RECONSTRUCT, convolutions, steps

OPS = {"convolutions": "stablehlo.convolution", "matrix products": "stablehlo.dot_general"}


def instructions(text: str, op: str) -> collections.Counter:
    """The ``op`` instructions of the StableHLO ``text``, with the SSA names taken out,
    counted."""
    return collections.Counter(
        re.sub(r"%[\w#.]+", "%", line.split("=", 1)[1]).strip()
        for line in text.splitlines() if op in line)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="lax", choices=("lax", "auto", "toeplitz"))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--cpu-layouts", action="store_true",
                    help="on a CPU, keep the backward's transposes (xla.canonical_layouts)")
    args = ap.parse_args(argv)
    if not args.cpu_layouts:
        xla.canonical_layouts = lambda: False      # the off-CPU lowering, wherever this runs
    optimizer = optax.sgd(0.01, momentum=0.9)
    print(f"instructions of the step, method={args.method!r}, batch {args.batch}, "
          f"lowered for {jax.default_backend()}: hand-written / autodiff / shared")
    for name, (make, shape) in NETS.items():
        with convolutions(args.method):
            net = make(shape, 10)
        params, _ = net.init(jax.random.key(0), shape)
        x = jnp.zeros((args.batch, *shape), jnp.float32)
        loss = jc.squared_error if name in RECONSTRUCT else jc.softmax_cross_entropy
        y = x if name in RECONSTRUCT else jnp.zeros((args.batch,), jnp.int32)
        step_args = (params, optimizer.init(params), x, y)
        texts = [jax.jit(f).lower(*step_args).as_text() for f in steps(net, loss, optimizer)]
        counts = []
        for kind, op in OPS.items():
            hand, auto = (instructions(text, op) for text in texts)
            counts.append(f"{kind} {sum(hand.values()):3d} / {sum(auto.values()):3d} / "
                          f"{sum((hand & auto).values()):3d}")
        print(f"{name:7s} " + "   ".join(counts))


if __name__ == "__main__":
    main()

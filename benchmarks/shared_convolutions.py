"""How many of the hand-written step's convolutions autodiff's step also has, instruction for
instruction: the same StableHLO ``convolution`` (operand types, window, dimension numbers).

    python benchmarks/shared_convolutions.py [--method lax] [--batch 32]

On a GPU, XLA autotunes each convolution when it compiles a step and keeps the result in the
process, so of two steps that share convolutions the one compiled second may compile faster
(``docs/performance.md``, section 7).  Only lowering, no compilation: it runs on any backend.
``--method lax`` builds the nets with XLA's convolutions, which is what ``"auto"`` is off the
CPU; ``--method auto`` counts the CPU's formulations where this runs on a CPU.
"""
from __future__ import annotations

import argparse
import collections
import re

import jax
import jax.numpy as jnp
import optax

import jaxcnn as jc
from grad_vs_autodiff import NETS, convolutions, steps


def convolution_instructions(fn, args) -> collections.Counter:
    """The ``stablehlo.convolution`` instructions of ``jax.jit(fn)`` lowered at ``args``, with
    the SSA names taken out, counted."""
    text = jax.jit(fn).lower(*args).as_text()
    return collections.Counter(
        re.sub(r"%[\w#.]+", "%", line.split("=", 1)[1]).strip()
        for line in text.splitlines() if "stablehlo.convolution" in line)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="lax", choices=("lax", "auto", "toeplitz"))
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args(argv)
    loss, optimizer = jc.softmax_cross_entropy, optax.sgd(0.01, momentum=0.9)
    print(f"convolutions of the step, method={args.method!r}, batch {args.batch}, "
          f"lowered for {jax.default_backend()}")
    for name, (make, shape) in NETS.items():
        with convolutions(args.method):
            net = make(shape, 10)
        params, _ = net.init(jax.random.key(0), shape)
        x = jnp.zeros((args.batch, *shape), jnp.float32)
        y = jnp.zeros((args.batch,), jnp.int32)
        step_args = (params, optimizer.init(params), x, y)
        hand, auto = (convolution_instructions(f, step_args)
                      for f in steps(net, loss, optimizer))
        print(f"{name:7s} hand-written {sum(hand.values()):3d}  autodiff {sum(auto.values()):3d}"
              f"  shared {sum((hand & auto).values()):3d}")


if __name__ == "__main__":
    main()

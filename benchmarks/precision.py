"""Mixed precision: the training step's time in float32, bfloat16 and float16.

    python benchmarks/precision.py [--nets lenet5,small,resnet-bn] [--batch 256] [--rounds 30]
                                   [--precisions float32,bfloat16,float16] [--json out.json]

Per net and gradient mode (hand-written, autodiff), one jitted step per precision
(``train.make_step(..., precision=p)``: ``value_and_grad`` under the policy of
``jaxcnn.precision`` + an optax SGD-momentum update of the float32 params), the contenders
interleaved call by call so that machine noise hits all alike.  Reported: the median seconds
per step, and each precision's median ratio to float32 of the same gradient mode over the
paired rounds (below 1: faster).

On a CPU 16-bit arithmetic is emulated -- expect it slower than float32; the figures that
matter come from a GPU (``benchmarks/gpu.sh`` runs this).  float32 runs at JAX's default
matmul precision (TF32 where the GPU has it), as a user's would.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxcnn as jc
from jaxcnn import train, zoo
from jaxcnn.precision import PRECISIONS

SHAPES = {"lenet5": (28, 28, 1), "small": (28, 28, 1), "ufldl": (28, 28, 1),
          "deepid": (39, 31, 1), "resnet": (32, 32, 3), "resnet-bn": (32, 32, 3)}


def contenders(name: str, batch: int, precisions):
    """``{(grad, precision): (step, args)}`` for the zoo net ``name`` on a random batch."""
    shape = SHAPES[name]
    net = zoo.get(name, shape, 10)
    params, _ = train.init_params(net, shape)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, *shape)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, size=batch), jnp.int32)
    opt = optax.sgd(1e-3, momentum=0.9)
    if jc.has_state(net):           # BatchNorm: the step that updates its running statistics
        args = (params, opt.init(params), jc.init_state(net, shape), x, y, jax.random.key(0))
        return {(grad, p): (jax.jit(train.state_step(train.loss_grad_and_state(
                    net, jc.softmax_cross_entropy, grad, None, p), opt)), args)
                for grad in train.GRADS for p in precisions}
    args = (params, opt.init(params), x, y, jax.random.key(0))
    return {(grad, p): (train.make_step(net, jc.softmax_cross_entropy, opt, grad,
                                        precision=p), args)
            for grad in train.GRADS for p in precisions}


def measure(fns: dict, rounds: int) -> dict:
    """Seconds per call of each contender, ``rounds`` interleaved calls each, after a compile
    and two warm-up calls."""
    for step, args in fns.values():
        for _ in range(3):
            jax.block_until_ready(step(*args))
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, (step, args) in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(step(*args))
            times[k].append(time.perf_counter() - t)
    return {k: np.asarray(v) for k, v in times.items()}


def report(name: str, batch: int, times: dict) -> list[dict]:
    rows = []
    for (grad, p), t in times.items():
        base = times[(grad, "float32")] if (grad, "float32") in times else t
        rows.append({"net": name, "batch": batch, "grad": grad, "precision": p,
                     "median_s": float(np.median(t)),
                     "ratio_to_float32": float(np.median(t / base))})
        print(f"{name:10s} batch {batch:4d} {grad:8s} {p:8s} {1e3 * np.median(t):9.3f} ms"
              f"   x{rows[-1]['ratio_to_float32']:.2f} of float32")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nets", default="lenet5,small,resnet-bn")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--json")
    a = ap.parse_args()
    precisions = a.precisions.split(",")
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}")
    rows = []
    for name in a.nets.split(","):
        rows += report(name, a.batch, measure(contenders(name, a.batch, precisions), a.rounds))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": jax.devices()[0].device_kind, "jax": jax.__version__,
                       "machine": platform.machine(), "rounds": a.rounds, "rows": rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()

"""Each convolution of ResNet-8, pass by pass: jaxcnn's lowerings against PyTorch (CPU).

    python benchmarks/conv_passes.py [--net resnet|bottleneck] [--batch 64] [--repeats 10]

For every distinct convolution of ``jaxcnn.zoo.resnet`` (or of ``grad_vs_autodiff.py``'s
``bottleneck``, with ``--net bottleneck``; how many times the net has it in brackets): the
forward, kernel gradient and input residual in the forms the step runs them on the CPU
(``conv_plan``: XLA's convolutions, column pairs, the stride phases, the Toeplitz products, a
1x1 kernel's matrix products; jitted with ``jc.compiler_options()``), each timed alone, and
PyTorch's forward + backward of the same ``nn.Conv2d`` (kernel gradient and input residual
together, when installed).  Where the plan's form of a pass is not XLA's convolution, XLA's
is timed too, in the same rounds, and the ratio plan / XLA printed.  The totals weigh each
convolution by its count; the stem's input residual, which no step computes, is left out of
jaxcnn's (and in PyTorch's, which computes it).  The calls of each convolution run in turn,
round after round (``samples``); medians over the rounds, and ratios with their 95% bootstrap
interval.
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import _geometry as geo, backend
from jaxcnn.lowering import dispatch
from jaxcnn.lowering.plan import ConvPlan, conv_plan
from _malloc import settle_allocator
from grad_vs_autodiff import paired_ratio, samples

CONVS = [  # (H, W, C), F, k, stride, count in ResNet-8
    ((32, 32, 3), 16, 3, 1, 1), ((32, 32, 16), 16, 3, 1, 2), ((32, 32, 16), 32, 3, 2, 1),
    ((16, 16, 32), 32, 3, 1, 1), ((32, 32, 16), 32, 1, 2, 1), ((16, 16, 32), 64, 3, 2, 1),
    ((8, 8, 64), 64, 3, 1, 1), ((16, 16, 32), 64, 1, 2, 1)]
BOTTLENECK = [((32, 32, 3), 64, 3, 1, 1)] + [  # grad_vs_autodiff.bottleneck
    conv for hw in (32, 16, 8) for conv in (
        ((hw, hw, 64), 16, 1, 1, 1), ((hw, hw, 16), 16, 3, 1, 1), ((hw, hw, 16), 64, 1, 1, 1))]
PASSES = ("forward", "kernel gradient", "input residual")


def jaxcnn_passes(x, w, d, g, plan):
    """The forward, kernel gradient and input residual in ``plan``'s forms, each jitted alone,
    as calls."""
    fw, kg, ir = (backend.jit(f) for f in (
        lambda x, w: dispatch.forward(x, w, None, g, 1, plan),
        lambda x, d: dispatch.kernel_grad(x, d, g, 1, plan),
        lambda d, w: dispatch.input_residual(d, w, g, 1, plan)))
    return [lambda: fw(x, w), lambda: kg(x, d), lambda: ir(d, w)]


def xla_plan(plan: ConvPlan, strides: int) -> ConvPlan:
    """XLA's convolution for every pass (the stride phases for a strided input residual)."""
    return plan._replace(forward="lax", kernel="lax", input="phases" if strides > 1 else "lax")


def torch_passes(x, d, c, f, k, strides):
    """PyTorch's forward + backward of the same convolution as a call, or None."""
    try:
        import torch
    except ImportError:
        return None
    tx = torch.tensor(np.asarray(x).transpose(0, 3, 1, 2).copy(), requires_grad=True)
    td = torch.tensor(np.asarray(d).transpose(0, 3, 1, 2).copy())
    conv = torch.nn.Conv2d(c, f, k, strides, padding=k // 2)
    return lambda: conv(tx).backward(td)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", choices=("resnet", "bottleneck"), default="resnet")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args(argv)
    print(settle_allocator())
    print(f"jax {jax.__version__}, {jax.default_backend()}, batch {args.batch}; milliseconds")
    totals = [0.0, 0.0]
    for (h, wd, c), f, k, s, count in {"resnet": CONVS, "bottleneck": BOTTLENECK}[args.net]:
        g = geo.window("Conv2D", (h, wd), (k, k), (s, s), (1, 1), "SAME")
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=(args.batch, h, wd, c)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(k, k, c, f)), jnp.float32)
        d = jnp.asarray(rng.normal(size=(args.batch, *g.out_hw, f)), jnp.float32)
        plan = conv_plan(g, c, 1, features=f)
        calls = jaxcnn_passes(x, w, d, g, plan)
        base = xla_plan(plan, s)
        xla_calls = jaxcnn_passes(x, w, d, g, base)
        other = [i for i in range(3) if plan[i] != base[i]]
        theirs = torch_passes(x, d, c, f, k, s)
        times = samples(calls + [xla_calls[i] for i in other] + ([theirs] if theirs else []),
                        (), args.repeats, 0.5) * 1e3
        fw, kg, ir = np.median(times[:3], axis=1)
        totals[0] += count * (fw + kg + (ir if c > 3 else 0.0))
        line = (f"{h}x{wd}x{c} -> {f}, {k}x{k}, stride {s} (x{count}): forward {fw:.2f}  "
                f"kernel gradient {kg:.2f}  input residual {ir:.2f}  ({', '.join(plan[:3])})")
        for j, i in enumerate(other):
            ratio, ci = paired_ratio(times[i], times[3 + j])
            line += f"  |  {PASSES[i]} {plan[i]} / lax {ratio:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"
        if theirs:
            ratio, ci = paired_ratio(times[:3].sum(axis=0), times[-1])
            totals[1] += count * float(np.median(times[-1]))
            line += (f"  |  PyTorch forward + backward {np.median(times[-1]):.2f}  (jaxcnn's "
                     f"three / PyTorch's: {ratio:.2f} [{ci[0]:.2f}, {ci[1]:.2f}])")
        print(line, flush=True)
    print(f"weighted totals: jaxcnn {totals[0]:.1f}, PyTorch {totals[1]:.1f}")


if __name__ == "__main__":
    main()

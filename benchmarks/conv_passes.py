"""Each convolution of ResNet-8, pass by pass: jaxcnn's lowerings against PyTorch (CPU).

    python benchmarks/conv_passes.py [--batch 64] [--repeats 10]

For every distinct convolution of ``jaxcnn.zoo.resnet`` (how many times the net has it in
brackets): the forward, kernel gradient and input residual as the step runs them on the CPU
(XLA's convolutions, the stride phases for a strided input residual; jitted with
``jc.compiler_options()``), each timed alone, and PyTorch's forward + backward of the same
``nn.Conv2d`` (kernel gradient and input residual together, when installed).  The totals
weigh each convolution by its count; the stem's input residual, which no step computes, is
left out of jaxcnn's (and in PyTorch's, which computes it).  The four calls of each
convolution run in turn, round after round (``samples``); medians over the rounds, and the
ratio of jaxcnn's three passes to PyTorch's call with its 95% bootstrap interval.
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import _geometry as geo, backend
from jaxcnn.lowering import phases, xla
from _malloc import keep_freed_blocks
from grad_vs_autodiff import paired_ratio, samples

CONVS = [  # (H, W, C), F, k, stride, count in ResNet-8
    ((32, 32, 3), 16, 3, 1, 1), ((32, 32, 16), 16, 3, 1, 2), ((32, 32, 16), 32, 3, 2, 1),
    ((16, 16, 32), 32, 3, 1, 1), ((32, 32, 16), 32, 1, 2, 1), ((16, 16, 32), 64, 3, 2, 1),
    ((8, 8, 64), 64, 3, 1, 1), ((16, 16, 32), 64, 1, 2, 1)]


def jaxcnn_passes(x, w, d, g, strides):
    """The forward, kernel gradient and input residual, each jitted alone, as calls."""
    residual = ((lambda d, w: phases.input_residual(d, w, g)) if strides > 1 else
                (lambda d, w: xla.input_residual(d, w, g, 1)))
    fw, kg, ir = (backend.jit(f) for f in (
        lambda x, w: xla.forward(x, w, g, 1), lambda x, d: xla.kernel_grad(x, d, g, 1),
        residual))
    return [lambda: fw(x, w), lambda: kg(x, d), lambda: ir(d, w)]


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
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args(argv)
    keep_freed_blocks()
    print(f"jax {jax.__version__}, {jax.default_backend()}, batch {args.batch}; milliseconds")
    totals = [0.0, 0.0]
    for (h, wd, c), f, k, s, count in CONVS:
        g = geo.window("Conv2D", (h, wd), (k, k), (s, s), (1, 1), "SAME")
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=(args.batch, h, wd, c)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(k, k, c, f)), jnp.float32)
        d = jnp.asarray(rng.normal(size=(args.batch, *g.out_hw, f)), jnp.float32)
        calls = jaxcnn_passes(x, w, d, g, s)
        theirs = torch_passes(x, d, c, f, k, s)
        times = samples(calls + ([theirs] if theirs else []), (), args.repeats, 0.5) * 1e3
        fw, kg, ir = np.median(times[:3], axis=1)
        totals[0] += count * (fw + kg + (ir if c > 3 else 0.0))
        line = (f"{h}x{wd}x{c} -> {f}, {k}x{k}, stride {s} (x{count}): forward {fw:.2f}  "
                f"kernel gradient {kg:.2f}  input residual {ir:.2f}")
        if theirs:
            ratio, ci = paired_ratio(times[:3].sum(axis=0), times[3])
            totals[1] += count * float(np.median(times[3]))
            line += (f"  |  PyTorch forward + backward {np.median(times[3]):.2f}  (jaxcnn's three"
                     f" / PyTorch's: {ratio:.2f} [{ci[0]:.2f}, {ci[1]:.2f}])")
        print(line, flush=True)
    print(f"weighted totals: jaxcnn {totals[0]:.1f}, PyTorch {totals[1]:.1f}")


if __name__ == "__main__":
    main()

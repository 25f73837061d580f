"""Where the Toeplitz form pays, pass by pass: the data behind ``conv_plan``'s spread limits.

    python benchmarks/conv_plan_sweep.py [--batches 32,128] [--stride 1] [--repeats 15]
                                         [--passes forward,kernel,input] [--sizes 8,14,28]
                                         [--json out.json]

For a grid of ``"VALID"`` convolutions (input channels 1, 3, 6, 16; features 6, 16, 32;
kernels 3 and 5; square inputs ``--sizes``, by default 8, 14, 28; stride ``--stride``), each
pass -- forward (eq. 4.6 vs 4.2), kernel gradient (4.7 vs 4.4), input residual (4.8 vs 4.5) --
runs in both formulations, interleaved in one process (median of ``--repeats``).  With a
stride above 1, the input residual's other form is measured three ways: XLA's lhs-dilated
transposed convolution, the matrix product + window scatter (the reference's eq. 4.5,
``jaxcnn.reference.conv.backward_input``) and the stride phases (eq. 4.9,
``jaxcnn.lowering.phases``); the fastest of the three counts as "XLA's"
(``input_lax_form`` in the JSON says which), and each also gets a column of its own.

Then, for each pass and each candidate limit, the sweep's total time if every shape with
``spread <= limit`` took the Toeplitz form and the rest XLA's convolution, and how many shapes
that choice leaves more than 20% slower than the faster form.  The spread limits of
``jaxcnn.lowering.plan.LIMITS`` (``forward``, ``kernel``, ``input``, ``strided_input``) are read
off this table (``docs/performance.md``, section 8, "the convolution plan").
"""
from __future__ import annotations

import argparse
import itertools
import json
import platform

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import _geometry as geo
from jaxcnn.lowering import phases, toeplitz, xla
from jaxcnn.lowering.plan import conv_plan
from jaxcnn.reference import conv as reference
from _malloc import settle_allocator
from grad_vs_autodiff import samples

PASSES = ("forward", "kernel", "input")
STRIDED_INPUT_FORMS = ("transposed", "scatter", "phases")   # XLA's side of a strided input pass
LIMITS = (0, 5, 10, 20, 30, 50, 80, 100, 150, float("inf"))


def both_forms(g, tile):
    """Each pass as ``(toeplitz, lax[, scatter, phases])``, functions of ``(x, w, delta)``;
    the last two only for a strided input residual (``STRIDED_INPUT_FORMS``)."""
    forms = {
        "forward": (lambda x, w, d: toeplitz.forward(x, w, g, tile=tile),
                    lambda x, w, d: xla.forward(x, w, g, 1)),
        "kernel": (lambda x, w, d: toeplitz.kernel_grad(x, d, g, tile=tile),
                   lambda x, w, d: xla.kernel_grad(x, d, g, 1)),
        "input": (lambda x, w, d: toeplitz.input_residual(d, w, g, tile=tile),
                  lambda x, w, d: xla.input_residual(d, w, g, 1)),
    }
    if max(g.strides) > 1:
        forms["input"] += (lambda x, w, d: reference.backward_input(d, w, g),
                           lambda x, w, d: phases.input_residual(d, w, g))
    return forms


def sweep(batch, repeats, stride=1, passes=PASSES, sizes=(8, 14, 28)):
    rows = []
    for c, f, k, h in itertools.product((1, 3, 6, 16), (6, 16, 32), (3, 5), sizes):
        g = geo.window("Conv2D", (h, h), (k, k), (stride, stride), (1, 1), "VALID")
        tile = conv_plan(g, c, 1, "toeplitz", features=f).tile
        spread = c * toeplitz.column_tiles(g).read / k
        rng = np.random.default_rng(0)
        args = tuple(jnp.asarray(rng.normal(size=s), jnp.float32)
                     for s in ((batch, h, h, c), (k, k, c, f), (batch, *g.out_hw, f)))
        row = {"c": c, "f": f, "k": k, "h": h, "stride": stride, "batch": batch,
               "spread": spread}
        for name, fns in both_forms(g, tile).items():
            if name not in passes:
                continue
            t, *xla = np.median(samples([jax.jit(fn) for fn in fns], args, repeats), axis=1)
            row[name] = {"toeplitz_ms": t * 1e3, "lax_ms": min(xla) * 1e3}
            if len(xla) > 1:
                row[name].update({f"{m}_ms": v * 1e3 for m, v in zip(STRIDED_INPUT_FORMS, xla)})
                row["input_lax_form"] = STRIDED_INPUT_FORMS[int(np.argmin(xla))]
        rows.append(row)
        print(f"C {c:2d} F {f:2d} k {k} H {h:2d} batch {batch:4d} spread {spread:6.1f}  " +
              "  ".join(f"{p} {row[p]['toeplitz_ms'] / row[p]['lax_ms']:5.2f}" for p in passes) +
              (f"  (XLA's input: {row['input_lax_form']})" if "input_lax_form" in row else ""),
              flush=True)
    return rows


def columns(rows, passes):
    """The policies to total: ``(label, pass, key of the non-Toeplitz time)``.  A pass's own
    label takes the fastest other form per shape; a strided input pass also gets one column
    per fixed form (``input/phases`` etc.), the policy ``conv_plan`` can actually follow."""
    cols = [(p, p, "lax_ms") for p in passes]
    if "input" in passes and "input_lax_form" in rows[0]:
        cols += [(f"input/{m}", "input", f"{m}_ms") for m in STRIDED_INPUT_FORMS]
    return cols


def by_limit(rows, cols):
    """For each column and limit: the total ms and the shapes left > 20% slower than the best."""
    table = {}
    for (label, p, key), limit in itertools.product(cols, LIMITS):
        chosen = [r[p]["toeplitz_ms"] if r["spread"] <= limit else r[p][key] for r in rows]
        best = [min(r[p].values()) for r in rows]
        table[label, limit] = (sum(chosen), int(sum(c > 1.2 * b for c, b in zip(chosen, best))),
                               sum(best))
    return table


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="32,128")
    ap.add_argument("--stride", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--passes", default=",".join(PASSES), help="comma-separated subset of "
                    + ",".join(PASSES))
    ap.add_argument("--sizes", default="8,14,28", help="input heights (= widths)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    sizes = tuple(int(h) for h in args.sizes.split(","))
    passes = tuple(p for p in PASSES if p in args.passes.split(","))
    print(settle_allocator())
    results = {}
    for batch in (int(b) for b in args.batches.split(",")):
        rows = sweep(batch, args.repeats, args.stride, passes, sizes)
        cols = columns(rows, passes)
        labels = [label for label, _, _ in cols]
        table = by_limit(rows, cols)
        print(f"\nbatch {batch}: total ms over {len(rows)} shapes (shapes > 20% off the faster "
              f"form) if spread <= limit takes the Toeplitz form")
        print("limit      " + "".join(f"{p:>22s}" for p in labels))
        for limit in LIMITS:
            print(f"{limit:<10g} " + "".join(
                f"{table[p, limit][0]:15.1f} ({table[p, limit][1]:2d})   " for p in labels))
        print("best form  " + "".join(f"{table[p, LIMITS[0]][2]:15.1f}" + " " * 7
                                      for p in labels) + "\n")
        results[batch] = {"shapes": rows, "by_limit": {
            f"{p} {limit}": {"total_ms": v[0], "off_by_20pct": v[1]}
            for (p, limit), v in table.items()}}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": f"{platform.processor() or platform.machine()}, "
                                  f"{jax.devices()[0].device_kind}", "jax": jax.__version__,
                       "results": results}, f, indent=1)


if __name__ == "__main__":
    main()

"""The figure of docs/performance.md, from the JSON the two benchmarks write.

    python benchmarks/plot.py [--grad benchmarks/grad_vs_autodiff-steps-cpu.json]
                              [--peers benchmarks/peers-cpu.json] [--run 7]
                              [--out docs/figures/performance.png]

Left: LeNet-5 training throughput of every peer at each batch size (``peers.py``).  Right: the
hand-written / autodiff step-time ratio of every benchmark net (``grad_vs_autodiff.py``), with
the 1.0 line and each ratio's 95% bootstrap interval.

``--peers`` is one run as ``peers.py --json`` writes it, or several runs of one sitting folded
into ``{"note": ..., "runs": {"7": run, "8": run, ...}}`` (``benchmarks/peers-cpu.json``); of
those, ``--run`` is drawn, by default the first (the table run of docs/performance.md).
"""
from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot(grad: dict, peers: dict, out: str) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    names = list(dict.fromkeys(r["peer"] for r in peers["rows"]))
    batches = sorted({r["batch"] for r in peers["rows"]})
    ips = {(r["peer"], r["batch"]): r["images_per_s"] for r in peers["rows"]}
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        xs = np.arange(len(batches)) + (k - (len(names) - 1) / 2) * width
        left.bar(xs, [ips.get((name, b), 0) / 1e3 for b in batches], width, label=name)
    left.set_xticks(np.arange(len(batches)), [f"batch {b}" for b in batches])
    left.set_ylabel("thousand images / s")
    left.set_title("LeNet-5 training step, same process, interleaved")
    left.set_ylim(0, 1.45 * max(ips.values()) / 1e3)
    left.legend(fontsize=7, ncol=3, loc="upper center")

    nets = list(dict.fromkeys(r["net"] for r in grad["nets"]))
    for name in nets:
        rows = [r for r in grad["nets"] if r["net"] == name]
        ratio = np.array([r["ratio"] for r in rows])
        lo, hi = np.array([r.get("ratio_95", (r["ratio"],) * 2) for r in rows]).T
        yerr = np.maximum(0, [ratio - lo, hi - ratio])
        right.errorbar([r["batch"] for r in rows], ratio, yerr=yerr,
                       fmt="o-", capsize=3, label=name)
    right.axhline(1.0, color="gray", lw=1, ls="--")
    right.set_xscale("log", base=2)
    right.set_xlabel("batch")
    right.set_ylabel("hand-written / autodiff step time")
    right.set_title("jc.value_and_grad vs jax.value_and_grad")
    right.legend(fontsize=8)
    fig.suptitle(f"{peers['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def one_run(peers: dict, run: str | None) -> dict:
    """The run ``run`` of a folded peers file (the first where ``run`` is None); a file of one
    run is that run."""
    if "runs" not in peers:
        if run is not None:
            raise ValueError(f"--run {run}: the peers file holds one run, not several")
        return peers
    runs = peers["runs"]
    key = next(iter(runs)) if run is None else run
    if key not in runs:
        raise ValueError(f"--run {key}: the peers file holds runs {', '.join(runs)}")
    return runs[key]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grad", default="benchmarks/grad_vs_autodiff-steps-cpu.json")
    ap.add_argument("--peers", default="benchmarks/peers-cpu.json")
    ap.add_argument("--run", default=None, help="which run of a folded peers file (default: "
                    "the first)")
    ap.add_argument("--out", default="docs/figures/performance.png")
    args = ap.parse_args(argv)
    with open(args.grad) as g, open(args.peers) as p:
        plot(json.load(g), one_run(json.load(p), args.run), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""The ``jaxcnn`` command line: ``jaxcnn train`` (a thin layer over ``jaxcnn.train.fit``),
``jaxcnn check`` (over ``jaxcnn.audit.check_grads``) and ``jaxcnn show`` (``jaxcnn.show``).

Each subcommand is one function that adds its parser and sets ``run`` (``args -> exit code``),
listed in ``COMMANDS``.  Exit codes: 0 success, 2 bad input or options (nothing was trained),
1 a fault during training (non-finite loss, diverging gradients), 130 interrupted.  Errors go to
stderr as ``jaxcnn <command>: error: <message>``.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

import jax

from jaxcnn.data import DATASETS
from jaxcnn.show import add_show_command
from jaxcnn.train import GRADS, OPTIMIZERS
from jaxcnn.zoo import ARCHS

TRAIN_DEFAULTS = {"dataset": "digits", "arch": "small", "epochs": 30, "batch_size": 32,
                  "lr": 1e-3, "optimizer": "adam", "seed": 0, "grad": "manual"}
"""``jaxcnn train``'s defaults: >= 98% test accuracy on the digits in seconds (docs/training.md)."""


def _parsed(convert: Callable, valid: Callable, what: str) -> Callable[[str], object]:
    """An argparse ``type``: ``convert`` the text, then require ``valid`` of the value."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not valid(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return parse


_positive_int = _parsed(int, lambda v: v >= 1, "a positive integer")
_non_negative_int = _parsed(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _parsed(float, lambda v: 0 < v < float("inf"), "a positive number")


def _devices(text: str):
    if text == "all":
        return text
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be 'all' or a positive integer, got {text!r}"
                                         ) from None


def _error(command: str, message, code: int) -> int:
    print(f"jaxcnn {command}: error: {message}", file=sys.stderr)
    return code


# --- jaxcnn train --------------------------------------------------------------------------

def _add_train(subparsers) -> None:
    d = TRAIN_DEFAULTS
    p = subparsers.add_parser(
        "train", help="train a CNN with the hand-written backward (default: 8x8 digits)",
        description="Train a CNN whose gradients come from the hand-written backward passes "
                    "(checked against jax.grad on one batch first). With no options: the small "
                    "default net on scikit-learn's bundled 8x8 digits.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default=d["dataset"],
                   help="digits is bundled with scikit-learn; mnist and fashion-mnist read the "
                        "four standard IDX files (gzipped or not) from --data-dir")
    p.add_argument("--data-dir", metavar="DIR",
                   help="directory of the IDX files (default: data/<dataset>)")
    p.add_argument("--arch", choices=tuple(ARCHS), default=d["arch"],
                   help="network from jaxcnn.zoo; its layout adapts to the image size")
    p.add_argument("--epochs", type=_positive_int, default=d["epochs"],
                   help="total epochs (a resumed run continues up to this many)")
    p.add_argument("--batch-size", type=_positive_int, default=d["batch_size"])
    p.add_argument("--microbatch", type=_positive_int, metavar="M",
                   help="compute each step's gradient on chunks of M examples (per device), "
                        "averaged: the same update, a chunk's activations in memory "
                        "(default: the whole batch at once)")
    p.add_argument("--lr", type=_positive_float, default=d["lr"], help="learning rate")
    p.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default=d["optimizer"],
                   help="momentum is SGD with momentum 0.9")
    p.add_argument("--seed", type=int, default=d["seed"],
                   help="initialisation, data order and stochastic layers")
    p.add_argument("--out", metavar="DIR",
                   help="output directory: checkpoints, metrics.jsonl, summary.json, curves.png "
                        "(default: runs/<dataset>-<arch>)")
    p.add_argument("--grad", choices=GRADS, default=d["grad"],
                   help="manual: the hand-written backward; autodiff: jax.grad of the same "
                        "forward, for comparison")
    p.add_argument("--check-grads", type=_non_negative_int, default=0, metavar="N",
                   help="every N steps compare the hand-written gradients with jax.grad and "
                        "stop if they diverge (0: only once, before training)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint in --out")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out that holds a previous run, deleting it")
    p.add_argument("--checkpoint-every", type=_non_negative_int, default=0, metavar="N",
                   help="also checkpoint every N steps (0: at the end of each epoch only)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group(
        "several devices and hosts (docs/scaling.md)",
        "Data-parallel training: the batch is split over the devices, the gradients averaged. "
        "For several processes start one per host with the same options and its own "
        "--process-id; the flags default to $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES and "
        "$JAX_PROCESS_ID.")
    g.add_argument("--devices", type=_devices, metavar="all|N",
                   help="train over all devices (of all processes) or the first N; the batch "
                        "size must divide by their number (default: one device; all of them "
                        "in a run over several processes)")
    g.add_argument("--coordinator", metavar="HOST:PORT",
                   help="address of process 0 for jax.distributed (all processes pass the "
                        "same); 'auto' lets JAX detect a Cloud TPU pod, Slurm or Open MPI job")
    g.add_argument("--num-processes", type=_positive_int, metavar="N",
                   help="number of processes in the run")
    g.add_argument("--process-id", type=_non_negative_int, metavar="I",
                   help="this process's index, 0 .. N-1 (0 prints and writes the outputs)")
    p.set_defaults(run=_run_train)


def _run_train(args) -> int:
    from jaxcnn import data, distributed, train, zoo

    out = args.out or os.path.join("runs", f"{args.dataset}-{args.arch}")
    try:                            # before anything touches a device
        distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    except (ValueError, RuntimeError) as err:
        return _error("train", f"jax.distributed: {err}", 2)
    devices = args.devices or ("all" if jax.process_count() > 1 else None)
    try:
        if devices is not None:     # fail before loading the data
            distributed.check_batch_size(distributed.data_parallel(devices), args.batch_size)
        ds = data.load(args.dataset, args.data_dir)
        try:
            net = zoo.get(args.arch, ds.image_shape, ds.num_classes)
            params, _ = train.init_params(net, ds.image_shape, args.seed)
        except (ValueError, TypeError) as err:
            h, w, c = ds.image_shape
            raise ValueError(f"--arch {args.arch} does not fit the {ds.name} images "
                             f"({h}x{w}x{c}): {err}") from err
        optimizer = train.make_optimizer(args.optimizer, args.lr)
    except (ValueError, TypeError, OSError) as err:
        return _error("train", err, 2)

    n_params = sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
    if distributed.is_main():
        print(f"{ds.describe()}\n{args.arch}: {n_params:,} parameters; {args.optimizer} lr "
              f"{args.lr:g}, batch {args.batch_size}"
              f"{f' in microbatches of {args.microbatch}' if args.microbatch else ''}, "
              f"{args.epochs} epochs, {args.grad} "
              f"gradients; outputs in {out}")
    info = {"dataset": ds.name, "arch": args.arch, "optimizer": args.optimizer, "lr": args.lr}
    try:
        train.fit(net, params, ds.x_train, ds.y_train, ds.x_test, ds.y_test,
                  optimizer=optimizer, epochs=args.epochs, batch_size=args.batch_size,
                  seed=args.seed, grad=args.grad, microbatch=args.microbatch,
                  devices=devices,
                  check_grads=args.check_grads, out=out,
                  resume=args.resume, overwrite=args.overwrite,
                  checkpoint_every=args.checkpoint_every, info=info, verbose=True,
                  progress=not args.quiet)
    except train.TrainingError as err:
        return _error("train", err, 1)
    except (ValueError, TypeError, OSError) as err:
        hint = ("; pass --resume to continue it, --overwrite to start again, or --out DIR"
                if "already holds a run" in str(err) else "")
        return _error("train", f"{err}{hint}", 2)
    except KeyboardInterrupt:
        return _error("train", f"interrupted; the last checkpoint in {out} is intact, "
                               f"continue with --resume", 130)
    return 0


# --- jaxcnn check --------------------------------------------------------------------------

def _add_check(subparsers) -> None:
    p = subparsers.add_parser(
        "check", help="audit a zoo network's hand-written gradients against jax.grad",
        description="Compare every layer's hand-written backward with jax.vjp of its forward "
                    "(and optionally float64 central finite differences) on a random batch, "
                    "print the table, and exit 1 if any check fails (docs/audit.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", choices=tuple(ARCHS), default=TRAIN_DEFAULTS["arch"],
                   help="network from jaxcnn.zoo, at its native input size")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--finite-differences", action="store_true",
                   help="also compare with float64 central differences")
    p.add_argument("--batch-size", type=_positive_int, default=4)
    p.add_argument("--seed", type=int, default=0, help="params, batch and directions")
    p.set_defaults(run=_run_check)


def _run_check(args) -> int:
    import inspect

    import jax.numpy as jnp
    import numpy as np

    from jaxcnn import audit, losses, train, zoo

    if args.dtype == "float64" or args.finite_differences:
        jax.config.update("jax_enable_x64", True)
    make = zoo.ARCHS[args.arch]
    shape = tuple(inspect.signature(make).parameters["input_shape"].default)
    net = make(shape, 10)
    params, _ = train.init_params(net, shape, args.seed)
    params = jax.tree_util.tree_map(lambda p: p.astype(args.dtype), params)
    rng = np.random.default_rng(args.seed)
    x = jnp.asarray(rng.normal(size=(args.batch_size, *shape)), args.dtype)
    labels = jnp.asarray(rng.integers(0, 10, size=args.batch_size), jnp.int32)
    print(f"{args.arch} on a random batch of {args.batch_size} x {shape}, {args.dtype}"
          f"{', with finite differences' if args.finite_differences else ''}")
    report = audit.check_grads(net, losses.softmax_cross_entropy, params, x, labels,
                               key=jax.random.key(args.seed),
                               finite_differences=args.finite_differences, seed=args.seed)
    print(report)
    return 0 if report.ok else 1


# --- the dispatcher ------------------------------------------------------------------------

COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_train, _add_check, add_show_command)
"""One entry per subcommand: a function that adds its parser (with ``run`` set)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxcnn",
        description="CNNs in JAX whose backward passes are derived by hand and checked "
                    "against jax.grad.")
    subparsers = parser.add_subparsers(title="commands", dest="command", required=True,
                                       metavar="COMMAND")
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``jaxcnn`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:     # --help (0) or a usage error (2), already printed
        return exit_.code if isinstance(exit_.code, int) else 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

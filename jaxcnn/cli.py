"""The ``jaxcnn`` command line: ``jaxcnn train`` (a thin layer over ``jaxcnn.train.fit``),
``jaxcnn check`` (over ``jaxcnn.audit.check_grads``), ``jaxcnn show`` (``jaxcnn.show``) and
``jaxcnn data download`` (``jaxcnn.data.download``).

Each subcommand is one function that adds its parser and sets ``run`` (``args -> exit code``),
listed in ``COMMANDS``.  Exit codes: 0 success, 2 bad input or options (nothing was trained),
1 a fault during training (non-finite loss, diverging gradients), a failed gradient check
or a failed download, 130 interrupted (Ctrl-C, any command), 143 stopped by SIGTERM
(``jaxcnn train``), 141 when the reader of the output went away (``| head``: SIGPIPE's code,
nothing more printed); running out of memory is bad input (2).  Errors and checkpoint warnings
go to stderr as one line, ``jaxcnn <command>: error: <message>`` (or ``warning:``).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import shlex
import signal
import sys
import warnings
from typing import Any, Callable, NamedTuple, Sequence

import jax

from jaxcnn.data import DATASETS, DOWNLOAD_TIMEOUT, SOURCES, _data_dir_fault, _mirror_fault
from jaxcnn.distributed import _nearest_sizes
from jaxcnn.precision import LOSS_SCALES, PRECISIONS
from jaxcnn.show import add_show_command, _seed_arg
from jaxcnn.train import GRADS, OPTIMIZERS
from jaxcnn.zoo import ARCHS, RECIPES

TRAIN_DEFAULTS = {"dataset": "digits", "arch": "small", "batch_size": 32, "optimizer": "adam",
                  "seed": 0, "grad": "manual", "precision": "float32"}
"""``jaxcnn train``'s defaults: >= 98% test accuracy on the digits in seconds (docs/training.md).
``--lr`` and ``--epochs`` default to the ``--arch``'s recipe (``jaxcnn.zoo.RECIPES``)."""

EXTRAS = {"train": ("orbax", "tqdm", "matplotlib", "sklearn")}
"""The optional dependencies by extra: a command that misses one says which extra to install."""


class _Help(argparse.HelpFormatter):
    """Help that shows each option's default once: appended as ``(default: X)`` unless the
    help text already says it, and never for an option without one (``None``, a flag)."""

    def _get_help_string(self, action):
        text = action.help or ""
        unset = any(action.default is v for v in (None, False, argparse.SUPPRESS))
        if "default" in text or unset or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


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
_timeout = _parsed(float, lambda v: 0 < v <= 86400, "a number of seconds, above 0 and at most "
                                                    "86400 (a day)")


def _checked_by(fault: Callable[[str], str | None]) -> Callable[[str], str]:
    """An argparse ``type`` that keeps the text unless ``fault(text)`` names what is wrong."""

    def parse(text: str) -> str:
        problem = fault(text)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return text

    return parse


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


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("jaxcnn")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


# --- jaxcnn train --------------------------------------------------------------------------

def _recipes(field: str) -> str:
    """``"small 0.001, lenet5 0.01, ..."``: one field of every zoo net's recipe, for --help."""
    return ", ".join(f"{name} {getattr(recipe, field):g}" for name, recipe in RECIPES.items())


def _add_train(subparsers) -> None:
    d = TRAIN_DEFAULTS
    p = subparsers.add_parser(
        "train", help="train a CNN with the hand-written backward (default: 8x8 digits)",
        description="Train a CNN whose gradients come from the hand-written backward passes "
                    "(checked against jax.grad on one batch first). With no options: the small "
                    "default net on scikit-learn's bundled 8x8 digits.",
        formatter_class=_Help)
    p.add_argument("--dataset", choices=DATASETS, default=d["dataset"],
                   help="digits is bundled with scikit-learn; mnist and fashion-mnist read the "
                        "four standard IDX files (gzipped or not) from --data-dir")
    p.add_argument("--data-dir", metavar="DIR",
                   help="directory of the IDX files (default: data/<dataset>)")
    p.add_argument("--download", action="store_true",
                   help="first download the mnist or fashion-mnist files missing from "
                        "--data-dir and verify their MD5s (as jaxcnn data download)")
    p.add_argument("--arch", choices=tuple(ARCHS), default=d["arch"],
                   help="network from jaxcnn.zoo; its layout adapts to the image size")
    p.add_argument("--epochs", type=_positive_int, metavar="N",
                   help="total epochs (a resumed run continues up to this many) (default: the "
                        "--arch's: " + _recipes("epochs") + ")")
    p.add_argument("--batch-size", type=_positive_int, default=d["batch_size"], metavar="N",
                   help="examples per training step (with --devices: over all devices)")
    p.add_argument("--microbatch", type=_positive_int, metavar="M",
                   help="compute each step's gradient on chunks of M examples (per device), "
                        "averaged: the same update, a chunk's activations in memory "
                        "(default: the whole batch at once)")
    p.add_argument("--lr", type=_positive_float, metavar="X",
                   help="learning rate (default: the --arch's: " + _recipes("lr") + "); "
                        "with --resume, given, it may differ from the checkpoint's: the run "
                        "trains on with it and its summary records the change")
    p.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default=d["optimizer"],
                   help="momentum is SGD with momentum 0.9")
    p.add_argument("--seed", type=_seed_arg, default=d["seed"],
                   help="initialisation, data order and stochastic layers")
    p.add_argument("--out", metavar="DIR",
                   help="output directory: checkpoints, metrics.jsonl, summary.json, curves.png "
                        "(default: a new runs/<dataset>-<arch>[-k]; with --resume the newest "
                        "of them)")
    p.add_argument("--grad", choices=GRADS, default=d["grad"],
                   help="manual: the hand-written backward; autodiff: jax.grad of the same "
                        "forward, for comparison")
    p.add_argument("--precision", choices=PRECISIONS, default=d["precision"],
                   help="the dtype each step computes in: bfloat16 or float16 activations "
                        "and deltas with float32 params, optimizer state and loss (float16's "
                        f"residual scaled by {LOSS_SCALES['float16']:g}); for accelerators -- "
                        "a CPU emulates 16-bit arithmetic, slower than float32")
    p.add_argument("--check-grads", type=_non_negative_int, default=0, metavar="N",
                   help="every N steps compare the hand-written gradients with jax.grad and "
                        "stop if they diverge (0: only once, before training)")
    how = p.add_mutually_exclusive_group()     # one continues the run, the other replaces it
    how.add_argument("--resume", action="store_true",
                     help="continue from the last checkpoint in --out")
    how.add_argument("--overwrite", action="store_true",
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


def _default_out(args) -> tuple[str, object]:
    """``--out`` when none is given, and its lock where taken here: a fresh
    ``runs/<dataset>-<arch>[-k]`` for a new run, locked as it is chosen
    (``checkpoints.claim_fresh_out``: two runs started together get one each), the newest of
    them that holds a checkpoint for ``--resume`` (``checkpoints.latest_out``); plain
    ``runs/<dataset>-<arch>`` for ``--overwrite`` and in a run over several processes (which
    must all pick the same)."""
    from jaxcnn import checkpoints

    base = os.path.join("runs", f"{args.dataset}-{args.arch}")
    if args.overwrite or jax.process_count() > 1:
        return base, None
    if args.resume:
        return checkpoints.latest_out(base) or base, None
    return checkpoints.claim_fresh_out(base)


def _show_warning_lines(command: str):
    """A ``warnings.showwarning`` that prints jaxcnn's ``CheckpointWarning`` as one line,
    ``jaxcnn <command>: warning: <message>``, on stderr (others as Python does)."""
    from jaxcnn.checkpoints import CheckpointWarning

    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, CheckpointWarning):
            print(f"jaxcnn {command}: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    return show


def _check_device_flags(args, devices) -> None:
    """``--devices`` and ``--batch-size`` against the devices there are, in the flags' words
    (``jaxcnn.distributed`` checks the same for its Python callers)."""
    available = jax.devices()
    if devices != "all" and devices > len(available):
        raise ValueError(f"--devices {devices}, but {len(available)} device"
                         f"{'s are' if len(available) > 1 else ' is'} available "
                         f"({available[0].platform}); pass --devices all or a number from 1 "
                         f"to {len(available)}")
    count = len(available) if devices == "all" else devices
    if args.batch_size % count:
        raise ValueError(f"--batch-size {args.batch_size} must divide by the number of "
                         f"devices ({count}): each takes an equal share of every batch; try "
                         f"{_nearest_sizes(args.batch_size, count)}")


def _check_batch_flags(args, devices, n_train: int, dataset: str) -> None:
    """``--batch-size`` and ``--microbatch`` against the data set, in the flags' words."""
    if args.batch_size > n_train:
        raise ValueError(f"--batch-size {args.batch_size} exceeds the {n_train} training "
                         f"images of {dataset}")
    if args.microbatch is not None and devices is None \
            and args.batch_size > args.microbatch and args.batch_size % args.microbatch:
        raise ValueError(f"--batch-size {args.batch_size} must be a multiple of --microbatch "
                         f"{args.microbatch}, or at most it")


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler's stop, ``kill``) as an interrupt: the same unwinding."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """While it holds, SIGTERM raises ``_Terminated`` in the main thread, as Ctrl-C raises
    ``KeyboardInterrupt``: the run stops between two Python steps, its files as they were
    (each written whole), and the previous handler comes back after."""
    def stop(signum, frame):
        raise _Terminated
    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:                  # not the main thread: leave the signal alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_train(args) -> int:
    """``jaxcnn train``; an interrupt (Ctrl-C, exit 130) or a SIGTERM (exit 143) at any moment
    ends it, saying whether a checkpoint is there to resume."""
    out, lock = args.out, None
    try:
        with _sigterm_as_interrupt():
            from jaxcnn import distributed

            for module in EXTRAS["train"]:  # a missing one named now, not after the epochs
                importlib.import_module(module)
            try:                            # before anything touches a device
                distributed.initialize(args.coordinator, args.num_processes, args.process_id)
            except (ValueError, RuntimeError) as err:
                return _error("train", f"jax.distributed: {err}", 2)
            prepared = _prepare(args)       # bad data refused before a directory is made
            if isinstance(prepared, int):
                return prepared
            if out is None:
                try:
                    out, lock = _default_out(args)
                except OSError as err:
                    return _error("train", err, 2)
            return _train(args, out, prepared)
    except KeyboardInterrupt as err:
        from jaxcnn.checkpoints import has_checkpoint

        # a checkpoint write it cut short is left to orbax's temporary directory (removed by
        # the next run); orbax's threads would log that write's traceback as the process ends
        logging.getLogger("absl").setLevel(logging.CRITICAL)
        how, code = ("terminated (SIGTERM)", 143) if isinstance(err, _Terminated) else \
            ("interrupted", 130)
        kept = out is not None and has_checkpoint(out, sealed=True)
        return _error("train", f"{how}; the last checkpoint in {out} is intact, continue "
                               f"with --resume" if kept else
                               f"{how} before the first checkpoint: nothing to resume", code)
    finally:
        if lock is not None:
            lock.release()


class _Prepared(NamedTuple):
    """What ``jaxcnn train`` checks before it touches the output directory."""

    ds: Any
    net: Any
    params: Any
    optimizer: Any
    devices: Any
    lr_given: bool


def _prepare(args) -> _Prepared | int:
    """The data set, the net, its initial params and the optimizer, every option checked;
    an exit code (2, said on stderr) where one is wrong."""
    from jaxcnn import data, distributed, train, zoo

    devices = args.devices or ("all" if jax.process_count() > 1 else None)
    recipe = zoo.RECIPES[args.arch]
    lr_given = args.lr is not None          # a --resume may change it (recorded); the default not
    args.lr = recipe.lr if args.lr is None else args.lr
    args.epochs = recipe.epochs if args.epochs is None else args.epochs
    try:
        if args.dataset == "digits" and args.data_dir is not None:
            raise ValueError(f"--data-dir applies to {' and '.join(SOURCES)}, whose IDX files "
                             f"it holds; the digits ship with scikit-learn")
        if devices is not None:     # fail before loading the data
            _check_device_flags(args, devices)
        if args.download:           # DownloadError is an OSError: exit 2, nothing trained
            data.download(args.dataset, args.data_dir,
                          log=print if distributed.is_main() else None)
        ds = data.load(args.dataset, args.data_dir)
        _check_batch_flags(args, devices, len(ds.x_train), ds.name)
        try:
            net = zoo.get(args.arch, ds.image_shape, ds.num_classes)
            params, _ = train.init_params(net, ds.image_shape, args.seed)
        except (ValueError, TypeError) as err:
            h, w, c = ds.image_shape
            raise ValueError(f"--arch {args.arch} does not fit the {ds.name} images "
                             f"({h}x{w}x{c}): {err}") from err
        try:
            optimizer = train.make_optimizer(args.optimizer, args.lr)
        except ValueError as err:
            raise ValueError(f"--lr {args.lr:g}: {err}") from None
    except (ValueError, TypeError, OSError) as err:
        return _error("train", err, 2)
    return _Prepared(ds, net, params, optimizer, devices, lr_given)


def _train(args, out: str, prepared: _Prepared) -> int:
    from jaxcnn import distributed, train

    ds, net, params, optimizer, devices, lr_given = prepared
    n_params = sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
    if distributed.is_main():
        print(f"{ds.describe()}\n{args.arch}: {n_params:,} parameters; {args.optimizer} lr "
              f"{args.lr:g}, batch {args.batch_size}"
              f"{f' in microbatches of {args.microbatch}' if args.microbatch else ''}, "
              f"{args.epochs} epochs, {args.grad} gradients"
              f"{f' in {args.precision}' if args.precision != 'float32' else ''}; "
              f"outputs in {out}")
    info = {"dataset": ds.name, "arch": args.arch, "optimizer": args.optimizer, "lr": args.lr}
    try:                                # (main prints a CheckpointWarning as one line)
        train.fit(net, params, ds.x_train, ds.y_train, ds.x_test, ds.y_test,
                  optimizer=optimizer, epochs=args.epochs, batch_size=args.batch_size,
                  seed=args.seed, grad=args.grad, microbatch=args.microbatch,
                  precision=args.precision, devices=devices,
                  check_grads=args.check_grads, out=out,
                  resume=args.resume, overwrite=args.overwrite,
                  checkpoint_every=args.checkpoint_every, info=info,
                  resume_may_change=("lr",) if lr_given else (), verbose=True,
                  progress=not args.quiet)
    except train.TrainingError as err:
        return _error("train", err, 1)
    except train.CheckpointError as err:
        return _error("train", f"{err}; pass --overwrite to start again, or --out DIR", 2)
    except (ValueError, TypeError, OSError) as err:
        return _error("train", f"{err}{_train_hint(str(err))}", 2)
    return 0


_RESUME_FLAGS = {"dataset": "--dataset", "arch": "--arch", "batch_size": "--batch-size",
                 "microbatch": "--microbatch", "optimizer": "--optimizer", "seed": "--seed",
                 "grad": "--grad", "precision": "--precision"}
"""The run settings (``fit``'s config) that one ``jaxcnn train`` option sets."""


def _train_hint(message: str) -> str:
    """What to do next about ``fit``'s error ``message``: the option to repeat on a resume
    whose setting differs, or the flag that starts again."""
    if "already holds a run" in message:
        return "; pass --resume to continue it, --overwrite to start again, or --out DIR"
    if "already holds the outputs of a run" in message:
        return "; pass --overwrite to start again, or --out DIR"
    if "cannot resume" not in message:
        return ""
    if " was made with lr=" in message:
        return "; repeat its --lr, or give another --lr to change it from here (recorded)"
    if " was made with batch_statistics_rows=" in message:
        return "; give --microbatch with that number of rows, or --overwrite to start again"
    for name, flag in _RESUME_FLAGS.items():
        if f" was made with {name}=None," in message:       # the option was not given then
            return f"; drop {flag}, or --overwrite to start again"
        if f" was made with {name}=" in message:
            return f"; repeat its {flag}, or --overwrite to start again"
    return ""


# --- jaxcnn check --------------------------------------------------------------------------

def _add_check(subparsers) -> None:
    p = subparsers.add_parser(
        "check", help="audit a zoo network's hand-written gradients against jax.grad",
        description="Compare every layer's hand-written backward with jax.vjp of its forward "
                    "(and optionally float64 central finite differences) on a random batch, "
                    "print the table, and exit 1 if any check fails (docs/audit.md).",
        formatter_class=_Help)
    p.add_argument("--arch", choices=tuple(ARCHS), default=TRAIN_DEFAULTS["arch"],
                   help="network from jaxcnn.zoo, at its native input size")
    p.add_argument("--dtype", choices=("float32", "float64", "float16", "bfloat16"),
                   default="float32",
                   help="the dtype of the params, the batch and the comparison (tolerances by "
                        "dtype: docs/audit.md)")
    p.add_argument("--finite-differences", action="store_true",
                   help="also compare with float64 central differences")
    p.add_argument("--batch-size", type=_positive_int, default=4, metavar="N",
                   help="images in the random batch")
    p.add_argument("--seed", type=_seed_arg, default=0, help="params, batch and directions")
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
    rng = np.random.default_rng(args.seed % 2 ** 64)          # --seed may be negative
    x = jnp.asarray(rng.normal(size=(args.batch_size, *shape)), args.dtype)
    labels = jnp.asarray(rng.integers(0, 10, size=args.batch_size), jnp.int32)
    print(f"{args.arch} on a random batch of {args.batch_size} x {shape}, {args.dtype}"
          f"{', with finite differences' if args.finite_differences else ''}")
    report = audit.check_grads(net, losses.softmax_cross_entropy, params, x, labels,
                               key=jax.random.key(args.seed),
                               finite_differences=args.finite_differences, seed=args.seed)
    print(report)
    return 0 if report.ok else 1


# --- jaxcnn data ---------------------------------------------------------------------------

def _add_data(subparsers) -> None:
    p = subparsers.add_parser(
        "data", help="download MNIST or Fashion-MNIST for jaxcnn train",
        description="Get the data sets jaxcnn train reads (the digits need nothing: they ship "
                    "with scikit-learn).")
    actions = p.add_subparsers(title="actions", dest="action", required=True, metavar="ACTION")
    d = actions.add_parser(
        "download", help="download a data set's four IDX files and verify their MD5s",
        description="Download the four .gz IDX files of MNIST or Fashion-MNIST from their "
                    "published locations (or --mirror), check each against its published MD5 "
                    "and move it into --data-dir only then; files already there with the "
                    "right MD5 are kept. Exit code 1 when a file cannot be downloaded or "
                    "does not verify (nothing is left in its place), 2 for bad options.")
    d.add_argument("dataset", choices=tuple(SOURCES))
    d.add_argument("--data-dir", type=_checked_by(_data_dir_fault), metavar="DIR",
                   help="where to put the files (default: data/<dataset>, where jaxcnn train "
                        "looks)")
    d.add_argument("--mirror", type=_checked_by(_mirror_fault), metavar="URL",
                   help="fetch URL/<file>.gz instead (default: the published locations, in "
                        "order, listed in jaxcnn.data.SOURCES)")
    d.add_argument("--timeout", type=_timeout, default=DOWNLOAD_TIMEOUT,
                   metavar="SECONDS",
                   help="the longest any one request may wait (default: %(default)s)")
    d.set_defaults(run=_run_data_download)


def _run_data_download(args) -> int:
    from jaxcnn import data

    try:
        paths = data.download(args.dataset, args.data_dir, mirror=args.mirror,
                              timeout=args.timeout, log=print)
    except data.DownloadError as err:
        return _error("data download", err, 1)
    except (ValueError, OSError) as err:    # a --data-dir that cannot be made (or checked)
        return _error("data download", err, 2)
    except KeyboardInterrupt:
        return _error("data download", "interrupted; no partial file was left", 130)
    where = os.path.dirname(paths["x_train"])
    flag = f" --data-dir {shlex.quote(where)}" if args.data_dir is not None else ""
    print(f"{args.dataset}: the four files are in {where}; train with: jaxcnn train --dataset "
          f"{args.dataset}{flag}")
    return 0


# --- the dispatcher ------------------------------------------------------------------------

COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_train, _add_check, add_show_command, _add_data)
"""One entry per subcommand: a function that adds its parser (with ``run`` set)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxcnn",
        description="CNNs in JAX whose backward passes are derived by hand and checked "
                    "against jax.grad.")
    parser.add_argument("--version", action="version", version=f"jaxcnn {_version()}")
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
    name = " ".join(filter(None, (args.command, getattr(args, "action", None))))
    try:
        with warnings.catch_warnings():     # a checkpoint's warning as one line, in every command
            from jaxcnn.checkpoints import CheckpointWarning
            warnings.simplefilter("always", CheckpointWarning)
            warnings.showwarning = _show_warning_lines(name)
            return args.run(args)
    except KeyboardInterrupt:                # train handles its own; check, show, data here
        return _error(name, "interrupted", 130)
    except BrokenPipeError:                  # `jaxcnn check | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 141
    except (MemoryError, jax.errors.JaxRuntimeError) as err:    # NumPy's, or XLA's allocator
        if not isinstance(err, MemoryError) and "RESOURCE_EXHAUSTED" not in str(err):
            raise
        hint = "; --microbatch M computes each step in chunks" if args.command == "train" else ""
        return _error(name, f"out of memory: the batch or image is too large for this machine; "
                            f"ask for a smaller one{hint}", 2)
    except ImportError as err:               # an optional dependency: name its extra
        missing = (err.name or getattr(err.__cause__, "name", None) or "").partition(".")[0]
        for extra, modules in EXTRAS.items():
            if missing in modules:
                return _error(args.command, f"this command needs the '{extra}' extra ({missing} "
                                            f"is not installed): pip install 'jaxcnn[{extra}]'", 2)
        raise


if __name__ == "__main__":
    sys.exit(main())

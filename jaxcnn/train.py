"""Training: ``fit``, ``jaxcnn train``'s loop, as a short orchestration of named steps.

``fit`` checks its arguments, opens (or resumes) the output directory, builds the jitted step,
then for every epoch runs its mini-batch steps, evaluates and checkpoints, and finally
summarises the run.  Each part lives where it reads alone:

    jaxcnn.step         the step: optimizers, gradients, the update, the seed's streams
    jaxcnn.audit        the gradient check (hand-written vs jax.grad), before and during training
    jaxcnn.evaluation   loss and accuracy over a whole set
    jaxcnn.checkpoints  orbax checkpoints and the output directory
    jaxcnn.report       the progress bar, the curves, the final line

This module re-exports their public names that a loop of one's own needs (``__all__``), so that
``from jaxcnn import train`` stays the one import.  Every random choice is a function of
``(seed, epoch, step)`` (``jaxcnn.step``), so a run resumed from a checkpoint repeats exactly
the steps of a run never interrupted, and on CPU ends with bitwise the same parameters.  An
epoch is ``n_train // batch_size`` steps; the last, partial batch of each shuffled order is
left out.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import itertools
import json
import math
import os
import time
import warnings
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcnn import distributed, report
from jaxcnn._checks import check_data, check_one_input, positive_int
from jaxcnn.audit import GradCheck, check_grads as audit_grads, default_tolerance, gradient_check
from jaxcnn.checkpoints import (CHECKPOINT_DIR, OUTPUT_FILES, CheckpointError, CheckpointWarning,
                                Checkpoints, check_path, load_checkpoint, lock_out, named_arrays,
                                prepare_out, replace_atomic, strict_json, warn_passed,
                                write_atomic)
from jaxcnn.core import Layer, Params, State, check_seed, describe
from jaxcnn.evaluation import EVAL_BATCH, evaluate, evaluator
from jaxcnn.losses import Loss, check_net_and_loss, softmax_cross_entropy
from jaxcnn.precision import Policy, policy
from jaxcnn.report import plot_curves
from jaxcnn.state import has_state, init_state
from jaxcnn.step import (GRADS, OPTIMIZERS, check_optimizer, epoch_order, fit_step, init_params,
                         loss_and_grad, loss_grad_and_state, make_optimizer, make_step, state_step,
                         step_keys, train_step, update_step)

__all__ = [
    "GRADS", "OPTIMIZERS", "CHECKPOINT_DIR", "EVAL_BATCH", "OUTPUT_FILES",
    "TrainingError", "NonFiniteLossError", "NonFiniteStateError", "GradientMismatchError",
    "CheckpointError", "CheckpointWarning",
    "make_optimizer", "loss_and_grad", "train_step", "update_step", "make_step",
    "loss_grad_and_state", "state_step", "init_params", "epoch_order", "GradCheck", "gradient_check", "default_tolerance",
    "evaluate", "plot_curves", "load_checkpoint", "FitResult", "fit",
]

_EVAL_TRAIN = 10_000                   # the training examples evaluated after every epoch


class TrainingError(RuntimeError):
    """A fault found while training (the inputs were fine): stops ``fit``, keeps the last
    good checkpoint."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite; ``step`` is the global step (0-based) that produced it."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class NonFiniteStateError(TrainingError):
    """The parameters or the optimizer state stopped being finite (the run diverged); found
    before a checkpoint would have saved them, so none holds them.  ``step``: the number of
    steps run when they were found (the step that checkpoint would have had)."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class GradientMismatchError(TrainingError):
    """The hand-written gradients and ``jax.grad`` disagree beyond the tolerance.

    ``check``: the end-to-end comparison per parameter array; ``audit``: the per-layer audit
    (``jaxcnn.check_grads``) of the same batch, which names the first wrong layer.
    """

    def __init__(self, message: str, check: GradCheck, audit=None):
        super().__init__(message)
        self.check = check
        self.audit = audit


class FitResult(NamedTuple):
    """What ``fit`` returns: the final ``params`` and ``opt_state``, one ``history`` record per
    epoch (also ``metrics.jsonl``), the ``summary`` (also ``summary.json``) and the net's final
    ``state`` (``jaxcnn.state``: BatchNorm's running statistics; ``()`` for a net without),
    which evaluation needs: ``jc.with_state(net, result.state).apply(params, x, train=False)``."""

    params: Params
    opt_state: Any
    history: list[dict]
    summary: dict
    state: State = ()


def fit(net: Layer, params: Params, x_train, y_train, x_test=None, y_test=None, *,
        loss: Loss = softmax_cross_entropy,
        optimizer: optax.GradientTransformation | None = None,
        epochs: int = 10, batch_size: int = 32, seed: int = 0, grad: str = "manual",
        microbatch: int | None = None, precision: str | Policy | None = None,
        devices: str | int | list | None = None, check_grads: int = 0,
        grad_tol: float | None = None,
        out: str | os.PathLike | None = None, resume: bool = False, overwrite: bool = False,
        checkpoint_every: int = 0, info: dict | None = None,
        resume_may_change: Sequence[str] = (), verbose: bool = True,
        progress: bool | None = None, print_fn: Callable[[str], None] = print) -> FitResult:
    """Train ``net`` from ``params`` on ``(x_train, y_train)`` with mini-batch steps under jit.

    Args:
      net, params: a ``Layer`` and its initial params (e.g. ``init_params(net, shape, seed)``).
      x_train, y_train: images ``(N, H, W, C)`` (``(N, F)`` for a dense net) in the params'
        dtype; integer labels ``(N,)``, or real targets of the net's output shape.
      x_test, y_test: a held-out split, evaluated after every epoch (optional).
      loss: a ``jaxcnn`` ``Loss`` (default ``softmax_cross_entropy`` on logits).
      optimizer: an optax optimizer (default ``optax.adam(1e-3)``).
      epochs: the total number of epochs (a resumed run continues up to it); batch_size: the
        mini-batch size, at most ``len(x_train)``; seed: data order and per-step keys.
      grad: ``"manual"`` (the hand-written backward) or ``"autodiff"`` (``jax.grad``).
      microbatch: each step's gradient as the mean over chunks of this many examples (per
        device; ``jaxcnn.microbatch``): the same update up to rounding, a chunk's activations
        in memory.  The batch must be a multiple of it or at most it (then it is ignored); the
        gradient checks use the first chunk.  ``None``: the whole batch at once.
      precision: ``"bfloat16"`` or ``"float16"``: each step computes on 16-bit copies of the
        params and batch, the params, optimizer state, loss and evaluation staying float32
        (``jaxcnn.precision``); the gradient checks compare in float32.  ``None``: no casts.
      devices: ``None``: one device.  ``"all"``, a number or a list of devices: data-parallel
        over a mesh of them (``jaxcnn.distributed``; docs/scaling.md): the batch sharded (it
        must divide by the device count), the gradients averaged.  Needed, and the same on
        every process, in a ``jax.distributed`` run, where only process 0 prints and writes.
      check_grads: every ``check_grads`` steps (0: never) compare the hand-written gradients
        with ``jax.grad`` on the step's batch; beyond ``grad_tol`` (default
        ``default_tolerance(params)``) raise ``GradientMismatchError``.  The comparison is also
        made, and printed, once before training.
      out: a directory for checkpoints, ``metrics.jsonl``, ``summary.json`` and ``curves.png``;
        ``None`` writes nothing.  One run at a time: ``fit`` holds ``out``'s lock
        (``checkpoints.lock_out``) while it runs, and refuses a directory another process
        holds.  A fresh run refuses a directory that holds checkpoints unless ``overwrite``
        (which deletes the checkpoints and outputs jaxcnn wrote there, nothing else) or
        ``resume``.
      resume: continue from the latest good checkpoint in ``out``, made with the same
        settings (compared before any array is read).  A corrupt or partial latest
        checkpoint is passed over for the one before, with a ``CheckpointWarning``, and kept
        aside as ``<step>.corrupt``; ``CheckpointError`` if none is good.  ``metrics.jsonl``
        is rewritten from the checkpoint's history.  A run that has done its ``epochs``
        already has nothing to do: its outputs are completed and it returns at once.
      checkpoint_every: also checkpoint every this many steps (0: at epoch ends only).
      info: JSON-able facts recorded in the summary and checked on resume (dataset, arch, ...).
      resume_may_change: ``info`` entries a resume may change (``jaxcnn train --resume --lr``);
        each change (step, setting, from, to) goes into later checkpoints and summary's changes.
      verbose: print (with ``print_fn``) the gradient check, a resume and the result; a
        ``print_fn`` that raises becomes a ``RuntimeWarning``, and training goes on silently.
      progress: show a tqdm progress bar on stderr (default: ``verbose``).

    Raises ``ValueError``/``TypeError`` before any training for bad inputs -- a non-finite
    loss on the first batch of finite images is one (the data overflow the forward) -- and
    ``TrainingError`` during it: ``NonFiniteLossError`` (naming the step) when the loss stops
    being finite, ``NonFiniteStateError`` when the parameters or optimizer state do (checked
    before every checkpoint and at every epoch's end), ``GradientMismatchError`` when a
    gradient check fails.  Every checkpoint holds finite values only, and the message names
    the last one kept.  JSON files are strict (``checkpoints.strict_json``).
    """
    run = _checked(net, params, x_train, y_train, x_test, y_test, loss=loss,
                   optimizer=optimizer, epochs=epochs, batch_size=batch_size, seed=seed,
                   grad=grad, microbatch=microbatch, precision=precision, devices=devices,
                   check_grads=check_grads, grad_tol=grad_tol, out=out,
                   checkpoint_every=checkpoint_every, info=info,
                   resume_may_change=resume_may_change, verbose=verbose, progress=progress,
                   print_fn=print_fn)
    state = _fresh_state(run, params)
    with _opened(run, resume=resume, overwrite=overwrite) as run:
        state = _resume(run, state) if resume else state
        if state.step >= run.epochs * run.steps_per_epoch:
            return _nothing_to_do(run, state)
        state = _train(run, state)
        return _finish(run, state, state.seconds_before + time.perf_counter() - run.t_start)


# --- what fit's steps share ----------------------------------------------------------------

class _Run(NamedTuple):
    """What ``fit``'s steps read and never change: the checked arguments and the run's parts."""

    net: Layer
    loss: Loss
    optimizer: optax.GradientTransformation
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    epochs: int
    batch_size: int
    seed: int
    grad: str
    microbatch: int | None             # None also where one chunk would hold the whole batch
    precision: Policy
    check_grads: int
    grad_tol: float
    checkpoint_every: int
    plan: distributed.DataParallel | None
    main: bool                         # prints and writes the run's files (process 0)
    steps_per_epoch: int
    config: dict                       # recorded in every checkpoint, checked on resume
    info: dict
    may_change: tuple[str, ...]        # info entries a resume may change (recorded)
    out: str | None
    show_progress: bool
    log: Callable[[str], None]
    t_start: float
    ckpt: Checkpoints | None = None

    @property
    def n_train(self) -> int:
        return len(self.x_train)

    def local(self, tree):
        """This process's copy of ``tree``: for evaluation and checks on one device."""
        return tree if self.plan is None else distributed.host_copy(tree)


class _State(NamedTuple):
    """What a checkpoint holds and the steps advance.  ``order`` is the data order of the epoch
    holding ``step``; ``epoch_losses`` the losses of that epoch's steps so far."""

    params: Params
    opt_state: Any
    key: jax.Array                     # jax.random.key(seed)
    order: np.ndarray
    step: int
    history: list[dict]
    epoch_losses: list[float]
    seconds_before: float              # spent by the runs this one resumes
    check_worst: float | None = None   # the gradient check before training (of this run)
    net_state: State = ()              # the net's state (jaxcnn.state): BatchNorm's statistics
    changes: tuple[dict, ...] = ()     # settings a resume changed: step, setting, from, to


# --- validate the arguments ----------------------------------------------------------------

def _checked(net, params, x_train, y_train, x_test, y_test, *, loss, optimizer, epochs,
             batch_size, seed, grad, microbatch, precision, devices, check_grads, grad_tol, out,
             checkpoint_every, info, resume_may_change, verbose, progress, print_fn) -> _Run:
    """``fit``'s arguments checked and completed: ``ValueError``/``TypeError`` naming the
    argument, before anything is trained or written."""
    t_start = time.perf_counter()                         # the run's clock starts here
    check_net_and_loss("fit", net, loss)
    _check_kinds(optimizer=optimizer, out=out, info=info, print_fn=print_fn,
                 check_grads=check_grads, checkpoint_every=checkpoint_every, grad_tol=grad_tol)
    epochs = positive_int("epochs", epochs)
    batch_size = positive_int("batch_size", batch_size)
    seed = check_seed("fit", seed)
    checkpoint_every, check_grads = int(checkpoint_every), int(check_grads)
    if check_grads < 0 or checkpoint_every < 0:
        raise ValueError(f"check_grads and checkpoint_every must be >= 0, got {check_grads} "
                         f"and {checkpoint_every}")
    if grad not in GRADS:
        raise ValueError(f"grad must be one of {', '.join(GRADS)}, got {grad!r}")
    if out is not None:                 # before the directory is made
        check_path(os.path.join(os.fspath(out), CHECKPOINT_DIR))
    precision = policy(precision, "precision")
    x_train, y_train, x_test, y_test = _checked_sets(net, loss, precision, params, x_train,
                                                     y_train, x_test, y_test)
    if batch_size > len(x_train):
        raise ValueError(f"batch_size ({batch_size}) exceeds the number of training examples "
                         f"({len(x_train)})")
    optimizer = make_optimizer("adam", 1e-3) if optimizer is None else optimizer
    grad_tol = _checked_numbers(params, grad_tol)
    plan = _plan(devices, batch_size)
    microbatch = _checked_microbatch(microbatch, batch_size, plan)
    main = plan is None or distributed.is_main()
    config = _config(x_train, (x_train, y_train, x_test, y_test) if out is not None else None,
                     net=net, loss=loss, batch_size=batch_size, seed=seed, grad=grad,
                     microbatch=microbatch, precision=precision, info=info,
                     statistics=_statistics_rows(net, microbatch, batch_size, plan))
    may_change = _checked_may_change(resume_may_change, info)
    return _Run(
        net=net, loss=loss, optimizer=optimizer, x_train=x_train, y_train=y_train,
        x_test=x_test, y_test=y_test, epochs=epochs, batch_size=batch_size, seed=seed,
        grad=grad, microbatch=microbatch, precision=precision, check_grads=check_grads,
        grad_tol=grad_tol,
        checkpoint_every=checkpoint_every, plan=plan, main=main,
        steps_per_epoch=len(x_train) // batch_size, config=config, info=info or {},
        may_change=may_change,
        out=None if out is None else os.fspath(out),
        show_progress=(verbose if progress is None else progress) and main,
        log=_logger(print_fn) if verbose and main else (lambda _: None), t_start=t_start)


def _logger(print_fn: Callable[[str], None]) -> Callable[[str], None]:
    """``print_fn``, except that its failure costs the run nothing: the first exception it
    raises is turned into a warning and the lines after it are dropped (as ``logging`` does
    with a failing handler), so a broken log never loses a trained result."""
    broken = []

    def log(line: str) -> None:
        if broken:
            return
        try:
            print_fn(line)
        except Exception as err:            # the user's callable: any kind
            broken.append(err)
            warnings.warn(f"fit: print_fn raised {type(err).__name__}: {err}; training goes "
                          f"on without its lines", RuntimeWarning, stacklevel=2)
    return log


def _checked_sets(net, loss, precision, params, x_train, y_train, x_test, y_test) -> tuple:
    """The training and test sets as NumPy arrays that fit the net and the loss
    (``check_data``), and whose images the step's ``precision`` can hold."""
    if (x_test is None) != (y_test is None):
        raise ValueError("give both x_test and y_test, or neither")
    for x in (x_train, x_test):
        check_one_input("fit", x)
    x_train, y_train = np.asarray(x_train), np.asarray(y_train)
    check_data(net, params, x_train, y_train, "training set", loss)
    _check_range(precision, x_train, "training set")
    if x_test is not None:
        x_test, y_test = np.asarray(x_test), np.asarray(y_test)
        check_data(net, params, x_test, y_test, "test set", loss)
    return x_train, y_train, x_test, y_test


def _check_range(precision, x, what: str) -> None:
    """Finite images that the step's cast to ``precision.compute`` would make infinite (a
    float16 step holds at most 65504): a ``ValueError`` now, not a NaN loss at step 0."""
    if not precision.active or not np.issubdtype(x.dtype, np.floating) or not x.size:
        return
    largest = max(float(np.max(x)), -float(np.min(x)))      # no copy of a large set
    info = jnp.finfo(precision.compute)
    top = float(info.max)       # rounding to nearest, half an ulp above it is the first inf
    if largest >= top + 2.0 ** (info.maxexp - 2 - info.nmant):
        raise ValueError(f"{what}: images reach {largest:g}, beyond {precision.compute}'s "
                         f"largest number {top:g}, which precision={precision.compute!r} casts "
                         f"them to; rescale them, or train with precision='bfloat16' or "
                         f"'float32'")


def _check_kinds(*, optimizer, out, info, print_fn, check_grads, checkpoint_every, grad_tol):
    """The types of ``fit``'s arguments that its later checks take for granted: a
    ``TypeError`` naming the argument, before anything runs."""
    if optimizer is not None:
        check_optimizer("fit", optimizer)
    if out is not None:
        path = os.fspath(out) if isinstance(out, (str, os.PathLike)) else None
        if not isinstance(path, str):
            raise TypeError(f"out must be a directory path (str or pathlib.Path), got "
                            f"{describe(out)}")
        if not path:
            raise ValueError("out must name a directory, got an empty path")
        if os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(f"out must be a directory, {path!r} is a file")
    if info is not None and not isinstance(info, dict):
        raise TypeError(f"info must be a dict of JSON values, got {describe(info)}")
    if not callable(print_fn):
        raise TypeError(f"print_fn must be callable (print, a logger's info), got "
                        f"{describe(print_fn)}")
    for name, value in (("check_grads", check_grads), ("checkpoint_every", checkpoint_every)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int (0: never), got {value!r}")
    if grad_tol is not None and (isinstance(grad_tol, (bool, np.bool_)) or not isinstance(
            grad_tol, (int, float, np.integer, np.floating))):
        raise TypeError(f"grad_tol must be a number, got {grad_tol!r}")


def _checked_may_change(names, info) -> tuple[str, ...]:
    """``resume_may_change``: names of ``info``'s entries (the settings ``fit`` itself checks,
    batch size, seed, ..., never change within a run)."""
    if isinstance(names, str) or not isinstance(names, (tuple, list, set, frozenset)) \
            or not all(isinstance(n, str) for n in names):
        raise TypeError(f"resume_may_change must be a sequence of info's keys, got {names!r}")
    unknown = sorted(set(names) - set(info or {}))
    if unknown:
        raise ValueError(f"resume_may_change names {unknown}, which are not entries of info "
                         f"({sorted(info or {})}); only info's settings may change on resume")
    return tuple(names)


def _checked_numbers(params, grad_tol) -> float:
    """``grad_tol`` (default ``default_tolerance(params)``), which must be a positive number
    finite in float32, and ``params``, which must be finite: ``ValueError`` naming them."""
    bad = _non_finite(params)
    if bad:
        raise ValueError(f"params: non-finite values in {_listed(bad)}; initialise them anew")
    if grad_tol is None:
        return default_tolerance(params)
    value = float(grad_tol)
    with np.errstate(over="ignore"):
        in_float32 = float(np.float32(value))
    if not (value > 0 and math.isfinite(in_float32)):
        raise ValueError(f"grad_tol must be a positive number, finite in float32, got "
                         f"{grad_tol!r}")
    return value


def _config(x_train, data, *, net, loss, batch_size, seed, grad, microbatch, precision, info,
            statistics=None) -> dict:
    """What defines a run, recorded in every checkpoint and compared on resume: the data set's
    size, image shape and dtype and a SHA-256 of its arrays (``data``: the training and test
    images and targets; ``None`` without checkpoints, which alone use it), the batch, seed,
    gradient, microbatch (the step's: ``None`` where one chunk holds a device's rows), for a
    net with state the rows its batch statistics span (``_statistics_rows``), precision and
    loss scale, the net's name (its layers) and every layer's settings (``_net_settings``),
    the loss's name, and ``info``
    (``jaxcnn train``: the data set, net, optimizer and learning rate), which may not redefine
    the others -- as JSON reads it back, so that a saved config compares equal."""
    config = {"n_train": len(x_train), "image_shape": list(x_train.shape[1:]),
              "dtype": str(x_train.dtype),
              "data_sha256": None if data is None else _data_digest(data),
              "net_layers": net.name, _NET_SETTINGS: _net_settings(net), _LOSS: loss.name,
              "batch_size": batch_size, "seed": seed,
              "grad": grad, "microbatch": microbatch, "precision": precision.compute,
              "loss_scale": precision.loss_scale}
    if statistics is not None:
        config[_STATISTICS_ROWS] = statistics
    clash = sorted(set(info or {}) & (set(config) | set(_UNRECORDED) | _SUMMARY_OWN))
    if clash:
        raise ValueError(f"info may not hold {clash}: fit records those itself, in the "
                         f"summary and its checkpoints; give your facts other names")
    config.update(info or {})
    try:
        return json.loads(strict_json(config))
    except TypeError as err:
        raise TypeError(f"info must hold JSON values (str, numbers, lists, dicts): {err}"
                        ) from None


def _net_settings(net: Layer, path: str = "") -> list[list]:
    """Every layer of ``net``, combinators first, as ``[path, name, {setting: value}]`` from
    its ``config``: two nets of one name (``serial(Conv2D, Dropout)``) whose padding, dilation
    or rate differ are told apart on resume.  Only settings of plain values (numbers, strings,
    bools, ``None`` and tuples of them) are kept -- a function's or a set's text is not the
    same in two processes; a convolution's ``method`` neither: its lowerings compute the same
    equations (``tests/test_lowerings.py``)."""
    name = dict(net.config).get("kind", net.name) if net.layers else net.name
    settings = {k: _plain(v) for k, v in net.config
                if k not in ("kind", "method") and _plain(v) is not _NOT_PLAIN}
    rows = [[path or "[]", name, settings]]
    for i, layer in enumerate(net.layers):
        rows += _net_settings(layer, f"{path}[{i}]")
    return rows


_NOT_PLAIN = object()


def _plain(value):
    """``value`` as JSON keeps it -- an int, float, str, bool, ``None``, or a list of them (a
    tuple's) -- or ``_NOT_PLAIN``."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (tuple, list)):
        items = [_plain(v) for v in value]
        return _NOT_PLAIN if any(v is _NOT_PLAIN for v in items) else items
    return _NOT_PLAIN


def _settings_differ(was: list, now: list) -> tuple | None:
    """The first layers of two ``_net_settings`` lists that differ, as ``"[i] name k=v ..."``
    texts (``None`` past the shorter's end); ``None`` if none does.  A setting only one side
    records (one added to a layer since) is not compared."""
    for a, b in itertools.zip_longest(was, now):
        if a is None or b is None or a[:2] != b[:2] or any(
                a[2][k] != b[2][k] for k in set(a[2]) & set(b[2])):
            return tuple(None if r is None else " ".join(
                [*r[:2], *(f"{k}={v!r}" for k, v in sorted(r[2].items()))]) for r in (a, b))
    return None


def _data_digest(arrays) -> str:
    """SHA-256 of the arrays' shapes, dtypes and bytes (``None`` entries marked as such): two
    data sets of one size and shape are told apart on resume."""
    digest = hashlib.sha256()
    for a in arrays:
        if a is None:
            digest.update(b"none;")
            continue
        a = np.ascontiguousarray(a)
        digest.update(f"{a.shape};{a.dtype};".encode())
        digest.update(a.reshape(-1).view(np.uint8))       # any dtype, bfloat16's included
    return digest.hexdigest()


def _check_opt_state(opt_state) -> None:
    """The optimizer's initial state holds numbers, all finite: ``fit`` checks every state for
    a divergence and checkpoints it as arrays of numbers."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(opt_state):
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", np.float32), jax.dtypes.prng_key):
            raise TypeError(f"optimizer: its state holds a PRNG key (opt_state"
                            f"{jax.tree_util.keystr(path)}), which fit cannot check for "
                            f"divergence or checkpoint; optimizers that draw noise (optax."
                            f"noisy_sgd, add_noise) are not supported")
    bad = _non_finite(opt_state)
    if bad:
        raise ValueError(f"optimizer: its initial state holds non-finite values in "
                         f"{_listed(['opt_state/' + n for n in bad])}, which fit would take for "
                         f"a divergence; optimizers that start from inf and need the loss "
                         f"value in update (optax.lbfgs, contrib.reduce_on_plateau) are not "
                         f"supported")


def _non_finite(tree) -> list[str]:
    """The names (``params/0/w``) of the floating arrays of ``tree`` that hold a NaN or inf."""
    return [name for name, a in named_arrays(tree)
            if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all()]


def _listed(names: list[str], most: int = 4) -> str:
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def _plan(devices, batch_size: int) -> distributed.DataParallel | None:
    """The mesh for ``devices`` (``None``: one device), whose size must divide the batch."""
    if devices is not None:
        plan = distributed.data_parallel(devices)
        distributed.check_batch_size(plan, batch_size)
        return plan
    if jax.process_count() > 1:
        raise ValueError(f"this is one of {jax.process_count()} processes (jax.distributed): "
                         f"pass devices='all' to train over the devices of all of them")
    return None


def _checked_microbatch(microbatch, batch_size: int, plan) -> int | None:
    """The step's ``microbatch``, checked against the (per-device) batch; ``None`` where one
    chunk would hold it all -- the plain step."""
    if microbatch is None:
        return None
    microbatch = positive_int("microbatch", microbatch)
    rows = batch_size // (1 if plan is None else plan.size)
    if rows > microbatch and rows % microbatch:
        what = (f"batch_size ({rows})" if plan is None
                else f"the per-device batch ({rows} = batch_size / {plan.size})")
        raise ValueError(f"{what} must be a multiple of microbatch ({microbatch}) or at "
                         f"most it")
    return None if microbatch >= rows else microbatch


def _statistics_rows(net: Layer, microbatch: int | None, batch_size: int, plan) -> int | None:
    """How many rows a net with state (BatchNorm) normalises each training batch over: each
    chunk of the step's ``microbatch`` (``_checked_microbatch``), else each device's share of
    the batch (``None`` for a net without state).  A resumed run must keep it -- on any device
    count, by its ``microbatch``."""
    if not has_state(net):
        return None
    return microbatch or batch_size // (1 if plan is None else plan.size)


# --- open or resume the output directory ---------------------------------------------------

def _fresh_state(run: _Run, params: Params) -> _State:
    """Step 0: the given params, a fresh optimizer state (a full copy on every device of a
    mesh: orbax saves global arrays), epoch 0's order."""
    key = jax.random.key(run.seed)
    opt_state = run.optimizer.init(params)
    _check_opt_state(opt_state)
    net_state = init_state(run.net, run.x_train.shape[1:])
    if run.plan is not None:
        params, opt_state, net_state = distributed.replicate(run.plan,
                                                             (params, opt_state, net_state))
    return _State(params, opt_state, key, epoch_order(key, 0, run.n_train), 0, [], [], 0.0,
                  net_state=net_state)


@contextlib.contextmanager
def _opened(run: _Run, *, resume: bool, overwrite: bool) -> Iterator[_Run]:
    """``run`` with the checkpoints of ``out`` (none without one), for as long as the block
    runs.  Process 0 holds ``out``'s lock throughout (``checkpoints.lock_out``: another run
    there is refused, naming its process) and, under it, clears what ``overwrite`` replaces
    (``checkpoints.prepare_out``); every process checks the directory for a fresh run or a
    resume."""
    if resume and overwrite:
        raise ValueError("resume continues the run in out and overwrite replaces it: pass one "
                         "of them")
    if run.out is None:
        if resume:
            raise ValueError("resume needs the output directory that holds the checkpoints "
                             "(out)")
        yield run
        return
    lock = ckpt = None
    try:
        if resume:          # nothing to resume: say so before creating anything
            prepare_out(run.out, resume=True, overwrite=overwrite, clear=False)
        if run.main:
            lock = lock_out(run.out)
        ckpt_dir = prepare_out(run.out, resume=resume, overwrite=overwrite, clear=run.main)
        if run.plan is not None:
            distributed.sync("jaxcnn.fit: output directory checked")
        ckpt = Checkpoints(ckpt_dir, primary=run.main)
        yield run._replace(ckpt=ckpt)
    finally:
        if ckpt is not None:
            ckpt.close()
        if lock is not None:
            lock.release()


def _saved(run: _Run, state: _State) -> dict:
    """The arrays a checkpoint holds (``load_checkpoint``'s ``state``)."""
    key_data = jax.random.key_data(state.key)
    return {"params": state.params, "opt_state": state.opt_state, "net_state": state.net_state,
            "order": state.order,
            "key": key_data if run.plan is None else distributed.replicate(run.plan, key_data)}


def _resume(run: _Run, state: _State) -> _State:
    """The state of ``out``'s newest good checkpoint (``Checkpoints.find_good``), which must
    have been made with this run's settings (``config``, compared before any array is read:
    ``ValueError`` naming the first that differs).  Corrupt newer ones are reported
    (``CheckpointWarning``) and set aside; ``metrics.jsonl`` is rewritten from the history --
    after a resume past the last epoch is refused (``_check_past_end``), so that a refusal
    changes nothing in ``out``."""
    step, restored, meta, passed = run.ckpt.find_good(
        _saved(run, state), functools.partial(_check_config, run), what="cannot resume")
    changes = _changes(run, step, meta)
    try:
        _check_past_end(run, step, len(meta["history"]), changes)
    except ValueError:                          # reported, left where they are
        warn_passed(passed, step, aside=False, stacklevel=4)
        raise
    if passed:
        warn_passed(passed, step, aside=True, stacklevel=4)
        run.ckpt.set_aside([bad for bad, _ in passed])
        if run.plan is not None:
            distributed.sync("jaxcnn.fit: corrupt checkpoints set aside")
            run.ckpt.reopen()
    # as fresh, uncommitted device arrays: the compiled steps of a run never stopped are
    # reused (orbax's arrays carry a committed sharding, a different jit cache key)
    restored = jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a)), restored)
    params, opt_state, net_state = (restored["params"], restored["opt_state"],
                                    restored["net_state"])
    run.log(f"resuming from the checkpoint at step {step} (epoch "
            f"{step // run.steps_per_epoch} of {run.epochs}) in {run.ckpt.directory}")
    opt_state = _passed_hyperparams(run, opt_state, run.optimizer.init(params))
    if run.plan is not None:
        params, opt_state, net_state = distributed.replicate(run.plan,
                                                             (params, opt_state, net_state))
    _write_metrics(run, meta["history"])
    return _State(params, opt_state, jax.random.wrap_key_data(jnp.asarray(restored["key"])),
                  np.asarray(restored["order"]), step, meta["history"], meta["epoch_losses"],
                  meta["seconds"], meta.get("gradient_check"), net_state, changes)


def _passed_hyperparams(run: _Run, restored, fresh):
    """``restored`` with the hyperparameters of the optimizer passed: ``optax.inject_hyperparams``
    keeps them in its state, where the checkpoint's would otherwise override it -- unlike a
    plain optax optimizer's, held in its closure.  Scheduled ones (their own state) are kept."""
    def injected(node) -> bool:
        return hasattr(node, "hyperparams") and hasattr(node, "hyperparams_states")

    def pick(old, new):
        if not injected(old):
            return old
        taken = {k: new.hyperparams[k] if k in new.hyperparams and k not in
                 old.hyperparams_states else v for k, v in old.hyperparams.items()}
        def shown(v) -> str:
            v = np.asarray(v)
            return f"{v.item():g}" if v.size == 1 else str(v.tolist())

        for k, v in taken.items():
            if not np.array_equal(np.asarray(v), np.asarray(old.hyperparams[k])):
                run.log(f"taking the optimizer's {k} = {shown(v)} (the checkpoint's optimizer "
                        f"state held {shown(old.hyperparams[k])})")
        return old._replace(hyperparams=taken)

    return jax.tree_util.tree_map(pick, restored, fresh, is_leaf=injected)


def _changes(run: _Run, step: int, meta: dict) -> tuple[dict, ...]:
    """The checkpoint's record of changed settings, and this resume's (``may_change``)."""
    saved = meta["config"]
    new = tuple({"step": step, "setting": name, "from": saved.get(name),
                 "to": run.config.get(name)}
                for name in run.may_change if saved.get(name) != run.config.get(name))
    return (*meta.get("changes", ()), *new)


_ADDED_SETTINGS = {"precision": "float32", "loss_scale": 1.0}
"""Settings newer than some checkpoints: one that lacks them was made with these values."""

_STATISTICS_ROWS = "batch_statistics_rows"
"""The config's entry for the rows a BatchNorm's batch statistics span (``_statistics_rows``)."""

_NET_SETTINGS = "net_settings"
"""The config's entry for every layer's settings (``_net_settings``)."""

_LOSS = "loss_name"
"""The config's entry for the loss's name (``info`` of an older run may hold a "loss")."""

_UNRECORDED = ("data_sha256", "net_layers", _NET_SETTINGS, _LOSS, _STATISTICS_ROWS)
"""Settings newer than some checkpoints whose old value is unknown: compared only where saved."""


def _check_config(run: _Run, step: int, meta: dict) -> None:
    """``ValueError`` naming the first setting (``run.config``) the checkpoint at ``step`` was
    made with that differs from this run's."""
    saved = {**_ADDED_SETTINGS, **meta["config"]}
    names = sorted(set(saved) | set(run.config),    # the loss scale after the precision that
                   key=lambda n: (n in _UNRECORDED, n == "loss_scale", n))    # sets it, and
    for name in names:                  # the data's digest last: a size or shape says more
        if name in _UNRECORDED and name not in saved or name in run.may_change:
            continue
        if name == "microbatch" and _STATISTICS_ROWS in saved:
            continue                    # a net with state: its statistics' rows are what counts
        was, now = saved.get(name), run.config.get(name)
        if name == _NET_SETTINGS:       # the first layer that differs, as text
            differ = _settings_differ(was, now)
            if differ is not None:
                raise ValueError(f"cannot resume: the checkpoint at step {step} in "
                                 f"{run.ckpt.path(step)} was made with {name} {differ[0]}, "
                                 f"this run has {name} {differ[1]}")
        elif was != now:
            raise ValueError(f"cannot resume: the checkpoint at step {step} in "
                             f"{run.ckpt.path(step)} was made with {name}={was!r}, this run "
                             f"has {name}={now!r}{_why(name, saved)}")


def _why(name: str, saved: dict) -> str:
    """What a resume's differing setting ``name`` means, where its name does not say."""
    if name == _STATISTICS_ROWS:
        return (f" (the rows each BatchNorm normalises a batch over: the per-device batch, or "
                f"microbatch where smaller; microbatch={saved[name]} keeps them on any number "
                f"of devices)")
    if name == "loss_scale":
        return (f" (a Policy's loss_scale=None means its dtype's default; pass "
                f"Policy({saved.get('precision')!r}, loss_scale={saved[name]!r}) to go on with "
                f"the checkpoint's)")
    return ""


# --- build the step; check the gradients ---------------------------------------------------

def _build_step(run: _Run, state: _State) -> Callable:
    """``(params, opt_state, net_state, index, step) -> (params, opt_state, net_state, J)`` on
    the training batch
    ``index``: ``step.fit_step`` with the set on the device, gathered there, or on a mesh
    ``distributed.fit_step``, to which each process sends only its rows of the batch."""
    step_key, x_train, y_train, plan = step_keys(state.key), run.x_train, run.y_train, run.plan
    if plan is None:
        x_dev, y_dev = jnp.asarray(x_train), jnp.asarray(y_train)
        step_fn = fit_step(run.net, run.loss, run.optimizer, run.grad, run.microbatch,
                           run.precision)

        def run_step(params, opt_state, net_state, index, step):
            return step_fn(params, opt_state, net_state, x_dev, y_dev, index, step_key, step)
    else:
        step_fn = distributed.fit_step(run.net, run.loss, run.optimizer, run.grad, plan,
                                       run.microbatch, run.precision)
        step_key_dev = distributed.replicate(plan, step_key)

        def run_step(params, opt_state, net_state, index, step):
            return step_fn(params, opt_state, net_state,
                           distributed.shard_batch(plan, x_train, index),
                           distributed.shard_batch(plan, y_train, index), step_key_dev, step)
    return run_step


def _check_gradients(run: _Run, params, net_state, key, step: int, index,
                     stage: str) -> GradCheck:
    """``audit.gradient_check`` on the batch ``index`` of ``step`` -- at most a microbatch of
    it, which fits where a step does -- with that step's key.  Beyond ``grad_tol``:
    ``GradientMismatchError`` carrying the per-layer audit of the same batch."""
    index = index[:run.microbatch]
    k = jax.random.fold_in(step_keys(key), step)
    params, x, y = run.local(params), run.x_train[index], run.y_train[index]
    c = gradient_check(run.net, run.loss, params, x, y, key=k)
    if not c.worst <= run.grad_tol:
        _check_batch_loss(run, params, run.local(net_state), x, y, step, stage)
        audit = audit_grads(run.net, run.loss, params, x, y, key=k)
        raise GradientMismatchError(
            f"{stage}: hand-written and jax.grad gradients diverge at step {step}: "
            f"relative error above {run.grad_tol:.0e} in {c.report(run.grad_tol)}"
            f"{_kept(run)}\nthe per-layer audit of this batch (jaxcnn.check_grads):\n"
            f"{audit}", c, audit)
    return c


def _check_batch_loss(run: _Run, params, net_state, x, y, step: int, stage: str) -> None:
    """Before blaming the gradients: the loss of the batch (test mode), if not finite, is the
    fault -- at step 0, with the initial parameters, a problem of the data (``ValueError``:
    finite images that overflow the forward); later, a run that diverged
    (``NonFiniteLossError``)."""
    value, _ = evaluator(run.net, run.loss, EVAL_BATCH)(params, x, y, net_state)
    if math.isfinite(value):
        return
    if step == 0:
        raise _data_overflow(stage, value, x, x.dtype)
    raise NonFiniteLossError(f"non-finite loss ({value}) at step {step}, found by the "
                             f"{stage}; training stopped" + _kept(run), step)


def _data_overflow(stage: str, value: float, x, dtype) -> ValueError:
    """A non-finite loss at step 0, the initial parameters' forward on finite images: the data
    overflow the forward in ``dtype`` (the params', or a precision policy's), not the gradients."""
    dtype = jnp.dtype(dtype)
    hint = "" if dtype != jnp.float16 else (
        f", or compute in bfloat16 or float32 (float16's largest finite value is "
        f"{float(jnp.finfo(dtype).max):g})")
    return ValueError(
        f"{stage}: the loss of the first batch is {value} with the initial parameters, on "
        f"finite images (largest magnitude {float(np.max(np.abs(x))):.3g}): the data overflow "
        f"the network's forward in {dtype.name} -- a problem of the data, not of the "
        f"gradients; scale the images (to [0, 1], say){hint}")


def _check_before_training(run: _Run, state: _State) -> GradCheck:
    """The gradient check on the first batch to run, printed; then step 0's checkpoint (a
    resumed step is saved already)."""
    if run.plan is not None:
        run.log(f"data-parallel over {run.plan.describe()}: batch {run.batch_size}, "
                f"{run.batch_size // run.plan.size} per device")
    first = _check_gradients(run, state.params, state.net_state, state.key, state.step,
                             state.order[:run.batch_size], "gradient check before training")
    run.log(first.line())
    if state.step == 0:
        _checkpoint(run, state)
    return first


def _train(run: _Run, state: _State) -> _State:
    """The gradient check, then the epochs from ``state.step`` to ``run.epochs``: each one's
    steps, its evaluation and its checkpoint.  A resumed run's old summary is retracted first,
    also where it resumes at step 0 (its newer checkpoints corrupt): the old end is not this
    run's."""
    _retract_summary(run)
    for change in (c for c in state.changes if c["step"] == state.step):    # this resume's
        run.log(f"changing {change['setting']} from {change['from']!r} to {change['to']!r} "
                f"at step {state.step}: the summary records it under changes")
    run_step, start = _build_step(run, state), state.step
    state = state._replace(check_worst=_check_before_training(run, state).worst)
    bar = report.progress_bar(run.show_progress, run.epochs * run.steps_per_epoch, start)
    try:
        for epoch in range(start // run.steps_per_epoch, run.epochs):
            t_epoch = time.perf_counter()
            state = _run_epoch(run, state, epoch, run_step, bar, start)
            state = _evaluate(run, state, epoch, t_epoch, bar)
            state = _checkpoint_epoch(run, state, epoch)
    finally:
        bar.close()
    return state


# --- run an epoch, evaluate, checkpoint ----------------------------------------------------

def _run_epoch(run: _Run, state: _State, epoch: int, run_step: Callable, bar,
               start: int) -> _State:
    """Epoch ``epoch``'s steps from ``state.step`` (mid-epoch on a resume), in batches of
    ``state.order``: a gradient check every ``check_grads`` steps (but at ``start``, checked
    already), ``NonFiniteLossError`` for a non-finite loss, a checkpoint every
    ``checkpoint_every`` steps (but at the epoch's end, checkpointed after evaluation)."""
    per_epoch, check_every, save_every = run.steps_per_epoch, run.check_grads, run.checkpoint_every
    batches = state.order[:per_epoch * run.batch_size].reshape(per_epoch, run.batch_size)
    params, opt_state, net_state, step = (state.params, state.opt_state, state.net_state,
                                          state.step)
    losses = list(state.epoch_losses)
    for b in range(step - epoch * per_epoch, per_epoch):
        if check_every and step % check_every == 0 and step != start:
            _check_gradients(run, params, net_state, state.key, step, batches[b],
                             "gradient check")
        new = run_step(params, opt_state, net_state, batches[b], step)
        value = float(new[3])
        if not math.isfinite(value) and step == 0:      # the forward alone: no update yet
            raise _data_overflow("step 0", value, run.x_train[batches[b]],
                                 run.precision.compute if run.precision.active else
                                 run.x_train.dtype)
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"non-finite loss ({value}) at step {step} (epoch {epoch + 1}, batch {b + 1} of "
                f"{per_epoch}); training stopped" + _kept(run) + _scale_hint(run), step)
        params, opt_state, net_state = new[:3]
        losses.append(value)
        step += 1
        bar.update(1)
        if b % 10 == 0:
            bar.set_postfix_str(report.postfix(epoch, run.epochs, np.mean(losses),
                                               state.history), refresh=False)
        if save_every and step % save_every == 0 and b != per_epoch - 1:
            _checkpoint(run, state._replace(params=params, opt_state=opt_state,
                                            net_state=net_state, step=step,
                                            epoch_losses=losses))
    return state._replace(params=params, opt_state=opt_state, net_state=net_state, step=step,
                          epoch_losses=losses)


def _evaluate(run: _Run, state: _State, epoch: int, t_epoch: float, bar) -> _State:
    """The epoch's ``history`` record: its mean training loss, the accuracy on the first
    10,000 training examples (``_EVAL_TRAIN``), the test loss and accuracy, the seconds it took."""
    evaluate_set = evaluator(run.net, run.loss, EVAL_BATCH)
    params, net_state = run.local(state.params), run.local(state.net_state)
    n_eval = min(run.n_train, _EVAL_TRAIN)
    _, train_acc = evaluate_set(params, run.x_train[:n_eval], run.y_train[:n_eval], net_state)
    test_loss, test_acc = (evaluate_set(params, run.x_test, run.y_test, net_state)
                           if run.x_test is not None else (None, None))
    losses = state.epoch_losses
    history = [*state.history, {
        "epoch": epoch + 1, "step": state.step,
        "train_loss": float(np.mean(losses)) if losses else None,
        "train_accuracy": train_acc, "test_loss": test_loss, "test_accuracy": test_acc,
        "seconds": round(time.perf_counter() - t_epoch, 4)}]
    bar.set_postfix_str(report.postfix(epoch, run.epochs, history[-1]["train_loss"], history))
    return state._replace(history=history, epoch_losses=[])


def _checkpoint_epoch(run: _Run, state: _State, epoch: int) -> _State:
    """After epoch ``epoch``: on to the next epoch's order, checkpointed, and the history so
    far written to ``metrics.jsonl``."""
    state = state._replace(order=epoch_order(state.key, epoch + 1, run.n_train))
    _checkpoint(run, state)
    _write_metrics(run, state.history)
    return state


def _write_metrics(run: _Run, history: list[dict]) -> None:
    """``metrics.jsonl``: one strict JSON line per epoch of ``history`` (process 0 only)."""
    if run.out is not None and run.main:
        with _output(run, "metrics.jsonl") as path:
            write_atomic(path, "".join(strict_json(h) + "\n" for h in history))


@contextlib.contextmanager
def _output(run: _Run, name: str) -> Iterator[str]:
    """The path of the output file ``name`` in ``out``; an ``OSError`` writing it (a full
    disk, say) becomes a ``TrainingError`` naming the file and the checkpoint kept."""
    path = os.path.join(run.out, name)
    try:
        yield path
    except OSError as err:
        raise TrainingError(f"could not write {path}: {err.strerror or err}; the run "
                            f"stopped" + _kept(run)) from err


def _checkpoint(run: _Run, state: _State) -> None:
    """Save ``state`` as its step, once its parameters and optimizer state are checked finite
    (``NonFiniteStateError``; checked without ``out`` too).  A step saved already (the one a
    run resumed from) is not saved again; a failed save is a ``TrainingError``."""
    bad = _non_finite(run.local((state.params, state.opt_state, state.net_state)))
    if bad:
        epoch = -(-state.step // run.steps_per_epoch)
        raise NonFiniteStateError(
            f"the run diverged: non-finite values after step {state.step - 1} (epoch {epoch} "
            f"of {run.epochs}) in {_listed([_state_name(n) for n in bad])}; nothing of it "
            f"was saved; training stopped" + _kept(run) + _scale_hint(run), state.step)
    if run.ckpt is None or run.ckpt.latest() == state.step:
        return
    try:
        run.ckpt.save(state.step, _saved(run, state), {
            "step": state.step, "epoch": state.step // run.steps_per_epoch,
            "history": state.history, "epoch_losses": state.epoch_losses, "config": run.config,
            "seconds": state.seconds_before + time.perf_counter() - run.t_start,
            "gradient_check": state.check_worst, "changes": list(state.changes)})
    except Exception as err:        # orbax and tensorstore raise many kinds, none for the user
        raise TrainingError(f"could not write the checkpoint at step {state.step} in "
                            f"{run.ckpt.directory}: {err}" + _kept(run)) from err


def _state_name(name: str) -> str:
    """``0/0/w`` of ``(params, opt_state, net_state)`` as ``params/0/w``."""
    head, _, rest = name.partition("/")
    return {"0": "params", "1": "opt_state"}.get(head, "net_state") + "/" + rest


def _kept(run: _Run) -> str:
    """The end of a fault's message: the checkpoint that survives it."""
    return " (no checkpoints: out=None)" if run.ckpt is None else run.ckpt.kept()


def _scale_hint(run: _Run) -> str:
    """The end of a divergence's message under a loss scale: the scaled backward may have
    overflowed the 16-bit dtype, a cause to rule out before the learning rate."""
    pol = run.precision
    if not pol.active or pol.loss_scale == 1:
        return ""
    return (f"; under precision={pol.compute!r} the loss scale {pol.loss_scale:g} multiplies every "
            f"delta and may have overflowed {pol.compute}: try a smaller "
            f"precision.Policy({pol.compute!r}, loss_scale=...), or precision='bfloat16'")


# --- summarise -----------------------------------------------------------------------------

def _finish(run: _Run, state: _State, seconds: float) -> FitResult:
    """The summary, written with the curves and printed; ``fit``'s result."""
    summary = _summarise(run, state, seconds)
    _write_outputs(run, state.history, summary)
    run.log(report.final_line(summary, run.out))
    return FitResult(state.params, state.opt_state, state.history, summary, state.net_state)


def _retract_summary(run: _Run) -> None:
    """Remove the ``summary.json`` of a finished run that now trains further: until the new
    end writes its own, nothing certifies an end the checkpoints have left behind."""
    if run.out is None or not run.main:
        return
    path = os.path.join(run.out, "summary.json")
    if os.path.lexists(path):
        os.remove(path)


def _check_past_end(run: _Run, step: int, epochs_done: int, changes) -> None:
    """A resume at or past the last step has nothing to train: a checkpoint inside an epoch
    past ``epochs`` is refused (``ValueError``: its parameters are not those of the last epoch
    its history reports), and so is a change of setting, which would apply to no step."""
    if step < run.epochs * run.steps_per_epoch:
        return
    if step % run.steps_per_epoch:
        raise ValueError(
            f"cannot resume with epochs={run.epochs}: the checkpoint at step {step} in "
            f"{run.ckpt.directory} is inside epoch {step // run.steps_per_epoch + 1}, "
            f"past the {run.epochs * run.steps_per_epoch} steps of {run.epochs} epochs; pass "
            f"epochs >= {step // run.steps_per_epoch + 1} to finish it")
    now = [c for c in changes if c["step"] == step]
    if now:
        raise ValueError(
            f"cannot resume with {now[0]['setting']}={now[0]['to']!r}: the checkpoint at step "
            f"{step} in {run.ckpt.directory} has done its {epochs_done} epochs, so "
            f"the change would apply to no step; pass epochs > {epochs_done} to train "
            f"on with it")


def _nothing_to_do(run: _Run, state: _State) -> FitResult:
    """A resumed run that has done its epochs (``_check_past_end`` passed): its outputs
    completed (a kill may have come between its last checkpoint and them), no gradient check,
    no step."""
    run.log(f"nothing to do: the checkpoint at step {state.step} in {run.ckpt.directory} has "
            f"done {len(state.history)} of epochs={run.epochs}; pass more epochs to train "
            f"further")
    return _finish(run, state, state.seconds_before)


_SUMMARY_OWN = {"test_accuracy", "test_loss", "train_accuracy", "train_loss", "epochs", "steps",
                "seconds", "gradient_check_worst_relative_error", "changes", "n_test",
                "parameters", "jax_version", "jaxcnn_version", "device", "devices", "processes"}
"""The summary's entries that ``_summarise`` writes besides the run's config."""


def _summarise(run: _Run, state: _State, seconds: float) -> dict:
    """``summary.json``: the ``info`` given, the last epoch's metrics, the run's settings and
    where it ran."""
    last = state.history[-1] if state.history else {}
    return {
        **run.info,
        "test_accuracy": last.get("test_accuracy"), "test_loss": last.get("test_loss"),
        "train_accuracy": last.get("train_accuracy"), "train_loss": last.get("train_loss"),
        "epochs": len(state.history), "steps": state.step, "batch_size": run.batch_size,
        _LOSS: run.loss.name, "microbatch": run.microbatch, "precision": run.precision.compute,
        "loss_scale": run.precision.loss_scale,
        **{k: run.config[k] for k in (_STATISTICS_ROWS,) if k in run.config},
        "seconds": round(seconds, 2), "grad": run.grad, "seed": run.seed,
        "gradient_check_worst_relative_error": state.check_worst,
        "changes": list(state.changes),
        "n_train": run.n_train, "n_test": None if run.x_test is None else len(run.x_test),
        "parameters": int(sum(np.size(p) for p in jax.tree_util.tree_leaves(state.params))),
        "jax_version": jax.__version__, "jaxcnn_version": _version(),
        "device": jax.devices()[0].device_kind,
        **({} if run.plan is None else {"devices": run.plan.size,
                                        "processes": run.plan.processes}),
    }


def _write_outputs(run: _Run, history: list[dict], summary: dict) -> None:
    """``summary.json``, ``metrics.jsonl`` and ``curves.png`` in ``out`` (process 0 only),
    each whole or not at all (``checkpoints.replace_atomic``)."""
    if run.out is None or not run.main:
        return
    with _output(run, "summary.json") as path:
        write_atomic(path, strict_json(summary, indent=2) + "\n")
    _write_metrics(run, history)
    title = " / ".join([str(run.info[k]) for k in ("dataset", "arch") if k in run.info]
                       + [f"{run.grad} gradients"]
                     + ([run.precision.compute] if run.precision.active else []))
    with _output(run, "curves.png") as path:
        replace_atomic(path, lambda f: plot_curves(history, f, title))


@functools.lru_cache(maxsize=1)
def _version() -> str | None:
    """jaxcnn's installed version, from its package metadata (importing ``jaxcnn`` here would
    lead back up into the package)."""
    try:
        return importlib.metadata.version("jaxcnn")
    except importlib.metadata.PackageNotFoundError:
        return None

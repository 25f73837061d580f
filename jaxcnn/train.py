"""Training: a jitted step over the hand-written backward, and ``fit``, ``jaxcnn train``'s loop.

A step (``make_step``) is ``value_and_grad`` -- forward, the loss's output residual, backward,
no autodiff (eq. 6.2) -- then an optax update, all under one ``jax.jit``.  ``fit`` runs it over
epochs of shuffled mini-batches, evaluates on a held-out split after every epoch and, given
``out``, keeps orbax checkpoints, ``metrics.jsonl``, ``summary.json`` and ``curves.png`` there.

Every random choice is a function of ``(seed, epoch, step)``::

    key       = jax.random.key(seed)
    params    = net.init(fold_in(key, 0), input_shape)              (init_params)
    order(e)  = permutation(fold_in(fold_in(key, 1), e), n_train)   epoch e's data order
    key(s)    = fold_in(fold_in(key, 2), s)                         the forward's key at step s

so a run resumed from a checkpoint repeats exactly the steps of a run never interrupted, and on
CPU ends with bitwise the same parameters.  An epoch is ``n_train // batch_size`` steps; the
last, partial batch of each shuffled order is left out.

orbax-checkpoint, tqdm and matplotlib (the ``train`` extra) are imported only where used.
"""
from __future__ import annotations

import functools
import json
import math
import os
import shutil
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcnn.audit import TOLERANCES, check_grads as audit_grads
from jaxcnn.core import Array, Layer, Params
from jaxcnn.data import check_arrays
from jaxcnn.losses import Loss, softmax_cross_entropy
from jaxcnn.network import microbatched, value_and_grad

__all__ = [
    "GRADS", "OPTIMIZERS", "CHECKPOINT_DIR", "EVAL_BATCH", "OUTPUT_FILES",
    "TrainingError", "NonFiniteLossError", "GradientMismatchError",
    "make_optimizer", "loss_and_grad", "train_step", "update_step", "make_step",
    "init_params", "epoch_order", "GradCheck", "gradient_check", "default_tolerance",
    "evaluate", "plot_curves", "load_checkpoint", "FitResult", "fit",
]

GRADS = ("manual", "autodiff")
"""How a step gets its gradient: the hand-written backward, or ``jax.grad`` of the same forward."""

OPTIMIZERS: dict[str, Callable[[float], optax.GradientTransformation]] = {
    "sgd": optax.sgd,
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "adam": optax.adam,
}
"""``jaxcnn train --optimizer``: name -> ``fn(learning_rate)``."""

_INIT, _DATA, _STEP = 0, 1, 2          # fold_in tags: one independent stream per use of the seed
CHECKPOINT_DIR = "checkpoints"         # under ``out``
EVAL_BATCH = 1000                      # evaluation chunk: one compiled shape for every set
OUTPUT_FILES = ("summary.json", "metrics.jsonl", "curves.png")


class TrainingError(RuntimeError):
    """A fault found while training (the inputs were fine): stops ``fit``, keeps the last
    good checkpoint."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite; ``step`` is the global step (0-based) that produced it."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class GradientMismatchError(TrainingError):
    """The hand-written gradients and ``jax.grad`` disagree beyond the tolerance.

    ``check``: the end-to-end comparison per parameter array; ``audit``: the per-layer audit
    (``jaxcnn.check_grads``) of the same batch, which names the first wrong layer.
    """

    def __init__(self, message: str, check: "GradCheck", audit=None):
        super().__init__(message)
        self.check = check
        self.audit = audit


def _memo(builder):
    """Cache what ``builder`` makes for equal (hashable) arguments, so that repeated ``fit``
    calls with the same net, loss and optimizer reuse one set of compiled functions."""
    cached = functools.lru_cache(maxsize=16)(builder)

    @functools.wraps(builder)
    def build(*args):
        try:
            hash(args)
        except TypeError:
            return builder(*args)
        return cached(*args)

    return build


# --- the step ------------------------------------------------------------------------------

def make_optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    """An optax optimizer by name: ``sgd``, ``momentum`` (SGD, momentum 0.9) or ``adam``.

    The same arguments give the same object, so that ``fit`` reuses its compiled steps.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
    if not isinstance(learning_rate, (int, float)) or not math.isfinite(learning_rate) \
            or learning_rate <= 0:
        raise ValueError(f"the learning rate must be a positive number, got {learning_rate!r}")
    return _optimizer(name, float(learning_rate))


@functools.lru_cache(maxsize=32)
def _optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    return OPTIMIZERS[name](learning_rate)


def loss_and_grad(net: Layer, loss: Loss, grad: str = "manual", microbatch: int | None = None
                  ) -> Callable[..., tuple[Array, Params]]:
    """``(params, x, targets, *, key=None, train=True) -> (J, grads)``.

    ``grad="manual"``: ``jaxcnn.value_and_grad``, the hand-written backward (eq. 6.2).
    ``grad="autodiff"``: ``jax.value_and_grad`` of ``loss.value(net.apply(...))`` -- the same
    forward (the same values; ``Conv2D.forward`` may add its bias to the Toeplitz product's
    rows where ``apply`` adds it after the reshape) differentiated by JAX, for comparison.
    ``microbatch``: either one on chunks of this many examples, averaged
    (``jaxcnn.network.microbatched``).
    """
    if grad == "manual":
        return value_and_grad(net, loss, microbatch=microbatch)
    if grad != "autodiff":
        raise ValueError(f"grad must be one of {', '.join(GRADS)}, got {grad!r}")

    def f(params, x, targets, key, train):
        return jax.value_and_grad(
            lambda p: loss.value(net.apply(p, x, key=key, train=train), targets))(params)

    return microbatched(f, microbatch, "value_and_grad")


def train_step(net: Layer, loss: Loss, optimizer: optax.GradientTransformation,
               grad: str = "manual", microbatch: int | None = None) -> Callable:
    """The un-jitted update ``(params, opt_state, x, targets, key) -> (params, opt_state, J)``."""
    return update_step(loss_and_grad(net, loss, grad, microbatch), optimizer)


def update_step(vg: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """``train_step`` for any ``vg(params, x, targets, *, key, train) -> (J, grads)``: the
    gradients, then the optax update.  (``jaxcnn.distributed`` passes its sharded ``vg``.)"""

    def step(params, opt_state, x, targets, key):
        value, grads = vg(params, x, targets, key=key, train=True)
        # optax promotes implicitly (adam's ``b1 ** count`` is float ** int32): trace it under
        # standard promotion, so that it also runs where jaxcnn is tested under strict promotion
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
        return params, opt_state, value

    return step


def make_step(net: Layer, loss: Loss, optimizer: optax.GradientTransformation,
              grad: str = "manual", microbatch: int | None = None) -> Callable:
    """``jax.jit`` of ``train_step``: one mini-batch update, compiled once per batch shape.

    >>> step = make_step(net, jc.softmax_cross_entropy, optax.adam(1e-3))
    >>> params, opt_state, J = step(params, opt_state, x, labels, key)
    """
    return jax.jit(train_step(net, loss, optimizer, grad, microbatch))


@_memo
def _indexed_step(net: Layer, loss: Loss, optimizer: optax.GradientTransformation,
                  grad: str, microbatch: int | None) -> Callable:
    """``fit``'s step: ``(params, opt_state, x_all, y_all, index, step_key, step)``, the batch
    gathered on the device (the data set is an argument, never a compiled-in constant) and the
    forward's key ``fold_in(step_key, step)``."""
    update = train_step(net, loss, optimizer, grad, microbatch)

    def step_fn(params, opt_state, x_all, y_all, index, step_key, step):
        return update(params, opt_state, x_all[index], y_all[index],
                      jax.random.fold_in(step_key, step))

    return jax.jit(step_fn)


def init_params(net: Layer, input_shape, seed: int = 0) -> tuple[Params, tuple[int, ...]]:
    """``net.init`` with the key ``fit`` reserves for initialisation: ``fold_in(key(seed), 0)``."""
    return net.init(jax.random.fold_in(jax.random.key(seed), _INIT), tuple(input_shape))


def epoch_order(seed_key: Array, epoch: int, n: int) -> np.ndarray:
    """Epoch ``epoch``'s data order: a permutation of ``range(n)`` from ``(key, epoch)`` only."""
    k = jax.random.fold_in(jax.random.fold_in(seed_key, _DATA), epoch)
    return np.asarray(jax.random.permutation(k, n)).astype(np.int32)


# --- hand-written vs jax.grad --------------------------------------------------------------

class GradCheck(NamedTuple):
    """Per parameter array: ``max|hand - autodiff| / max|autodiff|``, and the worst of them."""

    errors: dict[str, float]
    worst: float
    worst_name: str

    def line(self) -> str:
        return (f"gradient check (hand-written vs jax.grad, 1 batch): worst relative error "
                f"{self.worst:.1e} over {len(self.errors)} parameter arrays")

    def report(self, tol: float) -> str:
        bad = {k: v for k, v in self.errors.items() if not v <= tol}
        return "; ".join(f"{k}: {v:.2e}" for k, v in sorted(bad.items(), key=lambda kv: -kv[1]))


def _leaf_names(net: Layer, params) -> list[str]:
    names = []
    for path, _ in jax.tree_util.tree_leaves_with_path(params):
        if net.layers and path and isinstance(path[0], jax.tree_util.SequenceKey):
            i = path[0].idx
            names.append(f"serial[{i}] {net.layers[i].name} "
                         f"params{jax.tree_util.keystr(tuple(path[1:]))}")
        else:
            names.append("params" + jax.tree_util.keystr(path))
    return names


@_memo
def _grad_errors(net: Layer, loss: Loss) -> Callable:
    """Jitted ``(params, x, targets, key) -> relative error per parameter leaf``."""
    manual, auto = loss_and_grad(net, loss, "manual"), loss_and_grad(net, loss, "autodiff")

    def relative(a, b):
        scale = jnp.maximum(jnp.max(jnp.abs(b)), jnp.finfo(b.dtype).tiny)
        return jnp.max(jnp.abs(a - b)) / scale

    def errors(params, x, targets, key):
        _, g_hand = manual(params, x, targets, key=key, train=True)
        _, g_auto = auto(params, x, targets, key=key, train=True)
        return [relative(a, b) for a, b in
                zip(jax.tree_util.tree_leaves(g_hand), jax.tree_util.tree_leaves(g_auto))]

    return jax.jit(errors)


def _check(errors_fn, names, params, x, targets, key) -> GradCheck:
    errs = dict(zip(names, (float(e) for e in errors_fn(params, x, targets, key))))
    worst_name = max(errs, key=lambda k: -1.0 if math.isnan(errs[k]) else errs[k]) \
        if errs else "-"
    worst = max((v if not math.isnan(v) else math.inf for v in errs.values()), default=0.0)
    return GradCheck(errs, worst, worst_name)


def gradient_check(net: Layer, loss: Loss, params: Params, x, targets, *,
                   key=None) -> GradCheck:
    """Compare the hand-written gradients with ``jax.grad`` of the same forward on one batch."""
    return _check(_grad_errors(net, loss), _leaf_names(net, params), params, x, targets, key)


def default_tolerance(params: Params) -> float:
    """The audit's tolerance (``jaxcnn.audit.TOLERANCES``) for the params' widest float dtype:
    ``1e-4`` relative error for float32, ``1e-9`` for float64."""
    widest = max((np.finfo(leaf.dtype).bits for leaf in jax.tree_util.tree_leaves(params)
                  if jnp.issubdtype(leaf.dtype, jnp.floating)), default=32)
    return TOLERANCES["float64" if widest >= 64 else "float32"]


# --- evaluation ----------------------------------------------------------------------------

@_memo
def _chunk_sums(net: Layer, loss: Loss) -> Callable:
    """Jitted ``(params, x, targets, mask) -> (summed loss, correct count)`` over one chunk."""

    def chunk_sums(params, x, targets, mask):
        out = net.apply(params, x, key=None, train=False)
        per_example = jax.vmap(lambda o, t: loss.value(o[None], t[None]))(out, targets)
        total = jnp.sum(jnp.where(mask, per_example, jnp.zeros((), per_example.dtype)))
        if jnp.issubdtype(targets.dtype, jnp.integer) and out.ndim == 2:
            hit = jnp.argmax(out, axis=1).astype(targets.dtype) == targets
            return total, jnp.sum(hit & mask)
        return total, jnp.zeros((), jnp.int32)

    return jax.jit(chunk_sums)


def _evaluator(net: Layer, loss: Loss, chunk: int) -> Callable:
    """``(params, x, targets) -> (mean loss, accuracy or None)`` over padded chunks of ``chunk``
    examples, so that every set is evaluated by one compiled function."""
    chunk_sums = _chunk_sums(net, loss)

    def evaluate(params, x, targets):
        n = len(x)
        total, correct = 0.0, 0
        for start in range(0, n, chunk):
            xs, ts = x[start:start + chunk], targets[start:start + chunk]
            m = len(xs)
            if m < chunk:                       # pad the last chunk; the mask drops the padding
                xs = np.concatenate([xs, np.zeros((chunk - m, *xs.shape[1:]), xs.dtype)])
                ts = np.concatenate([ts, np.zeros((chunk - m, *ts.shape[1:]), ts.dtype)])
            s, c = chunk_sums(params, xs, ts, np.arange(chunk) < m)
            total, correct = total + float(s), correct + int(c)
        classify = np.issubdtype(targets.dtype, np.integer)
        return total / n, (correct / n if classify else None)

    return evaluate


def evaluate(net: Layer, loss: Loss, params: Params, x, targets, *,
             batch_size: int = EVAL_BATCH) -> tuple[float, float | None]:
    """Mean loss and accuracy (``None`` unless targets are class indices) of ``net.apply`` in
    test mode over ``(x, targets)``, in batches of ``batch_size``."""
    return _evaluator(net, loss, _positive_int("batch_size", batch_size))(params, np.asarray(x),
                                                          np.asarray(targets))


# --- validation (before any training) ------------------------------------------------------

def _positive_int(name: str, value) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def _check_data(net: Layer, params: Params, x, targets, what: str) -> None:
    """Images fit the net (rank, size, channels, dtype), and targets fit its output."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) < 2:
        raise ValueError(f"{what}: images must be an array with a batch axis, e.g. "
                         f"(N, H, W, C), got {shape if shape is not None else type(x).__name__}")
    try:
        out = jax.eval_shape(
            lambda p, xs: net.forward(p, xs, key=jax.random.key(0), train=True)[0],
            params, jax.ShapeDtypeStruct(tuple(shape), x.dtype))
    except (ValueError, TypeError) as err:
        raise type(err)(f"{what}: images of shape {tuple(shape)} and dtype {x.dtype} do not "
                        f"fit the network: {err}") from err
    if np.issubdtype(getattr(targets, "dtype", np.float64), np.integer):
        if len(out.shape) != 2:
            raise ValueError(f"{what}: integer labels need a network with outputs (N, classes), "
                             f"this one gives {out.shape[1:]} per example")
        check_arrays(x, targets, out.shape[1], what)
    elif getattr(targets, "shape", None) != (shape[0], *out.shape[1:]):
        raise ValueError(f"{what}: targets must have shape {(shape[0], *out.shape[1:])} (one "
                         f"network output per image), got {getattr(targets, 'shape', None)}")


# --- files ---------------------------------------------------------------------------------

def _write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def plot_curves(history: list[dict], path: str, title: str = "") -> None:
    """Loss and accuracy per epoch (train and test) to a PNG, with matplotlib's Agg canvas."""
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for key, label, ax in (("train_loss", "train (epoch mean)", ax_loss),
                           ("test_loss", "test", ax_loss),
                           ("train_accuracy", "train", ax_acc),
                           ("test_accuracy", "test", ax_acc)):
        values = [h.get(key) for h in history]
        if any(v is not None for v in values):
            ax.plot(epochs, [np.nan if v is None else v for v in values], marker=".",
                    label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss", yscale="log", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)


class _Checkpoints:
    """orbax's ``CheckpointManager`` under ``out/checkpoints``: one step directory per save,
    written to a temporary directory and renamed when complete (atomic), the latest 2 kept;
    temporary directories left by a killed run are removed on start."""

    def __init__(self, directory: str):
        import orbax.checkpoint as ocp
        from orbax.checkpoint import checkpoint_managers

        self.ocp = ocp
        self.manager = ocp.CheckpointManager(
            os.path.abspath(directory), item_names=("state", "meta"),
            options=ocp.CheckpointManagerOptions(
                enable_async_checkpointing=False, cleanup_tmp_directories=True,
                preservation_policy=checkpoint_managers.LatestN(2)))

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: dict, meta: dict) -> None:
        args = self.ocp.args
        self.manager.save(step, args=args.Composite(state=args.StandardSave(state),
                                                    meta=args.JsonSave(meta)), force=True)

    def restore(self, step: int, template: dict | None) -> tuple[dict, dict]:
        args = self.ocp.args
        if template is None:        # onto this process's first device, whatever the saving
            template = self._on_one_device(step)       # run's devices were (docs/scaling.md)
        r = self.manager.restore(step, args=args.Composite(
            state=args.StandardRestore(template), meta=args.JsonRestore()))
        return r["state"], r["meta"]

    def _on_one_device(self, step: int) -> dict:
        saved = self.ocp.StandardCheckpointHandler().metadata(
            self.manager.directory / str(step) / "state")
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
            getattr(saved, "tree", saved))

    def close(self) -> None:
        self.manager.close()


def load_checkpoint(out, template: dict | None = None, step: int | None = None
                    ) -> tuple[dict, dict]:
    """The latest (or ``step``'s) checkpoint that ``fit`` left in ``out``: ``(state, meta)``.

    ``state`` has ``params``, ``opt_state``, ``key`` (the seed's key data) and ``order`` (the data
    order of the epoch holding the next step); ``meta`` has ``step``, ``epoch``, ``history``,
    ``config`` and ``seconds``.  Without a ``template`` (a state of the same structure) the
    arrays come back as orbax stores them: tuples and named tuples as lists and dicts.
    """
    ckpt_dir = os.path.join(os.fspath(out), CHECKPOINT_DIR)
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"no checkpoints in {ckpt_dir}")
    ckpt = _Checkpoints(ckpt_dir)
    try:
        step = ckpt.latest() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoints in {ckpt_dir}")
        return ckpt.restore(step, template)
    finally:
        ckpt.close()


# --- fit -----------------------------------------------------------------------------------

class FitResult(NamedTuple):
    """What ``fit`` returns: the final ``params`` and ``opt_state``, one ``history`` record per
    epoch (also ``metrics.jsonl``) and the ``summary`` (also ``summary.json``)."""

    params: Params
    opt_state: Any
    history: list[dict]
    summary: dict


def fit(net: Layer, params: Params, x_train, y_train, x_test=None, y_test=None, *,
        loss: Loss = softmax_cross_entropy,
        optimizer: optax.GradientTransformation | None = None,
        epochs: int = 10, batch_size: int = 32, seed: int = 0, grad: str = "manual",
        microbatch: int | None = None, devices: str | int | list | None = None,
        check_grads: int = 0, grad_tol: float | None = None,
        out: str | os.PathLike | None = None, resume: bool = False, overwrite: bool = False,
        checkpoint_every: int = 0, info: dict | None = None, verbose: bool = True,
        progress: bool | None = None, print_fn: Callable[[str], None] = print) -> FitResult:
    """Train ``net`` from ``params`` on ``(x_train, y_train)`` with mini-batch steps under jit.

    Args:
      net, params: a ``Layer`` and its initial params (e.g. ``init_params(net, shape, seed)``).
      x_train, y_train: images ``(N, H, W, C)`` of the params' dtype, and integer labels ``(N,)``
        (or real targets of the net's output shape, for e.g. ``squared_error``).
      x_test, y_test: a held-out split, evaluated after every epoch (optional).
      loss: a ``jaxcnn`` ``Loss`` (default ``softmax_cross_entropy`` on logits).
      optimizer: an optax optimizer (default ``optax.adam(1e-3)``).
      epochs: the total number of epochs (a resumed run continues up to it); batch_size: the
        mini-batch size, at most ``len(x_train)``; seed: data order and per-step keys.
      grad: ``"manual"`` (the hand-written backward) or ``"autodiff"`` (``jax.grad``).
      microbatch: compute each step's gradient on chunks of this many examples (per device),
        one after another, and average them (``jaxcnn.network.microbatched``): the same
        update up to float rounding, with a chunk's activations in memory instead of the
        batch's.  The (per-device) batch must be a multiple of it or at most it (then it is
        ignored).  The gradient checks then use the batch's first ``microbatch`` rows.
        ``None``: the whole batch at once.
      devices: ``None``: one device, as above.  ``"all"``, a number or a list of devices:
        data-parallel over a mesh of them (``jaxcnn.distributed``; docs/scaling.md) -- each
        step shards the batch (``batch_size`` must divide by the device count), replicates
        params and optimizer state, and averages the hand-written gradients across devices.
        Needed, and the same on every process, in a ``jax.distributed`` run; there only
        process 0 prints and writes files.
      check_grads: every ``check_grads`` steps (0: never) compare the hand-written gradients
        with ``jax.grad`` on the step's batch; beyond ``grad_tol`` (default
        ``default_tolerance(params)``) raise ``GradientMismatchError``.  The comparison is also
        made, and printed, once before training.
      out: a directory for checkpoints, ``metrics.jsonl``, ``summary.json`` and ``curves.png``;
        ``None`` writes nothing.  A fresh run refuses a directory that holds checkpoints unless
        ``overwrite`` (which deletes them and the old outputs) or ``resume``.
      resume: continue from the latest checkpoint in ``out``, made with the same settings.
      checkpoint_every: also checkpoint every this many steps (0: at epoch ends only).
      info: JSON-able facts recorded in the summary and checked on resume (dataset, arch, ...).
      verbose: print (with ``print_fn``) the gradient check, a resume and the result.
      progress: show a tqdm progress bar on stderr (default: ``verbose``).

    Raises ``ValueError``/``TypeError`` before any training for bad inputs, and
    ``TrainingError`` during it: ``NonFiniteLossError`` (naming the step) when the loss stops
    being finite, ``GradientMismatchError`` when a gradient check fails.  Either way the last
    good checkpoint is kept.
    """
    t_start = time.perf_counter()
    epochs = _positive_int("epochs", epochs)
    batch_size = _positive_int("batch_size", batch_size)
    seed = int(seed)
    checkpoint_every = int(checkpoint_every)
    check_grads = int(check_grads)
    if check_grads < 0 or checkpoint_every < 0:
        raise ValueError(f"check_grads and checkpoint_every must be >= 0, got {check_grads} "
                         f"and {checkpoint_every}")
    if grad not in GRADS:
        raise ValueError(f"grad must be one of {', '.join(GRADS)}, got {grad!r}")
    if (x_test is None) != (y_test is None):
        raise ValueError("give both x_test and y_test, or neither")
    x_train, y_train = np.asarray(x_train), np.asarray(y_train)
    _check_data(net, params, x_train, y_train, "training set")
    if x_test is not None:
        x_test, y_test = np.asarray(x_test), np.asarray(y_test)
        _check_data(net, params, x_test, y_test, "test set")
    n_train = len(x_train)
    if batch_size > n_train:
        raise ValueError(f"batch_size ({batch_size}) exceeds the number of training examples "
                         f"({n_train})")
    optimizer = make_optimizer("adam", 1e-3) if optimizer is None else optimizer
    grad_tol = default_tolerance(params) if grad_tol is None else float(grad_tol)
    plan = None
    if devices is not None:
        from jaxcnn import distributed
        plan = distributed.data_parallel(devices)
        distributed.check_batch_size(plan, batch_size)
    elif jax.process_count() > 1:
        raise ValueError(f"this is one of {jax.process_count()} processes (jax.distributed): "
                         f"pass devices='all' to train over the devices of all of them")
    if microbatch is not None:
        microbatch = _positive_int("microbatch", microbatch)
        rows = batch_size // (1 if plan is None else plan.size)
        if rows > microbatch and rows % microbatch:
            what = (f"batch_size ({rows})" if plan is None
                    else f"the per-device batch ({rows} = batch_size / {plan.size})")
            raise ValueError(f"{what} must be a multiple of microbatch ({microbatch}) or at "
                             f"most it")
        if microbatch >= rows:      # one chunk: the plain step, and the same run on resume
            microbatch = None
    main = plan is None or distributed.is_main()      # prints and writes the run's files
    steps_per_epoch = n_train // batch_size
    config = {"n_train": n_train, "batch_size": batch_size, "seed": seed, "grad": grad,
              "microbatch": microbatch,
              **(info or {})}
    log = print_fn if verbose and main else (lambda _: None)

    key = jax.random.key(seed)
    opt_state = optimizer.init(params)
    if plan is not None:             # a full copy on every device (orbax saves global arrays)
        params, opt_state = distributed.replicate(plan, (params, opt_state))
    order = epoch_order(key, 0, n_train)
    start_step, history, epoch_losses, seconds_before = 0, [], [], 0.0

    ckpt = None
    if out is not None:
        out = os.fspath(out)
        ckpt_dir = os.path.join(out, CHECKPOINT_DIR)
        has_ckpt = os.path.isdir(ckpt_dir) and any(
            name.isdigit() for name in os.listdir(ckpt_dir))
        if resume and not has_ckpt:
            raise ValueError(f"nothing to resume: no checkpoint in {ckpt_dir}; run without "
                             f"resume to start training")
        if has_ckpt and not resume:
            if not overwrite:
                raise ValueError(f"{out} already holds a run (checkpoints in {ckpt_dir}); "
                                 f"resume it, choose another output directory, or overwrite it")
            if main:
                shutil.rmtree(ckpt_dir)
                for name in OUTPUT_FILES:
                    if os.path.exists(os.path.join(out, name)):
                        os.remove(os.path.join(out, name))
        os.makedirs(out, exist_ok=True)
        if plan is not None:
            distributed.sync("jaxcnn.fit: output directory checked")
        ckpt = _Checkpoints(ckpt_dir)
    elif resume:
        raise ValueError("resume needs the output directory that holds the checkpoints (out)")

    def state(order_):
        key_data = jax.random.key_data(key)
        return {"params": params, "opt_state": opt_state, "order": order_,
                "key": key_data if plan is None else distributed.replicate(plan, key_data)}

    try:
        if ckpt is not None and resume:
            start_step = ckpt.latest()
            restored, meta = ckpt.restore(start_step, state(order))
            saved = meta["config"]
            for name in sorted(set(saved) | set(config)):
                if saved.get(name) != config.get(name):
                    raise ValueError(f"cannot resume: the checkpoint in {ckpt_dir} was made with "
                                     f"{name}={saved.get(name)!r}, this run has "
                                     f"{name}={config.get(name)!r}")
            # as fresh, uncommitted device arrays: the compiled steps of a run never stopped
            # are reused (orbax's arrays carry a committed sharding, a different jit cache key)
            restored = jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a)), restored)
            params, opt_state = restored["params"], restored["opt_state"]
            if plan is not None:
                params, opt_state = distributed.replicate(plan, (params, opt_state))
            key = jax.random.wrap_key_data(jnp.asarray(restored["key"]))
            order = np.asarray(restored["order"])
            history, epoch_losses = meta["history"], meta["epoch_losses"]
            seconds_before = meta["seconds"]
            log(f"resuming from the checkpoint at step {start_step} (epoch "
                f"{start_step // steps_per_epoch} of {epochs}) in {ckpt_dir}")
        start_epoch = start_step // steps_per_epoch
        local = (lambda tree: tree) if plan is None else distributed.host_copy

        def save(step_, order_):
            if ckpt is not None:
                ckpt.save(step_, state(order_), {
                    "step": step_, "epoch": step_ // steps_per_epoch, "history": history,
                    "epoch_losses": epoch_losses, "config": config,
                    "seconds": seconds_before + time.perf_counter() - t_start})

        step_key = jax.random.fold_in(key, _STEP)
        if plan is None:
            x_dev, y_dev = jnp.asarray(x_train), jnp.asarray(y_train)
            step_fn = _indexed_step(net, loss, optimizer, grad, microbatch)

            def run_step(params, opt_state, index, step_):
                return step_fn(params, opt_state, x_dev, y_dev, index, step_key, step_)
        else:                        # each process sends only its rows of the batch
            step_fn = distributed.fit_step(net, loss, optimizer, grad, plan, microbatch)
            step_key_dev = distributed.replicate(plan, step_key)

            def run_step(params, opt_state, index, step_):
                return step_fn(params, opt_state, distributed.shard_batch(plan, x_train, index),
                               distributed.shard_batch(plan, y_train, index), step_key_dev,
                               step_)
        errors_fn, names = _grad_errors(net, loss), _leaf_names(net, params)

        def check(step_, index, stage):
            index = index[:microbatch]        # at most a chunk: the check fits where a step does
            k = jax.random.fold_in(step_key, step_)
            c = _check(errors_fn, names, local(params), x_train[index], y_train[index], k)
            if not c.worst <= grad_tol:
                audit = audit_grads(net, loss, local(params), x_train[index], y_train[index],
                                    key=k)
                raise GradientMismatchError(
                    f"{stage}: hand-written and jax.grad gradients diverge at step {step_}: "
                    f"relative error above {grad_tol:.0e} in {c.report(grad_tol)}"
                    f"{_kept(ckpt)}\nthe per-layer audit of this batch (jaxcnn.check_grads):\n"
                    f"{audit}", c, audit)
            return c

        if plan is not None:
            log(f"data-parallel over {plan.describe()}: batch {batch_size}, "
                f"{batch_size // plan.size} per device")
        first = check(start_step, order[:batch_size], "gradient check before training")
        log(first.line())
        if start_step == 0:
            save(0, order)

        evaluator = _evaluator(net, loss, EVAL_BATCH)
        n_eval = min(n_train, 10_000)
        bar = _progress((verbose if progress is None else progress) and main,
                        epochs * steps_per_epoch, start_step)
        step = start_step
        try:
            for epoch in range(start_epoch, epochs):
                t_epoch = time.perf_counter()
                if epoch != start_epoch:
                    order = epoch_order(key, epoch, n_train)
                batches = order[:steps_per_epoch * batch_size].reshape(steps_per_epoch,
                                                                       batch_size)
                for b in range(step - epoch * steps_per_epoch, steps_per_epoch):
                    if check_grads and step % check_grads == 0 and step != start_step:
                        check(step, batches[b], "gradient check")
                    new = run_step(params, opt_state, batches[b], step)
                    value = float(new[2])
                    if not math.isfinite(value):
                        raise NonFiniteLossError(
                            f"non-finite loss ({value}) at step {step} (epoch {epoch + 1}, "
                            f"batch {b + 1} of {steps_per_epoch}); training stopped"
                            + _kept(ckpt), step)
                    params, opt_state = new[0], new[1]
                    epoch_losses.append(value)
                    step += 1
                    bar.update(1)
                    if b % 10 == 0:
                        bar.set_postfix_str(_postfix(epoch, epochs, np.mean(epoch_losses),
                                                     history), refresh=False)
                    if checkpoint_every and step % checkpoint_every == 0 \
                            and b != steps_per_epoch - 1:
                        save(step, order)
                _, train_acc = evaluator(local(params), x_train[:n_eval], y_train[:n_eval])
                test_loss, test_acc = (evaluator(local(params), x_test, y_test)
                                       if x_test is not None else (None, None))
                history.append({
                    "epoch": epoch + 1, "step": step,
                    "train_loss": float(np.mean(epoch_losses)) if epoch_losses else None,
                    "train_accuracy": train_acc, "test_loss": test_loss,
                    "test_accuracy": test_acc,
                    "seconds": round(time.perf_counter() - t_epoch, 4)})
                epoch_losses = []
                bar.set_postfix_str(_postfix(epoch, epochs, history[-1]["train_loss"], history))
                save(step, epoch_order(key, epoch + 1, n_train))
                if out is not None and main:
                    _write_atomic(os.path.join(out, "metrics.jsonl"),
                                  "".join(json.dumps(h) + "\n" for h in history))
        finally:
            bar.close()
    finally:
        if ckpt is not None:
            ckpt.close()

    last = history[-1] if history else {}
    summary = {
        **(info or {}),
        "test_accuracy": last.get("test_accuracy"), "test_loss": last.get("test_loss"),
        "train_accuracy": last.get("train_accuracy"), "train_loss": last.get("train_loss"),
        "epochs": len(history), "steps": step, "batch_size": batch_size,
        "microbatch": microbatch,
        "seconds": round(seconds_before + time.perf_counter() - t_start, 2),
        "grad": grad, "seed": seed, "gradient_check_worst_relative_error": first.worst,
        "n_train": n_train, "n_test": None if x_test is None else len(x_test),
        "parameters": int(sum(np.size(p) for p in jax.tree_util.tree_leaves(params))),
        "jax_version": jax.__version__, "jaxcnn_version": _version(),
        "device": jax.devices()[0].device_kind,
        **({} if plan is None else {"devices": plan.size, "processes": plan.processes}),
    }
    if out is not None and main:
        _write_atomic(os.path.join(out, "summary.json"), json.dumps(summary, indent=2) + "\n")
        names = [str(info[k]) for k in ("dataset", "arch") if k in (info or {})]
        plot_curves(history, os.path.join(out, "curves.png"),
                    " / ".join(names + [f"{grad} gradients"]))
    log(_final_line(summary, out))
    return FitResult(params, opt_state, history, summary)


def _kept(ckpt: _Checkpoints | None) -> str:
    if ckpt is None:
        return " (no checkpoints: out=None)"
    latest = ckpt.latest()
    return (f"; the last good checkpoint (step {latest}) is kept in {ckpt.manager.directory}"
            if latest is not None else "")


def _postfix(epoch: int, epochs: int, train_loss, history: list[dict]) -> str:
    parts = [f"epoch {epoch + 1}/{epochs}"]
    if train_loss is not None:
        parts.append(f"loss {train_loss:.4f}")
    if history:
        h = history[-1]
        if h["train_accuracy"] is not None:
            parts.append(f"train acc {h['train_accuracy']:.3f}")
        if h["test_accuracy"] is not None:
            parts.append(f"test acc {h['test_accuracy']:.3f}")
    return ", ".join(parts)


class _NoBar:
    def update(self, n): pass
    def set_postfix_str(self, s, refresh=True): pass
    def close(self): pass


def _progress(verbose: bool, total: int, initial: int):
    if not verbose:
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=True)


def _final_line(s: dict, out) -> str:
    parts = []
    if s["test_accuracy"] is not None:
        parts.append(f"test accuracy {100 * s['test_accuracy']:.2f}% (loss {s['test_loss']:.4f})")
    elif s["train_loss"] is not None:
        parts.append(f"train loss {s['train_loss']:.4f}")
    parts.append(f"after {s['epochs']} epochs ({s['steps']} steps) in {s['seconds']:.1f} s")
    line = ", ".join(parts)
    return line + (f"; outputs in {out}" if out is not None else "")


def _version() -> str:
    import jaxcnn
    return jaxcnn.__version__

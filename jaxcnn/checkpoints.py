"""A run's output directory: orbax checkpoints under ``out/checkpoints`` that verify themselves,
the files ``fit`` writes beside them (each written whole or not at all, never through a
symbolic link), and the lock that keeps one run per directory.

A checkpoint ``checkpoints/<step>/`` holds ``state`` -- ``params``, ``opt_state``, ``key`` (the
seed's key data) and ``order`` (the data order of the epoch holding the next step) -- and
``meta`` (JSON: ``step``, ``epoch``, ``history``, ``epoch_losses``, ``config``, ``seconds``,
``gradient_check``): all a resumed run needs to repeat the steps of a run never interrupted.
Two layers of SHA-256 make it verify itself:

- ``meta["arrays"]``: per array of ``state`` (named like ``params/0/w``, ``order``), its shape,
  dtype and the SHA-256 of its bytes; ``meta["sha256"]``: the SHA-256 of the rest of ``meta``
  as canonical JSON (sorted keys).  Restored arrays are hashed and compared.
- ``<step>/jaxcnn-files.json`` (``FILES``), written once orbax has finished the step: the size
  and SHA-256 of every file of the step.  It is checked before orbax reads a byte, so a
  truncated, deleted or altered file is reported by name, not by tensorstore (whose failures
  print tracebacks from its threads even when caught).  A step without it was interrupted
  while being saved.

``Checkpoints.find_good`` walks the steps from the newest down and returns the first that
verifies, with the ones it passed over; ``load_checkpoint`` and ``fit(resume=True)`` use it.
JSON is written strictly (``strict_json``): a non-finite number becomes the string ``"NaN"``,
``"Infinity"`` or ``"-Infinity"`` (``float()`` reads each back), never a bare ``NaN`` token.

One run per directory: ``lock_out`` takes an advisory ``fcntl.flock`` on ``out/jaxcnn.lock``
(``LOCK_FILE``), which records the holder's PID and host; the kernel releases it when the
holder exits, however it exits.

orbax-checkpoint (the ``train`` extra) is imported only when a directory is opened.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import warnings
from typing import Any, BinaryIO, Callable, Iterator

import jax
import numpy as np

__all__ = ["CHECKPOINT_DIR", "OUTPUT_FILES", "LOCK_FILE", "FILES", "CheckpointError",
           "CheckpointWarning", "Checkpoints", "OutLock", "load_checkpoint", "prepare_out",
           "check_path", "has_checkpoint", "holds_run", "lock_out", "is_locked",
           "claim_fresh_out", "latest_out", "write_atomic", "replace_atomic", "json_safe",
           "strict_json", "named_arrays", "array_checksums", "warn_passed"]

CHECKPOINT_DIR = "checkpoints"
"""The directory under ``out`` that holds the checkpoints."""

OUTPUT_FILES = ("summary.json", "metrics.jsonl", "curves.png")
"""The files ``fit`` writes in ``out`` besides the checkpoints."""

LOCK_FILE = "jaxcnn.lock"
"""The lock file in ``out``: ``{"pid", "host", "started"}`` of the run holding it."""

FILES = "jaxcnn-files.json"
"""In each step directory: the size and SHA-256 of every other file of the step."""

_FORMAT = 1                            # meta["format"]: how a checkpoint verifies itself
_SET_ASIDE = ".corrupt"                # a corrupt step passed over on resume: <step>.corrupt
_STEP = r"(?:0|[1-9][0-9]*)"          # a step directory's name, as orbax writes it: ASCII only
_STEP_NAME = re.compile(_STEP, re.ASCII)
_OURS = re.compile(_STEP + r"(\.corrupt|\.orbax-checkpoint-tmp.*)?", re.ASCII)  # checkpoints/
_TEMPORARY = re.compile(r"\.(summary\.json|metrics\.jsonl|curves\.png)\..*\.tmp")  # in out/
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class CheckpointError(ValueError):
    """No checkpoint to use: every one kept is corrupt or partial (the message names each by
    step and path, and why), or the one asked for is."""


class CheckpointWarning(UserWarning):
    """A corrupt or partial checkpoint was passed over for an older, good one."""


class _Corrupt(Exception):
    """A step that does not verify; the message says why."""


# --- strict JSON and atomic writes --------------------------------------------------------

def json_safe(obj: Any) -> Any:
    """``obj`` with tuples as lists, NumPy scalars as Python numbers and non-finite floats as
    the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``: what ``strict_json`` writes."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return obj


def strict_json(obj: Any, **kwargs) -> str:
    """``json.dumps`` of ``json_safe(obj)`` with ``allow_nan=False``: JSON that every parser
    reads."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


def _number(value):
    """A number written by ``json_safe`` read back (``"NaN"`` -> nan); other values as they are."""
    return _NON_FINITE.get(value, value) if isinstance(value, str) else value


def replace_atomic(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a new temporary file beside ``path``, then rename it onto ``path``.

    The temporary file is created by ``tempfile.mkstemp`` (``O_CREAT | O_EXCL``: never an
    existing file or a symbolic link planted under its name) and ``os.replace`` replaces
    ``path`` itself, a symbolic link included, never what a link points to.  A run killed
    while writing leaves the previous file, never half of one.
    """
    directory, name = os.path.split(os.fspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory or ".")
    try:
        os.fchmod(fd, 0o666 & ~_umask())      # mkstemp's 0600 would hide the outputs
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process's umask, read without setting it where Linux shows it (setting it, even
    back at once, would race the other threads' files)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (``replace_atomic``)."""
    replace_atomic(path, lambda f: f.write(text.encode()))


# --- checksums ----------------------------------------------------------------------------

def _host(a) -> np.ndarray:
    """``a`` as a NumPy array of this process (a replicated global array: its local copy)."""
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        a = a.addressable_data(0)
    return np.asarray(a, order="C")       # (np.ascontiguousarray makes a 0-d array 1-d)


def _name(path) -> str:
    """A tree path as ``params/0/w``: the same for a named tuple, a tuple, a list and the dict
    orbax restores either as."""
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def named_arrays(tree) -> list[tuple[str, np.ndarray]]:
    """``(name, array)`` for every leaf of ``tree``: names like ``params/0/w``, arrays on the
    host (a replicated global array: this process's copy)."""
    return [(_name(path), _host(leaf)) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]


def array_checksums(state) -> dict[str, dict]:
    """``name -> {"shape", "dtype", "sha256"}`` for every array of ``state`` (``meta["arrays"]``)."""
    return {name: {"shape": list(a.shape), "dtype": str(a.dtype),
                   "sha256": hashlib.sha256(a.tobytes()).hexdigest()}
            for name, a in named_arrays(state)}


def _digest(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=False).encode()).hexdigest()


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _step_files(step_dir: str) -> dict[str, dict]:
    """``relative path -> {"size", "sha256"}`` of every file of a step directory but ``FILES``."""
    out = {}
    for root, dirs, names in os.walk(step_dir):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, step_dir)
            if rel != FILES:
                out[rel] = {"size": os.path.getsize(path), "sha256": _file_sha256(path)}
    return out


def _check_files(step_dir: str) -> None:
    """``_Corrupt`` naming the first file of the step that is missing, truncated or altered,
    or saying that the step has no file checksums (its save was interrupted)."""
    try:
        with open(os.path.join(step_dir, FILES), "rb") as f:
            listed = json.loads(f.read())["files"]
        listed = sorted((str(rel), {"size": int(w["size"]), "sha256": str(w["sha256"])})
                        for rel, w in listed.items())
    except FileNotFoundError:
        raise _Corrupt(f"it has no {FILES}: its save was interrupted") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise _Corrupt(f"its {FILES} is unreadable ({_first_line(err)})") from None
    for rel, want in listed:
        if os.path.isabs(rel) or os.path.normpath(rel).split(os.sep)[0] == os.pardir:
            raise _Corrupt(f"its {FILES} names a file outside the step: {rel}")
        path = os.path.join(step_dir, rel)
        if not os.path.isfile(path):
            raise _Corrupt(f"the file {rel} is missing")
        size = os.path.getsize(path)
        if size != want["size"]:
            raise _Corrupt(f"the file {rel} has {size} bytes, {want['size']} were written "
                           f"(truncated or altered)")
        if _file_sha256(path) != want["sha256"]:
            raise _Corrupt(f"the file {rel} does not match its SHA-256 (altered)")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    line = text.splitlines()[0] if text else ""
    line = line if len(line) <= 160 else line[:157] + "..."
    return f"{type(err).__name__}: {line}" if line else type(err).__name__


# --- the checkpoints ----------------------------------------------------------------------

@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
    """orbax logs a failed write's traceback (through absl) before it raises; the caller turns
    the exception into one line for the user (a full disk: ``TrainingError``), so the log is
    held back."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


class Checkpoints:
    """orbax's ``CheckpointManager`` under ``out/checkpoints``: one step directory per save,
    written to a temporary directory and renamed when complete, then sealed with ``FILES``;
    the latest 2 kept.  ``writer``: a run that saves, holding the directory's lock -- it
    creates the directory and removes the temporary directories a killed run left (a reader
    must not: a live run's save in progress is one).  ``primary``: this process writes
    ``FILES`` and sets corrupt steps aside (process 0 of a distributed run)."""

    def __init__(self, directory: str, *, writer: bool = True, primary: bool = True):
        import orbax.checkpoint as ocp

        self.ocp, self.primary, self.writer = ocp, primary, writer
        self.directory = os.path.abspath(directory)
        try:
            check_path(self.directory)
        except ValueError as err:
            raise CheckpointError(str(err)) from None
        self.manager = self._open()

    def _open(self):
        from orbax.checkpoint import checkpoint_managers

        ocp = self.ocp
        try:
            return ocp.CheckpointManager(
                self.directory, item_names=("state", "meta"),
                options=ocp.CheckpointManagerOptions(
                    enable_async_checkpointing=False, cleanup_tmp_directories=self.writer,
                    create=self.writer, preservation_policy=checkpoint_managers.LatestN(2)))
        except Exception as err:        # orbax raises many kinds; none may reach the user raw
            raise CheckpointError(f"cannot open the checkpoints in {self.directory}: "
                                  f"{_first_line(err)}") from err

    def path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def steps(self) -> list[int]:
        """The saved steps, newest first (verified or not)."""
        return sorted(self.manager.all_steps(), reverse=True)

    def latest(self) -> int | None:
        """The newest saved step, or ``None``."""
        return self.manager.latest_step()

    def save(self, step: int, state: dict, meta: dict) -> None:
        """Write ``state`` (arrays) and ``meta`` (JSON, with the arrays' checksums and its own)
        as ``step``, then seal the step with ``FILES``."""
        body = json_safe({**meta, "format": _FORMAT, "arrays": array_checksums(state)})
        args = self.ocp.args
        with _quiet_orbax():
            self.manager.save(step, args=args.Composite(
                state=args.StandardSave(state),
                meta=args.JsonSave({**body, "sha256": _digest(body)})), force=True)
        if self.primary:
            write_atomic(os.path.join(self.path(step), FILES),
                         strict_json({"format": _FORMAT, "step": step,
                                      "files": _step_files(self.path(step))}))

    def read_meta(self, step: int) -> dict:
        """``step``'s meta once its files and the meta's own checksum verify (``_Corrupt``)."""
        _check_files(self.path(step))
        try:
            meta = self.manager.restore(
                step, args=self.ocp.args.Composite(meta=self.ocp.args.JsonRestore()))["meta"]
        except Exception as err:
            raise _Corrupt(f"its meta cannot be read ({_first_line(err)})") from None
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT or "sha256" not in meta:
            raise _Corrupt("its meta holds no checksums (not written by this version of "
                           "jaxcnn)")
        body = {k: v for k, v in meta.items() if k != "sha256"}
        if _digest(body) != meta["sha256"]:
            raise _Corrupt("its meta does not match its SHA-256 (altered)")
        return _unsealed(body)

    def read_state(self, step: int, template: dict | None, meta: dict) -> dict:
        """``step``'s arrays onto ``template``'s structure and devices (``None``: this
        process's first device), each checked against its SHA-256 in ``meta`` (``_Corrupt``)."""
        args = self.ocp.args
        try:
            if template is None:     # onto one device, whatever the saving run's devices were
                template = self._on_one_device(step)       # (docs/scaling.md)
            state = self.manager.restore(step, args=args.Composite(
                state=args.StandardRestore(template)))["state"]
        except Exception as err:
            if "tree structures do not match" in str(err):   # orbax: the arrays fit, the tree not
                raise ValueError(f"the checkpoint at step {step} in {self.path(step)} holds the "
                                 f"arrays this run has, in another tree (another optimizer, "
                                 f"such as adamw for adam, or another net of the same shapes)"
                                 ) from None
            raise _Corrupt(f"its arrays cannot be read ({_first_line(err)})") from None
        got, want = array_checksums(state), meta["arrays"]
        for name in sorted(set(got) | set(want)):
            if got.get(name) != want.get(name):
                what = "is missing" if name not in got else "does not match its SHA-256"
                raise _Corrupt(f"the array {name} {what}")
        return state

    def _on_one_device(self, step: int) -> dict:
        saved = self.ocp.StandardCheckpointHandler().metadata(
            self.manager.directory / str(step) / "state")
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
            getattr(saved, "tree", saved))

    def restore(self, step: int, template: dict | None) -> tuple[dict, dict]:
        """``(state, meta)`` of ``step``, verified; ``CheckpointError`` if it does not verify."""
        try:
            meta = self.read_meta(step)
            _check_fits(template, meta["arrays"], f"the checkpoint at step {step} in "
                                                  f"{self.path(step)}")
            return self.read_state(step, template, meta), meta
        except _Corrupt as err:
            raise CheckpointError(f"the checkpoint at step {step} in {self.path(step)} is "
                                  f"corrupt or partial: {err}") from None

    def find_good(self, template: dict | None, check: Callable[[int, dict], None] = None,
                  what: str = "cannot restore") -> tuple[int, dict, dict, list[str]]:
        """The newest step that verifies: ``(step, state, meta, passed)``, ``passed`` holding
        ``(step, why)`` for each newer step passed over.  ``check(step, meta)`` may raise for a
        checkpoint of another run; it runs, and the template's shapes are compared, before
        any array is read.  ``CheckpointError`` if no step verifies."""
        passed = []
        for step in self.steps():
            try:
                meta = self.read_meta(step)
                if check is not None:
                    check(step, meta)
                _check_fits(template, meta["arrays"],
                            f"{what}: the checkpoint at step {step} in {self.path(step)}")
                return step, self.read_state(step, template, meta), meta, passed
            except _Corrupt as err:
                passed.append((step, f"step {step} ({self.path(step)}) is corrupt or partial: "
                                     f"{err}"))
        if not passed:
            raise FileNotFoundError(f"no checkpoints in {self.directory}")
        raise CheckpointError(f"{what}: no good checkpoint in {self.directory}; the "
                              f"checkpoint at {'; at '.join(why for _, why in passed)}")

    def set_aside(self, steps: list[int]) -> None:
        """Rename the step directories ``steps`` to ``<step>.corrupt`` (replacing an older
        one), out of orbax's sight, so that the steps can be saved again; then reopen."""
        if self.primary:
            for step in steps:
                aside = self.path(step) + _SET_ASIDE
                if os.path.isdir(aside) and not os.path.islink(aside):
                    shutil.rmtree(aside)
                os.rename(self.path(step), aside)
        self.reopen()

    def reopen(self) -> None:
        """Read the directory again (after another process set steps aside)."""
        self.manager.close()
        self.manager = self._open()

    def kept(self) -> str:
        """The end of a fault's message: the newest complete (sealed) checkpoint, which
        survives it."""
        sealed = [s for s in self.steps() if os.path.isfile(os.path.join(self.path(s), FILES))]
        return (f"; the last good checkpoint (step {sealed[0]}) is kept in {self.directory}"
                if sealed else "; no checkpoint was kept")

    def close(self) -> None:
        """Release orbax's manager."""
        self.manager.close()


def _unsealed(body: dict) -> dict:
    """A verified meta with the numbers ``json_safe`` wrote as strings read back."""
    meta = dict(body)
    meta["history"] = [{k: _number(v) for k, v in h.items()} for h in meta.get("history", [])]
    meta["epoch_losses"] = [_number(v) for v in meta.get("epoch_losses", [])]
    if "gradient_check" in meta:
        meta["gradient_check"] = _number(meta["gradient_check"])
    return meta


def _check_fits(template, arrays: dict, where: str) -> None:
    """``ValueError`` if the arrays saved (``meta["arrays"]``) are not those of ``template``:
    another net, optimizer or data set size (``None``: anything fits)."""
    if template is None:
        return
    want = {_name(path): (list(np.shape(leaf)), str(np.dtype(leaf.dtype)))
            for path, leaf in jax.tree_util.tree_leaves_with_path(template)}
    for name in sorted(set(want) | set(arrays), key=lambda n: (not n.startswith("params"), n)):
        saved = arrays.get(name)
        saved = None if saved is None else (saved["shape"], saved["dtype"])
        if saved != want.get(name):
            def describe(x):
                return "nothing" if x is None else f"shape {tuple(x[0])} and dtype {x[1]}"
            raise ValueError(f"{where} holds {describe(saved)} for the array {name}, this run "
                             f"has {describe(want.get(name))} (another net, optimizer or data "
                             f"set)")


def warn_passed(passed: list[tuple[int, str]], step: int, aside: bool,
                stacklevel: int = 3) -> None:
    """A ``CheckpointWarning`` per corrupt step passed over for ``step`` (``find_good``);
    ``aside``: it was renamed ``<step>.corrupt`` (``Checkpoints.set_aside``)."""
    for bad, why in passed:
        then = f" (kept aside as {bad}{_SET_ASIDE})" if aside else ""
        warnings.warn(f"the checkpoint at {why}; using the one at step {step} instead{then}",
                      CheckpointWarning, stacklevel=stacklevel)


def load_checkpoint(out, template: dict | None = None, step: int | None = None
                    ) -> tuple[dict, dict]:
    """The latest (or ``step``'s) checkpoint that ``fit`` left in ``out``: ``(state, meta)``.

    ``state`` has ``params``, ``opt_state``, ``net_state`` (``jaxcnn.state``), ``key`` (the
    seed's key data) and ``order`` (the data order of the epoch holding the next step); ``meta``
    has ``step``, ``epoch``, ``history``, ``config``, ``changes`` and ``seconds`` (and the
    checksums it was verified with).  Without a ``template`` (a state of the same structure)
    the arrays come back as orbax stores them: tuples and named tuples as lists and dicts --
    but ``net_state`` as the tuples ``jc.with_state`` takes.  The checkpoint is verified (module
    docstring): a corrupt latest one is passed over for the one before with a
    ``CheckpointWarning``; ``CheckpointError`` if none (or the ``step`` asked for) verifies,
    ``FileNotFoundError`` if there is none.  Reading never changes ``out``.
    """
    ckpt_dir = os.path.join(os.fspath(out), CHECKPOINT_DIR)
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"no checkpoints in {ckpt_dir}")
    ckpt = Checkpoints(ckpt_dir, writer=False, primary=False)
    try:
        if step is not None:
            if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)):
                raise TypeError(f"step must be an int, got {step!r}")
            if step not in ckpt.steps():
                raise FileNotFoundError(f"no checkpoint at step {step} in {ckpt_dir}; it holds "
                                        f"steps {sorted(ckpt.steps())}")
            state, meta = ckpt.restore(step, template)
        else:
            step, state, meta, passed = ckpt.find_good(template)
            warn_passed(passed, step, aside=False)
    finally:
        ckpt.close()
    if template is None and "net_state" in state:   # a net's state is tuples (jaxcnn.state)
        state = {**state, "net_state": _tuples(state["net_state"])}
    return state, meta


def _tuples(tree):
    """``tree`` with orbax's lists read back as the tuples they were saved as."""
    if isinstance(tree, (list, tuple)):
        return tuple(_tuples(t) for t in tree)
    if isinstance(tree, dict):
        return {k: _tuples(v) for k, v in tree.items()}
    return tree


# --- the output directory -----------------------------------------------------------------

def check_path(ckpt_dir: str) -> None:
    """``ValueError`` for a checkpoint directory jaxcnn cannot keep: a URL (``gs://...``; the
    lock and the atomic renames need a local file system), a path with ``[`` or ``]``, which
    orbax takes for a glob pattern, or with a backslash, which tensorstore takes for a path
    separator (the arrays land in another directory): every step written there unreadable."""
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", ckpt_dir):
        raise ValueError(f"{ckpt_dir}: a URL; jaxcnn writes its runs to a local directory (its "
                         f"lock and atomic renames need a local file system)")
    ckpt_dir = os.path.abspath(ckpt_dir)
    if "[" in ckpt_dir or "]" in ckpt_dir:
        raise ValueError(f"{ckpt_dir}: orbax-checkpoint reads a path holding '[' or ']' as a "
                         f"pattern and could not read its checkpoints back; choose an output "
                         f"directory without them")
    if "\\" in ckpt_dir:
        raise ValueError(f"{ckpt_dir}: tensorstore reads a backslash in a path as a separator "
                         f"and would write the arrays of every checkpoint elsewhere; choose an "
                         f"output directory without one")


def _run_steps(ckpt_dir: str) -> list[str]:
    try:
        return [n for n in os.listdir(ckpt_dir) if _STEP_NAME.fullmatch(n)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def has_checkpoint(out: str, *, sealed: bool = False) -> bool:
    """Whether ``out`` holds a checkpoint (verified or not): something to resume.  ``sealed``:
    one whose save finished (its ``FILES`` written), not one a kill cut short."""
    ckpt_dir = os.path.join(out, CHECKPOINT_DIR)
    return any(not sealed or os.path.isfile(os.path.join(ckpt_dir, step, FILES))
               for step in _run_steps(ckpt_dir))


def holds_run(out: str) -> bool:
    """Whether ``out`` holds a run: a checkpoint or one of ``OUTPUT_FILES``."""
    return has_checkpoint(out) or any(
        os.path.lexists(os.path.join(out, name)) for name in OUTPUT_FILES)


def prepare_out(out: str, *, resume: bool, overwrite: bool, clear: bool = True) -> str:
    """Check ``out`` for a fresh run or a resume and create it; return its checkpoint directory.

    A fresh run refuses a directory that holds checkpoints unless ``overwrite``; a resume needs
    one.  ``ValueError`` otherwise, before anything is written.  Where ``clear`` (the holder of
    the directory's lock; process 0 of a distributed run) it also removes what jaxcnn wrote
    and a killed run left: with ``overwrite``, the step directories, set-aside and temporary
    ones under ``checkpoints/`` and ``OUTPUT_FILES``; always, the temporaries of
    ``OUTPUT_FILES``.  Files jaxcnn did not write are never touched.  A ``checkpoints/`` that
    is a symbolic link is refused in every mode: ``out``'s lock does not cover where it points.
    """
    ckpt_dir = os.path.join(out, CHECKPOINT_DIR)
    if os.path.islink(ckpt_dir):
        raise ValueError(f"{ckpt_dir} is a symbolic link: this run's lock covers {out}, not "
                         f"where the link points, so it could write next to another run's "
                         f"checkpoints; remove the link, or give as out a directory whose "
                         f"checkpoints/ is a real directory (the one the link points into, "
                         f"if its checkpoints are there)")
    has_ckpt = bool(_run_steps(ckpt_dir))
    if resume and not has_ckpt:
        raise ValueError(f"nothing to resume: no checkpoint in {ckpt_dir}; run without "
                         f"resume to start training")
    written = [n for n in OUTPUT_FILES if os.path.isfile(os.path.join(out, n))
               and not os.path.islink(os.path.join(out, n))]        # a planted link is not
    if not resume and not overwrite and has_ckpt:
        raise ValueError(f"{out} already holds a run (checkpoints in {ckpt_dir}); "
                         f"resume it, choose another output directory, or overwrite it")
    if not resume and not overwrite and written:
        raise ValueError(f"{out} already holds the outputs of a run ({', '.join(written)}) "
                         f"but no checkpoint to resume; choose another output directory, or "
                         f"overwrite it")
    if overwrite and not resume:
        _check_ours(ckpt_dir)
    if clear:
        os.makedirs(out, exist_ok=True)
        _remove_ours(out, ckpt_dir, everything=overwrite and not resume)
    return ckpt_dir


_STEP_ENTRIES = re.compile(r"(meta|state)(\.orbax-checkpoint-tmp.*)?|jaxcnn-files\.json|"
                           r"commit_success\.txt|_[A-Z_]+", re.ASCII)
"""What a step directory of jaxcnn's holds: its two orbax items (or their temporaries), its
seal, orbax's commit file and metadata (``_CHECKPOINT_METADATA``)."""


def _check_ours(ckpt_dir: str) -> None:
    """``ValueError`` before ``overwrite`` removes anything, where a directory under
    ``checkpoints/`` that is named as jaxcnn names its steps holds files jaxcnn does not write
    (another program's checkpoint, say): it is not jaxcnn's to delete."""
    if not os.path.isdir(ckpt_dir):
        return
    for name in sorted(filter(_OURS.fullmatch, os.listdir(ckpt_dir))):
        path = os.path.join(ckpt_dir, name)
        if not os.path.isdir(path) or os.path.islink(path):
            continue
        foreign = sorted(n for n in os.listdir(path) if not _STEP_ENTRIES.fullmatch(n))
        if foreign:
            raise ValueError(f"{path} holds files jaxcnn does not write ({', '.join(foreign)}); "
                             f"overwrite removes only jaxcnn's checkpoints: move it away first")


def _remove_ours(out: str, ckpt_dir: str, everything: bool) -> None:
    """Remove the temporaries of ``OUTPUT_FILES`` in ``out``; with ``everything`` also the
    outputs and jaxcnn's entries of ``ckpt_dir`` (the directory itself if left empty)."""
    for name in os.listdir(out):
        path = os.path.join(out, name)
        ours = _TEMPORARY.fullmatch(name) or (everything and name in OUTPUT_FILES)
        if ours and (os.path.islink(path) or not os.path.isdir(path)):
            os.remove(path)
    if everything and os.path.isdir(ckpt_dir) and not os.path.islink(ckpt_dir):
        for name in os.listdir(ckpt_dir):
            path = os.path.join(ckpt_dir, name)
            if _OURS.fullmatch(name):
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
        if not os.listdir(ckpt_dir):
            os.rmdir(ckpt_dir)


class OutLock:
    """The held lock of an output directory (``lock_out``); ``release`` ends it (so does the
    end of the process, however it ends), once, whoever calls it."""

    def __init__(self, fd: int, path: str, key: str):
        self.fd, self.path, self.key = fd, path, key

    def release(self) -> None:
        if _CLAIMED.get(self.key) is self:
            del _CLAIMED[self.key]
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


_CLAIMED: dict[str, OutLock] = {}
"""Locks ``claim_fresh_out`` took for the run this process starts next, by the lock file's real
path: that run's ``lock_out`` takes the lock over instead of being refused by it."""


def _open_lock(path: str, flags: int) -> int:
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ValueError(f"{path} is a symbolic link; jaxcnn keeps its lock there as a "
                             f"plain file: remove the link") from None
        if err.errno == errno.EISDIR:
            raise ValueError(f"{path} is a directory; jaxcnn keeps its lock there as a plain "
                             f"file: move it away") from None
        raise


def _holder(fd: int) -> str:
    """Who holds the lock, from the lock file: ``process 123 on host h (since ...)``."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"process {info['pid']} on host {info['host']} (since {info['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not yet written its name"


def lock_out(out: str) -> OutLock:
    """Take ``out``'s lock (creating ``out``): an exclusive ``fcntl.flock`` on ``LOCK_FILE``,
    which then records this process's PID, host and start time.  ``ValueError`` naming the
    holder at once if another process holds it.  Advisory, and only as good as ``flock`` on
    the file system: a local disk, not every network file system."""
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as err:              # a parent that is missing and cannot be made, a file
        raise OSError(f"cannot create the output directory {out}: "
                      f"{err.strerror or err} ({err.filename or out})") from err
    path = os.path.join(out, LOCK_FILE)
    key = os.path.realpath(path)
    if key in _CLAIMED:                 # chosen for this run by claim_fresh_out: take it over
        return _CLAIMED.pop(key)
    fd = _open_lock(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = _holder(fd)
        os.close(fd)
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        raise ValueError(f"{out} is in use by another jaxcnn run: {holder} holds its lock "
                         f"{path}; wait for it to end, or choose another output "
                         f"directory") from None
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                              "started": now, "argv": sys.argv}).encode(), 0)
    return OutLock(fd, path, key)


def is_locked(out: str) -> bool:
    """Whether a live process holds ``out``'s lock (a look that takes and drops it at once)."""
    path = os.path.join(out, LOCK_FILE)
    try:
        fd = _open_lock(path, os.O_RDONLY)
    except (OSError, ValueError):
        return os.path.lexists(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def _candidates(base: str):
    yield base
    k = 2
    while True:
        yield f"{base}-{k}"
        k += 1


def claim_fresh_out(base: str) -> tuple[str, OutLock]:
    """The first of ``base``, ``base-2``, ``base-3``, ... that does not exist, or holds no run
    (``holds_run``) and is not locked -- ``jaxcnn train``'s output directory without ``--out``
    -- with its lock taken as it is chosen, so that two runs started together never pick the
    same one.  The next ``lock_out`` of the directory in this process (the run's) takes the
    lock over; releasing it before then gives it up."""
    for out in _candidates(base):
        if os.path.lexists(out) and not (os.path.isdir(out) and not holds_run(out)):
            continue
        if os.path.realpath(os.path.join(out, LOCK_FILE)) in _CLAIMED:    # this process's
            continue
        try:
            lock = lock_out(out)
        except ValueError:                  # in use, or its lock file a link
            continue
        if not holds_run(out):              # still empty now that it is ours
            _CLAIMED[lock.key] = lock
            return out, lock
        lock.release()


def latest_out(base: str) -> str | None:
    """The newest run among ``base``, ``base-2``, ...: the one whose newest checkpoint was
    written last (``None``: none holds one) -- ``jaxcnn train --resume`` without ``--out``.
    By time, not by number: a fresh run fills the first free name, a gap left by a removed
    run included."""
    parent, name = os.path.split(base)
    try:
        entries = os.listdir(parent or ".")
    except OSError:
        return None
    numbered = re.compile(re.escape(name) + r"(-[2-9]|-[1-9][0-9]+)?", re.ASCII)
    written = {}
    for entry in filter(numbered.fullmatch, entries):
        ckpt_dir = os.path.join(parent, entry, CHECKPOINT_DIR)
        times = []
        for step in _run_steps(ckpt_dir):
            try:
                times.append(os.stat(os.path.join(ckpt_dir, step)).st_mtime_ns)
            except OSError:                 # removed meanwhile
                pass
        if times:
            written[os.path.join(parent, entry)] = max(times)
    return max(written, key=written.get) if written else None

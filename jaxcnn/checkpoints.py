"""A run's output directory: orbax checkpoints under ``out/checkpoints``, and the files ``fit``
writes beside them, each written whole or not at all.

A checkpoint holds ``state`` -- ``params``, ``opt_state``, ``key`` (the seed's key data) and
``order`` (the data order of the epoch holding the next step) -- and ``meta`` (JSON: ``step``,
``epoch``, ``history``, ``epoch_losses``, ``config``, ``seconds``): all a resumed run needs to
repeat the steps of a run never interrupted.

orbax-checkpoint (the ``train`` extra) is imported only when a directory is opened.
"""
from __future__ import annotations

import os
import shutil

import jax

__all__ = ["CHECKPOINT_DIR", "OUTPUT_FILES", "Checkpoints", "load_checkpoint", "prepare_out",
           "write_atomic"]

CHECKPOINT_DIR = "checkpoints"
"""The directory under ``out`` that holds the checkpoints."""

OUTPUT_FILES = ("summary.json", "metrics.jsonl", "curves.png")
"""The files ``fit`` writes in ``out`` besides the checkpoints."""


class Checkpoints:
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
        """The latest complete step, or ``None``."""
        return self.manager.latest_step()

    def save(self, step: int, state: dict, meta: dict) -> None:
        """Write ``state`` (arrays) and ``meta`` (JSON) as ``step``, replacing it if present."""
        args = self.ocp.args
        self.manager.save(step, args=args.Composite(state=args.StandardSave(state),
                                                    meta=args.JsonSave(meta)), force=True)

    def restore(self, step: int, template: dict | None) -> tuple[dict, dict]:
        """``(state, meta)`` of ``step``, onto ``template``'s structure and devices."""
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

    def kept(self) -> str:
        """The end of a fault's message: which checkpoint survives it."""
        latest = self.latest()
        return (f"; the last good checkpoint (step {latest}) is kept in {self.manager.directory}"
                if latest is not None else "")

    def close(self) -> None:
        """Release orbax's manager."""
        self.manager.close()


def prepare_out(out: str, *, resume: bool, overwrite: bool, clear: bool = True) -> str:
    """Check ``out`` for a fresh run or a resume and create it; return its checkpoint directory.

    A fresh run refuses a directory that holds checkpoints unless ``overwrite``, which deletes
    them and ``OUTPUT_FILES`` (only where ``clear``: process 0 of a distributed run); a
    resume needs one.  ``ValueError`` otherwise, before anything is written.
    """
    ckpt_dir = os.path.join(out, CHECKPOINT_DIR)
    has_ckpt = os.path.isdir(ckpt_dir) and any(name.isdigit() for name in os.listdir(ckpt_dir))
    if resume and not has_ckpt:
        raise ValueError(f"nothing to resume: no checkpoint in {ckpt_dir}; run without "
                         f"resume to start training")
    if has_ckpt and not resume:
        if not overwrite:
            raise ValueError(f"{out} already holds a run (checkpoints in {ckpt_dir}); "
                             f"resume it, choose another output directory, or overwrite it")
        if clear:
            shutil.rmtree(ckpt_dir)
            for name in OUTPUT_FILES:
                if os.path.exists(os.path.join(out, name)):
                    os.remove(os.path.join(out, name))
    os.makedirs(out, exist_ok=True)
    return ckpt_dir


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: a run killed while
    writing leaves the previous file, never half of one."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


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
    ckpt = Checkpoints(ckpt_dir)
    try:
        step = ckpt.latest() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoints in {ckpt_dir}")
        return ckpt.restore(step, template)
    finally:
        ckpt.close()

"""Data-parallel training over a mesh of devices: the batch sharded, the parameters replicated.

One mesh axis, ``"batch"``, over the chosen devices of every process::

    mesh        jax.make_mesh((D,), ("batch",))       D devices, over all processes
    x, targets  NamedSharding(mesh, P("batch"))       device d holds B/D rows of the batch
    params      NamedSharding(mesh, P())              every device holds all of them,
    opt_state   NamedSharding(mesh, P())              and so does every process

A step is ``jax.shard_map`` of the single-device ``value_and_grad`` over the batch axis, then
``lax.pmean`` of the loss and the gradients, then the optax update (``step.update_step``) of
the replicated parameters::

    shard step   (J_d, g_d) = value_and_grad(params, x_d, t_d, key=fold_in(key, d))  on device d
    device mean  (J, g)     = pmean_d (J_d, g_d) = (1/D) sum_d (J_d, g_d)

The shard step is eq. 6.2 of docs/derivation.md (forward, the loss's output residual, the
hand-written backward of eq. 6.1) on device d's rows; the device mean is the one all-reduce.

The losses divide by their batch size (eqs. 2.5, 2.6), so ``J_d`` and ``g_d`` are means over
the B/D rows of device d, and the device mean is the mean over all B rows: the single-device
step on the same global batch, up to the order of float additions.

Why ``shard_map`` and not a sharding-annotated ``jit`` (both are XLA SPMD):

- every device runs exactly the code the tests prove -- the hand-written ``value_and_grad`` on
  a batch -- and the only communication is the one all-reduce of the device mean, written
  where it happens.  Under a sharded ``jit`` XLA's partitioner would decide how to split the
  hand-written backward (the kernel gradient, eq. 4.4, is a convolution that contracts over
  the sharded batch axis), and what it decided could only be read from the compiled HLO;
- with ``check_vma=True`` (the default, kept) a forgotten ``pmean`` fails at trace time: the
  per-device gradients vary over ``"batch"`` and ``out_specs=P()`` demands invariant ones;
- a shard's position, ``lax.axis_index("batch")``, exists only inside it: the shard step
  folds it into the key, so stochastic pooling draws differently on each shard, reproducibly
  from the seed.

The price of the per-shard key: a stochastic net's draws depend on D (a run resumed on another
device count continues correctly but is not the uninterrupted run, draw for draw);
deterministic nets agree across device counts to float rounding.

``jax.grad`` inside ``shard_map`` needs care: with ``check_vma=True`` the gradient with respect
to a replicated input is already summed over devices (the transpose of its implicit broadcast),
while the hand-written backward returns each device's own gradient.  So ``grad="autodiff"``
first marks the params device-varying (``lax.pcast(..., to="varying")``, a no-op on the
values), takes ``jax.grad`` of ``J_d`` -- device d's own gradient, as the shard step's -- and
then the same device mean: one all-reduce of the float32 gradients, after all the chunks, under
a 16-bit policy too (differentiating ``pmean(J_d)`` instead would sum the 16-bit gradients inside
the backward, once per chunk).

Several processes (hosts): ``initialize`` starts ``jax.distributed`` before JAX touches a
device; the mesh then spans every process's devices, each process feeds only its own rows of
each batch (``shard_batch``: ``jax.make_array_from_process_local_data``) and holds a full copy
of the replicated state.
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np
import optax
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxcnn import backend
from jaxcnn.core import Array, Layer, Params, State, check_key, is_concrete
from jaxcnn.losses import Loss, check_net_and_loss
from jaxcnn.microbatch import labels_check, microbatched
from jaxcnn.network import value_and_grad
from jaxcnn.precision import Policy, autodiff, policy
from jaxcnn.state import has_state, update_state
from jaxcnn.step import GRADS, _update_step, loss_grad_and_state as local_loss_grad_and_state, \
    memoise, state_step

__all__ = [
    "BATCH", "ENV", "DataParallel", "data_parallel", "check_batch_size",
    "replicate", "local_rows", "shard_batch", "host_copy",
    "shard_key", "loss_and_grad", "loss_grad_and_state", "make_step", "fit_step",
    "initialize", "is_main", "sync",
]

BATCH = "batch"
"""The mesh axis the batch is sharded over."""

ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
"""Environment variables ``initialize`` reads for arguments not given (``jax.distributed``
also reads the first itself; JAX's cluster detection -- Slurm, Open MPI, Cloud TPU,
Kubernetes -- fills in what is still missing)."""


class DataParallel(NamedTuple):
    """A one-axis mesh (``"batch"``) and its two shardings; hashable, so compiled steps are
    cached per mesh."""

    mesh: Mesh

    @property
    def size(self) -> int:
        """D, the number of devices the batch is sharded over (all processes)."""
        return self.mesh.devices.size

    @property
    def batch(self) -> NamedSharding:
        """The batch axis (axis 0) split over the devices."""
        return NamedSharding(self.mesh, P(BATCH))

    @property
    def replicated(self) -> NamedSharding:
        """A full copy on every device."""
        return NamedSharding(self.mesh, P())

    @property
    def processes(self) -> int:
        """The number of processes whose devices are in the mesh."""
        return len({d.process_index for d in self.mesh.devices.flat})

    def describe(self) -> str:
        """``"8 cpu devices"``, ``"2 cpu devices in 2 processes"``."""
        kind = self.mesh.devices.flat[0].device_kind
        procs = f" in {self.processes} processes" if self.processes > 1 else ""
        return f"{self.size} {kind} device{'s' if self.size > 1 else ''}{procs}"


def data_parallel(devices: str | int | Sequence = "all") -> DataParallel:
    """The mesh for ``devices``: ``"all"`` (every device of every process), ``n`` (the first
    ``n``, an equal share from each process), or a list of ``jax.Device`` or device ids.

    Every process of a ``jax.distributed`` run must contribute devices: it feeds its own rows
    of each batch to them.
    """
    chosen = _select(devices)
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"devices: each device may appear once, got {_ids(chosen)}")
    missing = sorted(set(range(jax.process_count())) - {d.process_index for d in chosen})
    if missing:
        raise ValueError(f"devices: every process must hold at least one of the devices "
                         f"(it feeds its rows of each batch to them); processes {missing} hold "
                         f"none of {_ids(chosen)}")
    return DataParallel(jax.make_mesh((len(chosen),), (BATCH,), axis_types=(AxisType.Auto,),
                                      devices=chosen))


def _ids(devices) -> list[int]:
    return [d.id for d in devices]


def _select(devices) -> list:
    available = jax.devices()
    if isinstance(devices, str):
        if devices != "all":
            raise ValueError(f"devices must be 'all', a number of devices or a list of devices, "
                             f"got {devices!r}")
        return list(available)
    if isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        n, procs = int(devices), jax.process_count()
        if not 1 <= n <= len(available):
            raise ValueError(f"devices={n}, but {len(available)} device"
                             f"{'s are' if len(available) > 1 else ' is'} available "
                             f"({available[0].platform}); pass devices='all' or a number from "
                             f"1 to {len(available)}")
        if n % procs:
            raise ValueError(f"devices={n} must divide by the number of processes ({procs}): "
                             f"each process contributes the same number of its devices")
        share = n // procs
        return [d for p in range(procs)
                for d in [d for d in available if d.process_index == p][:share]]
    if isinstance(devices, (list, tuple)) and devices:
        by_id = {d.id: d for d in available}
        chosen = []
        for d in devices:
            if isinstance(d, (int, np.integer)) and not isinstance(d, bool):
                if int(d) not in by_id:
                    raise ValueError(f"devices: no device with id {d}; the ids are "
                                     f"{sorted(by_id)}")
                d = by_id[int(d)]
            elif not isinstance(d, jax.Device):
                raise TypeError(f"devices: expected jax.Device objects or device ids, got "
                                f"{type(d).__name__}")
            chosen.append(d)
        return chosen
    raise TypeError(f"devices must be 'all', a number of devices or a non-empty list of "
                    f"devices, got {devices!r}")


def _check_plan(where: str, plan) -> None:
    if not isinstance(plan, DataParallel):
        raise TypeError(f"{where}: plan must be a DataParallel (jaxcnn.distributed."
                        f"data_parallel(devices)), got {type(plan).__name__}")
    names = getattr(plan.mesh, "axis_names", None)
    if names != (BATCH,):
        raise ValueError(f"{where}: plan must hold a mesh of one axis {BATCH!r} "
                         f"(jaxcnn.distributed.data_parallel(devices)), got axes {names!r}")


def _check_global_batch(where: str, plan: DataParallel, x, targets, key=None) -> None:
    """The batch handed to a sharded step divides over the devices (``check_batch_size``),
    ``targets`` hold one row per row of ``x``, and ``key`` is one key -- checked on the global
    values, before ``shard_map`` would report per-device ones, or none."""
    if key is not None:
        check_key(where, key)
    shape = getattr(x, "shape", None)
    if not shape:
        raise ValueError(f"{where}: x must be an array with a batch axis, got "
                         f"{type(x).__name__ if shape is None else 'shape ()'}")
    tshape = getattr(targets, "shape", None)
    if tshape is None or not tshape or tshape[0] != shape[0]:
        got = f"shape {tuple(tshape)}" if tshape is not None else type(targets).__name__
        raise ValueError(f"{where}: targets must have x's global batch of {shape[0]} rows "
                         f"along their first axis, got {got}")
    check_batch_size(plan, shape[0])
    mine = set(plan.mesh.devices.flat)
    if any(isinstance(a, jax.Array) and is_concrete(a) and a.committed
           and not a.sharding.device_set <= mine for a in (x, targets)):
        raise ValueError(f"{where}: x and targets must lie on the plan's devices "
                         f"({plan.describe()}): shard them with shard_batch(plan, ...)")


def check_batch_size(plan: DataParallel, batch_size: int) -> None:
    """Each device gets the same number of rows: ``batch_size`` must divide by D."""
    _check_plan("check_batch_size", plan)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"check_batch_size: batch_size must be an int, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"check_batch_size: batch_size must be a positive integer, got "
                         f"{batch_size}")
    if batch_size % plan.size:
        raise ValueError(
            f"batch_size ({batch_size}) must divide by the number of devices ({plan.size}): "
            f"each device takes batch_size / {plan.size} rows; try "
            f"{_nearest_sizes(batch_size, plan.size)}")


def _nearest_sizes(batch_size: int, devices: int) -> str:
    """The multiples of ``devices`` just below and above ``batch_size``, as ``"16, 24"``."""
    lower = batch_size - batch_size % devices
    return ", ".join(str(b) for b in (lower, lower + devices) if b > 0)


# --- placing data ------------------------------------------------------------------------------

def replicate(plan: DataParallel, tree: Any) -> Any:
    """Every array of ``tree`` as a global array with a full copy on each device of the mesh.

    Each process passes the same values (params from the same seed, or one checkpoint).
    """
    _check_plan("replicate", plan)

    def put(a):
        if jax.dtypes.issubdtype(getattr(a, "dtype", None), jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(a)),
                                            impl=jax.random.key_impl(a))
        value = np.asarray(a)
        return jax.make_array_from_callback(value.shape, plan.replicated,
                                            lambda index: value[index])

    return jax.tree_util.tree_map(put, tree)


def local_rows(plan: DataParallel, batch_size: int) -> np.ndarray:
    """The rows ``0 .. batch_size - 1`` of a global batch that this process's devices hold,
    in the order ``jax.make_array_from_process_local_data`` expects them."""
    check_batch_size(plan, batch_size)
    index_map = plan.batch.addressable_devices_indices_map((batch_size,))
    blocks = sorted({index[0].indices(batch_size)[:2] for index in index_map.values()})
    return np.concatenate([np.arange(start, stop) for start, stop in blocks])


def shard_batch(plan: DataParallel, array: np.ndarray, index: np.ndarray) -> Array:
    """The global batch ``array[index]`` sharded over the mesh; this process reads, and sends
    to its devices, only its own rows of it (``index`` is the same on every process)."""
    _check_plan("shard_batch", plan)
    index = np.asarray(index)
    if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
        raise TypeError(f"shard_batch: index must be a 1-D array of row numbers, got "
                        f"{index.dtype} of shape {index.shape}")
    check_batch_size(plan, len(index))
    if not hasattr(array, "shape"):
        raise TypeError(f"shard_batch: array must be a NumPy or JAX array, got "
                        f"{type(array).__name__}")
    rows = len(array) if array.ndim else 0
    if index.min() < 0 or index.max() >= rows:
        raise ValueError(f"shard_batch: index must hold row numbers in [0, {rows}) of the "
                         f"array, got values in [{index.min()}, {index.max()}]")
    mine = index[local_rows(plan, len(index))]
    return jax.make_array_from_process_local_data(plan.batch, np.asarray(array[mine]),
                                                  (len(index), *array.shape[1:]))


def host_copy(tree: Any) -> Any:
    """This process's copy of replicated arrays, as NumPy arrays (for evaluation and checks
    on one device, and for saving).  A sharded array (a batch) is refused: its first device's
    rows are not the array."""
    def copy(a):
        if not isinstance(a, jax.Array):
            return np.asarray(a)
        if not a.sharding.is_fully_replicated:
            raise ValueError(f"host_copy: expected replicated arrays (params, optimizer "
                             f"state), got an array of shape {a.shape} sharded as "
                             f"{a.sharding}; a device holds only its share of it")
        return np.asarray(a.addressable_data(0))

    return jax.tree_util.tree_map(copy, tree)


# --- the step ----------------------------------------------------------------------------------

def shard_key(key: Array | None) -> Array | None:
    """Inside ``shard_map``: shard d's key, ``fold_in(key, d)`` (the shard step of the
    module docstring)."""
    return None if key is None else jax.random.fold_in(key, lax.axis_index(BATCH))


def loss_and_grad(net: Layer, loss: Loss, plan: DataParallel, grad: str = "manual",
                  microbatch: int | None = None, precision: str | Policy | None = None
                  ) -> Callable[..., tuple[Array, Params]]:
    """``(params, x, targets, *, key=None, train=True) -> (J, grads)`` over the global batch.

    ``x`` and ``targets`` are sharded over ``"batch"`` (``shard_batch``), ``params`` and
    ``key`` replicated; ``J`` and ``grads`` come back replicated.  ``grad="manual"``: each
    device's hand-written ``value_and_grad`` (eq. 6.2 on its rows), then ``pmean`` -- the
    shard step and the device mean of the module docstring.
    ``grad="autodiff"``: each device's ``jax.grad`` of its own ``J_d``, then the same ``pmean``.
    ``microbatch``: each device runs its rows in chunks of this many (``microbatched``).
    ``precision``: each device computes under this policy (``jaxcnn.precision``); the device
    mean is taken of the float32 gradients.
    """
    _check_plan("loss_and_grad", plan)
    check_net_and_loss("distributed.loss_and_grad", net, loss)
    if grad not in GRADS:
        raise ValueError(f"grad must be one of {', '.join(GRADS)}, got {grad!r}")
    pol = policy(precision, "distributed.loss_and_grad: precision")
    vg = value_and_grad(net, loss, microbatch=microbatch, precision=pol)

    def manual(params, x, targets, *, key, train):
        value, grads = vg(params, x, targets, key=shard_key(key), train=train)
        return lax.pmean((value, grads), BATCH)

    chunked = microbatched(_autodiff_local(net, loss, pol, stateful=False), microbatch,
                           "value_and_grad")

    def automatic(params, x, targets, *, key, train):   # chunks split the shard's key, as manual
        value, (grads, _) = chunked((params, ()), x, targets, key=shard_key(key), train=train)
        return lax.pmean((value, grads), BATCH)

    local = manual if grad == "manual" else automatic
    labels = labels_check(net, loss)

    def f(params, x, targets, *, key=None, train=True):
        _check_global_batch("loss_and_grad", plan, x, targets, key)
        labels(params, x, targets, key, train)
        mapped = jax.shard_map(
            lambda p, xs, ts, k: local(p, xs, ts, key=k, train=train), mesh=plan.mesh,
            in_specs=(P(), P(BATCH), P(BATCH), P()), out_specs=(P(), P()))
        return mapped(params, x, targets, key)

    return f


def make_step(net: Layer, loss: Loss, optimizer: optax.GradientTransformation,
              plan: DataParallel, grad: str = "manual", microbatch: int | None = None,
              precision: str | Policy | None = None) -> Callable:
    """The data-parallel ``train.make_step``: jitted ``(params, opt_state, x, targets, key) ->
    (params, opt_state, J)`` with ``x``, ``targets`` sharded (``shard_batch``) and the rest
    replicated (``replicate``).  ``key`` is the step's key; shard d draws from
    ``fold_in(key, d)``.
    """
    check_net_and_loss("distributed.make_step", net, loss)
    if has_state(net):
        raise ValueError(f"make_step: {net.name} keeps a state (such as BatchNorm's running "
                         f"statistics), which this step would leave at its initial value; use "
                         f"fit_step, or fit with devices=")
    step = _update_step("distributed.make_step",
                        loss_and_grad(net, loss, plan, grad, microbatch, precision), optimizer)
    rep = plan.replicated
    return jax.jit(step, out_shardings=(rep, rep, rep))


def loss_grad_and_state(net: Layer, loss: Loss, plan: DataParallel, grad: str = "manual",
                        microbatch: int | None = None, precision: str | Policy | None = None
                        ) -> Callable[..., tuple[Array, Params, State]]:
    """``(params, state, x, targets, *, key=None) -> (J, grads, state)`` over the global batch,
    in training mode: ``loss_and_grad`` with the net's state (``jaxcnn.state``).

    Batch statistics are **per device**: each device normalises its own rows, as PyTorch's
    ``BatchNorm`` under data parallelism does, and the new state is the mean over devices of
    the devices' updated states -- the update with the devices' mean statistics.  The whole
    step is therefore the single-device step with ``microbatch`` = the per-device batch, whose
    chunks play the devices (``tests/test_distributed.py`` proves it).
    ``grad="manual"``: each device's ``step.loss_grad_and_state``, then ``pmean``.
    ``grad="autodiff"``: each device's ``jax.grad`` of its ``J_d``, then ``pmean``, as
    ``loss_and_grad``.
    ``precision``: as ``loss_and_grad``'s.
    """
    _check_plan("loss_grad_and_state", plan)
    check_net_and_loss("distributed.loss_grad_and_state", net, loss)
    if grad not in GRADS:
        raise ValueError(f"grad must be one of {', '.join(GRADS)}, got {grad!r}")
    pol = policy(precision, "distributed.loss_grad_and_state: precision")
    if grad == "manual":
        vgs = local_loss_grad_and_state(net, loss, "manual", microbatch, pol)

        def local(params, state, x, targets, key):
            return lax.pmean(vgs(params, state, x, targets, key=shard_key(key)), BATCH)
    else:
        chunked = microbatched(_autodiff_local(net, loss, pol, has_state(net)), microbatch,
                               "value_and_grad")

        def local(params, state, x, targets, key):   # chunks split the shard's key, as manual
            value, (grads, state) = chunked((params, state), x, targets, key=shard_key(key),
                                            train=True)
            return lax.pmean((value, grads, state), BATCH)

    labels = labels_check(net, loss)

    def f(params, state, x, targets, *, key=None):
        _check_global_batch("loss_grad_and_state", plan, x, targets, key)
        labels(params, x, targets, key, True)
        mapped = jax.shard_map(local, mesh=plan.mesh,
                               in_specs=(P(), P(), P(BATCH), P(BATCH), P()),
                               out_specs=(P(), P(), P()))
        return mapped(params, state, x, targets, key)

    return f


def _autodiff_local(net: Layer, loss: Loss, pol: Policy, stateful: bool) -> Callable:
    """One device's ``((params, state), x, targets, key, train) -> (J_d, (grads_d, state_d))``
    by ``jax.grad`` of its own loss under the policy ``pol``, the params marked device-varying
    first so that the gradient is this device's (the module docstring): through ``net.apply``
    where no state is kept (the state ``()`` passed through: a net without one, or
    ``loss_and_grad``'s), through ``net.forward`` -- whose cache holds the batch statistics --
    where ``stateful``, the state updated from them."""
    def whole(params_and_state, x, targets, key, train):
        params, state = params_and_state

        def run(p, xc):
            if not stateful:
                return net.apply(p, xc, key=key, train=train), ()
            return net.forward(p, xc, key=key, train=train)

        own = lax.pcast(params, BATCH, to="varying")
        value, grads, cache = autodiff(pol, loss.value, run)(own, x, targets)
        if stateful:
            state = update_state(net, state, cache)
        return value, (grads, state)

    return whole


@memoise
def fit_step(net: Layer, loss: Loss, optimizer: optax.GradientTransformation, grad: str,
             plan: DataParallel, microbatch: int | None = None,
             precision: str | Policy | None = None) -> Callable:
    """``fit``'s step on a mesh: ``(params, opt_state, state, x, targets, step_key, step) ->
    (params, opt_state, state, J)`` with the forward's key ``fold_in(step_key, step)``, as the
    single-device ``step.fit_step``."""
    update = state_step(loss_grad_and_state(net, loss, plan, grad, microbatch, precision),
                        optimizer)

    def step_fn(params, opt_state, state, x, targets, step_key, step):
        return update(params, opt_state, state, x, targets, jax.random.fold_in(step_key, step))

    rep = plan.replicated
    return backend.jit(step_fn, out_shardings=(rep, rep, rep, rep))


# --- several processes -------------------------------------------------------------------------

def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Start ``jax.distributed`` for a run over several processes; call it first, before JAX
    uses a device.  Returns whether it started (``False``: one process, nothing to do).

    Arguments not given come from ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0),
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``; ``coordinator="auto"`` leaves all three to
    JAX's cluster detection (Cloud TPU pods, Slurm, Open MPI, Kubernetes).  With none of them
    set, nothing happens.  Every process runs the same program with its own ``process_id``.
    """
    if coordinator == "auto":
        given = {k: v for k, v in (("num_processes", num_processes),
                                   ("process_id", process_id)) if v is not None}
        if given:
            raise ValueError(f"coordinator 'auto' leaves the number of processes and this "
                             f"process's id to JAX's cluster detection; got also "
                             f"{', '.join(f'{k}={v!r}' for k, v in given.items())}: pass a "
                             f"coordinator host:port with them, or neither")
        jax.distributed.initialize()
        return True
    env_num, env_id = (os.environ.get(name) for name in ENV[1:])
    num_processes = _env_int(ENV[1], env_num) if num_processes is None else num_processes
    process_id = _env_int(ENV[2], env_id) if process_id is None else process_id
    coordinator = coordinator or os.environ.get(ENV[0]) or None
    if coordinator is None and num_processes is None and process_id is None:
        return False
    if coordinator is None or num_processes is None or process_id is None:
        given = {"coordinator": coordinator, "num_processes": num_processes,
                 "process_id": process_id}
        missing = [k for k, v in given.items() if v is None]
        raise ValueError(f"a run over several processes needs the coordinator address "
                         f"(host:port of process 0), the number of processes and this "
                         f"process's id; missing {', '.join(missing)} (flags or {', '.join(ENV)}"
                         f"; or coordinator 'auto' on a TPU pod, Slurm or Open MPI)")
    if not isinstance(coordinator, str):
        raise TypeError(f"the coordinator address must be a string host:port, got "
                        f"{type(coordinator).__name__} {coordinator!r}")
    for name, value in (("num_processes", num_processes), ("process_id", process_id)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    host, _, port = coordinator.rpartition(":")
    if not host or not re.fullmatch(r"[0-9]+", port, re.ASCII) or not 0 < int(port) < 65536:
        raise ValueError(f"the coordinator address must be host:port with a port in 1..65535, "
                         f"got {coordinator!r}")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must lie in [0, num_processes), got process_id="
                         f"{process_id}, num_processes={num_processes}")
    jax.distributed.initialize(coordinator, num_processes, process_id)
    return True


def _env_int(name: str, text: str | None) -> int | None:
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {text!r}") from None


def is_main() -> bool:
    """Process 0: the one that prints and writes the run's files."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Wait until every process gets here (a no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)

"""Data-parallel checks on emulated CPU devices, run by tests/test_distributed.py.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/distributed_worker.py OUT

The device count is fixed when JAX starts, and the test process has already started it with
one device, so these checks run here, in a fresh process, under the test suite's settings
(float64 enabled, strict dtype promotion, rank promotion "raise", warnings as errors).  Each
check writes its arrays and messages to ``OUT/<check>.npz``; the tests assert on them, so a
failure shows up as a named pytest failure, not a crashed subprocess.
"""
import argparse
import os
import re
import sys
import warnings

if "jax" in sys.modules:
    raise RuntimeError("distributed_worker must start JAX itself (XLA_FLAGS sets the devices)")
warnings.simplefilter("error")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax import lax  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")

import jaxcnn as jc  # noqa: E402
from jaxcnn import cli, data, distributed as dist, train  # noqa: E402

LOSS = jc.softmax_cross_entropy
ADAM = optax.adam(1e-2)
NET = jc.serial(jc.Conv2D(6, 3, padding="SAME"), jc.ReLU(), jc.MaxPool2D(2), jc.Flatten(),
                jc.Dense(10))
STOCHASTIC_NET = jc.serial(jc.Conv2D(6, 3, padding="SAME"), jc.ReLU(), jc.StochasticPool2D(2),
                           jc.Flatten(), jc.Dense(10))
DIGITS = data.load_digits()


def leaves(tree) -> list[np.ndarray]:
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(tree)]


def save(out: str, name: str, **arrays) -> None:
    flat = {}
    for key, value in arrays.items():
        if isinstance(value, list):
            flat.update({f"{key}/{i}": a for i, a in enumerate(value)})
        else:
            flat[key] = np.asarray(value)
    np.savez(os.path.join(out, name + ".npz"), **flat)


def error_of(fn) -> str:
    try:
        fn()
    except (ValueError, TypeError) as err:
        return f"{type(err).__name__}: {err}"
    return "no error"


def check_step(out: str) -> None:
    """One step on a global batch of 32 over 8 devices vs one device; the gradients of both
    sharded modes; what the two classic mistakes would give."""
    plan = dist.data_parallel("all")
    params, _ = train.init_params(NET, (8, 8, 1))
    x, y = DIGITS.x_train[:32], DIGITS.y_train[:32]
    index = np.arange(32)
    xs, ys = dist.shard_batch(plan, DIGITS.x_train, index), dist.shard_batch(plan, DIGITS.y_train,
                                                                             index)
    rparams = dist.replicate(plan, params)

    value1, grads1 = jax.jit(jc.value_and_grad(NET, LOSS))(params, x, y)
    sharded = {g: jax.jit(dist.loss_and_grad(NET, LOSS, plan, g))(rparams, xs, ys)
               for g in train.GRADS}
    # 4 rows per device, in 2 microbatches of 2 on each
    chunked = {g: jax.jit(dist.loss_and_grad(NET, LOSS, plan, g, microbatch=2))(rparams, xs, ys)
               for g in train.GRADS}

    # the mixing mistake: jax.grad of each device's own loss, then pmean.  With check_vma the
    # gradient for the replicated params is already summed over devices: D times too large
    def naive(p, xs_, ys_):
        g = jax.grad(lambda q: LOSS.value(NET.apply(q, xs_), ys_))(p)
        return lax.pmean(g, dist.BATCH)
    naive_grads = jax.jit(jax.shard_map(naive, mesh=plan.mesh, in_specs=(P(), P(dist.BATCH),
                                        P(dist.BATCH)), out_specs=P()))(rparams, xs, ys)

    # the forgetting mistake: per-device gradients returned as if replicated
    def no_pmean():
        vg = jc.value_and_grad(NET, LOSS)
        f = jax.shard_map(lambda p, a, b: vg(p, a, b)[1], mesh=plan.mesh,
                          in_specs=(P(), P(dist.BATCH), P(dist.BATCH)), out_specs=P())
        jax.jit(f)(rparams, xs, ys)

    step1 = train.make_step(NET, LOSS, ADAM)(params, ADAM.init(params), x, y, None)
    step8 = dist.make_step(NET, LOSS, ADAM, plan)(rparams, dist.replicate(plan, ADAM.init(params)),
                                                  xs, ys, None)
    save(out, "step", devices=plan.size, value1=value1, grads1=leaves(grads1),
         value_manual=sharded["manual"][0], grads_manual=leaves(sharded["manual"][1]),
         value_autodiff=sharded["autodiff"][0], grads_autodiff=leaves(sharded["autodiff"][1]),
         value_chunked_manual=chunked["manual"][0],
         grads_chunked_manual=leaves(chunked["manual"][1]),
         value_chunked_autodiff=chunked["autodiff"][0],
         grads_chunked_autodiff=leaves(chunked["autodiff"][1]),
         grads_naive=leaves(naive_grads), no_pmean=error_of(no_pmean),
         params1=leaves(step1[0]), params8=leaves(step8[0]), loss1=step1[2], loss8=step8[2],
         params8_sharding=str(jax.tree_util.tree_leaves(step8[0])[0].sharding),
         x_sharding=str(xs.sharding), x_shard_rows=xs.addressable_shards[0].data.shape[0])


def check_stochastic(out: str) -> None:
    """Shard d draws from fold_in(key, d): on a batch whose 8 shards are the same 4 images the
    shards pool differently, and the step's gradient is the mean of the 8 single-device
    gradients with those keys."""
    plan = dist.data_parallel(8)
    params, _ = train.init_params(STOCHASTIC_NET, (8, 8, 1), seed=1)
    x4, y4 = DIGITS.x_train[:4], DIGITS.y_train[:4]
    index = np.tile(np.arange(4), 8)
    xs, ys = dist.shard_batch(plan, DIGITS.x_train, index), dist.shard_batch(plan, DIGITS.y_train,
                                                                             index)
    key = jax.random.key(7)
    rparams, rkey = dist.replicate(plan, params), dist.replicate(plan, key)

    pooled = jax.jit(jax.shard_map(
        lambda p, a, k: STOCHASTIC_NET.layers[2].apply((), STOCHASTIC_NET.layers[1].apply(
            (), STOCHASTIC_NET.layers[0].apply(p[0], a)), key=dist.shard_key(k)),
        mesh=plan.mesh, in_specs=(P(), P(dist.BATCH), P()), out_specs=P(dist.BATCH)))(
        rparams, xs, rkey)
    value8, grads8 = jax.jit(dist.loss_and_grad(STOCHASTIC_NET, LOSS, plan))(rparams, xs, ys,
                                                                             key=rkey)
    vg = jax.jit(jc.value_and_grad(STOCHASTIC_NET, LOSS))
    per_shard = [vg(params, x4, y4, key=jax.random.fold_in(key, d)) for d in range(8)]
    mean_grads = jax.tree_util.tree_map(lambda *g: sum(g) / 8, *[g for _, g in per_shard])

    kw = dict(optimizer=ADAM, epochs=2, batch_size=16, devices="all", verbose=False)
    x, y = DIGITS.x_train[:96], DIGITS.y_train[:96]
    run_a = train.fit(STOCHASTIC_NET, params, x, y, seed=3, **kw)
    run_b = train.fit(STOCHASTIC_NET, params, x, y, seed=3, **kw)
    run_c = train.fit(STOCHASTIC_NET, params, x, y, seed=4, **kw)
    save(out, "stochastic", pooled=pooled, value8=value8, grads8=leaves(grads8),
         values1=np.array([v for v, _ in per_shard]), mean_grads=leaves(mean_grads),
         shard_grads0=leaves(per_shard[0][1]), shard_grads1=leaves(per_shard[1][1]),
         run_a=leaves(run_a.params), run_b=leaves(run_b.params), run_c=leaves(run_c.params))


def check_fit(out: str) -> None:
    """A short run on 8 devices vs one device; a checkpoint of the 8-device run resumed on 2;
    the batch-size and device-count errors."""
    params, _ = train.init_params(NET, (8, 8, 1))
    x, y = DIGITS.x_train[:160], DIGITS.y_train[:160]
    xt, yt = DIGITS.x_test[:80], DIGITS.y_test[:80]
    kw = dict(optimizer=ADAM, epochs=3, batch_size=16, verbose=False)
    single = train.fit(NET, params, x, y, xt, yt, **kw)
    sharded = train.fit(NET, params, x, y, xt, yt, devices="all", **kw)
    run = os.path.join(out, "run8")
    train.fit(NET, params, x, y, xt, yt, **{**kw, "epochs": 1}, devices=8, out=run)
    resumed = train.fit(NET, params, x, y, xt, yt, **kw, devices=[0, 1], out=run, resume=True)
    save(out, "fit", single=leaves(single.params), sharded=leaves(sharded.params),
         resumed=leaves(resumed.params),
         single_losses=[h["train_loss"] for h in single.history],
         sharded_losses=[h["train_loss"] for h in sharded.history],
         resumed_losses=[h["train_loss"] for h in resumed.history],
         summary_devices=[sharded.summary["devices"], resumed.summary["devices"]],
         odd_batch=error_of(lambda: train.fit(NET, params, x, y, **{**kw, "batch_size": 20},
                                              devices=8)),
         too_many=error_of(lambda: train.fit(NET, params, x, y, **kw, devices=9)),
         odd_microbatch=error_of(lambda: train.fit(NET, params, x, y, **{**kw, "batch_size": 48},
                                                   devices=8, microbatch=4)),
         repeated=error_of(lambda: dist.data_parallel([0, 0])),
         unknown=error_of(lambda: dist.data_parallel([99])),
         odd_step_batch=error_of(lambda: dist.loss_and_grad(NET, LOSS, dist.data_parallel())(
             params, x[:5], y[:5])),
         odd_state_batch=error_of(lambda: dist.loss_grad_and_state(
             NET, LOSS, dist.data_parallel())(params, jc.init_state(NET, x.shape[1:]), x[:5],
                                              y[:5])),
         odd_index=error_of(lambda: dist.shard_batch(dist.data_parallel(), x, np.arange(5))),
         list_index=error_of(lambda: dist.shard_batch(dist.data_parallel(), x, [[0, 1]])),
         no_plan=error_of(lambda: dist.loss_and_grad(NET, LOSS, "all")),
         odd_targets=error_of(lambda: dist.loss_and_grad(NET, LOSS, dist.data_parallel())(
             params, x[:16], y[:12])),
         sharded_copy=error_of(lambda: dist.host_copy(dist.shard_batch(dist.data_parallel(), x,
                                                                        np.arange(16)))),
         negative_index=error_of(lambda: dist.shard_batch(dist.data_parallel(), x,
                                                          -np.arange(1, 9))),
         odd_local_rows=error_of(lambda: dist.local_rows(dist.data_parallel(), 6)),
         other_devices=error_of(lambda: dist.loss_and_grad(
             NET, LOSS, dist.data_parallel([4, 5, 6, 7]))(
             params, *(dist.shard_batch(dist.data_parallel(4), a, np.arange(16))
                       for a in (x, y)))),
         cli_odd_batch=error_of(lambda: cli._check_device_flags(
             argparse.Namespace(batch_size=20), "all")))


BN_NET = jc.serial(jc.Conv2D(6, 3, padding="SAME", use_bias=False), jc.BatchNorm(), jc.ReLU(),
                   jc.MaxPool2D(2), jc.Flatten(), jc.Dense(10))


def check_state(out: str) -> None:
    """BatchNorm on 8 devices: batch statistics per device, the running statistics averaged
    over devices -- one step, both gradient modes, is the single-device step with microbatches
    of the per-device batch (4 rows); and a short run with fit, likewise."""
    plan = dist.data_parallel("all")
    params, _ = train.init_params(BN_NET, (8, 8, 1))
    state = jc.init_state(BN_NET, (8, 8, 1))
    x, y, index = DIGITS.x_train[:32], DIGITS.y_train[:32], np.arange(32)
    xs, ys = dist.shard_batch(plan, DIGITS.x_train, index), dist.shard_batch(plan, DIGITS.y_train,
                                                                             index)
    rparams, rstate = dist.replicate(plan, (params, state))
    results = {}
    for g in train.GRADS:
        sharded = jax.jit(dist.loss_grad_and_state(BN_NET, LOSS, plan, g))(rparams, rstate, xs, ys)
        chunked = jax.jit(train.loss_grad_and_state(BN_NET, LOSS, g, microbatch=4))(
            params, state, x, y)
        results[f"sharded_{g}"], results[f"chunked_{g}"] = leaves(sharded), leaves(chunked)
        # loss_and_grad, which keeps no state: the batch statistics per device all the same
        results[f"lg_sharded_{g}"] = leaves(dist.loss_and_grad(BN_NET, LOSS, plan, g)(
            rparams, xs, ys))
        results[f"lg_chunked_{g}"] = leaves(jax.jit(train.loss_and_grad(
            BN_NET, LOSS, g, microbatch=4))(params, x, y))
    whole = jax.jit(train.loss_grad_and_state(BN_NET, LOSS))(params, state, x, y)
    xv, yv = DIGITS.x_train[:160], DIGITS.y_train[:160]
    kw = dict(optimizer=ADAM, epochs=2, batch_size=32, verbose=False)
    single = train.fit(BN_NET, params, xv, yv, microbatch=4, **kw)
    sharded = train.fit(BN_NET, params, xv, yv, devices="all", **kw)
    # its first epoch, saved, for the test process to resume on one device
    train.fit(BN_NET, params, xv, yv, **{**kw, "epochs": 1}, devices="all",
              out=os.path.join(out, "runbn8"))
    save(out, "state", **results, whole=leaves(whole),
         fit_single=leaves((single.params, single.state)),
         fit_sharded=leaves((sharded.params, sharded.state)))


def reduced_dtypes(jaxpr_text: str) -> str:
    """The dtypes of what every ``psum`` of a jaxpr (``pmean`` is one) sums, sorted."""
    types = set()
    for line in jaxpr_text.splitlines():
        if re.search(r"= psum\w*\[", line):
            types.update(re.findall(r":(bf16|f16|f32|f64)\[", line.split("= psum")[0]))
    return ",".join(sorted(types))


def check_precision(out: str) -> None:
    """Under bfloat16, both gradient modes on 8 devices (with and without microbatches of 2,
    with and without BatchNorm): the single-device step in microbatches of the per-device
    batch, whose chunks' float32 gradients are averaged -- so the device mean sums float32
    gradients only (the jaxpr's ``psum``), never 16-bit ones."""
    plan = dist.data_parallel("all")
    x, y, index = DIGITS.x_train[:32], DIGITS.y_train[:32], np.arange(32)
    xs, ys = dist.shard_batch(plan, DIGITS.x_train, index), dist.shard_batch(plan, DIGITS.y_train,
                                                                             index)
    results = {}
    for g in train.GRADS:
        for mb in (None, 2):
            params, _ = train.init_params(NET, (8, 8, 1))
            f = jax.jit(dist.loss_and_grad(NET, LOSS, plan, g, mb, "bfloat16"))
            rparams = dist.replicate(plan, params)
            results[f"{g}_{mb}"] = leaves(f(rparams, xs, ys))
            results[f"{g}_{mb}_single"] = leaves(jax.jit(train.loss_and_grad(
                NET, LOSS, g, mb or 4, "bfloat16"))(params, x, y))
            results[f"{g}_{mb}_reduced"] = reduced_dtypes(str(jax.make_jaxpr(f)(rparams, xs,
                                                                                ys)))
        params, _ = train.init_params(BN_NET, (8, 8, 1))
        state = jc.init_state(BN_NET, (8, 8, 1))
        rparams, rstate = dist.replicate(plan, (params, state))
        results[f"{g}_state"] = leaves(jax.jit(dist.loss_grad_and_state(
            BN_NET, LOSS, plan, g, None, "bfloat16"))(rparams, rstate, xs, ys))
        results[f"{g}_state_single"] = leaves(jax.jit(train.loss_grad_and_state(
            BN_NET, LOSS, g, 4, "bfloat16"))(params, state, x, y))
    save(out, "precision", **results)


CHECKS = {"step": check_step, "stochastic": check_stochastic, "fit": check_fit,
          "state": check_state, "precision": check_precision}

if __name__ == "__main__":
    out_dir = sys.argv[1]
    for name in sys.argv[2:] or CHECKS:
        CHECKS[name](out_dir)

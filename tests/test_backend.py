"""``jaxcnn.backend``: the XLA options jaxcnn's own steps compile with.

On the CPU they take XLA's convolutions of more than 16 channels and its matrix products from
YNNPACK to Eigen; the tests check that the options do that (the HLO), that the step computes the same numbers as
under XLA's defaults, that ``fit``'s step uses them (``make_step`` stays nestable), and that the user's
``XLA_FLAGS``, another backend, or an XLA that does not know the flag leave them out.
Under them, LayerNorm's hand-written step keeps ``1 / sigma`` per set, not at the input's size.
And the kernel gradient's transpose of its input is a copy of its own, not fused with the ReLU.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcnn as jc
from jaxcnn import backend, train

CPU = jax.default_backend() == "cpu"


def wide_net():
    """Two 3x3 convolutions of 32 channels: the shapes XLA's CPU hands to YNNPACK."""
    return jc.serial(jc.Conv2D(32, 3, padding="SAME"), jc.ReLU(),
                     jc.Conv2D(32, 3, padding="SAME"), jc.ReLU(), jc.GlobalAvgPool2D(),
                     jc.Dense(10))


def hlo(fn, *args, **jit_kwargs):
    return jax.jit(fn, **jit_kwargs).lower(*args).compile().as_text()


def ynn(text: str, op: str) -> int:
    """The ``op`` instructions (``"convolution"``, ``"dot"``) of an optimized HLO text that run
    inside YNNPACK fusions: the fused computations a ``__ynn_fusion`` calls, counted where
    they hold one."""
    called = set(re.findall(r"calls=(%[\w.\-]+)[^\n]*__ynn_fusion", text))
    blocks = re.split(r"\n(?=\S)", text)            # one computation per unindented header
    return sum(block.count(f" {op}(") for block in blocks if block.split(" ", 1)[0] in called)


def step_and_args(batch=4):
    net, opt = wide_net(), optax.sgd(0.1, momentum=0.9)
    params, _ = net.init(jax.random.key(0), (8, 8, 16))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, 8, 8, 16)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, size=batch), jnp.int32)
    return train.train_step(net, jc.softmax_cross_entropy, opt), (
        params, opt.init(params), x, y, jax.random.key(1))


@pytest.mark.skipif(not CPU, reason="the options are the CPU's; elsewhere they are {}")
def test_cpu_options_move_convolutions_and_dots_off_ynnpack_and_keep_the_numbers(optimized_xla):
    """Under XLA's defaults the step's convolutions and its dense layer's products are YNNPACK
    fusions; with the options none is, and the updated parameters, optimizer state and loss
    agree to float32 rounding."""
    step, args = step_and_args()
    options = jc.compiler_options()
    assert options == backend.CPU_OPTIONS
    default = hlo(step, *args)
    assert ynn(default, "convolution") > 0 and ynn(default, "dot") > 0   # else vacuous
    text = hlo(step, *args, compiler_options=options)
    assert " convolution(" in text and " dot(" in text
    assert ynn(text, "convolution") == ynn(text, "dot") == 0
    default, tuned = jax.jit(step)(*args), jax.jit(step, compiler_options=options)(*args)
    for a, b in zip(jax.tree.leaves(default), jax.tree.leaves(tuned)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


@pytest.mark.skipif(not CPU, reason="the options are the CPU's; elsewhere they are {}")
def test_fits_step_compiles_with_them_and_make_step_still_nests(optimized_xla):
    """``fit``'s step (``step.fit_step``, through ``backend.jit``) compiles under the options;
    ``train.make_step`` stays a plain jit, which a transformation of one's own can trace (JAX
    refuses compiler options on a nested jit)."""
    from jaxcnn.step import fit_step
    net, opt = wide_net(), optax.sgd(0.1)
    _, (params, _, x, y, key) = step_and_args()
    step = fit_step(net, jc.softmax_cross_entropy, opt, "manual")
    args = (params, opt.init(params), jc.init_state(net, (8, 8, 16)), x, y, jnp.arange(4), key, 0)
    text = step.lower(*args).compile().as_text()
    assert " convolution(" in text and ynn(text, "convolution") == ynn(text, "dot") == 0
    mine = train.make_step(net, jc.softmax_cross_entropy, opt)
    jaxpr = jax.make_jaxpr(mine)(params, opt.init(params), x, y, key)
    assert "conv_general_dilated" in str(jaxpr)


def test_the_users_flags_another_backend_or_an_unknown_flag_leave_them_out(monkeypatch):
    """``XLA_FLAGS`` naming the flag wins (any value); a GPU or TPU gets none; an XLA that
    rejects the option gets none (probed with one tiny compile, not an error)."""
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
    assert jc.compiler_options("cpu") == {}
    monkeypatch.delenv("XLA_FLAGS")
    assert jc.compiler_options("gpu") == jc.compiler_options("tpu") == {}
    assert backend._known((("xla_cpu_no_such_option", "1"),)) is False
    monkeypatch.setattr(backend, "CPU_OPTIONS", {"xla_cpu_no_such_option": "1"})
    assert jc.compiler_options("cpu") == {}
    f = backend.jit(lambda v: v * 2)              # and jit then compiles without them
    np.testing.assert_array_equal(f(jnp.arange(3.0)), [0.0, 2.0, 4.0])


@pytest.mark.skipif(not CPU, reason="the options are the CPU's; elsewhere they are {}")
def test_layernorm_backward_keeps_one_over_sigma_per_set(optimized_xla):
    """Under the options XLA merged the backward's broadcast of the cached ``1 / sigma`` with
    the forward's and wrote it at the input's full size (``docs/performance.md`` 8.23); behind
    the barrier the forward + backward needs one input-sized temporary, not two."""
    layer = jc.LayerNorm()
    params, _ = layer.init(jax.random.key(0), (32, 32, 16))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(32, 32, 32, 16)), jnp.float32)

    def hand(p, x, d):
        return layer.backward(p, layer.forward(p, x)[1], d)

    compiled = jax.jit(hand, compiler_options=jc.compiler_options()).lower(
        params, x, x).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < 1.5 * x.nbytes


def fused_with(text: str, op: str, other: str) -> list[str]:
    """The fused computations of an optimized HLO text that hold an instruction matching the
    pattern ``op`` and an ``other`` instruction (``"maximum"``)."""
    blocks = re.split(r"\n(?=\S)", text)
    return [block.split(" ", 1)[0] for block in blocks if block.startswith("%fused")
            and re.search(op, block) and f" {other}(" in block]


TO_CHWN = r" transpose\([^)]*\), dimensions=\{3,1,2,0\}"
"""The transpose of an ``(N, H, W, C)`` activation to the kernel gradient's ``(C, H, W, N)``."""


@pytest.mark.skipif(not CPU, reason="the CPU's layouts: elsewhere no transpose is written")
def test_kernel_gradient_transposes_the_activation_unfused(optimized_xla):
    """The kernel gradient's transpose of its input to ``(C, H, W, N)`` is a copy of its own:
    XLA would fuse the ReLU before it into the transpose, a loop 2-3x slower than the copy
    (``docs/performance.md`` 8.24).  Without ``unfused_transpose`` this step has such a
    fusion; with it none, and the same gradients as ``jax.grad``."""
    from jaxcnn.lowering import xla
    _, (params, _, x, y, _) = step_and_args(batch=8)

    def compiled():         # a new function each time: jit caches by function
        grad = jc.value_and_grad(wide_net(), jc.softmax_cross_entropy)
        return hlo(grad, params, x, y, compiler_options=jc.compiler_options())

    text = compiled()
    assert " conditional(" in text
    assert fused_with(text, TO_CHWN, "maximum") == []
    with pytest.MonkeyPatch.context() as plain:   # else vacuous: the fusion it prevents
        plain.setattr(xla, "unfused_transpose", lambda a, perm: a.transpose(perm))
        assert fused_with(compiled(), TO_CHWN, "maximum") != []
    grad = jc.value_and_grad(wide_net(), jc.softmax_cross_entropy)
    (_, got), (_, want) = jax.jit(grad)(params, x, y), jax.value_and_grad(
        lambda p: jc.softmax_cross_entropy.value(wide_net().apply(p, x), y))(params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)

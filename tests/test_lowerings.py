"""Every fast form of a pass equals the reference derivation (``jaxcnn.reference``) and
``jax.vjp``; the convolution plan picks the forms it should.

The lowerings: XLA's convolutions (``jaxcnn.lowering.xla``), the Toeplitz matrix products
(``toeplitz``, eqs. 4.6-4.8, over column tiles of any size), the strided input residual by
stride phases (``phases``, eq. 4.9), Winograd's F(2x2, 3x3) (``winograd``, eqs. 4.14-4.17),
pooling's sums and spreads (``pool``, eqs. 5.1, 5.2, 5.9);
and how a layer joins them (``dispatch``: per group, the bias on the product's rows or inside
it, ``apply`` evaluated in one form and differentiated in another).
"""
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jaxcnn as jc
from harness import TOL, assert_backward_matches, init_as
from jaxcnn import _geometry as geo
from jaxcnn.lowering import dispatch, pairs, phases, pointwise, toeplitz, winograd, xla
from jaxcnn.lowering import pool as fast_pool
from jaxcnn.lowering.plan import bias_in_product, conv_plan
from jaxcnn.reference import conv as ref
from jaxcnn.reference import pool as ref_pool
from test_layers import DTYPES, lax_conv, run_case


def window(hw, k, strides=1, dilation=1, padding="VALID", name="Conv2D"):
    """``geo.window`` from a layer's arguments (ints or pairs, any padding spelling)."""
    pair = lambda v: jc.core.pair("", "", v)  # noqa: E731
    return geo.window(name, hw, pair(k), pair(strides), pair(dilation),
                      geo.normalize_padding("", padding))


def close(got, want, tol=1e-12):
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("method", ["reference", "lax", "toeplitz"])
@pytest.mark.parametrize("strides, dilation, padding", [
    (1, 1, "VALID"), (1, 2, "SAME"), ((2, 3), 1, ((2, 1), (0, 3))), (3, (1, 2), "VALID"),
    ((1, 2), (2, 1), ((0, 4), (3, 0))), (3, (4, 1), "VALID")])
@pytest.mark.parametrize("groups", [1, 3])
def test_conv_all_three_passes_in_every_method(method, strides, dilation, padding, groups):
    """Eqs. 4.2/4.4/4.5 (the reference, and XLA's convolutions) and 4.6/4.7/4.8 (Toeplitz
    matrix products, one per group when grouped) give the forward of ``lax.conv_general_dilated`` and the kernel
    gradient and input residual of its ``jax.vjp``, in float64 to 1e-12; the rows a stride
    skips get no residual.  The last case has one output row (a dilated kernel 9 rows tall,
    two rows unread), whose eq. 4.8 places the kernel's rows without a window scatter."""
    layer = jc.Conv2D(6, (3, 2), strides, padding, dilation, groups, method=method)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 11, 10, 3)))
    params, _ = init_as(layer, (11, 10, 3), jnp.float64)
    y, cache = jax.jit(layer.forward)(params, x)
    ref, vjp = jax.vjp(lambda p, x: lax_conv(p, x, strides, padding, dilation, groups),
                       params, x)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    delta = jnp.asarray(rng.normal(size=y.shape))
    grads, dx = jax.jit(layer.backward)(params, cache, delta)
    ref_grads, ref_dx = vjp(delta)
    np.testing.assert_allclose(grads["w"], ref_grads["w"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-12, atol=1e-12)
    plan = conv_plan(window((11, 10), (3, 2), strides, dilation, padding), 3, groups, method,
                     features=4)
    assert plan[:4] == (method, method, method, method == "toeplitz" and groups > 1)
    assert plan.inference == method


def test_conv_plan_auto_picks_by_spread_on_cpu():
    """``"auto"``: Toeplitz for few channels over narrow maps, XLA's convolutions for many
    channels (``LIMITS.forward`` and the larger backward ones), grouped
    convolutions split per group, the stride phases for a strided input residual, and column
    pairs for XLA's passes of few output features."""
    def plan(hw, k, c_in, groups=1, padding="SAME", features=8):
        return conv_plan(geo.window("Conv2D", hw, (k, k), (1, 1), (1, 1), padding), c_in,
                         groups, features=features)[:5]

    if jax.default_backend() != "cpu":     # GPU/TPU: XLA's convolutions, whatever the shape
        assert plan((28, 28), 5, 1) == plan((8, 8), 3, 4, groups=2) == ("lax",) * 3 + (False, None)
        return
    # LeNet-5 C1: spread 6.4, and 28 output columns in two tiles of 14
    assert plan((28, 28), 5, 1) == ("toeplitz", "toeplitz", "toeplitz", False, 14)
    # LeNet-5 C5: spread 16; one output column, one tile
    assert plan((5, 5), 5, 16, padding="VALID") == ("toeplitz",) * 3 + (False, None)
    assert plan((32, 32), 3, 64, features=64) == ("lax", "lax", "lax", False, None)  # 725
    # each pass has its own limit: 3 channels, 32 wide (spread 34): XLA's forward, Toeplitz
    # backward passes; 16 channels, 14 wide, 3x3 (spread 75): only the kernel gradient.
    # With XLA's forward, four tiles where W_out >= 4 k_w (32 -> 8, 12 -> 3), else two.
    assert plan((32, 32), 3, 3, features=32) == ("lax", "toeplitz", "toeplitz", False, 8)
    # ... but a kernel gradient beside XLA's forward, over 2+ channels, with at most
    # LIMITS.kernel_alone_features features, takes XLA's form too (resnet's stem), and that
    # forward, of 16 features, goes over column pairs (eq. 4.18)
    assert plan((32, 32), 3, 3, features=16) == ("pairs", "lax", "toeplitz", False, 16)
    assert plan((32, 32), 3, 1, features=16)[:2] == ("toeplitz", "toeplitz")   # 1 channel
    # (the input residual, of 16 output channels, over column pairs)
    assert plan((14, 14), 3, 16, padding="VALID", features=32) == (
        "lax", "toeplitz", "pairs", False, 3)
    # 10 wide (spread 53, W_out 8 < 12): two tiles of 4
    assert plan((10, 10), 3, 16, padding="VALID", features=32) == (
        "lax", "toeplitz", "pairs", False, 4)
    # ... on ungrouped layers; grouped (C_g = 4, spread 45) and strided ones keep 20 for all
    assert plan((32, 32), 3, 16, groups=4) == ("lax", "lax", "lax", True, None)
    assert plan((8, 8), 3, 4, groups=2)[:4] == ("toeplitz", "toeplitz", "toeplitz", True)
    assert plan((32, 32), 3, 64, groups=4)[:4] == ("lax", "lax", "lax", True)
    # depthwise, 16 groups (> GROUP_SPLIT_LIMIT): not unrolled into 16 programs
    assert plan((16, 16), 3, 16, groups=16) == ("lax",) * 3 + (False, None)
    # strided: XLA's kernel gradient always; the Toeplitz input residual up to spread 30,
    # above it the stride phases (eq. 4.9), also per group of a split grouped convolution
    strided = geo.window("Conv2D", (32, 32), (3, 3), (2, 2), (1, 1), "SAME")
    # spread 176
    assert conv_plan(strided, 16, 1, features=8)[:4] == ("lax", "lax", "phases", False)
    # spread 44
    assert conv_plan(strided, 16, 4, features=8)[:4] == ("lax", "lax", "phases", True)
    strided = geo.window("Conv2D", (14, 14), (5, 5), (2, 2), (1, 1), "VALID")
    # spread 15.6
    assert conv_plan(strided, 6, 1, features=8)[:5] == ("toeplitz", "lax", "toeplitz", False, None)
    strided = geo.window("Conv2D", (14, 14), (3, 3), (2, 2), (1, 1), "VALID")
    # spread 69
    assert conv_plan(strided, 16, 1, features=8)[:5] == ("lax", "lax", "phases", False, None)
    # spread 26
    assert conv_plan(strided, 6, 1, features=8)[:5] == ("lax", "lax", "toeplitz", False, 3)
    # column pairs (eq. 4.18): XLA's forward with <= 16 features, XLA's input residual with
    # <= 16 input channels; stride 1, undilated, ungrouped, 3+ wide (resnet's 16 -> 16)
    assert plan((32, 32), 3, 16, features=16) == ("pairs", "lax", "pairs", False, None)
    assert plan((32, 32), 3, 16, features=17) == ("lax", "lax", "pairs", False, None)
    assert plan((32, 32), 3, 17, features=16) == ("pairs", "lax", "lax", False, None)
    assert plan((32, 32), 1, 16, features=16) == ("lax", "pointwise", "lax", False, None)
    for dilation, strides in (((2, 2), (1, 1)), ((1, 1), (1, 2))):
        layer = geo.window("Conv2D", (32, 32), (3, 3), strides, dilation, "SAME")
        assert conv_plan(layer, 16, 1, features=16)[:2] == ("lax", "lax")
    assert conv_plan(geo.window("Conv2D", (32, 32), (3, 3), (1, 1), (1, 1), "SAME"), 16, 1,
                     features=16).inference == "lax"        # evaluated: XLA's
    with pytest.raises(ValueError, match=r"Conv2D: unknown method 'fft'"):
        conv_plan(geo.window("Conv2D", (8, 8), (3, 3), (1, 1), (1, 1), "SAME"), 1, 1, "fft",
                  features=8)
    with pytest.raises(ValueError, match=r"Conv2D: method 'winograd' .* got kernel_size "
                                         r"\(3, 3\), strides \(2, 2\)"):
        conv_plan(strided, 6, 1, "winograd", features=8)


def test_conv_plan_inference_evaluates_as_toeplitz_where_it_is_faster():
    """``inference`` (what ``apply`` computes when not differentiated) is the Toeplitz product
    only where the forward is one and: one output position; 2-3 input channels per group; or
    one, with at most 16 features per group or a kernel at least 7 columns wide (dilated:
    its effective width)."""
    def plan(hw, k, c_in, features, groups=1, padding="SAME", dilation=(1, 1)):
        p = conv_plan(geo.window("Conv2D", hw, k, (1, 1), dilation, padding), c_in, groups,
                      features=features)
        return p.forward, p.inference

    if jax.default_backend() != "cpu":
        assert plan((28, 28), (5, 5), 1, 6) == ("lax", "lax")
        return
    assert plan((28, 28), (5, 5), 1, 6) == ("toeplitz",) * 2                      # LeNet C1
    assert plan((14, 14), (5, 5), 6, 16, padding="VALID") == ("toeplitz", "lax")  # LeNet C3
    assert plan((5, 5), (5, 5), 16, 120, padding="VALID") == ("toeplitz",) * 2    # LeNet C5
    assert plan((28, 28), (9, 9), 1, 20, padding="VALID") == ("toeplitz",) * 2    # UFLDL
    assert plan((39, 31), (4, 4), 1, 20, padding="VALID") == ("toeplitz", "lax")  # deepid
    assert plan((8, 8), (3, 3), 1, 32) == ("toeplitz", "lax")            # the zoo's small
    assert plan((28, 28), (4, 4), 1, 32, dilation=(2, 2)) == ("toeplitz",) * 2    # 7 wide
    assert plan((14, 14), (5, 5), 3, 32) == ("toeplitz",) * 2                     # 3 channels
    assert plan((14, 14), (5, 5), 8, 32, groups=4) == ("toeplitz",) * 2   # 2 per group
    assert plan((14, 14), (5, 5), 12, 16, groups=2, padding="VALID") == ("toeplitz", "lax")
    assert plan((32, 32), (3, 3), 3, 64) == ("lax", "lax")                   # XLA's forward


@pytest.mark.parametrize("features, k, shape, kwargs", [
    (16, 5, (14, 14, 6), {}),                          # LeNet C3: XLA's to evaluate
    (20, 9, (28, 28, 1), {}),                          # UFLDL: the Toeplitz product
    (4, 3, (9, 8, 4), {"groups": 2, "padding": "SAME"}),
    (5, (3, 2), (9, 8, 3), {"use_bias": False, "strides": 2}),
    (8, 3, (9, 7, 12), {"padding": "SAME"}),           # differentiated over column pairs
])
def test_apply_evaluates_and_differentiates_the_same_function(features, k, shape, kwargs):
    """``apply`` may evaluate in one form and differentiate through another (``dispatch.evaluate``:
    a ``jax.custom_jvp`` whose rule is ``jax.jvp`` of the plan's forward).  Values, ``jax.vjp``,
    ``jax.jvp``, a Hessian-vector product and ``jax.vmap`` all equal those of a plain
    ``lax.conv_general_dilated`` forward (float64), also under ``jax.checkpoint``; a gradient
    with respect to the parameters alone computes no product with the data's zero tangent; on
    CPU LeNet's C3 evaluates with XLA's convolution and is differentiated through the Toeplitz
    product."""
    layer = jc.Conv2D(features, k, **kwargs)
    rng = np.random.default_rng(2)
    params, _ = init_as(layer, shape, jnp.float64)
    params = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), params)
    x = jnp.asarray(rng.normal(size=(3, *shape)))
    strides = jc.core.pair("", "", kwargs.get("strides", 1))

    def reference(p, x):
        return lax_conv(p, x, strides, kwargs.get("padding", "VALID"),
                        groups=kwargs.get("groups", 1))

    def close(a, b, tol=1e-10):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=tol, atol=tol), a, b)

    y = jax.jit(layer.apply)(params, x)
    close(y, jax.jit(reference)(params, x))
    delta = jnp.asarray(rng.normal(size=y.shape))
    tangent = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), (params, x))

    @jax.jit
    def both(params, x, delta, tangent):    # (layer, reference) pairs, in one program
        def hvp(f):                         # second order, in p and in x
            return jax.jvp(jax.grad(lambda p, x: jnp.sum(jnp.sin(f(p, x))), (0, 1)),
                           (params, x), tangent)[1]

        pairs = [(jax.vjp(f, params, x)[1](delta) for f in (layer.apply, reference)),
                 (jax.jvp(f, (params, x), tangent) for f in (layer.apply, reference)),
                 (hvp(layer.apply), hvp(reference)),
                 (hvp(jax.checkpoint(layer.apply)), hvp(reference))]
        return [tuple(pair) for pair in pairs]

    for pair in both(params, x, delta, tangent):
        close(*pair)
    close(jax.jit(jax.vmap(lambda x: layer.apply(params, x[None])[0]))(x), y)

    def dots(f):
        return str(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(f(p) * delta)))(params)).count(
            "dot_general")

    g = window(shape[:2], k, strides, 1, kwargs.get("padding", "VALID"))
    plan = conv_plan(g, shape[2], kwargs.get("groups", 1), features=features)
    assert dots(lambda p: layer.apply(p, x)) == dots(lambda p: dispatch.forward(
        x, p["w"], p.get("b"), g, kwargs.get("groups", 1), plan))
    if jax.default_backend() == "cpu" and features == 16:
        evaluated = str(jax.make_jaxpr(layer.apply)(params, x))
        differentiated = str(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(layer.apply(p, x))))(
            params))
        assert "conv_general_dilated" in evaluated and "dot_general" not in evaluated
        assert "dot_general" in differentiated and "conv_general_dilated" not in differentiated


@pytest.mark.parametrize("tile", [None, 1, 2, 3, 5, 100])
@pytest.mark.parametrize("strides, dilation, padding", [
    (1, 1, "SAME"), ((2, 3), 1, ((2, 1), (0, 3))), ((1, 2), (2, 1), ((0, 4), (3, 0)))])
def test_toeplitz_tiles_give_the_same_sums(tile, strides, dilation, padding):
    """Eqs. 4.6-4.8 over column tiles of any size (the last one zero-filled past ``W_out``,
    ``100`` meaning one tile) equal the reference (eqs. 4.2, 4.4, 4.5) and ``jax.vjp`` of
    ``lax.conv_general_dilated``."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 9, 13, 2)))
    w = jnp.asarray(rng.normal(size=(3, 3, 2, 4)))
    g = window((9, 13), 3, strides, dilation, padding)
    delta = jnp.asarray(rng.normal(size=(2, *g.out_hw, 4)))

    @jax.jit
    def passes(x, w, delta):          # (toeplitz, (oracles)) for eqs. 4.6, 4.7, 4.8
        y, vjp = jax.vjp(lambda x, w: xla.forward(x, w, g, 1), x, w)
        dx, dw = vjp(delta)
        return ((toeplitz.forward(x, w, g, tile=tile), (y, ref.forward(x, w, None, g))),
                (toeplitz.kernel_grad(x, delta, g, tile=tile),
                 (dw, ref.backward_kernel(x, delta, g))),
                (toeplitz.input_residual(delta, w, g, tile=tile),
                 (dx, ref.backward_input(delta, w, g))))

    for got, oracles in passes(x, w, delta):
        for oracle in oracles:
            close(got, oracle)


@pytest.mark.parametrize("tile", [None, 2, 5])
@pytest.mark.parametrize("strides, dilation, padding", [
    (1, 1, "SAME"), ((2, 3), (1, 2), ((2, 1), (0, 3))), ((1, 2), (2, 1), ((3, 0), (1, 1)))])
def test_toeplitz_rows_entries(tile, strides, dilation, padding):
    """Eq. 4.6's row matrix, entry by entry: ``R[(n, i, tile), (p, v, c)] =
    x_pad[n, i s_h + p d_h, tile * step + v, c]``, zero past the padded input."""
    x = np.random.default_rng(1).normal(size=(2, 9, 13, 3))
    g = window((9, 13), (3, 2), strides, dilation, padding)
    t = toeplitz.column_tiles(g, tile)
    r = np.asarray(jax.jit(lambda x: toeplitz.toeplitz_rows(x, g, t))(jnp.asarray(x)))
    (top, bottom), (left, right) = g.padding
    x_pad = np.pad(x, ((0, 0), (top, bottom), (left, right + t.width), (0, 0)))
    (ho, _), (sh, _), (dh, _) = g.out_hw, g.strides, g.dilation
    expected = np.array([[[x_pad[n, i * sh + p * dh, k * t.step + v, c]
                           for p in range(3) for v in range(t.read) for c in range(3)]]
                         for n in range(2) for i in range(ho) for k in range(t.count)])
    np.testing.assert_array_equal(r, expected.reshape(r.shape))


@pytest.mark.parametrize("hw, k, strides, padding", [
    ((5, 5), 5, 1, "VALID"), ((6, 6), 5, 2, "VALID"), ((3, 3), 5, 1, ((1, 1), (1, 1))),
    ((4, 4), 3, 3, "VALID"), ((2, 3), (2, 3), 1, "VALID")])
def test_toeplitz_one_output_position_is_a_dense_layer(hw, k, strides, padding):
    """One output position of an undilated kernel (LeNet-5's C5, and windows with unread rows
    or padding): ``R`` is the padded input's window flattened and ``T`` the kernel flattened,
    built by reshapes and slices alone (no gather, no concatenation), and eqs. 4.6-4.8 still
    equal the reference passes in float64."""
    rng = np.random.default_rng(3)
    kh, kw = (k, k) if isinstance(k, int) else k
    x = jnp.asarray(rng.normal(size=(3, *hw, 4)))
    w = jnp.asarray(rng.normal(size=(kh, kw, 4, 5)))
    g = window(hw, (kh, kw), strides, 1, padding)
    assert g.out_hw == (1, 1)
    t = toeplitz.column_tiles(g)
    for fn, arg in ((lambda x: toeplitz.toeplitz_rows(x, g, t), x),
                    (lambda w: toeplitz.toeplitz_kernel(w, g, t), w)):
        ops = {e.primitive.name for e in jax.make_jaxpr(fn)(arg).eqns}
        assert not ops & {"gather", "concatenate"}, ops
    np.testing.assert_array_equal(toeplitz.toeplitz_kernel(w, g, t), w.reshape(-1, 5))
    delta = jnp.asarray(rng.normal(size=(3, 1, 1, 5)))
    close(jax.jit(lambda x, w: toeplitz.forward(x, w, g))(x, w), ref.forward(x, w, None, g))
    close(jax.jit(lambda x, d: toeplitz.kernel_grad(x, d, g))(x, delta),
          ref.backward_kernel(x, delta, g))
    close(jax.jit(lambda d, w: toeplitz.input_residual(d, w, g))(delta, w),
          ref.backward_input(delta, w, g))


@pytest.mark.parametrize("tile", [None, 2])
@pytest.mark.parametrize("strides, dilation, padding", [
    (1, 1, "SAME"), ((2, 3), (1, 2), ((2, 1), (0, 3)))])
def test_toeplitz_bias_added_to_the_product_rows(tile, strides, dilation, padding):
    """Eq. 4.6 with its bias: ``b`` repeated once per output column of the tile
    (``per_column``, a gather, exactly ``jnp.tile``) and added to the product's 2-D rows gives
    the product plus the bias, tile by tile, also where the last tile runs past ``W_out``; so
    does the "+1" unit inside the product; both equal the reference forward with its bias."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, 9, 13, 2)))
    w = jnp.asarray(rng.normal(size=(3, 3, 2, 4)))
    b = jnp.asarray(rng.normal(size=(4,)))
    g = window((9, 13), 3, strides, dilation, padding)
    t = toeplitz.column_tiles(g, tile)
    np.testing.assert_array_equal(toeplitz.per_column(b, t), jnp.tile(b, t.size))
    plain = toeplitz.forward(x, w, g, tile=tile) + b.reshape(1, 1, 1, -1)
    for inside in (False, True):
        with_bias = jax.jit(lambda x, w, b: toeplitz.forward(x, w, g, tile=tile, bias=b,
                                                             bias_inside=inside))(x, w, b)
        close(with_bias, plain)
        close(with_bias, ref.forward(x, w, b, g))


def test_forward_adds_the_bias_to_the_product_rows():
    """``Conv2D.forward`` adds the bias to a Toeplitz product in the product's 2-D layout (so
    the elementwise layer after it runs along long rows); evaluated ``apply`` inside the
    product, where its row matrix has no more entries per row than the output
    (``bias_in_product``: ``k_h read C <= t F``); differentiated ``apply`` to the
    ``(N, H_out, W_out, F)`` output.  They agree, and the backward equals ``jax.vjp`` of
    ``apply``, in float64 and float32.  With XLA's forward there is no product, and the bias
    is added after it."""
    def decide(hw, k, c, f, padding="VALID", groups=1):
        g = geo.window("Conv2D", hw, (k, k), (1, 1), (1, 1), padding)
        plan = conv_plan(g, c, groups, features=f)
        return bias_in_product(g, c, f, plan._replace(forward=plan.inference))

    layer = jc.Conv2D(20, 9)                       # UFLDL's: 20 outputs x 2 tiles of 10
    rng = np.random.default_rng(5)
    for dtype in (jnp.float64, jnp.float32):
        params, _ = init_as(layer, (28, 28, 1), dtype)
        params["b"] = jnp.asarray(rng.normal(size=20), dtype)          # init's bias is zero
        x = jnp.asarray(rng.normal(size=(3, 28, 28, 1)), dtype)
        assert_backward_matches(layer, params, x)
        y, _ = jax.jit(layer.forward)(params, x)
        np.testing.assert_allclose(y, jax.jit(layer.apply)(params, x),
                                   rtol=TOL[jnp.dtype(dtype)], atol=TOL[jnp.dtype(dtype)])

    def bias_adds(f, *args):
        """The shapes of the adds in ``f``'s jaxpr as large as the output (3 * 20 * 20 * 20)."""
        jaxpr = jax.make_jaxpr(f)(*args).jaxpr
        return [str(e.outvars[0].aval.shape) for e in jaxpr.eqns
                if e.primitive.name == "add" and e.outvars[0].aval.size == 24000]

    toeplitz, xla = jc.Conv2D(20, 9, method="toeplitz"), jc.Conv2D(20, 9, method="lax")
    assert bias_adds(lambda p, x: toeplitz.forward(p, x)[0], params, x) == ["(120, 200)"]
    assert set(bias_adds(jax.grad(lambda p: jnp.sum(toeplitz.apply(p, x))), params)) == {
        "(3, 20, 20, 20)"}
    assert bias_adds(lambda p, x: xla.forward(p, x)[0], params, x) == ["(3, 20, 20, 20)"]
    if jax.default_backend() != "cpu":                    # XLA's forward everywhere
        assert not decide((28, 28), 9, 1, 20)
        return
    assert decide((28, 28), 9, 1, 20)                    # UFLDL: 9 * 18 * 1 = 162 <= 10 * 20
    assert not decide((14, 14), 5, 6, 16)                # LeNet C3: XLA's to evaluate
    assert not decide((28, 28), 5, 1, 6, "SAME")         # LeNet C1: 90 > 84
    assert not decide((32, 32), 3, 3, 64, "SAME")        # XLA's forward
    assert not decide((8, 8), 3, 2, 8, groups=2)         # split per group
    # evaluated, apply's product has the column of ones (K = 9 * 18 + 1) and no add of the
    # bias; forward's and differentiated apply's products do not
    assert bias_adds(layer.apply, params, x) == []
    assert "f32[120,163]" in str(jax.make_jaxpr(layer.apply)(params, x))
    assert "163" not in str(jax.make_jaxpr(layer.forward)(params, x))
    assert "163" not in str(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(layer.apply(p, x))))(params))


def test_toeplitz_tile_must_be_positive():
    g = geo.window("Conv2D", (6, 6), (3, 3), (1, 1), (1, 1), "VALID")
    with pytest.raises(ValueError, match=r"Conv2D: tile must be an int >= 1 \(output columns "
                                         r"per tile\), got 0"):
        toeplitz.forward(jnp.ones((1, 6, 6, 1)), jnp.ones((3, 3, 1, 2)), g, tile=0)


@pytest.mark.parametrize("window_, strides, padding", [(5, None, "VALID"), (5, 2, "SAME"),
                                                       ((7, 3), 1, "VALID")])
def test_avg_pool_large_windows(window_, strides, padding):
    """Windows of more than ``SLICE_SUM_LIMIT`` positions take ``lax.reduce_window`` instead
    of the sum of strided slices; the backward (eq. 5.2) still equals ``jax.vjp``."""
    assert jc.core.pair("", "", window_)[0] * jc.core.pair("", "", window_)[1] \
        > fast_pool.SLICE_SUM_LIMIT
    rng = np.random.default_rng(4)
    run_case(jc.AvgPool2D(window_, strides, padding), (2, 11, 9, 3), jnp.float64, rng)


@pytest.mark.parametrize("size, strides, padding", [
    ((3, 3), (2, 2), "SAME"), ((3, 2), (1, 1), "VALID"), ((2, 2), (3, 4), "VALID"),
    ((3, 2), (2, 3), ((1, 2), (0, 1))), ((1, 1), (2, 1), "VALID"), ((2, 2), (2, 2), "VALID"),
    ((5, 4), (1, 2), ((2, 3), (1, 0)))])
def test_pool_lowerings_equal_the_reference(size, strides, padding):
    """``window_sums`` (slices or ``reduce_window``) is eq. 5.1's numerator; ``spread`` (the
    block broadcast where windows tile the input, eq. 5.9 otherwise) is eq. 5.2's scatter;
    ``max_pool`` (``reduce_window``) is eq. 5.3, and ``jax.vjp`` of it routes as eq. 5.4."""
    g = window((11, 10), size, strides, 1, padding, name="AvgPool2D")
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.integers(0, 3, size=(2, 11, 10, 3)).astype(np.float64))  # ties
    share = jnp.asarray(rng.normal(size=(2, *g.out_hw, 3)))
    for got, want in pool_pairs(g, (True,))(x, share):
        close(got, want)


def pool_pairs(g, include_pad):
    """Jitted: ``(lowering, reference)`` pairs of the average-pooling sums and spread per
    ``include_pad`` (eqs. 5.1, 5.2), then of max pooling's values and routing (eqs. 5.3, 5.4)."""
    @jax.jit
    def pairs(x, share):
        out = []
        for include in include_pad:
            size_ = ref_pool.window_size(g, include, x.dtype)
            out += [(fast_pool.window_sums(x, g) / size_, ref_pool.avg_forward(x, g, size_)),
                    (fast_pool.spread(share, g), ref_pool.avg_backward(share * size_, g, size_))]
        y, index = ref_pool.max_forward(x, g)
        fast_y, vjp = jax.vjp(lambda x: fast_pool.max_pool(x, g), x)
        return out + [(fast_y, y), (vjp(share)[0], ref_pool.route(index, share, g))]

    return pairs


@pytest.mark.parametrize("size, strides, dilation, padding", [
    ((3, 3), (2, 2), (1, 1), "VALID"), ((2, 2), (2, 2), (1, 1), ((0, 0), (1, 0))),
    ((3, 2), (2, 3), (2, 1), ((0, 1), (1, 1))), ((2, 3), (3, 2), (3, 2), "VALID"),
    ((1, 1), (3, 2), (1, 1), "VALID"), ((5, 4), (4, 3), (1, 1), ((2, 1), (2, 2)))])
def test_pool_lowerings_in_ceil_mode_equal_the_reference(size, strides, dilation, padding):
    """In ceil mode (the overhang padded as padding, eq. 5.11), ``window_sums`` and ``spread``
    with eq. 5.12's divisor are eqs. 5.1 and 5.2 of the reference, blocks that tile the input
    included; ``max_pool`` (``reduce_window``, or for a dilated window the select of eq. 5.13)
    is eq. 5.3, and ``jax.vjp`` of it routes as eqs. 5.4 and 5.13, ties and NaN included."""
    g = geo.window("MaxPool2D", (11, 10), size, strides, dilation,
                   geo.normalize_padding("", padding), ceil_mode=True)
    assert g.overhang != (0, 0) or size == (1, 1)
    rng = np.random.default_rng(6)
    x = rng.integers(0, 3, size=(2, 11, 10, 3)).astype(np.float64)              # ties
    x[0, rng.integers(0, 11, 4), rng.integers(0, 10, 4), 0] = np.nan
    x = jnp.asarray(x)
    share = jnp.asarray(rng.normal(size=(2, *g.out_hw, 3)))
    *avg, (fast_y, y), routed = pool_pairs(g, (True, False))(x, share)
    for got, want in avg:
        close(got, want)
    np.testing.assert_array_equal(fast_y, y)                       # NaN in the same places
    close(*routed)


@pytest.mark.parametrize("size, strides, dilation, padding", [
    ((3, 3), (2, 2), (1, 1), "SAME"), ((3, 2), (1, 1), (1, 1), "VALID"),
    ((2, 2), (3, 4), (1, 1), "VALID"), ((3, 2), (2, 3), (2, 1), ((1, 2), (0, 1))),
    ((1, 1), (2, 1), (1, 1), "VALID"), ((4, 3), (3, 2), (1, 2), "SAME")])
def test_spread_windows_is_the_transpose_of_sum_windows(size, strides, dilation, padding):
    """``spread_windows`` (eq. 5.9) equals the VJP of ``sum_windows``, gaps (stride > window)
    and dilation included."""
    g = geo.window("AvgPool2D", (11, 10), size, strides, dilation, padding)
    share = jnp.asarray(np.random.default_rng(5).normal(size=(2, *g.out_hw, 3)))
    spread = jax.jit(lambda a: geo.spread_windows(a, g))(share)
    _, vjp = jax.vjp(lambda x: geo.sum_windows(x, g), jnp.zeros((2, *g.padded_hw, 3)))
    np.testing.assert_allclose(spread, vjp(share)[0], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("form", ["lax", "phases", "reference", "reference (4.5, line 2)"])
@pytest.mark.parametrize("strides, dilation, padding", [
    (1, 1, "VALID"), (1, 2, "SAME"), ((2, 3), 1, ((2, 1), (0, 3))), (3, (1, 2), "VALID"),
    ((2, 2), (2, 3), "SAME"), ((4, 3), 1, ((3, 0), (1, 1))), ((2, 3), 1, ((5, 6), (4, 7)))])
def test_conv_input_residual_every_formulation(form, strides, dilation, padding):
    """Eq. 4.5 as a transposed convolution, as matmul + window scatter (the reference's first
    line), as the full convolution with the rotated kernel (its second line), and by stride
    phases (eq. 4.9; dilation sharing a factor with the stride, and strides past the kernel,
    leave phases with no tap; padding past the kernel, phase rows before and after ``dx``
    left uncomputed): each equals jax.vjp and the reference, jitted."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 11, 10, 3)))
    w = jnp.asarray(rng.normal(size=(3, 2, 3, 4)))
    g = window((11, 10), (3, 2), strides, dilation, padding)
    y, vjp = jax.vjp(lambda x: xla.forward(x, w, g, 1), x)
    delta = jnp.asarray(rng.normal(size=y.shape))
    compute = {"lax": lambda d, w: xla.input_residual(d, w, g, 1),
               "phases": lambda d, w: phases.input_residual(d, w, g),
               "reference": lambda d, w: ref.backward_input(d, w, g),
               "reference (4.5, line 2)": lambda d, w: ref.backward_input_full(d, w, g)}[form]
    got = jax.jit(compute)(delta, w)
    close(got, vjp(delta)[0])
    close(got, ref.backward_input(delta, w, g))


@pytest.mark.parametrize("k, strides, dilation, padding, hw", [
    (3, 1, 1, "SAME", (11, 10)), (3, 1, 1, "SAME", (11, 9)), ((3, 2), 1, 1, "VALID", (11, 10)),
    (5, 1, 1, ((0, 4), (3, 0)), (9, 7)), (1, 1, 1, "VALID", (5, 6)), (3, 1, 1, "VALID", (3, 3)),
    (3, 1, 2, "SAME", (11, 9)), (3, (2, 3), 1, ((2, 1), (0, 3)), (11, 10)),
    (3, (1, 2), (2, 1), "SAME", (11, 10))])
def test_pairs_forward_and_input_residual(k, strides, dilation, padding, hw):
    """Eq. 4.18, two output columns per window of (4.6)'s one-tile ``T``: the forward equals
    eq. 4.2 (the reference) for any stride, dilation and padding, with an odd ``W_out`` (the
    last pair half past it) and one output column; the input residual of a stride-1 layer
    equals eq. 4.5 (float64, jitted)."""
    rng = np.random.default_rng(3)
    g = window(hw, k, strides, dilation, padding)
    x = jnp.asarray(rng.normal(size=(2, *hw, 3)))
    w = jnp.asarray(rng.normal(size=(*jc.core.pair("", "", k), 3, 4)))
    y = jax.jit(lambda x, w: pairs.forward(x, w, g))(x, w)
    close(y, ref.forward(x, w, None, g))
    delta = jnp.asarray(rng.normal(size=y.shape))
    if g.strides == (1, 1):
        close(jax.jit(lambda d, w: pairs.input_residual(d, w, g))(delta, w),
              ref.backward_input(delta, w, g))
    else:
        with pytest.raises(ValueError, match=r"Conv2D: .* column pairs needs strides \(1, 1\)"):
            pairs.input_residual(delta, w, g)


def test_pairs_kernel_is_one_tile_of_the_toeplitz_matrix():
    """Eq. 4.18's kernel for a 3-wide kernel: ``(k_h, 4, C, 2 F)``, the kernel in columns 0-2
    of the first ``F`` features and 1-3 of the next, zeros elsewhere."""
    w = jnp.arange(2 * 3 * 2 * 5, dtype=jnp.float32).reshape(2, 3, 2, 5) + 1
    g = window((6, 8), (2, 3))
    k = pairs.pair_kernel(w, g, toeplitz.column_tiles(g, pairs.TILE))
    assert k.shape == (2, 4, 2, 10)
    np.testing.assert_array_equal(k[:, :3, :, :5], w)
    np.testing.assert_array_equal(k[:, 1:, :, 5:], w)
    np.testing.assert_array_equal(k[:, 3, :, :5], 0)
    np.testing.assert_array_equal(k[:, 0, :, 5:], 0)


def test_pairs_differentiate_as_xlas_convolution():
    """Autodiff of eq. 4.18 (``pairs.correlate``'s ``custom_jvp``) is XLA's convolution's:
    the same gradients, and the backward's convolutions are those ``jax.grad`` emits for the
    ``"lax"`` form (no strided pair convolution transposed); a data input with no tangent
    costs no convolution."""
    rng = np.random.default_rng(4)
    g = window((10, 9), 3, padding="SAME")
    x = jnp.asarray(rng.normal(size=(2, 10, 9, 5)))
    w = jnp.asarray(rng.normal(size=(3, 3, 5, 6)))
    delta = jnp.asarray(rng.normal(size=(2, 10, 9, 6)))

    def loss(form):
        return lambda x, w: jnp.sum(jnp.sin(form(x, w, g)) * delta)

    via_pairs = jax.grad(loss(pairs.forward), (0, 1))
    via_xla = jax.grad(loss(lambda x, w, g: xla.forward(x, w, g, 1)), (0, 1))
    jax.tree.map(close, jax.jit(via_pairs)(x, w), jax.jit(via_xla)(x, w))

    def convs(fn, *args):                  # every convolution's window, nested ones too
        found = []

        def walk(jaxpr):
            for e in jaxpr.eqns:
                if e.primitive.name == "conv_general_dilated":
                    found.append(tuple(str(e.params[k]) for k in (
                        "window_strides", "padding", "lhs_dilation", "rhs_dilation",
                        "dimension_numbers")))
                for sub in jax.extend.core.jaxprs_in_params(e.params):
                    walk(sub)

        walk(jax.make_jaxpr(fn)(*args).jaxpr)
        return found

    got, want = convs(via_pairs, x, w), convs(via_xla, x, w)
    assert len(got) == len(want) == 3
    assert got[0] != want[0] and "(1, 2)" in got[0][0]            # the forward: pairs
    assert sorted(got[1:]) == sorted(want[1:])                    # the backward: XLA's
    assert len(convs(jax.grad(lambda w: loss(pairs.forward)(x, w)), w)) == 2


@pytest.mark.parametrize("strides, dilation, padding, hw", [
    (1, 1, "SAME", (11, 10)), ((2, 3), 1, "VALID", (11, 10)),
    (2, (3, 1), ((2, 1), (0, 3)), (11, 10)), ((3, 2), 1, ((1, 0), (0, 2)), (5, 6)),
    (4, 1, "VALID", (4, 4)), (2, 1, ((3, 3), (1, 1)), (7, 9))])
def test_pointwise_passes_equal_the_reference(strides, dilation, padding, hw):
    """Eqs. 4.19-4.21, a 1x1 kernel as the dense layer's products at the positions read, equal
    eqs. 4.2, 4.4 and 4.5 (float64, jitted): strides that skip rows and columns (which get no
    residual), a dilation that reads nothing, padding (positions on it read zeros and their
    residual is cropped: the last case's first three rows), one output position."""
    rng = np.random.default_rng(5)
    g = window(hw, 1, strides, dilation, padding)
    x = jnp.asarray(rng.normal(size=(2, *hw, 3)))
    w = jnp.asarray(rng.normal(size=(1, 1, 3, 4)))
    y = jax.jit(lambda x, w: pointwise.forward(x, w, g))(x, w)
    close(y, ref.forward(x, w, None, g))
    delta = jnp.asarray(rng.normal(size=y.shape))
    close(jax.jit(lambda x, d: pointwise.kernel_grad(x, d, g))(x, delta),
          ref.backward_kernel(x, delta, g))
    close(jax.jit(lambda d, w: pointwise.input_residual(d, w, g))(delta, w),
          ref.backward_input(delta, w, g))


@pytest.mark.parametrize("padding", ["SAME", ((1, 2), (0, 1))])
def test_pointwise_kernel_gradient_in_the_layer(padding):
    """A stride-1 1x1 ``Conv2D`` (``"auto"``): on the CPU its plan takes eq. 4.20 for the kernel
    gradient and XLA's convolutions for the rest, and its hand-written backward equals
    ``jax.vjp`` of ``lax.conv_general_dilated`` (float64); strided or grouped 1x1 layers keep
    the other rules."""
    layer = jc.Conv2D(5, 1, padding=padding)
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.normal(size=(3, 7, 6, 4)))
    params, _ = init_as(layer, (7, 6, 4), jnp.float64)
    y, cache = jax.jit(layer.forward)(params, x)
    want, vjp = jax.vjp(lambda p, x: lax_conv(p, x, 1, padding), params, x)
    close(y, want)
    delta = jnp.asarray(rng.normal(size=y.shape))
    grads, dx = jax.jit(layer.backward)(params, cache, delta)
    want_grads, want_dx = vjp(delta)
    jax.tree.map(close, (grads, dx), (want_grads, want_dx))
    plan = conv_plan(window((7, 6), 1, 1, 1, padding), 4, 1, features=5)
    if jax.default_backend() != "cpu":
        assert plan[:3] == ("lax",) * 3
        return
    assert plan[:3] == ("lax", "pointwise", "lax")
    assert conv_plan(window((28, 28), 1), 1, 1, features=8)[:3] == ("lax", "pointwise", "lax")
    assert conv_plan(window((32, 32), 1, 2, 1, "SAME"), 16, 1, features=32)[:3] == (
        "lax", "lax", "phases")                                    # resnet's projection
    assert "pointwise" not in conv_plan(window((8, 8), 1), 8, 2, features=8)[:3]   # grouped


@pytest.mark.parametrize("hw, padding", [
    ((8, 8), "SAME"), ((7, 9), "SAME"), ((5, 6), "VALID"), ((6, 5), ((2, 0), (1, 3))),
    ((3, 3), "VALID"), ((1, 1), "SAME"), ((2, 7), ((1, 0), (4, 1))), ((4, 4), ((5, 5), (0, 2)))])
def test_winograd_all_three_passes(hw, padding):
    """Eqs. 4.14-4.17 give the forward of ``lax.conv_general_dilated`` and the kernel gradient
    and input residual of its ``jax.vjp``, in float64 to 1e-12: odd output sizes (the last
    tiles partly past the output), one output, padding wider than the kernel."""
    layer = jc.Conv2D(5, 3, padding=padding, method="winograd")
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(2, *hw, 4)))
    params, _ = init_as(layer, (*hw, 4), jnp.float64)
    y, cache = jax.jit(layer.forward)(params, x)
    want, vjp = jax.vjp(lambda p, x: lax_conv(p, x, 1, padding, 1, 1), params, x)
    close(y, want)
    close(jax.jit(layer.apply)(params, x), want)
    delta = jnp.asarray(rng.normal(size=y.shape))
    grads, dx = jax.jit(layer.backward)(params, cache, delta)
    want_grads, want_dx = vjp(delta)
    close(grads["w"], want_grads["w"])
    close(grads["b"], want_grads["b"])
    close(dx, want_dx)
    g = window(hw, 3, 1, 1, padding)
    assert conv_plan(g, 4, 1, "winograd", features=5)[:4] == ("winograd",) * 3 + (False,)
    assert "winograd" not in conv_plan(g, 4, 1, features=5)      # "auto" never picks it


@given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.integers(1, 4),
       st.integers(1, 4), st.sampled_from(["SAME", "VALID", ((1, 2), (2, 0))]), DTYPES)
def test_winograd_backward_matches_autodiff(n, h, w, c, f, padding, dtype):
    """The hand-written backward of a ``method="winograd"`` layer against ``jax.vjp`` of its
    plain forward, with random cotangents (``assert_backward_matches``), in each dtype."""
    pads = (2, 2) if padding == "SAME" else (0, 0) if padding == "VALID" else (3, 2)
    if h + pads[0] < 3 or w + pads[1] < 3:
        h, w = max(h, 3 - pads[0]), max(w, 3 - pads[1])
    run_case(jc.Conv2D(f, 3, padding=padding, method="winograd"), (n, h, w, c), dtype,
             np.random.default_rng(h * w))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_winograd_in_half_precision_stays_near_the_direct_sums(dtype):
    """In bfloat16 and float16 the transforms' sums round more than a direct convolution:
    every pass stays within 2% (of the largest entry) of XLA's in the same dtype, and keeps
    the dtype."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(2, 9, 9, 4)), dtype)
    outs = []
    for method in ("winograd", "lax"):
        layer = jc.Conv2D(8, 3, padding="SAME", method=method)
        params, _ = init_as(layer, (9, 9, 4), dtype)
        y, cache = jax.jit(layer.forward)(params, x)
        grads, dx = jax.jit(layer.backward)(params, cache, jnp.ones_like(y))
        outs.append((y, grads["w"], dx))
    for got, want in zip(*outs):
        assert got.dtype == dtype
        err = jnp.max(jnp.abs(got.astype(jnp.float32) - want.astype(jnp.float32)))
        assert float(err) <= 0.02 * float(jnp.max(jnp.abs(want.astype(jnp.float32))))


def test_winograd_transforms_are_lavin_and_grays():
    """The three constant matrices compute one 1-D F(2, 3) exactly: ``A^T [(G g) * (B^T d)]``
    is the correlation of a length-4 ``d`` with a length-3 ``g``, for any ``d``, ``g``; and
    ``winograd.input_tiles`` transforms the tile read at ``(2 i, 2 j)``."""
    rng = np.random.default_rng(0)
    d, k = rng.normal(size=4), rng.normal(size=3)
    np.testing.assert_allclose(winograd.A_T @ ((winograd.G @ k) * (winograd.B_T @ d)),
                               [d[0:3] @ k, d[1:4] @ k], rtol=1e-13)
    x = jnp.asarray(rng.normal(size=(1, 6, 8, 1)))
    v = winograd.input_tiles(x, window((6, 8), 3)).reshape(4, 4, 2, 3)
    tile = np.asarray(x[0, 2:6, 4:8, 0])                      # tile (1, 2)
    np.testing.assert_allclose(v[:, :, 1, 2], winograd.B_T @ tile @ winograd.B_T.T, rtol=1e-13)


@pytest.mark.parametrize("plan", [
    ("toeplitz", "toeplitz", "phases", True, 2), ("lax", "lax", "phases", True, None),
    ("reference", "reference", "reference", False, None), ("lax", "toeplitz", "lax", True, 3)])
def test_dispatch_runs_any_plan_per_group(plan):
    """``dispatch`` runs each pass in the form its plan names, per group where the plan
    splits a grouped convolution -- the phases form too, which is ungrouped -- and every plan
    gives the reference's forward, kernel gradient and input residual."""
    from jaxcnn.lowering.plan import ConvPlan

    plan = ConvPlan(*plan)
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.normal(size=(2, 9, 8, 6)))
    w = jnp.asarray(rng.normal(size=(3, 3, 2, 6)))
    b = jnp.asarray(rng.normal(size=(6,)))
    g = window((9, 8), 3, 2, 1, "SAME")
    y = dispatch.forward(x, w, b, g, 3, plan, bias="rows")
    close(y, ref.forward(x, w, b, g, 3))
    delta = jnp.asarray(rng.normal(size=y.shape))
    close(dispatch.kernel_grad(x, delta, g, 3, plan), ref.backward_kernel(x, delta, g, 3))
    close(dispatch.input_residual(delta, w, g, 3, plan), ref.backward_input(delta, w, g, 3))
    with pytest.raises(KeyError):
        dispatch.input_residual(delta, w, g, 3, plan._replace(input="fft"))


@pytest.mark.parametrize("strides", [1, 2])
def test_xla_passes_read_canonical_layouts_inside_a_scan(strides, monkeypatch):
    """On the CPU, eqs. 4.4 and 4.5 in XLA's form swap the roles of their axes by transposes,
    not by dimension numbers (``xla.canonical_layouts``): inside a loop (``microbatch``'s
    ``lax.scan``) XLA's CPU compiler leaves a convolution on other layouts as a plain loop nest
    (section 11 of ``docs/performance.md``).  Every convolution of a microbatched step reads
    images NHWC and kernels HWIO -- lowered, and where this runs on a CPU also compiled -- and
    the step's gradient is the whole batch's."""
    monkeypatch.setattr(xla, "canonical_layouts", lambda: True)   # the CPU's form, anywhere
    net = jc.serial(jc.Conv2D(4, 1, method="lax"), jc.ReLU(),    # the first layer's dx unused
                    jc.Conv2D(8, 3, strides, "SAME", method="lax"), jc.ReLU(),
                    jc.Flatten(), jc.Dense(3))
    params, _ = init_as(net, (6, 6, 4), jnp.float32)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(4, 6, 6, 4)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, size=4), jnp.int32)
    chunked = jax.jit(jc.value_and_grad(net, jc.softmax_cross_entropy, microbatch=2))
    lowered = chunked.lower(params, x, y)
    dims = [line.split("dim_numbers = ")[1].split(", window")[0]
            for line in lowered.as_text().splitlines() if "stablehlo.convolution" in line]
    assert len(dims) == 5 and set(dims) == {"[b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f]"}, dims
    if jax.default_backend() == "cpu":
        labels = [line.split("dim_labels=")[1].split(",")[0]
                  for line in lowered.compile().as_text().splitlines() if "convolution(" in line]
        assert len(labels) >= 4 and set(labels) == {"b01f_01io->b01f"}, labels  # 1x1: a dot?
    whole = jax.jit(jc.value_and_grad(net, jc.softmax_cross_entropy))(params, x, y)
    for a, b in zip(jax.tree.leaves(chunked(params, x, y)), jax.tree.leaves(whole)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(5, 7, 6, 3), (4, 6, 5, 7), (3, 4, 4, 8), (2, 3, 5, 16),
                                   (0, 4, 4, 6)])
def test_bias_gradient_rows_first_is_eq_4_3(shape):
    """``dispatch.bias_grad``: eq. 4.3 with the rows summed first where the features are fewer
    than ``NARROW_FEATURES`` (on the CPU), the reference's one sum otherwise -- equal to it to
    float rounding, jitted, in both forms, an empty batch included."""
    delta = jnp.asarray(np.random.default_rng(0).normal(size=shape))
    got = jax.jit(dispatch.bias_grad)(delta)
    assert got.shape == (shape[-1],) and got.dtype == delta.dtype
    np.testing.assert_allclose(got, ref.backward_bias(delta), rtol=1e-12, atol=1e-12)
    if jax.default_backend() == "cpu":
        text = jax.jit(dispatch.bias_grad).lower(delta).as_text()
        rows_first = f"tensor<{shape[0] * shape[1]}x{shape[2] * shape[3]}x" in text
        assert rows_first == (shape[-1] < dispatch.NARROW_FEATURES)

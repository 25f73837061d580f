"""``ConvTranspose2D`` (eqs. 4.10-4.13): the reference's scatter form is the literal loop of
eq. 4.10, its passes are ``jax.vjp`` of its forward, the layer's passes equal them, the output
size is eq. 4.11, and the layer works with ``summary``, the audit, ``jit`` and ``vmap``."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jaxcnn as jc
from harness import TOL, init_as, rel_err
from jaxcnn.conv_transpose import adjoint_window
from jaxcnn.reference import conv_transpose as ref


def out_size(n, k, s, d, pads, op):
    """Eq. 4.11 along one axis: ``(n - 1) s - t - b + d (k - 1) + 1 + op``."""
    return (n - 1) * s - pads[0] - pads[1] + d * (k - 1) + 1 + op


def scatter_loop(x, w, strides, dilation, crop, out_hw, groups=1):
    """Eq. 4.10 as written, in NumPy loops: ``y[n, i s + p d - t, j s + q d - l, o] +=
    x[n, i, j, g(o) C_g + c] w[p, q, c, o]`` where the target lies in the output."""
    n, h, w_in, _ = x.shape
    kh, kw, cg, f = w.shape
    y = np.zeros((n, *out_hw, f))
    for i, j, p, q, o in itertools.product(range(h), range(w_in), range(kh), range(kw), range(f)):
        u = i * strides[0] + p * dilation[0] - crop[0]
        v = j * strides[1] + q * dilation[1] - crop[1]
        if 0 <= u < out_hw[0] and 0 <= v < out_hw[1]:
            grp = o // (f // groups)
            y[:, u, v, o] += x[:, i, j, grp * cg:(grp + 1) * cg] @ w[p, q, :, o]
    return y


@st.composite
def cases(draw):
    """A transposed convolution over an input it leaves a non-empty output for: sizes,
    strides, dilations, paddings (VALID, SAME, explicit), output paddings, groups."""
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(2))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(2))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(2))
    hw = tuple(draw(st.integers(1, 4)) for _ in range(2))
    kind = draw(st.sampled_from(["VALID", "SAME", "explicit"]))
    ops = (0, 0) if kind == "SAME" else tuple(draw(st.integers(0, max(s, d) - 1))
                                               for s, d in zip(strides, dilation))
    padding = kind
    if kind == "explicit":
        padding = []
        for n, k, s, d, op in zip(hw, kernel, strides, dilation, ops):
            most = out_size(n, k, s, d, (0, 0), op) - 1        # the crop that leaves one row
            t = draw(st.integers(0, min(d * (k - 1) + 1, most)))
            padding.append((t, draw(st.integers(0, min(d * (k - 1) + 1, most - t)))))
        padding = tuple(padding)
    groups = draw(st.integers(1, 2))
    layer = jc.ConvTranspose2D(groups * draw(st.integers(1, 2)), kernel, strides, padding, ops,
                               dilation, groups, use_bias=draw(st.booleans()))
    shape = (draw(st.integers(1, 2)), *hw, groups * draw(st.integers(1, 2)))
    return layer, shape, draw(st.sampled_from([jnp.float32, jnp.float64]))


def settings_of(layer):
    cfg = dict(layer.config)
    return cfg, (cfg["size"], cfg["strides"], cfg["dilation"], cfg["padding"],
                 cfg["output_padding"])


@given(cases())
def test_layer_and_reference_passes_are_the_vjp_of_the_reference_forward(case):
    """The layer's forward and ``apply`` equal eqs. 4.10-4.11; its backward and the
    reference's eqs. 4.3, 4.12, 4.13 equal ``jax.vjp`` of the reference forward for a random
    cotangent; ``init``'s output shape is eq. 4.11 (``H s`` for ``"SAME"``)."""
    layer, shape, dtype = case
    cfg, geometry = settings_of(layer)
    params, out_shape = init_as(layer, shape[1:], dtype)
    rng = np.random.default_rng(sum(shape))
    x = jnp.asarray(rng.normal(size=shape), dtype)
    if cfg["use_bias"]:
        params["b"] = jnp.asarray(rng.normal(size=params["b"].shape), dtype)
    g = adjoint_window("ConvTranspose2D", shape[1:3], *geometry)
    pads = cfg["padding"] if cfg["padding"] != "VALID" else ((0, 0), (0, 0))
    want_hw = (tuple(n * s for n, s in zip(shape[1:3], cfg["strides"])) if pads == "SAME" else
               tuple(out_size(n, *a) for n, *a in zip(shape[1:3], *geometry[:3], pads,
                                                      cfg["output_padding"])))
    assert out_shape == (*want_hw, cfg["features"]) and g.in_hw == want_hw
    delta = jnp.asarray(rng.normal(size=(shape[0], *out_shape)), dtype)
    groups = cfg["groups"]

    @jax.jit        # one program per drawn case
    def passes(params, x, delta):
        b = params.get("b")
        want_y, vjp = jax.vjp(lambda w, b, x: ref.forward(x, w, b, g, groups),
                              params["w"], b, x)
        y, cache = layer.forward(params, x)
        want = vjp(delta)
        hand = (ref.backward_kernel(x, delta, g, groups), ref.backward_bias(delta),
                ref.backward_input(delta, params["w"], g, groups))
        return y, layer.apply(params, x), want_y, layer.backward(params, cache, delta), hand, want

    y, applied, want_y, (grads, dx), hand, (dw, db, want_dx) = passes(params, x, delta)
    tol = TOL[jnp.dtype(dtype)]
    assert y.shape == (shape[0], *out_shape) and y.dtype == dtype
    got = [y, applied, grads["w"], dx, *hand[::2]]
    want = [want_y, want_y, dw, want_dx, dw, want_dx]
    if cfg["use_bias"]:
        got, want = got + [grads["b"], hand[1]], want + [db, db]
    for a, b in zip(got, want):
        assert rel_err(a, b) <= tol, f"relative error {rel_err(a, b)} > {tol}"


@pytest.mark.parametrize("kernel, strides, dilation, padding, ops, groups", [
    ((3, 2), (2, 3), (1, 1), ((1, 1), (2, 2)), (1, 2), 1),
    ((3, 2), (1, 2), (2, 1), ((0, 0), (1, 1)), (1, 0), 1),     # output_padding >= stride
    ((3, 2), (3, 2), (2, 2), ((2, 2), (0, 0)), (0, 1), 2),
    ((1, 1), (2, 3), (1, 1), "VALID", (1, 2), 1),               # stride > kernel: gaps
    ((3, 2), (2, 2), (1, 2), "SAME", (0, 0), 2),
    ((2, 3), (3, 2), (1, 1), "SAME", (0, 0), 1),                # k_eff < s: a remainder
])
def test_reference_is_the_literal_scatter_loop(kernel, strides, dilation, padding, ops, groups):
    """Eq. 4.10 read as loops, then the crop and the output padding of eq. 4.11: the
    reference forward is it (``"SAME"``: the crop of eq. 3.2 and ``H s``)."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 3, 4, 2 * groups))
    w = rng.normal(size=(*kernel, 2, 3 * groups))
    g = adjoint_window("ConvTranspose2D", (3, 4), kernel, strides, dilation, padding, ops)
    if padding == "SAME":       # eq. 3.2's top crop floor(P / 2), P = max(k_eff - s, 0)
        crop = tuple(max(d * (k - 1) + 1 - s, 0) // 2 for k, s, d in zip(kernel, strides, dilation))
        assert g.in_hw == (3 * strides[0], 4 * strides[1])
    else:
        pads = ((0, 0), (0, 0)) if padding == "VALID" else padding
        crop = (pads[0][0], pads[1][0])
        assert g.in_hw == tuple(out_size(n, *a) for n, *a in
                                zip((3, 4), kernel, strides, dilation, pads, ops))
    want = scatter_loop(x, w, strides, dilation, crop, g.in_hw, groups)
    got = jax.jit(lambda x, w: ref.forward(x, w, None, g, groups))(x, w)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_the_one_dimensional_example_of_the_derivation():
    """Section 4's worked example: ``x = [1, 2]``, ``w = [3, 1, 2]``, stride 2 scatter to
    ``[3, 1, 8, 2, 4]``; padding 1 crops it to ``[1, 8, 2]``, output padding 1 gives back
    ``[1, 8, 2, 4]``; for ``delta = [1, 0, -1, 2, 1]``, ``dx = [1, 1]`` (eq. 4.12, the stride-2
    correlation of delta with w) and ``dw = [-1, 4, 1]`` (eq. 4.13)."""
    x = jnp.asarray([1.0, 2.0]).reshape(1, 1, 2, 1)
    params = {"w": jnp.asarray([3.0, 1.0, 2.0]).reshape(1, 3, 1, 1), "b": jnp.zeros(1)}
    layers = [jc.ConvTranspose2D(1, (1, 3), (1, 2), padding, ops)
              for padding, ops in [("VALID", 0), (((0, 0), (1, 1)), 0), (((0, 0), (1, 1)), (0, 1))]]
    delta = jnp.asarray([1.0, 0, -1, 2, 1]).reshape(1, 1, 5, 1)

    @jax.jit
    def passes(params, x, delta):
        _, cache = layers[0].forward(params, x)
        return [layer.apply(params, x) for layer in layers], layers[0].backward(params, cache,
                                                                                delta)

    ys, (grads, dx) = passes(params, x, delta)
    for y, want in zip(ys, [[3, 1, 8, 2, 4], [1, 8, 2], [1, 8, 2, 4]]):
        np.testing.assert_array_equal(y.ravel(), want)
    np.testing.assert_array_equal(dx.ravel(), [1, 1])
    np.testing.assert_array_equal(grads["w"].ravel(), [-1, 4, 1])
    np.testing.assert_array_equal(grads["b"], [3])


@pytest.mark.parametrize("k, s", [(3, 2), (4, 2), (1, 3), (2, 3), (5, 1)])
def test_same_gives_h_times_s(k, s):
    """``"SAME"``: ``(H s, W s)`` whatever the kernel, from ``init`` and ``apply``, as Keras
    and Flax (``k_eff < s``: the last ``s - k_eff`` rows only get the bias)."""
    layer = jc.ConvTranspose2D(2, k, s, "SAME")
    shapes = []

    def init(key):              # the output shape is static: kept outside the trace
        params, out_shape = layer.init(key, (5, 3, 2))
        shapes.append(out_shape)
        return params

    params = jax.eval_shape(init, jax.random.key(0))
    y = jax.eval_shape(layer.apply, params, jax.ShapeDtypeStruct((1, 5, 3, 2), jnp.float32))
    assert shapes == [(5 * s, 3 * s, 2)] and y.shape == (1, 5 * s, 3 * s, 2)


def test_autoencoder_passes_the_audit():
    """``check_layer`` passes on a grouped, dilated transposed convolution with output
    padding, and ``check_grads`` (per layer and end to end) on a small autoencoder: a strided
    convolution and the transposed convolution that gives back the input's shape."""
    layer = jc.ConvTranspose2D(4, (3, 2), strides=2, padding=((1, 1), (0, 1)),
                               output_padding=(1, 0), dilation=(1, 2), groups=2)
    assert jc.check_layer(layer, (4, 5, 2)).ok
    net = jc.serial(jc.Conv2D(4, 3, strides=2, padding="SAME"),
                    jc.ConvTranspose2D(2, 3, strides=2, padding=((1, 1), (1, 1)),
                                       output_padding=(1, 0)))
    params, out_shape = init_as(net, (6, 5, 2), jnp.float64)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 5, 2)))
    assert out_shape == x.shape[1:]
    report = jc.check_grads(net, jc.squared_error, params, x, x)
    assert report.ok and len(report.rows_of(1)) == 3, str(report)


def test_jit_and_vmap_and_an_empty_batch():
    """Under ``vmap`` over a leading axis, forward and backward equal each slice's own; an
    empty batch (``N = 0``) gives an empty output, an empty ``dx`` and zero gradients."""
    layer = jc.ConvTranspose2D(3, (3, 2), strides=(2, 1), padding=((1, 0), (0, 1)),
                               output_padding=(1, 0))
    params, out_shape = init_as(layer, (3, 4, 2), jnp.float64)
    rng = np.random.default_rng(3)
    xs = jnp.asarray(rng.normal(size=(3, 2, 3, 4, 2)))
    deltas = jnp.asarray(rng.normal(size=(3, 2, *out_shape)))

    def passes(params, x, delta):
        y, cache = layer.forward(params, x)
        return y, layer.backward(params, cache, delta)

    @jax.jit
    def both(params, xs, deltas):
        return (jax.vmap(passes, in_axes=(None, 0, 0))(params, xs, deltas),
                [passes(params, x, d) for x, d in zip(xs, deltas)],
                passes(params, xs[0, :0], deltas[0, :0]))

    (ys, (grads, dxs)), slices, (y0, (grads0, dx0)) = both(params, xs, deltas)
    for k, (y, (g, dx)) in enumerate(slices):
        for a, b in [(ys[k], y), (dxs[k], dx), (grads["w"][k], g["w"]), (grads["b"][k], g["b"])]:
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert out_shape == (7, 4, 3) and y0.shape == (0, 7, 4, 3) and dx0.shape == (0, 3, 4, 2)
    assert not np.any(grads0["w"]) and not np.any(grads0["b"])


@pytest.mark.parametrize("make, match", [
    (lambda: jc.ConvTranspose2D(3, 3, strides=2, output_padding=2),
     r"ConvTranspose2D: output_padding \(2, 2\) must be smaller than the stride \(2, 2\) or "
     r"the dilation \(1, 1\)"),
    (lambda: jc.ConvTranspose2D(3, 3, strides=(2, 1), dilation=(1, 2), output_padding=(1, 2)),
     r"output_padding \(1, 2\) must be smaller than the stride \(2, 1\) or the dilation \(1, 2\)"),
    (lambda: jc.ConvTranspose2D(3, 3, strides=2, padding="SAME", output_padding=1),
     r"ConvTranspose2D: padding 'SAME' fixes the output .* must be 0 with it, got \(1, 1\)"),
    (lambda: jc.ConvTranspose2D(0, 3), r"ConvTranspose2D: features must be >= 1, got 0"),
    (lambda: jc.ConvTranspose2D(3, (0, 3)), r"ConvTranspose2D: kernel_size must be >= 1"),
    (lambda: jc.ConvTranspose2D(3, 3, strides=-1), r"ConvTranspose2D: strides must be >= 1"),
    (lambda: jc.ConvTranspose2D(3, 3, dilation=0), r"ConvTranspose2D: dilation must be >= 1"),
    (lambda: jc.ConvTranspose2D(3, 3, output_padding=-1),
     r"ConvTranspose2D: output_padding must be >= 0, got \(-1, -1\)"),
    (lambda: jc.ConvTranspose2D(3, 3, padding=((1, -1), (0, 0))),
     r"ConvTranspose2D: padding amounts must be >= 0"),
    (lambda: jc.ConvTranspose2D(3, 3, padding="FULL"), r"ConvTranspose2D: unknown padding 'FULL'"),
    (lambda: jc.ConvTranspose2D(4, 3, groups=3),
     r"ConvTranspose2D: features \(=4\) must be divisible by groups \(=3\)"),
])
def test_bad_settings_are_refused_when_the_layer_is_made(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_inputs_are_refused_at_trace_time():
    """Wrong rank, channels, groups, an empty output, a wrong delta: a ``ValueError`` naming
    the layer with the expected and the given value, raised while tracing under ``jit`` (no
    lax error)."""
    layer = jc.ConvTranspose2D(2, 3, strides=2)
    shapes, _ = jax.eval_shape(lambda key: layer.init(key, (4, 4, 3)), jax.random.key(0))
    params = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
    apply = jax.jit(layer.apply)
    with pytest.raises(ValueError, match=r"ConvTranspose2D: expected input of rank 4 .* got "
                                         r"shape \(4, 4, 3\)"):
        apply(params, jnp.ones((4, 4, 3), jnp.float32))
    with pytest.raises(ValueError, match=r"ConvTranspose2D: input has 5 channels but the kernel "
                                         r"expects 3"):
        apply(params, jnp.ones((1, 4, 4, 5), jnp.float32))
    with pytest.raises(ValueError, match=r"input channels \(=3\) must be divisible by groups "
                                         r"\(=2\)"):
        jc.ConvTranspose2D(2, 3, groups=2).init(jax.random.key(0), (4, 4, 3))
    cropped = jc.ConvTranspose2D(2, 3, padding=((3, 3), (0, 0)))
    with pytest.raises(ValueError, match=r"ConvTranspose2D: padding \(\(3, 3\), \(0, 0\)\) leaves "
                                         r"an empty output \(-3, 3\) for input \(1, 1\)"):
        cropped.init(jax.random.key(0), (1, 1, 3))
    with pytest.raises(ValueError, match=r"leaves an empty output"):
        jax.jit(cropped.apply)(params, jnp.ones((1, 1, 1, 3), jnp.float32))
    for padding, side in (("VALID", 4294967297), ("SAME", 6442450941)):  # every setting <= 2**31-1
        with pytest.raises(ValueError, match=rf"^ConvTranspose2D: the output \({side}, {side}\) "
                                             rf"for input \(3, 3\) at strides \(2147483647, "
                                             rf"2147483647\) has a side past 2147483647"):
            jc.ConvTranspose2D(1, 3, 2 ** 31 - 1, padding=padding).init(jax.random.key(0),
                                                                          (3, 3, 1))
    with pytest.raises(ValueError, match=r"ConvTranspose2D: backward got delta of shape "
                                         r"\(1, 8, 8, 2\), expected .* \(1, 9, 9, 2\)"):
        jax.jit(lambda p, x, d: layer.backward(p, layer.forward(p, x)[1], d))(
            params, jnp.ones((1, 4, 4, 3), jnp.float32), jnp.ones((1, 8, 8, 2), jnp.float32))


def test_summary_counts():
    """Output shape, parameters and FLOPs: every input entry times every tap, 2 per
    multiply-add, plus the bias once per output."""
    net = jc.serial(jc.Conv2D(4, 3, strides=2, padding="SAME"),
                    jc.ConvTranspose2D(6, 3, strides=2, padding=((1, 1), (1, 1)),
                                       output_padding=1, groups=2))
    s = jc.summary(net, (8, 8, 3))
    row = s.rows[1]
    assert row.output_shape == (8, 8, 6) and row.name == "ConvTranspose2D"
    assert row.params == 3 * 3 * 2 * 6 + 6
    assert row.flops == 2 * (4 * 4 * 4) * 9 * 6 // 2 + 8 * 8 * 6
    assert "ConvTranspose2D" in str(s)


def widest_fields(layers, shape):
    """Perturb one input pixel at a time; after each layer, over every unit, the widest
    extent of the rows (and of the columns) whose pixels change it."""
    net = jc.serial(*layers)
    params, _ = init_as(net, shape, jnp.float64)
    h, w, _ = shape
    base = jnp.asarray(np.random.default_rng(0).normal(size=shape))
    batch = jnp.concatenate([base[None], base[None] + 1e3 * jnp.eye(h * w).reshape(h * w, h, w, 1)])

    @jax.jit
    def changed(params, batch):
        """Per layer: ``(pixel row, pixel column, unit row, unit column)``, whether it changed."""
        out = []
        for layer, p in zip(layers, params):
            batch = layer.apply(p, batch)
            moved = jnp.any(jnp.abs(batch[1:] - batch[:1]) > 1e-6, axis=3)
            out.append(moved.reshape(h, w, *batch.shape[1:3]))
        return out

    fields = []
    for moved in map(np.asarray, changed(params, batch)):
        widest = [0, 0]
        for i, j in np.ndindex(*moved.shape[2:]):
            rows, cols = np.nonzero(moved[:, :, i, j])
            if len(rows):
                widest = [max(widest[0], np.ptp(rows) + 1), max(widest[1], np.ptp(cols) + 1)]
        fields.append(tuple(int(v) for v in widest))
    return fields


@pytest.mark.parametrize("layers", [
    [jc.ConvTranspose2D(1, 3, strides=2)],
    [jc.Conv2D(1, 3, strides=2), jc.ConvTranspose2D(1, 3, strides=2)],
    [jc.ConvTranspose2D(1, 2, strides=2), jc.Conv2D(1, 2)],
    [jc.ConvTranspose2D(1, 3, strides=2), jc.Conv2D(1, 2)],
    [jc.ConvTranspose2D(1, 4, strides=2, padding="SAME"), jc.Tanh(),
     jc.ConvTranspose2D(1, 4, strides=2, padding=((1, 1), (1, 1)))],
    [jc.ConvTranspose2D(1, (3, 2), strides=(2, 3), dilation=(2, 1), padding=((1, 0), (0, 2)),
                        output_padding=(1, 2)), jc.MaxPool2D(2), jc.Conv2D(1, 3, strides=2)],
    [jc.ConvTranspose2D(1, 1, strides=2), jc.Conv2D(1, (3, 2), dilation=(1, 2))],
], ids=["transposed", "conv-transposed", "transposed-conv-gap", "transposed-conv",
        "two-transposed", "dilated-pooled-strided", "holes"])
def test_receptive_field_is_the_widest_units(layers):
    """The summary's field of a transposed convolution and of every layer after it is its
    widest unit's, as perturbing each input pixel finds (``Conv2D(3, s=2)`` then
    ``ConvTranspose2D(3, s=2)``: 5 pixels)."""
    shape = (14, 13, 1)
    s = jc.summary(jc.serial(*layers), shape)
    for n, field in enumerate(widest_fields(layers, shape)):
        assert field == s.rows[n].receptive_field, f"after layer {n} ({layers[n].name})"
    if len(layers) == 2 and layers[0].name == "Conv2D":
        assert s.rows[1].receptive_field == (5, 5) and s.rows[1].jump == (1, 1)

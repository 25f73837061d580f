"""``jc.summary``: parameter counts and FLOPs against hand counts, receptive fields against a
brute-force computation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn as jc


def lenet5_avg():
    """LeNet-5 with average pooling, as in the benchmarks: 61,706 parameters."""
    return jc.serial(
        jc.Conv2D(6, 5, padding="SAME"), jc.Sigmoid(), jc.AvgPool2D(2),
        jc.Conv2D(16, 5), jc.Sigmoid(), jc.AvgPool2D(2), jc.Flatten(),
        jc.Dense(120), jc.Sigmoid(), jc.Dense(84), jc.Sigmoid(), jc.Dense(10))


def test_lenet5_counts_by_hand():
    s = jc.summary(lenet5_avg(), (28, 28, 1))
    # (5*5*1 + 1)*6 + (5*5*6 + 1)*16 + (400 + 1)*120 + (120 + 1)*84 + (84 + 1)*10
    assert s.params == 156 + 2416 + 48120 + 10164 + 850 == 61706
    assert [r.output_shape for r in s.rows][:7] == [
        (28, 28, 6), (28, 28, 6), (14, 14, 6), (10, 10, 16), (10, 10, 16), (5, 5, 16), (400,)]
    assert s.rows[0].flops == 28 * 28 * 6 * (2 * 25 + 1)
    assert s.rows[3].flops == 10 * 10 * 16 * (2 * 25 * 6 + 1)
    assert s.rows[7].flops == 2 * 400 * 120 + 120
    assert [r.receptive_field for r in s.rows[:6]] == [(5, 5), (5, 5), (6, 6), (14, 14),
                                                       (14, 14), (16, 16)]
    table = str(s)
    assert "total: 61,706 parameters" in table and "AvgPool2D" in table


def test_params_agree_with_init_and_nesting_is_indexed():
    net = jc.serial(jc.serial(jc.Conv2D(4, 3, groups=1), jc.ReLU()),
                    jc.Conv2D(8, 3, groups=4, use_bias=False), jc.Flatten(), jc.Dense(3))
    s = jc.summary(net, (9, 9, 4))
    params, _ = net.init(jax.random.key(0), (9, 9, 4))
    assert s.params == sum(p.size for p in jax.tree.leaves(params))
    assert [r.index for r in s.rows] == ["0.0", "0.1", "1", "2", "3"]
    assert s.rows[2].params == 3 * 3 * 1 * 8


def brute_force_field(layers, shape):
    """Perturb one input pixel at a time; the extent of the pixels that change the centre unit
    (any of its channels: after a concatenation they come from different branches)."""
    net = jc.serial(*layers)
    params, out_shape = net.init(jax.random.key(0), shape)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    h, w, c = shape
    base = jnp.asarray(np.random.default_rng(0).normal(size=shape))
    eye = jnp.eye(h * w).reshape(h * w, h, w, 1)
    batch = base[None] + 1e3 * eye                # pixel (u, v) of every channel perturbed
    y0 = net.apply(params, base[None])
    ys = jax.jit(net.apply)(params, batch)
    i, j = out_shape[0] // 2, out_shape[1] // 2
    changed = np.asarray(jnp.abs(ys[:, i, j] - y0[:, i, j]).max(axis=-1) > 0).reshape(h, w)
    rows, cols = np.nonzero(changed)
    return (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)


@pytest.mark.parametrize("layers", [
    [jc.Conv2D(2, 3), jc.Sigmoid(), jc.MaxPool2D(2), jc.Conv2D(2, 3), jc.Tanh()],
    [jc.Conv2D(2, (3, 2), strides=2), jc.Sigmoid(), jc.AvgPool2D(3, 1), jc.Conv2D(2, 2, dilation=2)],
    [jc.Conv2D(2, 5, padding="SAME"), jc.Sigmoid(), jc.MaxPool2D(3, 2, padding="SAME"),
     jc.Conv2D(2, 3, dilation=(1, 2), strides=(2, 1))],
    [jc.MaxPool2D(3, 2, ((1, 1), (1, 0)), (2, 1), ceil_mode=True), jc.Conv2D(2, 3),
     jc.AvgPool2D(2, ceil_mode=True), jc.Conv2D(2, 3)],     # a raised pixel raises the max
], ids=["conv-pool-conv", "strided-overlapping-dilated", "same-padding", "ceil-mode-dilated-pool"])
def test_receptive_field_matches_brute_force(layers):
    shape = (31, 31, 1)
    s = jc.summary(jc.serial(*layers), shape)
    for n in range(1, len(layers) + 1):
        assert tuple(int(v) for v in brute_force_field(layers[:n], shape)) == \
            s.rows[n - 1].receptive_field, f"after layer {n - 1} ({layers[n - 1].name})"


def test_ceil_mode_and_dilated_pools_by_hand():
    """A dilated window's field is its extent ``d (k - 1) + 1``; ceil mode adds the partial
    windows to the output shape (eq. 5.11) and to the FLOPs, one per window entry."""
    net = jc.serial(jc.MaxPool2D(3, 2, dilation=2, ceil_mode=True), jc.AvgPool2D(2, ceil_mode=True))
    s = jc.summary(net, (10, 9, 1))
    # H: ceil((10 - 5) / 2) + 1 = 4 (3 without ceil mode), W: (9 - 5) / 2 + 1 = 3; then 2 x 2
    assert [r.output_shape for r in s.rows] == [(4, 3, 1), (2, 2, 1)]
    assert [r.output_shape for r in s.rows] == [net.layers[0].init(None, (10, 9, 1))[1],
                                                net.layers[1].init(None, (4, 3, 1))[1]]
    assert [r.flops for r in s.rows] == [4 * 3 * 9, 2 * 2 * 4]
    assert [r.receptive_field for r in s.rows] == [(5, 5), (7, 7)]
    assert [r.jump for r in s.rows] == [(2, 2), (4, 4)]


def test_summary_names_what_is_wrong_with_its_arguments():
    """One example's shape, a tuple of positive ints, and a Layer: a TypeError or ValueError
    naming summary, not a raw int() or iteration error."""
    for shape in (5, ((4, 4, 1), (4, 4, 1)), [4.0, 4, 1]):
        with pytest.raises(TypeError, match=r"^summary: input_shape must be a tuple of ints"):
            jc.summary(jc.zoo.small(), shape)
    with pytest.raises(ValueError, match=r"^summary: input_shape entries must be >= 1, got "
                                         r"\(8, 0, 1\)"):
        jc.summary(jc.zoo.small(), (8, 0, 1))
    with pytest.raises(TypeError, match=r"^summary: net must be a jaxcnn Layer, got function"):
        jc.summary(lambda x: x, (8, 8, 1))


@pytest.mark.parametrize("merge", [jc.FanInConcat, jc.FanInSum])
@pytest.mark.parametrize("branches", [
    (jc.Conv2D(2, 3, padding=((2, 0), (2, 0))), jc.Conv2D(2, 3, padding=((0, 2), (0, 2)))),
    (jc.serial(jc.Conv2D(2, 2, padding="SAME"), jc.Conv2D(2, 2, padding="SAME")),
     jc.Conv2D(2, 3, padding="SAME")),
    (jc.Identity(), jc.serial(jc.MaxPool2D(3, 1, padding=((2, 0), (0, 2))),
                              jc.Conv2D(2, 2, padding=((1, 0), (1, 0))))),
], ids=["opposite-pads", "inception-like", "offset-pool"])
def test_a_merge_sees_the_union_of_its_branches_fields(branches, merge):
    """Branches whose fields are offset from each other: a merged unit sees from the first
    branch's first pixel to the last one's last, not the widest branch's field alone."""
    layers = [jc.Conv2D(2, 1), jc.FanOut(2), jc.parallel(*branches), merge()]
    s = jc.summary(jc.serial(*layers), (15, 15, 1))
    assert tuple(int(v) for v in brute_force_field(layers, (15, 15, 1))) == \
        s.rows[-1].receptive_field


def test_a_merge_it_cannot_follow_is_unknown_not_wrong():
    """Units of one merge must see one field at one spacing.  Branches whose units are spaced
    differently (strides 2 and 1 to the same 4x4 map: every unit then sees 8x8, not the 10x10
    of a union at the larger jump) and a concatenation along a spatial axis (a unit's field
    then depends on the branch its row came from) leave it unknown -- but a concatenation of
    channels and an Identity over a branch point's tuple keep it."""
    C = jc.Conv2D
    apart = jc.serial(jc.FanOut(2), jc.parallel(C(1, 3, 2), C(1, 6)), jc.FanInSum(), C(1, 3))
    assert [r.receptive_field for r in jc.summary(apart, (9, 9, 1)).rows][-2:] == [None, None]
    for axis, field in ((0, None), (1, None), (-1, (3, 3)), (2, (3, 3))):
        rows = jc.summary(jc.serial(jc.FanOut(2), jc.FanInConcat(axis), C(1, 3)), (4, 4, 1)).rows
        assert rows[-1].receptive_field == field, axis
    rows = jc.summary(jc.serial(jc.FanOut(2), jc.Identity(), jc.FanInSum(), C(1, 3)), (6, 6, 1)).rows
    assert [r.receptive_field for r in rows] == [(1, 1), (1, 1), (1, 1), (3, 3)]


def test_a_huge_transposed_stride_leaves_the_field_unknown_at_once():
    """A period of 2**20 units would take seconds to follow unit by unit: unknown instead."""
    net = jc.serial(jc.ConvTranspose2D(1, 3, 2 ** 20), jc.Conv2D(1, 3))
    assert [r.receptive_field for r in jc.summary(net, (1, 1, 1)).rows] == [None, None]
    small = jc.serial(jc.ConvTranspose2D(1, 3, 1024), jc.Conv2D(1, 3))
    assert [r.receptive_field for r in jc.summary(small, (1, 1, 1)).rows] == [(1, 1), (1, 1)]


def test_a_wiring_error_is_named_by_its_path_as_init_names_it():
    net = jc.serial(jc.Conv2D(2, 3), jc.FanOut(2), jc.parallel(jc.Conv2D(3, 1), jc.Identity()),
                    jc.FanInSum())
    with pytest.raises(ValueError) as from_init:
        net.init(jax.random.key(0), (6, 6, 1))
    with pytest.raises(ValueError, match=r"^serial\[3\] FanInSum: the inputs must have one "
                                         r"shape") as from_summary:
        jc.summary(net, (6, 6, 1))
    assert str(from_summary.value) == str(from_init.value)


def test_the_whole_input_is_known_after_a_field_that_is_not():
    """A residual block after a transposed convolution merges unevenly spaced units ("?"), but
    a global pooling, a flatten or a dense layer after it sees the whole input all the same."""
    for head in ([jc.GlobalAvgPool2D()], [jc.Flatten(), jc.Dense(3)]):
        net = jc.serial(jc.ConvTranspose2D(1, 3, strides=2, padding="SAME"),
                        jc.residual(jc.Conv2D(1, 3, padding="SAME")), *head)
        rows = jc.summary(net, (6, 6, 1)).rows
        assert rows[1].name == "FanOut" and rows[1].receptive_field == rows[0].receptive_field
        assert [r.receptive_field for r in rows if r.name == "FanInSum"] == [None]
        assert rows[-1].receptive_field == (6, 6)


def test_a_net_without_images_prints_with_unknown_fields():
    """A dense net on ``(F,)`` vectors has no receptive field: ``?``, not a crash in ``str``."""
    for net in (jc.serial(jc.Flatten(), jc.Dense(3)), jc.Dense(3)):
        s = jc.summary(net, (4,))
        assert all(r.receptive_field is None for r in s.rows)
        assert str(s).splitlines()[-2].endswith("?")

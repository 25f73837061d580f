"""``jaxcnn show``: every figure is written, is a real picture, and draws what the library
computes -- the source's feature map, the routed and sampled pooling positions, receptive fields
that contain every pixel the unit's gradient reaches."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import PIL.Image
import pytest

import jaxcnn as jc
from jaxcnn import data, report, show, train

ROOT = Path(__file__).resolve().parents[1]
FILES = ("convolution_5x5.png", "kernels_classic.png", "kernels_learned.png",
         "features_classic.png", "features_learned.png", "pooling.png",
         "transposed_convolution.png", "receptive_field.png")
MAX_BYTES = 200_000


def assert_picture(path, *, min_hw=(150, 400), max_hw=(1400, 2000)):
    """A PNG of a plausible size whose pixels are not all one colour."""
    assert os.path.getsize(path) < MAX_BYTES, f"{path}: {os.path.getsize(path)} bytes"
    pixels = matplotlib.image.imread(path)
    h, w = pixels.shape[:2]
    assert min_hw[0] <= h <= max_hw[0] and min_hw[1] <= w <= max_hw[1], (path, pixels.shape)
    rgb = np.asarray(pixels[..., :3], np.float64)
    assert rgb.var() > 0.005, f"{path} is (nearly) blank: pixel variance {rgb.var():.2g}"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real training run's directory: a small conv net, two steps on the digits."""
    ds = data.load_digits()
    net = jc.serial(jc.Conv2D(8, 3, padding="SAME"), jc.ReLU(), jc.MaxPool2D(2), jc.Flatten(),
                    jc.Dense(10))
    params, _ = train.init_params(net, ds.image_shape)
    out = tmp_path_factory.mktemp("run")
    result = jc.fit(net, params, ds.x_train[:64], ds.y_train[:64], epochs=1, batch_size=32,
                    out=out, info={"dataset": "digits", "arch": "tiny"}, verbose=False)
    return out, result.params


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, checkpoint):
    out = tmp_path_factory.mktemp("figures")
    shown = show.render("all", out, checkpoint=checkpoint[0])
    return out, {Path(s.path).name: s for s in shown}


def test_all_figures_are_written_and_not_blank(rendered):
    out, shown = rendered
    assert sorted(shown) == sorted(FILES)
    for name in FILES:
        assert shown[name].path == os.path.join(out, name)
        assert_picture(shown[name].path)


def test_the_source_feature_map_with_its_products(rendered):
    d = rendered[1]["convolution_5x5.png"].data
    np.testing.assert_array_equal(d["feature_map"], [[4, 3, 4], [2, 4, 3], [2, 3, 4]])
    np.testing.assert_array_equal(d["products"].sum(axis=(2, 3)), d["feature_map"])
    np.testing.assert_array_equal(d["products"][0, 0].ravel(), [1, 0, 1, 0, 1, 0, 0, 0, 1])


def test_learned_kernels_come_from_the_checkpoint(rendered, checkpoint):
    w, b, label = show.first_conv_kernel(checkpoint[0])
    np.testing.assert_array_equal(w, np.asarray(checkpoint[1][0]["w"]))
    np.testing.assert_array_equal(b, np.asarray(checkpoint[1][0]["b"]))
    assert label == "tiny trained on digits, step 2"
    np.testing.assert_array_equal(rendered[1]["kernels_learned.png"].data["kernels"],
                                  w.sum(axis=2))
    maps = rendered[1]["features_learned.png"].data["maps"]
    assert maps.shape[2] == w.shape[3] == 8


def test_feature_maps_are_correlations_with_each_kernel(rendered):
    """One output channel per kernel, each the kernel slid over the photo (not flipped)."""
    maps = rendered[1]["features_classic.png"].data["maps"]
    image = show.photo(factor=4)[:, :, 0]
    assert maps.shape == (image.shape[0] - 2, image.shape[1] - 2, len(show.CLASSIC_KERNELS))
    for c, kernel in enumerate(show.CLASSIC_KERNELS.values()):
        for i, j in [(0, 0), (40, 57), (100, 11)]:
            np.testing.assert_allclose(maps[i, j, c], np.sum(image[i:i + 3, j:j + 3] * kernel),
                                       rtol=1e-5, atol=1e-5)


def test_pooling_figure_routes_spreads_and_samples(rendered):
    d = rendered[1]["pooling.png"].data
    a, k = d["input"], 4
    assert a.shape == (16, 16) and a.min() >= 0 and a.max() > 0
    windows = a.reshape(4, k, 4, k).transpose(0, 2, 1, 3).reshape(4, 4, k * k)
    np.testing.assert_allclose(d["y_avg"], windows.mean(axis=2), rtol=1e-6)
    np.testing.assert_allclose(d["y_max"], windows.max(axis=2), rtol=1e-6)
    np.testing.assert_allclose(d["dx_avg"], np.full((16, 16), 1 / 16), rtol=1e-6)

    def routed(index):        # delta = 1 sent to one position of each window
        dx = np.zeros((4, 4, k * k))
        np.put_along_axis(dx, index[:, :, None], 1.0, axis=2)
        return dx.reshape(4, 4, k, k).transpose(0, 2, 1, 3).reshape(16, 16)

    np.testing.assert_array_equal(d["dx_max"], routed(d["index_max"]))
    assert len(d["index_sample"]) == 3
    for s, index in enumerate(d["index_sample"]):
        np.testing.assert_array_equal(d[f"dx_sample{s}"], routed(index))
        chosen = np.take_along_axis(windows, index[:, :, None], axis=2)[:, :, 0]
        np.testing.assert_array_equal(d[f"y_sample{s}"], chosen)
        assert np.all((chosen > 0) | (windows.max(axis=2) == 0))      # never a zero entry
    assert not np.array_equal(d["index_sample"][0], d["index_sample"][1])
    # test time: the expectation of a draw, and its derivative (eqs. 5.7, 5.8)
    s_ = windows.sum(axis=2)
    y = np.where(s_ > 0, (windows ** 2).sum(axis=2) / np.where(s_ > 0, s_, 1), 0)
    np.testing.assert_allclose(d["y_test"], y, rtol=1e-5)
    np.testing.assert_allclose(d["y_mean"], y, atol=0.1 * a.max())
    # the mean routing over many draws approaches p = a / S
    np.testing.assert_allclose(d["dx_mean"], d["p"], atol=0.08)


def test_transposed_convolution_is_the_convolution_residual_run_forward(rendered):
    """ConvTranspose2D's output, Conv2D's input residual for that delta (jax.vjp and the
    hand-written backward) and the sum of the scattered kernel copies are the same array."""
    d = rendered[1]["transposed_convolution.png"].data
    x, w, scatter = d["input"], d["kernel"], d["scatter"]
    assert x.shape == (2, 2) and w.shape == (3, 3) and scatter.shape == (2, 2, 5, 5)
    for (i, j), v in np.ndenumerate(x):            # each copy is x[i, j] w at (2i, 2j)
        np.testing.assert_array_equal(scatter[i, j, 2 * i:2 * i + 3, 2 * j:2 * j + 3], v * w)
        assert np.count_nonzero(scatter[i, j]) == np.count_nonzero(w)
    y = d["layer_output"]
    np.testing.assert_array_equal(y, scatter.sum(axis=(0, 1)))
    np.testing.assert_array_equal(d["conv_residual"], y)
    np.testing.assert_array_equal(d["conv_backward"], y)
    # the top row is the 1-D example of docs/derivation.md: [1, 2] with [3, 1, 2], stride 2
    np.testing.assert_array_equal(x[0], [1, 2])
    np.testing.assert_array_equal(w[0], [3, 1, 2])
    np.testing.assert_array_equal(y[0], [3, 1, 8, 2, 4])
    assert y[2, 2] == x[0, 0] * w[2, 2] + x[0, 1] * w[2, 0] + x[1, 0] * w[0, 2] + x[1, 1] * w[0, 0]


def test_receptive_fields_contain_the_gradient(rendered):
    d = rendered[1]["receptive_field.png"].data
    layers = d["layers"]
    assert [x["name"] for x in layers] == ["Conv2D", "MaxPool2D"] * 3 + ["Conv2D", "Dense"]
    rows = d["summary"].rows
    for x in layers:
        top, left, h, w = x["field"]
        assert (h, w) == rows[x["index"]].receptive_field
        grad = x["grad"]
        assert grad.max() > 0
        inside = np.zeros(grad.shape, bool)
        inside[max(top, 0):top + h, max(left, 0):left + w] = True
        assert not np.any(grad[~inside]), f"layer {x['index']}: gradient outside its field"
    assert layers[0]["field"][2:] == (4, 4) and layers[-1]["field"] == (0, 0, 39, 31)


def test_receptive_field_placement_is_exact_without_sparsity(tmp_path):
    """LeNet-5 (sigmoid, average pooling) passes a nonzero residual everywhere, so its gradient
    fills the field exactly -- also where the field reaches into the padding."""
    shown = show.plot_receptive_fields(tmp_path / "rf.png", "lenet5")
    assert_picture(shown.path)
    for x in shown.data["layers"]:
        top, left, h, w = x["field"]
        rows, cols = np.nonzero(x["grad"])
        assert (rows.min(), cols.min()) == (max(top, 0), max(left, 0)), x["index"]
        assert (rows.max() + 1, cols.max() + 1) == (min(top + h, 28), min(left + w, 28))
    c5 = shown.data["layers"][4]
    assert c5["name"] == "Conv2D" and c5["field"] == (-2, -2, 32, 32)


def test_receptive_fields_of_a_net_with_batch_norm(tmp_path):
    """resnet-bn evaluates with its initial running statistics (a per-channel affine map): each
    unit's gradient stays inside its field, as without BatchNorm."""
    shown = show.plot_receptive_fields(tmp_path / "rf.png", "resnet-bn")
    assert_picture(shown.path)
    layers = shown.data["layers"]
    assert len(layers) == 10 and layers[-1]["field"] == (0, 0, 32, 32)
    for x in layers:
        top, left, h, w = x["field"]
        inside = np.zeros(x["grad"].shape, bool)
        inside[max(top, 0):top + h, max(left, 0):left + w] = True
        assert x["grad"].max() > 0 and not np.any(x["grad"][~inside]), x["index"]


# --- the command line ------------------------------------------------------------------------

def run_show(capsys, *args):
    parser = argparse.ArgumentParser(prog="jaxcnn")
    show.add_show_command(parser.add_subparsers(dest="command", required=True))
    parsed = parser.parse_args(["show", *map(str, args)])
    code = parsed.run(parsed)
    out, err = capsys.readouterr()
    return code, out, err


def test_command_writes_and_lists_its_figures(tmp_path, capsys, checkpoint):
    code, out, err = run_show(capsys, "kernels", "--out", tmp_path, "--checkpoint", checkpoint[0])
    assert code == 0, err
    written = out.split()
    assert [Path(p).name for p in written] == ["convolution_5x5.png", "kernels_classic.png",
                                               "kernels_learned.png"]
    for p in written:
        assert_picture(p)


def test_command_draws_the_transposed_convolution(tmp_path, capsys):
    code, out, err = run_show(capsys, "transposed", "--out", tmp_path)
    assert code == 0, err
    assert out.split() == [str(tmp_path / "transposed_convolution.png")]
    assert_picture(out.strip())


def test_command_with_another_photograph(tmp_path, capsys):
    rng = np.random.default_rng(0)
    picture = tmp_path / "photo.png"
    matplotlib.image.imsave(picture, rng.uniform(size=(64, 48, 3)))
    code, out, err = run_show(capsys, "receptive-field", "--out", tmp_path, "--image", picture,
                              "--arch", "lenet5")
    assert code == 0, err
    assert_picture(out.strip())
    assert show.photo((28, 28), path=picture).shape == (28, 28, 1)
    assert show.photo(path=picture, channels=3, factor=2).shape == (32, 24, 3)


@pytest.mark.parametrize("args, message", [
    (("features", "--image", "{tmp}/tiny.png"),
     "--image {tmp}/tiny.png: the image (2x2) is smaller than the 12x12 that features needs"),
    (("features", "--image", "{tmp}/small.png", "--checkpoint", "{run}"),
     "--image {tmp}/small.png: the image (12x12) is smaller than the 18x18 that features needs"),
    (("pooling", "--image", "{tmp}/small.png"),
     "--image {tmp}/small.png: the image (12x12) is smaller than the 18x18 that pooling needs"),
    (("receptive-field", "--image", "{tmp}/small.png", "--arch", "lenet5"),
     "the image (12x12) is smaller than the 28x28 that receptive-field needs"),
    (("all", "--image", "{tmp}/small.png"), "smaller than the 18x18 that pooling needs"),
    (("pooling", "--checkpoint", "x"), "--checkpoint applies to kernels and features, not pooling"),
    (("kernels", "--arch", "deepid"), "--arch applies to receptive-field, not kernels"),
    (("kernels", "--image", "x.png"), "--image applies to features and pooling and "
                                      "receptive-field, not kernels"),
    (("transposed", "--checkpoint", "x"), "--checkpoint applies to kernels and features, "
                                          "not transposed"),
    (("kernels", "--seed", "5"), "--seed applies to pooling and receptive-field, not kernels"),
    (("transposed", "--seed", "0"), "--seed applies to pooling and receptive-field, not "
                                    "transposed"),
    (("features", "--image", "{tmp}/missing.png"), "cannot read the image"),
    (("features", "--image", "{tmp}/notes.txt"), "cannot read the image"),
    (("features", "--checkpoint", "{tmp}"), "no checkpoints in"),
    (("features", "--checkpoint", "{tmp}/nowhere"), "checkpoint: '{tmp}/nowhere' is not a "
                                                     "directory; expected a training run's"),
    (("features", "--checkpoint", "{tmp}/checkpoints"), "checkpoint: '{tmp}/checkpoints' is "
                                                         "the checkpoints/ folder itself"),
    (("features", "--image", "{tmp}/float.tiff"), "its pixels are 32-bit floats (mode 'F') of "
                                                  "no known scale"),
    (("features", "--image", "{tmp}/fifo"), "is a FIFO (named pipe); expected a regular file"),
])
def test_command_errors(tmp_path, capsys, checkpoint, args, message):
    (tmp_path / "notes.txt").write_text("not a picture")
    (tmp_path / "checkpoints").mkdir()
    os.mkfifo(tmp_path / "fifo")               # reading it would block: refused unopened
    PIL.Image.fromarray(np.eye(20, dtype=np.float32)).save(tmp_path / "float.tiff")   # mode F
    matplotlib.image.imsave(tmp_path / "tiny.png", np.eye(2))
    matplotlib.image.imsave(tmp_path / "small.png", np.eye(12))
    args = [a.replace("{tmp}", str(tmp_path)).replace("{run}", str(checkpoint[0]))
            for a in args]
    message = message.replace("{tmp}", str(tmp_path))
    code, out, err = run_show(capsys, *args, "--out", tmp_path / "figs")
    assert code == 2
    assert err.startswith("jaxcnn show: error: ") and message in err, err
    assert not (tmp_path / "figs").exists()


def test_images_of_the_smallest_size_each_figure_needs_are_drawn(tmp_path, capsys):
    for figure, size in (("features", 12), ("pooling", 18)):
        picture = tmp_path / f"{size}.png"
        matplotlib.image.imsave(picture, np.random.default_rng(0).uniform(size=(size, size)))
        code, out, err = run_show(capsys, figure, "--out", tmp_path, "--image", picture)
        assert code == 0, err


@pytest.mark.parametrize("seed", [str(2 ** 63), str(-2 ** 63 - 1), "99999999999999999999",
                                  "1.5"])
def test_seed_out_of_64_bits_is_refused_at_parse_time(tmp_path, capsys, seed):
    assert show.main(["pooling", "--seed", seed, "--out", str(tmp_path / "figs")]) == 2
    assert (f"jaxcnn show: error: argument --seed: must be an integer of 64 bits, got "
            f"'{seed}'") in capsys.readouterr().err
    assert not (tmp_path / "figs").exists()


def test_every_seed_of_64_bits_draws(tmp_path, capsys):
    for figure, seed in (("pooling", -2 ** 63), ("receptive-field", 2 ** 63 - 1)):
        code, out, err = run_show(capsys, figure, "--out", tmp_path, "--seed", seed,
                                  *(("--arch", "lenet5") if figure == "receptive-field" else ()))
        assert code == 0, err
    with pytest.raises(ValueError, match=r"^render: seed must be an int of 64 bits, in "
                                         r"\[-2\*\*63, 2\*\*63\), got 18446744073709551615"):
        show.render("pooling", tmp_path, seed=2 ** 64 - 1)
    with pytest.raises(TypeError, match="^render: seed must be an int, got '1'"):
        show.render("pooling", tmp_path, seed="1")


def test_out_is_required_and_module_entry_point(capsys):
    assert show.main(["pooling"]) == 2
    assert "the following arguments are required: --out" in capsys.readouterr().err


def test_import_jaxcnn_does_not_load_matplotlib():
    code = ("import sys, jaxcnn, jaxcnn.show; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_without_matplotlib_the_command_says_what_to_install(tmp_path, capsys, monkeypatch):
    for name in ("matplotlib.cbook", "matplotlib.colors", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)          # import raises ImportError
    code, _, err = run_show(capsys, "kernels", "--out", tmp_path)
    assert code == 2
    assert err.startswith("jaxcnn show: error: ") and "pip install 'jaxcnn[train]'" in err


@pytest.mark.parametrize("out, message", [
    ("{tmp}/afile", "out: '{tmp}/afile' is not a directory (File exists); expected a directory "
                    "for the figures"),
    ("", "out: expected a directory for the figures, got an empty path"),
])
def test_an_out_that_is_no_directory_is_named(tmp_path, capsys, out, message):
    (tmp_path / "afile").write_text("kept")
    code, _, err = run_show(capsys, "transposed", "--out", out.replace("{tmp}", str(tmp_path)))
    assert code == 2 and err == f"jaxcnn show: error: {message.replace('{tmp}', str(tmp_path))}\n"
    assert (tmp_path / "afile").read_text() == "kept"


def test_a_checkpoint_of_non_finite_kernels_is_refused(tmp_path, monkeypatch):
    """fit never saves NaN parameters, but a checkpoint made another way may hold them: show
    refuses to draw blank panels under a made-up colour scale."""
    w = np.full((3, 3, 1, 4), np.nan, np.float32)
    monkeypatch.setattr(train, "load_checkpoint",
                        lambda path: ({"params": ({"w": w, "b": np.zeros(4, np.float32)},)},
                                      {"step": 7, "config": {"arch": "small"}}))
    with pytest.raises(ValueError, match=r"the first convolution in .* \(small, step 7\) holds "
                                         r"NaN or infinite parameters"):
        show.first_conv_kernel(tmp_path)


def test_an_image_past_the_pixel_cap_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    matplotlib.image.imsave(tmp_path / "big.png", np.eye(30))
    monkeypatch.setattr(show, "_MAX_PIXELS", 899)
    with pytest.raises(ValueError, match=r"it is 30x30 pixels, more than 899; shrink it first"):
        show.read_image(tmp_path / "big.png")


@pytest.mark.parametrize("kwargs, exc, message", [
    (dict(window=0), ValueError, r"^plot_pooling: window must be >= 1, got 0"),
    (dict(window=2.0), TypeError, r"^plot_pooling: window must be an int, got 2.0"),
    (dict(samples=5, draws=2), ValueError,
     r"^plot_pooling: samples \(5\) are drawn among the draws, so at most draws \(2\)"),
    (dict(feature_map=np.full((8, 8), np.nan)), ValueError,
     r"^plot_pooling: the feature map holds NaN or infinite values"),
])
def test_plot_pooling_refuses_what_it_cannot_draw(tmp_path, kwargs, exc, message):
    kwargs = {"feature_map": np.ones((8, 8)), **kwargs}
    with pytest.raises(exc, match=message):
        show.plot_pooling(tmp_path / "p.png", **kwargs)
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("draw, message", [
    (lambda p: show.plot_kernels(np.zeros((3, 3, 1, 0)), p),
     r"^plot_kernels: expected a kernel \(kh, kw, C, F\) with no empty axis, got shape "
     r"\(3, 3, 1, 0\)"),
    (lambda p: show.plot_kernels({}, p),
     r"^plot_kernels: expected a non-empty dict of 2-D kernels, got shapes \[\]"),
    (lambda p: show.plot_kernels({"a": [[np.nan, 1], [0, np.inf]]}, p),
     r"^plot_kernels: a kernel holds non-finite weights"),
    (lambda p: show.plot_kernels(np.ones((3, 3, 1, 4)), p, names=["a"]),
     r"^plot_kernels: expected 4 names, one per output channel, got 1"),
    (lambda p: show.plot_feature_maps(np.full((8, 8, 1), np.nan), np.ones((3, 3, 1, 2)), p),
     r"^apply_kernels: the image holds non-finite values"),
    (lambda p: show.apply_kernels(np.ones((8, 8, 1)), np.ones((3, 3))),
     r"^apply_kernels: expected a kernel \(kh, kw, C, F\) with no empty axis, got shape "
     r"\(3, 3\)"),
    (lambda p: show.apply_kernels(np.ones((8, 8)), np.ones((3, 3, 1, 1))),
     r"^apply_kernels: expected an image \(H, W, C\), got shape \(8, 8\)"),
])
def test_the_kernel_figures_refuse_what_they_cannot_draw(tmp_path, draw, message):
    with pytest.raises(ValueError, match=message):
        draw(tmp_path / "k.png")
    assert not (tmp_path / "k.png").exists()


def test_curves_of_losses_that_reach_zero_are_drawn_without_a_warning(tmp_path):
    """A log scale needs a positive loss: all zero (a perfect fit) or none (NaN) draws on a
    linear one -- under the suite's warnings-as-errors, matplotlib's warning would fail."""
    for losses in ((0.0, 0.0), (float("nan"), 0.0), (0.5, 0.0)):
        history = [{"epoch": 1, "train_loss": losses[0], "test_loss": losses[1],
                    "train_accuracy": 1.0, "test_accuracy": 1.0}]
        report.plot_curves(history, tmp_path / "c.png")
        assert (tmp_path / "c.png").stat().st_size > 0


def test_photo_refuses_sizes_that_are_not_counts():
    for kwargs, message in [(dict(size=(0, 0)), r"^photo: size must be >= 1, got 0"),
                            (dict(size=(-5, 5)), r"^photo: size must be >= 1, got -5"),
                            (dict(factor=0), r"^photo: factor must be >= 1, got 0")]:
        with pytest.raises(ValueError, match=message):
            show.photo(**kwargs)

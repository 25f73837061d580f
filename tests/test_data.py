"""Data sets: IDX files (gzipped and raw) that the tests write, the bundled digits, and every
way a data set can be bad -- each with the message a user sees."""
import gzip
import os
import re
import threading
import tracemalloc

import numpy as np
import pytest

from jaxcnn import data


def write_mnist_like(directory, n_train=30, n_test=10, size=8, gz=("train",), labels=None):
    """The four IDX files of a tiny MNIST-style set; the splits named in ``gz`` are gzipped."""
    rng = np.random.default_rng(0)
    os.makedirs(directory, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        y = rng.integers(0, 10, size=n).astype(np.uint8) if labels is None else labels[split]
        ext = ".gz" if (split if split == "train" else "test") in gz else ""
        data.write_idx(os.path.join(directory, f"{split}-images-idx3-ubyte{ext}"), images)
        data.write_idx(os.path.join(directory, f"{split}-labels-idx1-ubyte{ext}"), y)
        arrays[split] = (images, y)
    return arrays


# --- read_idx ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32,
                                   np.float64])
@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
def test_read_idx_round_trip_raw_and_gzipped(tmp_path, rng, dtype, name):
    array = (rng.uniform(-100, 100, size=(3, 4, 5))).astype(dtype)
    data.write_idx(tmp_path / name, array)
    raw = (tmp_path / name).read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == name.endswith(".gz")
    back = data.read_idx(tmp_path / name)
    assert back.dtype == np.dtype(dtype) and back.shape == (3, 4, 5)
    np.testing.assert_array_equal(back, array)


def test_write_idx_refuses_what_read_idx_would(tmp_path):
    """A scalar, 33 dimensions, a side of 2**32: files no IDX reader takes, refused by name."""
    for array in (np.array(5, np.uint8), np.zeros((1,) * 33, np.uint8),
                  np.zeros((2 ** 32, 0), np.uint8)):
        with pytest.raises(ValueError, match=r"^write_idx: an IDX file holds 1 to 32 "
                                             r"dimensions, each below 2\*\*32, got shape"):
            data.write_idx(tmp_path / "a-idx1-ubyte", array)
    assert not (tmp_path / "a-idx1-ubyte").exists()


def test_read_idx_by_hand(tmp_path):
    # magic 00 00 08 02 (ubyte, 2 dims), sizes 2 and 3 big-endian, then 6 bytes in C order
    (tmp_path / "m").write_bytes(bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6]))
    np.testing.assert_array_equal(data.read_idx(tmp_path / "m"), [[1, 2, 3], [4, 5, 6]])
    # big-endian int32: 00 00 01 00 is 256
    (tmp_path / "i").write_bytes(bytes([0, 0, 0x0C, 1, 0, 0, 0, 1, 0, 0, 1, 0]))
    assert data.read_idx(tmp_path / "i").tolist() == [256]


def test_read_idx_detects_gzip_by_content_not_name(tmp_path, rng):
    array = rng.integers(0, 256, size=(2, 3), dtype=np.uint8)
    data.write_idx(tmp_path / "x.gz", array)
    os.rename(tmp_path / "x.gz", tmp_path / "x-idx2-ubyte")          # gzipped, plain name
    np.testing.assert_array_equal(data.read_idx(tmp_path / "x-idx2-ubyte"), array)


@pytest.mark.parametrize("content, message", [
    (b"", r"corrupt IDX header: the file has 0 bytes, fewer than the 4 of the magic number"),
    (bytes([1, 0, 8, 1, 0, 0, 0, 1, 7]), r"corrupt IDX header: magic number 01 00 08 01, "
                                         r"expected 00 00 <type> <ndim> with type one of 08, 09"),
    (bytes([0, 0, 0x0A, 1, 0, 0, 0, 1, 7]), r"corrupt IDX header: magic number 00 00 0a 01"),
    (bytes([0, 0, 8, 0]), r"corrupt IDX header: 0 dimensions, expected 1 to 32"),
    (bytes([0, 0, 8, 65]) + bytes(4 * 65),       # numpy's limit is 64: not a raw numpy error
     r"corrupt IDX header: 65 dimensions, expected 1 to 32"),
    (bytes([0, 0, 8, 3, 0, 0, 0, 0]) + b"\xff" * 8,    # 0 bytes, but no array of that shape
     r"corrupt IDX header: shape \(0, 4294967295, 4294967295\), whose sizes other than 0 "
     r"would hold more than the 4294967296 bytes"),
    (bytes([0, 0, 8, 3, 0, 0, 0, 1]), r"corrupt IDX header: 3 dimensions need a 16-byte header, "
                                      r"the file has 8 bytes"),
    (bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3]),
     r"the header says shape \(2, 3\) of uint8 \(6 bytes of data\) but the file holds 3"),
    (bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 0, 1]),
     r"the header says shape \(2,\) of int16 \(4 bytes of data\) but the file holds 2"),
])
def test_corrupt_idx_header_is_named(tmp_path, content, message):
    (tmp_path / "bad").write_bytes(content)
    with pytest.raises(ValueError, match=f"bad: {message}"):
        data.read_idx(tmp_path / "bad")
    (tmp_path / "bad.gz").write_bytes(gzip.compress(content))
    with pytest.raises(ValueError, match=message):
        data.read_idx(tmp_path / "bad.gz")


def test_truncated_gzip_is_named(tmp_path, rng):
    data.write_idx(tmp_path / "x.gz", rng.integers(0, 256, size=(50, 50), dtype=np.uint8))
    (tmp_path / "x.gz").write_bytes((tmp_path / "x.gz").read_bytes()[:40])
    with pytest.raises(ValueError, match=r"x.gz: not a readable gzip file"):
        data.read_idx(tmp_path / "x.gz")


# --- MNIST-style directories ---------------------------------------------------------------

def test_load_idx_dataset_mixes_gzipped_and_raw(tmp_path):
    arrays = write_mnist_like(tmp_path, gz=("train",))
    assert sorted(os.listdir(tmp_path)) == [
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    ds = data.load_idx_dataset(tmp_path, "fashion-mnist")
    assert ds.name == "fashion-mnist" and ds.num_classes == 10 and ds.image_shape == (8, 8, 1)
    assert ds.x_train.shape == (30, 8, 8, 1) and ds.x_test.shape == (10, 8, 8, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    np.testing.assert_array_equal(ds.x_train[..., 0] * np.float32(255), arrays["train"][0])
    np.testing.assert_array_equal(ds.y_test, arrays["t10k"][1])
    assert ds.describe() == "fashion-mnist: 30 train + 10 test images, 8x8x1, 10 classes"


def test_missing_or_empty_data_directory_says_what_is_expected(tmp_path):
    expected = (r"train-images-idx3-ubyte\[\.gz\], train-labels-idx1-ubyte\[\.gz\], "
                r"t10k-images-idx3-ubyte\[\.gz\], t10k-labels-idx1-ubyte\[\.gz\]")
    with pytest.raises(FileNotFoundError, match=f"cannot read the data directory "
                                                f"'{tmp_path}/nope' .*; it should hold {expected}"):
        data.load("mnist", tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=f"the data directory '{tmp_path}' is empty; an "
                                                f"MNIST-style data set needs the four IDX files "
                                                f"{expected}"):
        data.load("mnist", tmp_path)
    write_mnist_like(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(FileNotFoundError, match=r"lacks t10k-labels-idx1-ubyte\[\.gz\]; "):
        data.load("mnist", tmp_path)


def test_data_dir_defaults_to_data_slash_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="'data/fashion-mnist'"):
        data.load("fashion-mnist")
    with pytest.raises(ValueError, match="unknown data set 'cifar'; expected one of digits, "
                                         "mnist, fashion-mnist"):
        data.load("cifar")


def test_bad_idx_contents_are_named(tmp_path):
    labels = {"train": np.arange(30, dtype=np.uint8) % 12, "t10k": np.zeros(10, np.uint8)}
    write_mnist_like(tmp_path, labels=labels)
    with pytest.raises(ValueError, match=r"mnist train set .*: labels must lie in \[0, 10\), got "
                                         r"values in \[0, 11\] \(4 out of range, first at index "
                                         r"10\)"):
        data.load("mnist", tmp_path)

    write_mnist_like(tmp_path)
    data.write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((10, 64), np.uint8))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte: expected images of rank 3 "
                                         r"\(N, rows, cols\), rows and cols >= 1, got shape "
                                         r"\(10, 64\)"):
        data.load("mnist", tmp_path)

    write_mnist_like(tmp_path)                  # images of no pixels: not a data set
    data.write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((10, 0, 0), np.uint8))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte: expected images of rank 3 .* "
                                         r"got shape \(10, 0, 0\)"):
        data.load("mnist", tmp_path)

    write_mnist_like(tmp_path)
    data.write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(9, np.uint8))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte holds 10 images but "
                                         r".*t10k-labels-idx1-ubyte holds 9 labels"):
        data.load("mnist", tmp_path)

    write_mnist_like(tmp_path)
    data.write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((10, 9, 9), np.uint8))
    with pytest.raises(ValueError, match=r"train images are \(8, 8\) but test images \(9, 9\)"):
        data.load("mnist", tmp_path)


# --- the digits, and array checks ----------------------------------------------------------

def test_digits_fixed_stratified_split():
    ds = data.load_digits()
    assert ds.x_train.shape == (1437, 8, 8, 1) and ds.x_test.shape == (360, 8, 8, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert 0 <= ds.x_train.min() and ds.x_train.max() == 1
    counts = np.bincount(ds.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37          # 20% of each class (~180 each)
    again = data.load_digits()
    np.testing.assert_array_equal(again.x_test, ds.x_test)
    np.testing.assert_array_equal(again.y_train, ds.y_train)


@pytest.mark.parametrize("images, labels, exc, message", [
    (np.zeros((4, 8, 8)), np.zeros(4, int), ValueError,
     r"images must have rank 4 \(N, H, W, C\), got shape \(4, 8, 8\)"),
    (np.zeros((4, 8, 8, 1), np.uint8), np.zeros(4, int), TypeError,
     r"images must be floating point \(cast with \.astype\(np\.float32\)\), got dtype uint8"),
    (np.full((4, 8, 8, 1), np.nan, np.float32), np.zeros(4, int), ValueError,
     r"images must be finite, image 0 holds NaN or infinite values"),
    (np.zeros((4, 8, 8, 1), np.float32), np.zeros(4), TypeError,
     r"labels must be an integer array of class indices, got float64"),
    (np.zeros((4, 8, 8, 1), np.float32), np.zeros((4, 1), int), ValueError,
     r"expected one label per image, shape \(4,\), got labels of shape \(4, 1\)"),
    (np.zeros((0, 8, 8, 1), np.float32), np.zeros(0, int), ValueError, r"no examples"),
    (np.zeros((3, 8, 8, 1), np.float32), np.array([0, 5, 10]), ValueError,
     r"labels must lie in \[0, 10\), got values in \[0, 10\] \(1 out of range, first at index 2\)"),
    (np.zeros((3, 8, 0, 1), np.float32), np.zeros(3, int), ValueError,
     r"images must have every size but the batch >= 1, got shape \(3, 8, 0, 1\)"),
    (np.ones((9000, 2, 2, 1), np.float32), np.zeros(9000, int), ValueError,   # checked in
     r"images must be finite, image 8500 holds NaN"),                         # blocks of rows
])
def test_check_arrays(images, labels, exc, message):
    if len(images) == 9000:
        images[8500, 1, 0, 0] = np.inf
    with pytest.raises(exc, match="my set: " + message):
        data.check_arrays(images, labels, 10, "my set")


def test_check_arrays_takes_ml_dtypes_floats_and_checks_num_classes():
    import ml_dtypes
    images = np.ones((2, 2, 2, 1), ml_dtypes.bfloat16)
    data.check_arrays(images, np.zeros(2, np.int32), 3)                 # a float to JAX too
    images[1, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"^data: images must be finite, image 1 holds NaN"):
        data.check_arrays(images, np.zeros(2, np.int32), 3)
    for bad in (None, 0, True, 2.0):
        with pytest.raises(TypeError, match=rf"^data: num_classes must be a positive int, got "
                                            rf"{bad!r}"):
            data.check_arrays(images, np.zeros(2, np.int32), bad)


def test_a_path_with_a_nul_byte_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"a path with a NUL byte names no file"):
        data.read_idx(str(tmp_path / "a\0b"))


# --- reading safely: crafted files that must fail fast, without blocking or allocating ------

def header(code, *shape):
    """An IDX header: magic 00 00 <code> <ndim>, then the sizes as big-endian uint32."""
    return bytes([0, 0, code, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape)


def peak_bytes(call):
    """``call()``'s exception and the peak memory it traced (numpy and Python allocations)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        with pytest.raises(ValueError) as info:
            call()
        return info.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("content, gz, message", [
    # 2^31 images of 28x28: 1.7 TB claimed, over the cap before anything is decompressed
    (header(8, 2 ** 31, 28, 28), True, r"the header says shape \(2147483648, 28, 28\) of uint8 "
     r"\(1683627180032 bytes of data\), more than the 4294967296 a data file may hold "
     r"\(jaxcnn.data.MAX_IDX_BYTES\)"),
    # 2^31 labels: under the cap, but far more than a gzip of this size can decompress to
    (header(8, 2 ** 31) + bytes(1000), True, r"the header says shape \(2147483648,\) of uint8 "
     r"\(2147483648 bytes of data\) but a gzip file of \d+ bytes decompresses to at most \d+"),
    (header(8, 2 ** 31) + bytes(1000), False, r"\(2147483648 bytes of data\) but the file holds "
                                              r"1000"),
    # the size product is 2^64: an int64 product would wrap to 0 and accept an empty file
    (header(8, 2 ** 22, 2 ** 21, 2 ** 21), False, r"shape \(4194304, 2097152, 2097152\) of "
     r"uint8 \(18446744073709551616 bytes of data\), more than the 4294967296"),
    (header(0x0C, 2 ** 22, 2 ** 21, 2 ** 21), True, r"of int32 \(73786976294838206464 bytes"),
])
def test_huge_headers_fail_before_allocating(tmp_path, content, gz, message):
    path = tmp_path / ("big.gz" if gz else "big")
    path.write_bytes(gzip.compress(content) if gz else content)
    err, peak = peak_bytes(lambda: data.read_idx(path))
    assert str(err).startswith(f"{path}: the header says shape "), str(err)
    assert re.search(message, str(err)), str(err)
    assert peak < 1 << 20, f"read_idx allocated {peak} bytes before failing"


def test_gzip_is_decompressed_a_chunk_at_a_time(tmp_path):
    # claims 100 MB, holds 1 MB of incompressible bytes: memory follows what the file holds
    held = np.random.default_rng(0).integers(0, 256, 2 ** 20, np.uint8).tobytes()
    (tmp_path / "x.gz").write_bytes(gzip.compress(header(8, 100 * 2 ** 20) + held, 1))
    err, peak = peak_bytes(lambda: data.read_idx(tmp_path / "x.gz"))
    assert str(err).endswith(r"x.gz: the header says shape (104857600,) of uint8 (104857600 "
                             r"bytes of data) but the file holds 1048576 (decompressed)")
    assert peak < 8 * 2 ** 20, f"read_idx allocated {peak} bytes for a 1 MB stream"


@pytest.mark.parametrize("content, gz, message", [
    (header(8, 2, 3) + bytes(9), False, r"\(6 bytes of data\) but the file holds 9$"),
    (header(8, 2, 3) + bytes(9), True, r"\(6 bytes of data\) but the file holds more than 6 "
                                       r"\(decompressed\)$"),
    (header(8, 2, 3) + bytes(5), False, r"\(6 bytes of data\) but the file holds 5$"),
    (header(8, 2, 3) + bytes(5), True, r"\(6 bytes of data\) but the file holds 5 "
                                       r"\(decompressed\)$"),
])
def test_trailing_or_missing_bytes_are_named(tmp_path, content, gz, message):
    path = tmp_path / "x"
    path.write_bytes(gzip.compress(content) if gz else content)
    with pytest.raises(ValueError, match=f"x: the header says shape \\(2, 3\\) of uint8 {message}"):
        data.read_idx(path)


def test_garbage_after_the_gzip_stream_is_named(tmp_path):
    (tmp_path / "x.gz").write_bytes(gzip.compress(header(8, 2) + bytes(2)) + b"junk")
    with pytest.raises(ValueError, match=r"x.gz: not a readable gzip file \(Not a gzipped file"):
        data.read_idx(tmp_path / "x.gz")
    (tmp_path / "y.gz").write_bytes(gzip.compress(header(8, 2) + bytes(2)) + bytes(7))
    assert data.read_idx(tmp_path / "y.gz").tolist() == [0, 0]       # gzip's zero padding


def finishes(call, seconds=10.0):
    """``call()``'s outcome (its value or exception), asserting it returns within ``seconds``
    (in a daemon thread, so a hang fails the test instead of freezing the run)."""
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(_outcome(call)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{call} still blocked after {seconds} s"
    return outcome[0]


def _outcome(call):
    try:
        return call()
    except Exception as err:                            # handed to the test thread
        return err


def test_fifo_is_refused_without_blocking(tmp_path, monkeypatch):
    fifo = tmp_path / "train-images-idx3-ubyte"
    os.mkfifo(fifo)
    err = finishes(lambda: data.read_idx(fifo))
    assert isinstance(err, ValueError)
    assert str(err) == f"{fifo}: is a FIFO (named pipe); expected a regular file (or a link to one)"
    # a FIFO swapped in after the first check: the open does not block, the second check refuses
    real_stat, regular = os.stat, tmp_path / "regular"
    regular.write_bytes(header(8, 1) + b"\x07")
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: real_stat(
        regular if os.fspath(p) == os.fspath(fifo) else p, *a, **k))
    err = finishes(lambda: data.read_idx(fifo))
    assert isinstance(err, ValueError) and "is a FIFO (named pipe)" in str(err)


def test_devices_and_directories_are_refused(tmp_path):
    os.symlink("/dev/zero", tmp_path / "zero")
    err = finishes(lambda: data.read_idx(tmp_path / "zero"))
    assert isinstance(err, ValueError)
    assert str(err) == (f"{tmp_path / 'zero'} (a link to /dev/zero): is a character device; "
                        f"expected a regular file (or a link to one)")
    with pytest.raises(ValueError, match=f"^{tmp_path}: is a directory; expected a regular file"):
        data.read_idx(tmp_path)
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        data.read_idx(tmp_path / "nothing-here")
    data.write_idx(tmp_path / "real.gz", np.arange(3, dtype=np.uint8))
    os.symlink(tmp_path / "real.gz", tmp_path / "link")                # a link to a file is fine
    assert data.read_idx(tmp_path / "link").tolist() == [0, 1, 2]


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32])
def test_integer_images_other_than_bytes_are_refused(tmp_path, dtype):
    write_mnist_like(tmp_path)
    images = np.random.default_rng(0).integers(0, 100, size=(30, 8, 8)).astype(dtype)
    os.remove(tmp_path / "train-images-idx3-ubyte.gz")
    data.write_idx(tmp_path / "train-images-idx3-ubyte", images)
    with pytest.raises(ValueError, match=f"train-images-idx3-ubyte: expected images of unsigned "
                                         f"bytes \\(IDX type 08, scaled by 1/255\\) or floats "
                                         f"in \\[0, 1\\] \\(kept as they are\\), got "
                                         f"{np.dtype(dtype).name}"):
        data.load("mnist", tmp_path)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_images_in_0_1_are_kept_as_they_are(tmp_path, dtype):
    write_mnist_like(tmp_path)
    images = np.random.default_rng(0).uniform(size=(10, 8, 8)).astype(dtype)
    images[0, 0, :2] = [0, 1]
    data.write_idx(tmp_path / "t10k-images-idx3-ubyte", images)
    ds = data.load("mnist", tmp_path)
    np.testing.assert_array_equal(ds.x_test[..., 0], images.astype(np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fill, message", [
    (lambda x: x * 255, r"float images must lie in \[0, 1\] \(they are kept as they are\), "
                        r"got values in \[0\.07\d+, 254\.8\d+\]; scale them first \(pixels of "
                        r"0\.\.255: divide by 255\)"),
    (lambda x: x - 0.5, r"float images must lie in \[0, 1\] .*got values in \[-0\.4\d+, 0\.4\d+\]"),
    (lambda x: np.where(np.arange(len(x))[:, None, None] == 3, np.nan, x),
     r"float images must be finite, image 3 holds NaN or infinite values"),
    (lambda x: np.where(np.arange(len(x))[:, None, None] == 2, np.inf, x),
     r"float images must be finite, image 2 holds NaN or infinite values"),
])
def test_float_images_outside_0_1_are_refused(tmp_path, dtype, fill, message):
    """Float images are not scaled: pixels of 0..255 stored as floats would train to nothing."""
    write_mnist_like(tmp_path)
    images = fill(np.random.default_rng(0).uniform(size=(10, 8, 8))).astype(dtype)
    data.write_idx(tmp_path / "t10k-images-idx3-ubyte", images)
    with pytest.raises(ValueError, match=f"t10k-images-idx3-ubyte: {message}"):
        data.load("mnist", tmp_path)


def test_float_labels_are_refused(tmp_path):
    write_mnist_like(tmp_path)
    data.write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(10, np.float32))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte: expected integer labels, got "
                                         r"float32"):
        data.load("mnist", tmp_path)


def test_raw_and_gzipped_copies_together_are_refused(tmp_path):
    write_mnist_like(tmp_path, gz=("train",))
    data.write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(30, np.uint8))
    raw = tmp_path / "train-labels-idx1-ubyte"
    with pytest.raises(ValueError, match=f"^{raw} and {raw}.gz are both present: expected one "
                                         f"copy of train-labels-idx1-ubyte \\(raw or gzipped\\), "
                                         f"got two that may differ; remove one$"):
        data.load("mnist", tmp_path)


def test_missing_files_name_the_download_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"; download them with: jaxcnn data download "
                                                f"fashion-mnist --data-dir {tmp_path} \\(or add "
                                                f"--download to jaxcnn train"):
        data.load("fashion-mnist", tmp_path)
    with pytest.raises(FileNotFoundError) as info:                  # not a downloadable name
        data.load_idx_dataset(tmp_path, "my-set")
    assert "download" not in str(info.value)

"""Data sets for ``jaxcnn train``: the bundled 8x8 digits, and MNIST-style IDX files.

Every loader returns a ``Dataset`` of ``NHWC`` float32 images in ``[0, 1]`` and int32 labels,
checked once here, at the boundary, so that training never starts on bad data:

- ``load_digits()``: scikit-learn's 1,797 handwritten digits (8x8, shipped inside scikit-learn,
  no download) with a fixed stratified 80/20 train/test split;
- ``load_idx_dataset(data_dir)``: the four standard IDX files of MNIST or Fashion-MNIST
  (``train-images-idx3-ubyte`` ... , gzipped or not), as published by LeCun et al. and Zalando;
- ``read_idx(path)``: one IDX file as a numpy array, read safely: header first, its size
  checked against the file and ``MAX_IDX_BYTES`` before anything large is read;
- ``download(name, data_dir)``: MNIST's or Fashion-MNIST's four files from their published
  locations (``SOURCES``), each moved into place only once its MD5 matches.

scikit-learn is imported only when the digits are loaded (it is in the ``train`` extra).
"""
from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.client
import math
import os
import re
import shlex
import stat
import struct
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from typing import NamedTuple

import numpy as np

__all__ = [
    "DATASETS", "IDX_FILES", "Dataset", "check_arrays", "load", "load_digits",
    "load_idx_dataset", "read_idx", "find_idx_files", "write_idx", "MAX_IDX_BYTES", "SOURCES",
    "Source", "DOWNLOAD_TIMEOUT", "DownloadError", "download",
]

DATASETS = ("digits", "mnist", "fashion-mnist")
"""Names accepted by ``load`` (and ``jaxcnn train --dataset``)."""

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
"""The four files of an MNIST-style data set, by role; each may also end in ``.gz``."""

# IDX type codes (the third byte of the magic number) and their big-endian numpy dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_NDIM = 32                          # numpy's own limit is 64; images and labels need 3


class Dataset(NamedTuple):
    """A classification data set split into train and test.

    ``x_*``: float32 images ``(N, H, W, C)`` in ``[0, 1]``; ``y_*``: int32 labels ``(N,)`` in
    ``[0, num_classes)``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of one image: the input shape to give ``net.init``."""
        return tuple(self.x_train.shape[1:])

    def describe(self) -> str:
        h, w, c = self.image_shape
        return (f"{self.name}: {len(self.x_train)} train + {len(self.x_test)} test images, "
                f"{h}x{w}x{c}, {self.num_classes} classes")


def check_arrays(images, labels, num_classes: int, what: str = "data", *,
                 any_rank: bool = False) -> None:
    """Raise ``ValueError``/``TypeError`` unless ``images (N, H, W, C)`` (finite floats) and
    ``labels (N,)`` (integers in ``[0, num_classes)``) go together.  ``any_rank``: images of
    any rank from 2 (``(N, F)`` vectors for a dense net).  Runs on concrete arrays, not under
    ``jit``."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 1:
        raise TypeError(f"{what}: num_classes must be a positive int, got {num_classes!r}")
    shape = getattr(images, "shape", None)
    if shape is None or (len(shape) < 2 if any_rank else len(shape) != 4):
        got = f"a {type(images).__name__}" if shape is None else f"shape {tuple(shape)}"
        want = "a batch axis, (N, ...)" if any_rank else "rank 4 (N, H, W, C)"
        raise ValueError(f"{what}: images must have {want}, got {got}")
    if 0 in shape[1:]:
        raise ValueError(f"{what}: images must have every size but the batch >= 1, got shape "
                         f"{tuple(shape)}")
    if not (np.issubdtype(images.dtype, np.floating) or images.dtype in _ml_floats()):
        raise TypeError(f"{what}: images must be floating point (cast with .astype(np.float32)), "
                        f"got dtype {images.dtype}")
    bad = _first_non_finite(images)
    if bad is not None:
        raise ValueError(f"{what}: images must be finite, image {bad} holds NaN or infinite "
                         f"values")
    lshape = getattr(labels, "shape", None)
    if lshape is None or not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"{what}: labels must be an integer array of class indices, got "
                        f"{getattr(labels, 'dtype', type(labels).__name__)}")
    if tuple(lshape) != (shape[0],):
        raise ValueError(f"{what}: expected one label per image, shape ({shape[0]},), got "
                         f"labels of shape {tuple(lshape)}")
    if shape[0] == 0:
        raise ValueError(f"{what}: no examples (images of shape {tuple(shape)})")
    lo, hi = int(np.min(labels)), int(np.max(labels))
    if lo < 0 or hi >= num_classes:
        bad = np.flatnonzero((np.asarray(labels) < 0) | (np.asarray(labels) >= num_classes))
        raise ValueError(f"{what}: labels must lie in [0, {num_classes}), got values in "
                         f"[{lo}, {hi}] ({len(bad)} out of range, first at index {bad[0]})")


@functools.lru_cache(maxsize=1)
def _ml_floats() -> frozenset:
    """ml_dtypes' float types (bfloat16, float8...), which NumPy does not count as floating."""
    import ml_dtypes                    # installed with jax
    return frozenset(np.dtype(getattr(ml_dtypes, n)) for n in dir(ml_dtypes)
                     if n.startswith(("bfloat", "float")))


def _first_non_finite(images, rows: int = 4096) -> int | None:
    """The index of the first image holding a NaN or an infinity, or ``None``: checked
    ``rows`` images at a time, so the check's masks stay small beside a large set."""
    for start in range(0, len(images), rows):
        finite = np.isfinite(np.asarray(images[start:start + rows]))
        if not finite.all():
            return start + int(np.flatnonzero(~finite.reshape(len(finite), -1).all(axis=1))[0])
    return None


# --- the bundled digits --------------------------------------------------------------------

def load_digits(test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 handwritten digits, a fixed stratified train/test split.

    1,797 images of 10 classes (UCI "optical recognition of handwritten digits"), pixel values
    0..16 scaled to ``[0, 1]``.  With the defaults: 1,437 train and 360 test images, each class
    in the same proportion in both; the split depends only on ``split_seed``.
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as err:
        raise ImportError("the digits data set ships with scikit-learn: "
                          "pip install 'jaxcnn[train]' (or scikit-learn)") from err
    bunch = sk_load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[..., None]
    labels = bunch.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(images, labels, test_size=test_fraction,
                                              stratify=labels, random_state=split_seed)
    return Dataset(x_tr, y_tr, x_te, y_te, 10, "digits")


# --- IDX files (MNIST, Fashion-MNIST) -------------------------------------------------------

MAX_IDX_BYTES = 4 * 1024 ** 3
"""The most data one IDX file may hold, in bytes after decompression (4 GiB; MNIST's training
images are 47 MB).  ``read_idx`` refuses a larger header before reading or decompressing
anything, and ``download`` stops a download that grows past it.  Raise it (it is read at each
call) for a bigger data set."""

# deflate's densest code is a 258-byte match in 2 bits, so a gzip file of n bytes decompresses to
# at most 1032 n bytes (zlib's FAQ): a header claiming more is refused before decompressing.
_DEFLATE_MAX_RATIO = 1032
_CHUNK = 1 << 20                  # bytes read, decompressed or downloaded at a time
_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))


def _not_regular(path: str, mode: int) -> ValueError | None:
    """The error for a path whose (followed) mode is not a regular file's; ``None`` if it is."""
    if stat.S_ISREG(mode):
        return None
    kind = next((what for test, what in _FILE_KINDS if test(mode)), "not a regular file")
    real = os.path.realpath(path)
    via = f" (a link to {real})" if real != os.path.abspath(path) else ""
    return ValueError(f"{path}{via}: is {kind}; expected a regular file (or a link to one)")


def _open_regular(path: str):
    """``path`` opened for binary reading if it is, or links to, a regular file.

    Anything else (FIFO, device, directory, socket) is refused with ``ValueError`` before it is
    opened, and again after (the open is non-blocking, so a FIFO swapped in between cannot hang).
    """
    if "\0" in path:
        raise ValueError(f"{path!r}: a path with a NUL byte names no file")
    err = _not_regular(path, os.stat(path).st_mode)
    if err is not None:
        raise err
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        err = _not_regular(path, os.fstat(fd).st_mode)
        if err is not None:
            raise err
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_header(path: str, read) -> tuple[np.dtype, tuple[int, ...], int]:
    """The dtype, shape and header length of an IDX file, parsed with ``read(n)`` (which returns
    at most ``n`` bytes, fewer at the end of the file)."""
    magic = read(4)
    if len(magic) < 4:
        raise ValueError(f"{path}: corrupt IDX header: the file has {len(magic)} bytes, "
                         f"fewer than the 4 of the magic number")
    zero, code, ndim = magic[0:2], magic[2], magic[3]
    if zero != b"\x00\x00" or code not in _IDX_DTYPES:
        raise ValueError(f"{path}: corrupt IDX header: magic number {magic.hex(' ')}, "
                         f"expected 00 00 <type> <ndim> with type one of "
                         f"{', '.join(f'{c:02x}' for c in _IDX_DTYPES)}")
    if ndim == 0 or ndim > _MAX_NDIM:
        raise ValueError(f"{path}: corrupt IDX header: {ndim} dimensions, expected 1 to "
                         f"{_MAX_NDIM}")
    sizes = read(4 * ndim)
    if len(sizes) < 4 * ndim:
        raise ValueError(f"{path}: corrupt IDX header: {ndim} dimensions need a "
                         f"{4 + 4 * ndim}-byte header, the file has {4 + len(sizes)} bytes")
    shape = struct.unpack(f">{ndim}I", sizes)
    return np.dtype(_IDX_DTYPES[code]), shape, 4 + 4 * ndim


def _claims(dtype: np.dtype, shape: tuple[int, ...]) -> str:
    nbytes = math.prod(shape) * dtype.itemsize
    return f"the header says shape {shape} of {dtype.name} ({nbytes} bytes of data)"


def _data_bytes(path: str, dtype: np.dtype, shape: tuple[int, ...]) -> int:
    """The bytes of data a header claims (a Python integer: no overflow), at most the cap --
    which the sizes other than 0 must also keep to, or the empty array could not be shaped."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > MAX_IDX_BYTES:
        raise ValueError(f"{path}: {_claims(dtype, shape)}, more than the {MAX_IDX_BYTES} a data "
                         f"file may hold (jaxcnn.data.MAX_IDX_BYTES)")
    if math.prod(d for d in shape if d) * dtype.itemsize > MAX_IDX_BYTES:
        raise ValueError(f"{path}: corrupt IDX header: shape {shape}, whose sizes other than 0 "
                         f"would hold more than the {MAX_IDX_BYTES} bytes a data file may hold "
                         f"(jaxcnn.data.MAX_IDX_BYTES)")
    return nbytes


def _read_raw(path: str, f, size: int) -> tuple[bytearray, np.dtype, tuple[int, ...]]:
    """The data of an uncompressed IDX file of ``size`` bytes, read only once the header
    agrees with the size exactly."""
    dtype, shape, header = _read_header(path, f.read)
    nbytes = _data_bytes(path, dtype, shape)
    if size - header != nbytes:
        raise ValueError(f"{path}: {_claims(dtype, shape)} but the file holds {size - header}")
    data = bytearray(nbytes)
    got = f.readinto(data)
    if got != nbytes:                # the file shrank after fstat
        raise ValueError(f"{path}: {_claims(dtype, shape)} but the file holds {got}")
    return data, dtype, shape


def _read_gzip(path: str, f, size: int) -> tuple[bytearray, np.dtype, tuple[int, ...]]:
    """The data of a gzipped IDX file of ``size`` bytes: the header is decompressed and checked
    first, then the data a chunk at a time, never more than the header claims plus one byte."""
    try:
        with gzip.GzipFile(fileobj=f, mode="rb") as stream:
            dtype, shape, header = _read_header(path, stream.read)
            nbytes = _data_bytes(path, dtype, shape)
            if header + nbytes > _DEFLATE_MAX_RATIO * size:
                raise ValueError(f"{path}: {_claims(dtype, shape)} but a gzip file of {size} "
                                 f"bytes decompresses to at most {_DEFLATE_MAX_RATIO * size}")
            data = bytearray()
            while len(data) <= nbytes:
                chunk = stream.read(min(_CHUNK, nbytes + 1 - len(data)))
                if not chunk:
                    break
                data += chunk
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: not a readable gzip file ({err})") from err
    if len(data) != nbytes:
        held = len(data) if len(data) < nbytes else f"more than {nbytes}"
        raise ValueError(f"{path}: {_claims(dtype, shape)} but the file holds {held} "
                         f"(decompressed)")
    return data, dtype, shape


def read_idx(path) -> np.ndarray:
    """Read one IDX file (gzipped or raw; detected from its first bytes, not its name).

    The format: two zero bytes, a type code (0x08 ubyte, 0x09 byte, 0x0B short, 0x0C int,
    0x0D float, 0x0E double), the number of dimensions ``d``, ``d`` big-endian uint32 sizes,
    then the data in C order.  Returns an array of that shape in native byte order.

    Read safely: the path must be, or link to, a regular file (a FIFO, device or directory is
    refused without blocking); the header is parsed first and the size it claims checked
    against ``MAX_IDX_BYTES`` and against the file -- a raw file must hold exactly that many
    bytes, a gzip stream is decompressed a chunk at a time up to one byte more than that -- so
    memory never grows past what the file really holds.  Raises ``ValueError`` naming the file,
    the expected and the found size or fault (``OSError`` when the file cannot be opened).
    """
    path = os.fspath(path)
    with _open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        gzipped = f.read(2) == _GZIP_MAGIC
        f.seek(0)
        data, dtype, shape = (_read_gzip if gzipped else _read_raw)(path, f, size)
    array = np.frombuffer(data, dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def find_idx_files(data_dir) -> dict[str, str]:
    """The paths of the four IDX files in ``data_dir``, by role (``x_train``, ...).

    Each may be gzipped (``.gz``) or not, but not both: a raw file and a ``.gz`` of the same
    name together raise ``ValueError`` naming both.  Raises ``FileNotFoundError`` listing the
    expected names and the directory when any is missing or the directory cannot be read.
    """
    data_dir = os.fspath(data_dir)
    expected = ", ".join(f"{name}[.gz]" for name in IDX_FILES.values())
    try:
        present = set(os.listdir(data_dir))
    except OSError as err:
        raise FileNotFoundError(f"cannot read the data directory {data_dir!r} "
                                f"({err.strerror or err}); it should hold {expected}") from err
    found, missing = {}, []
    for role, name in IDX_FILES.items():
        candidates = [c for c in (name, name + ".gz") if c in present]
        if len(candidates) == 2:
            raw, gz = (os.path.join(data_dir, c) for c in candidates)
            raise ValueError(f"{raw} and {gz} are both present: expected one copy of {name} "
                             f"(raw or gzipped), got two that may differ; remove one")
        if candidates:
            found[role] = os.path.join(data_dir, candidates[0])
        else:
            missing.append(name)
    if missing:
        what = "is empty" if not present else f"lacks {', '.join(f'{m}[.gz]' for m in missing)}"
        raise FileNotFoundError(
            f"the data directory {os.path.abspath(data_dir)!r} {what}; an MNIST-style data set "
            f"needs the four IDX files {expected}")
    return found


def _idx_split(paths: dict[str, str], split: str, name: str, num_classes: int):
    """The images ``(N, rows, cols, 1)`` float32 and labels ``(N,)`` int32 of one split."""
    px, py = paths["x_" + split], paths["y_" + split]
    x = read_idx(px)
    if x.ndim != 3 or 0 in x.shape[1:]:
        raise ValueError(f"{px}: expected images of rank 3 (N, rows, cols), rows and cols >= 1, "
                         f"got shape {x.shape}")
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{px}: expected images of unsigned bytes (IDX type 08, scaled by "
                         f"1/255) or floats in [0, 1] (kept as they are), got {x.dtype}; "
                         f"convert them, e.g. to float32 in [0, 1] (jaxcnn.data.write_idx)")
    if x.dtype != np.uint8:
        _check_float_images(px, x)
    y = read_idx(py)
    if y.ndim != 1:
        raise ValueError(f"{py}: expected labels of rank 1 (N,), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{py}: expected integer labels, got {y.dtype}")
    if len(x) != len(y):
        raise ValueError(f"{px} holds {len(x)} images but {py} holds {len(y)} labels")
    images = x.astype(np.float32)[..., None]
    if x.dtype == np.uint8:
        images /= np.float32(255)
    labels = y.astype(np.int32)
    check_arrays(images, labels, num_classes, f"{name} {split} set ({px}, {py})")
    return images, labels


def _check_float_images(path: str, x: np.ndarray) -> None:
    """Float IDX images are kept as they are, so they must already be finite and in [0, 1]."""
    finite = np.isfinite(x)
    if not finite.all():
        bad = int(np.flatnonzero(~finite.reshape(len(x), -1).all(axis=1))[0])
        raise ValueError(f"{path}: float images must be finite, image {bad} holds NaN or "
                         f"infinite values")
    if x.size and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"{path}: float images must lie in [0, 1] (they are kept as they are), "
                         f"got values in [{float(x.min()):g}, {float(x.max()):g}]; scale them "
                         f"first (pixels of 0..255: divide by 255), or store unsigned bytes "
                         f"(IDX type 08, scaled by 1/255)")


def load_idx_dataset(data_dir, name: str = "mnist", num_classes: int = 10) -> Dataset:
    """An MNIST-style data set from its four IDX files in ``data_dir`` (see ``IDX_FILES``).

    Image files must be ``(N, rows, cols)`` unsigned bytes (scaled by 1/255 to ``[0, 1]``) or
    floats (kept as they are, so refused unless finite and in ``[0, 1]``); other integer images
    (int8, int16, int32) are refused, not guessed at.  Label files must be ``(N,)`` integers
    in ``[0, num_classes)``.  Each file is read with ``read_idx``.  When files are missing and
    ``name`` is in ``SOURCES`` the error names the command that downloads them.
    """
    data_dir = os.fspath(data_dir)
    try:
        paths = find_idx_files(data_dir)
    except FileNotFoundError as err:
        if name not in SOURCES:
            raise
        raise FileNotFoundError(f"{err}; download them with: jaxcnn data download {name} "
                                f"--data-dir {shlex.quote(data_dir)} (or add --download to "
                                f"jaxcnn train; in Python: jaxcnn.data.download({name!r}, "
                                f"{data_dir!r}))") from err
    x_train, y_train = _idx_split(paths, "train", name, num_classes)
    x_test, y_test = _idx_split(paths, "test", name, num_classes)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(f"{name}: train images are {x_train.shape[1:3]} but test images "
                         f"{x_test.shape[1:3]}")
    return Dataset(x_train, y_train, x_test, y_test, num_classes, name)


def load(name: str, data_dir=None) -> Dataset:
    """A data set by name: ``"digits"`` (bundled) or ``"mnist"`` / ``"fashion-mnist"`` (the IDX
    files in ``data_dir``, default ``data/<name>``)."""
    if name == "digits":
        return load_digits()
    if name in ("mnist", "fashion-mnist"):
        return load_idx_dataset(os.path.join("data", name) if data_dir is None else data_dir, name)
    raise ValueError(f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")


def write_idx(path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file, gzipped when ``path`` ends in ``.gz`` (for tests and
    conversions)."""
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise TypeError(f"write_idx: dtype {array.dtype} has no IDX type code; expected one of "
                        f"{', '.join(str(d) for d in codes)}")
    if not 1 <= array.ndim <= 32 or max(array.shape) >= 2 ** 32:     # as read_idx reads them
        raise ValueError(f"write_idx: an IDX file holds 1 to 32 dimensions, each below 2**32, "
                         f"got shape {array.shape}")
    data = (bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
            + array.astype(_IDX_DTYPES[code]).tobytes())
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(data)


# --- downloading MNIST and Fashion-MNIST ----------------------------------------------------

class Source(NamedTuple):
    """Where a data set's four ``.gz`` IDX files are published: base URLs (each ending in ``/``,
    tried in order for every file) and the MD5 of each file, by file name."""

    urls: tuple[str, ...]
    md5: dict[str, str]


SOURCES = {
    "mnist": Source(
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
         "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
         "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
         "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}),
    "fashion-mnist": Source(
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
         "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
         "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
         "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}),
}
"""The data sets ``download`` fetches: the published locations and MD5s (torchvision's), MNIST's
S3 copy first and LeCun's original site (often down) second."""

DOWNLOAD_TIMEOUT = 60.0
"""``download``'s default timeout in seconds: the most any one request (connecting, or waiting
for the next block of data) may wait."""


class DownloadError(OSError):
    """A file could not be downloaded from any of its URLs, or did not match its checksum; the
    message names the file and each URL's fault (an MD5 mismatch: the expected and the got
    checksum).  Nothing is left in the file's place."""


class _Failed(Exception):
    """One URL's fault, collected by ``_download_file``."""


def _md5(path: str) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with _open_regular(path) as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _has_md5(path: str, md5: str) -> bool:
    """Whether the file at ``path`` reads back with MD5 ``md5``; one that cannot be read is
    not verified (and so downloaded again)."""
    try:
        return _md5(path) == md5
    except OSError:
        return False


def _fetch(url: str, out, timeout: float) -> tuple[str, int]:
    """Stream ``url`` into the open file ``out``; its MD5 and length.  Raises ``_Failed`` for an
    HTTP error, a body shorter than its ``Content-Length`` or longer than ``MAX_IDX_BYTES``."""
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as err:
        err.close()
        raise _Failed(f"HTTP {err.code} {err.reason}") from None
    with response:
        declared = response.headers.get("Content-Length", "")
        if not re.fullmatch(r"[0-9]+", declared, re.ASCII):    # not "²", which int() refuses
            declared = ""
        if declared and int(declared) > MAX_IDX_BYTES:
            raise _Failed(f"{declared} bytes, more than jaxcnn.data.MAX_IDX_BYTES "
                          f"({MAX_IDX_BYTES})")
        digest, length = hashlib.md5(usedforsecurity=False), 0
        while chunk := response.read(_CHUNK):
            length += len(chunk)
            if length > MAX_IDX_BYTES:
                raise _Failed(f"more than jaxcnn.data.MAX_IDX_BYTES ({MAX_IDX_BYTES}) bytes")
            digest.update(chunk)
            out.write(chunk)
    if declared and length != int(declared):
        raise _Failed(f"truncated: got {length} of the {declared} bytes announced")
    return digest.hexdigest(), length


def _fetch_verified(url: str, target: str, md5: str, timeout: float) -> int:
    """Download ``url`` to a temporary file beside ``target``, and move it into place only if
    its MD5 is ``md5``; the bytes written.  On any fault the temporary file is removed."""
    directory, name = os.path.split(target)
    fd, part = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=directory or ".")
    try:
        with os.fdopen(fd, "wb") as out:
            got, length = _fetch(url, out, timeout)
        if got != md5:
            raise _Failed(f"MD5 mismatch: expected {md5}, got {got} ({length} bytes)")
        os.replace(part, target)
        return length
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(part)
        raise


def _download_file(urls, target: str, md5: str, timeout: float, log) -> None:
    """``target`` from the first of ``urls`` that serves it with the right MD5, or
    ``DownloadError`` listing every URL's fault."""
    faults = []
    for url in urls:
        try:
            length = _fetch_verified(url, target, md5, timeout)
        except (_Failed, OSError, http.client.HTTPException) as err:
            faults.append(f"{url}: {err}")
            continue
        log(f"{os.path.basename(target)}: downloaded from {url} ({length:,} bytes, MD5 {md5} "
            f"verified)")
        return
    raise DownloadError(f"{os.path.basename(target)}: could not download it into "
                        f"{os.path.dirname(target) or '.'} ({'; '.join(faults)}); nothing was "
                        f"written")


def _mirror_fault(mirror) -> str | None:
    """What is wrong with a mirror URL, or ``None``: it must parse, be http(s) and name a
    host (a port, if any, a number)."""
    expected = f"expected an http:// or https:// URL, got {mirror!r}"
    if not isinstance(mirror, str):
        return expected
    try:
        parts = urllib.parse.urlsplit(mirror)
        parts.port                              # a port that is not a number raises here
    except ValueError as err:                   # e.g. "Invalid IPv6 URL" for http://[::1
        return f"{expected} ({err})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return expected
    try:                                        # the host name as a request would encode it
        parts.hostname.encode("idna")
    except UnicodeError as err:                 # e.g. an empty label: http://a..b
        return f"{expected} (its host name: {err})"
    return None


def _data_dir_fault(data_dir: str) -> str | None:
    """What is wrong with a download directory, or ``None``: it must be a directory or not
    exist yet (it is created)."""
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        mode = os.stat(data_dir).st_mode
        kind = next((what for test, what in _FILE_KINDS if test(mode)), "a file")
        return (f"{data_dir!r} is {kind}, not a directory; expected a directory for the IDX "
                f"files (created if missing)")
    return None


def _make_data_dir(data_dir: str) -> None:
    """Create ``data_dir``, or raise ``ValueError`` (it is not a directory) or ``OSError``
    naming it."""
    fault = _data_dir_fault(data_dir)
    if fault is not None:
        raise ValueError(f"the data directory {fault}")
    try:
        os.makedirs(data_dir, exist_ok=True)
    except OSError as err:
        raise OSError(f"cannot create the data directory {data_dir!r} "
                      f"({err.strerror or err})") from err


def download(name: str, data_dir=None, *, mirror: str | None = None,
             timeout: float = DOWNLOAD_TIMEOUT, log=None) -> dict[str, str]:
    """Download the four ``.gz`` IDX files of ``name`` (``"mnist"`` or ``"fashion-mnist"``, see
    ``SOURCES``) into ``data_dir`` (default ``data/<name>``, created if need be); their paths
    by role, as ``find_idx_files`` returns them.

    Each file comes from the first of its published URLs that serves it (or from
    ``<mirror>/<file>.gz`` alone), is written to a temporary file in ``data_dir``, checked
    against its published MD5, and only then moved into place (``os.replace``): a failed,
    truncated or corrupt download leaves nothing behind and raises ``DownloadError`` naming the
    file, each URL's fault and, for a mismatch, the expected and the got MD5.  A ``mirror``
    that is not an http(s) URL, or a ``data_dir`` that is a file, raises ``ValueError`` before
    anything is written (a ``data_dir`` that cannot be created: ``OSError``).  A ``.gz`` already
    there with the right MD5 is kept; one with another MD5 is replaced once a download
    verifies; an uncompressed copy already there is kept as it is (it cannot be checked).
    ``timeout`` (seconds) bounds every request; ``log`` (e.g. ``print``) receives a line per
    file.  Standard library only (``urllib``).
    """
    if name not in SOURCES:
        raise ValueError(f"no download for the data set {name!r}; expected one of "
                         f"{', '.join(SOURCES)} (the digits ship with scikit-learn)")
    source, log = SOURCES[name], log or (lambda line: None)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not 0 < timeout < math.inf:
        raise ValueError(f"download: timeout must be a positive number of seconds, got "
                         f"{timeout!r}")
    fault = None if mirror is None else _mirror_fault(mirror)
    if fault is not None:
        raise ValueError(f"mirror: {fault}")
    urls = source.urls if mirror is None else (mirror.rstrip("/") + "/",)
    data_dir = os.path.join("data", name) if data_dir is None else os.fspath(data_dir)
    _make_data_dir(data_dir)
    for stem in IDX_FILES.values():     # every name checked before anything is downloaded
        raw = os.path.join(data_dir, stem)
        if os.path.lexists(raw) and not os.path.lexists(raw + ".gz"):
            fault = _not_regular(raw, os.stat(raw).st_mode) if os.path.exists(raw) else \
                ValueError(f"{raw}: is a link to {os.path.realpath(raw)}, which does not exist")
            if fault is not None:       # a dangling link or a directory is no copy to keep
                raise ValueError(f"{fault}; move it away to download {stem}.gz")
    paths = {}
    for role, stem in IDX_FILES.items():
        raw, target = os.path.join(data_dir, stem), os.path.join(data_dir, stem + ".gz")
        md5 = source.md5[stem + ".gz"]
        if os.path.lexists(raw) and not os.path.lexists(target):
            log(f"{stem}: already in {data_dir}, uncompressed (kept, not verified)")
            paths[role] = raw
            continue
        if os.path.isfile(target) and _has_md5(target, md5):
            log(f"{stem}.gz: already in {data_dir}, MD5 {md5} verified")
        else:
            _download_file([base + stem + ".gz" for base in urls], target, md5, timeout, log)
        paths[role] = target
    return paths

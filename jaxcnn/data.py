"""Data sets for ``jaxcnn train``: the bundled 8x8 digits, and MNIST-style IDX files.

Every loader returns a ``Dataset`` of ``NHWC`` float32 images in ``[0, 1]`` and int32 labels,
checked once here, at the boundary, so that training never starts on bad data:

- ``load_digits()``: scikit-learn's 1,797 handwritten digits (8x8, shipped inside scikit-learn,
  no download) with a fixed stratified 80/20 train/test split;
- ``load_idx_dataset(data_dir)``: the four standard IDX files of MNIST or Fashion-MNIST
  (``train-images-idx3-ubyte`` ... , gzipped or not), as published by LeCun et al. and Zalando;
- ``read_idx(path)``: one IDX file as a numpy array.

scikit-learn is imported only when the digits are loaded (it is in the ``train`` extra).
"""
from __future__ import annotations

import gzip
import os
from typing import NamedTuple

import numpy as np

__all__ = [
    "DATASETS", "IDX_FILES", "Dataset", "check_arrays", "load", "load_digits",
    "load_idx_dataset", "read_idx", "find_idx_files", "write_idx",
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


def check_arrays(images, labels, num_classes: int, what: str = "data") -> None:
    """Raise ``ValueError``/``TypeError`` unless ``images (N, H, W, C)`` (finite floats) and
    ``labels (N,)`` (integers in ``[0, num_classes)``) go together.  Runs on concrete arrays,
    not under ``jit``."""
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) != 4:
        got = f"a {type(images).__name__}" if shape is None else f"shape {tuple(shape)}"
        raise ValueError(f"{what}: images must have rank 4 (N, H, W, C), got {got}")
    if not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"{what}: images must be floating point (cast with .astype(np.float32)), "
                        f"got dtype {images.dtype}")
    finite = np.isfinite(images)
    if not finite.all():
        bad = int(np.flatnonzero(~finite.reshape(shape[0], -1).all(axis=1))[0])
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

def read_idx(path) -> np.ndarray:
    """Read one IDX file (gzipped or raw; detected from its first bytes, not its name).

    The format: two zero bytes, a type code (0x08 ubyte, 0x09 byte, 0x0B short, 0x0C int,
    0x0D float, 0x0E double), the number of dimensions ``d``, ``d`` big-endian uint32 sizes,
    then the data in C order.  Returns an array of that shape in native byte order.  Raises
    ``ValueError`` naming the file and the fault for a corrupt header or a size mismatch.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise ValueError(f"{path}: not a readable gzip file ({err})") from err
    if len(raw) < 4:
        raise ValueError(f"{path}: corrupt IDX header: the file has {len(raw)} bytes, "
                         f"fewer than the 4 of the magic number")
    zero, code, ndim = raw[0:2], raw[2], raw[3]
    if zero != b"\x00\x00" or code not in _IDX_DTYPES:
        raise ValueError(f"{path}: corrupt IDX header: magic number {raw[:4].hex(' ')}, "
                         f"expected 00 00 <type> <ndim> with type one of "
                         f"{', '.join(f'{c:02x}' for c in _IDX_DTYPES)}")
    if ndim == 0:
        raise ValueError(f"{path}: corrupt IDX header: 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: corrupt IDX header: {ndim} dimensions need a {header}-byte "
                         f"header, the file has {len(raw)} bytes")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: the header says shape {shape} of {dtype.name} "
                         f"({expected} bytes of data) but the file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def find_idx_files(data_dir) -> dict[str, str]:
    """The paths of the four IDX files in ``data_dir``, by role (``x_train``, ...).

    Each may be gzipped (``.gz``) or not.  Raises ``FileNotFoundError`` listing the expected
    names and the directory when any is missing or the directory cannot be read.
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
        for candidate in (name, name + ".gz"):
            if candidate in present:
                found[role] = os.path.join(data_dir, candidate)
                break
        else:
            missing.append(name)
    if missing:
        what = "is empty" if not present else f"lacks {', '.join(f'{m}[.gz]' for m in missing)}"
        raise FileNotFoundError(
            f"the data directory {os.path.abspath(data_dir)!r} {what}; an MNIST-style data set "
            f"needs the four IDX files {expected} (download them from the data set's site, e.g. "
            f"https://github.com/zalandoresearch/fashion-mnist for Fashion-MNIST)")
    return found


def load_idx_dataset(data_dir, name: str = "mnist", num_classes: int = 10) -> Dataset:
    """An MNIST-style data set from its four IDX files in ``data_dir`` (see ``IDX_FILES``).

    Image files must be ``(N, rows, cols)`` unsigned bytes (scaled by 1/255 to ``[0, 1]``) or
    floats (kept as they are); label files ``(N,)`` integers in ``[0, num_classes)``.
    """
    paths = find_idx_files(data_dir)
    arrays = {role: read_idx(path) for role, path in paths.items()}
    for split in ("train", "test"):
        x, y = arrays["x_" + split], arrays["y_" + split]
        px, py = paths["x_" + split], paths["y_" + split]
        if x.ndim != 3:
            raise ValueError(f"{px}: expected images of rank 3 (N, rows, cols), got shape "
                             f"{x.shape}")
        if y.ndim != 1:
            raise ValueError(f"{py}: expected labels of rank 1 (N,), got shape {y.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{py}: expected integer labels, got {y.dtype}")
        if len(x) != len(y):
            raise ValueError(f"{px} holds {len(x)} images but {py} holds {len(y)} labels")
        scale = 255.0 if x.dtype == np.uint8 else 1.0
        arrays["x_" + split] = (x.astype(np.float32) / np.float32(scale))[..., None]
        arrays["y_" + split] = y.astype(np.int32)
        check_arrays(arrays["x_" + split], arrays["y_" + split], num_classes,
                     f"{name} {split} set ({px}, {py})")
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise ValueError(f"{name}: train images are {arrays['x_train'].shape[1:3]} but test "
                         f"images {arrays['x_test'].shape[1:3]}")
    return Dataset(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                   num_classes, name)


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
    data = (bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
            + array.astype(_IDX_DTYPES[code]).tobytes())
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(data)

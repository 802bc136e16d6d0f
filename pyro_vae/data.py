"""Datasets as raw CPU tensors, and the transforms that turn them into model input.

Two stages, kept apart so that seeded or expensive work happens once and per-batch work
happens on the device:

1. :func:`load_data` reads a source (a built-in name from :data:`DATASETS`, or a path to an
   idx folder, a ``.npy`` or a ``.npz`` file) into a :class:`DataSplit` of raw train/test
   tensors. 8-bit data stay ``uint8`` (levels 0..255): a quarter of the bytes to move to the
   device, and the exact levels that binarization and dequantization need. Everything else
   becomes ``float32``.
2. :class:`Preprocess` bundles a binarization mode, the dequantization switch and a seed.
   :meth:`Preprocess.prepare` (:func:`prepare_split`) applies the one-off, seeded transforms
   to a whole split; calling the object on a batch (:func:`batch_transform`) applies the
   per-batch random transforms on the batch's own device with the global torch RNG, so a
   checkpoint that saves and restores the RNG state resumes the same data stream.

Event shapes: images are always ``(C, H, W)`` (an ``(N, H, W)`` array becomes
``(N, 1, H, W)``); flat ``(N, D)`` data keep event shape ``(D,)``.
"""

from __future__ import annotations

import dataclasses
import difflib
import gzip
import math
import operator
import re
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch

from .shapes import make_shapes

DATASETS: Mapping[str, str] = MappingProxyType(
    {
        "shapes": "procedurally generated grey-scale shapes, 1x28x28, embedded (no files needed)",
        "mnist": "MNIST handwritten digits, 1x28x28, official 60k/10k split (torchvision)",
        "fashion-mnist": "Fashion-MNIST clothing, 1x28x28, official 60k/10k split (torchvision)",
        "kmnist": "Kuzushiji-MNIST characters, 1x28x28, official 60k/10k split (torchvision)",
        "cifar10": "CIFAR-10 natural images, 3x32x32, official 50k/10k split (torchvision)",
    }
)
"""Built-in dataset names mapped to one-line descriptions."""

BINARIZE: tuple[str, ...] = ("dynamic", "static", "threshold", "none")
"""Binarization modes understood by :class:`Preprocess`."""

_TORCHVISION_CLASSES = {
    "mnist": "MNIST",
    "fashion-mnist": "FashionMNIST",
    "kmnist": "KMNIST",
    "cifar10": "CIFAR10",
}

# idx type codes (third byte of the magic number); multi-byte types are big-endian.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# Accepts the official names (train-images-idx3-ubyte) and common variants
# (train-images.idx3-ubyte), optionally gzipped; the prefix pairs images with labels.
_IDX_IMAGES_RE = re.compile(r"^(?P<prefix>.*?)[-_.]?images[-_.]idx\d-ubyte(?:\.gz)?$", re.I)
_IDX_LABELS_RE = re.compile(r"^(?P<prefix>.*?)[-_.]?labels[-_.]idx1-ubyte(?:\.gz)?$", re.I)
_NPZ_DATA_KEYS = ("x", "images", "data")
_NPZ_LABEL_KEYS = ("y", "labels")


class DatasetNotFoundError(FileNotFoundError):
    """A built-in dataset's files are missing and downloading was not requested."""


class DataFormatError(ValueError):
    """A data source exists but its contents cannot be used (bad format, shape or values)."""


@dataclass(frozen=True, eq=False, repr=False)
class DataSplit:
    """Train/test arrays on CPU, before any binarization or dequantization.

    :func:`load_data` returns raw splits; :func:`prepare_split` returns a copy with its
    one-off binarization applied.

    :param name: dataset name (a :data:`DATASETS` key, or the source path).
    :param train: training data, ``(N, *event_shape)``, uint8 (8-bit levels 0..255) or float32.
    :param test: test data, ``(M, *event_shape)``, same dtype as ``train``; ``M`` may be 0.
    :param train_labels: optional labels, first dimension ``N`` (int64 classes, or float32
        generating factors for ``shapes``).
    :param test_labels: optional labels, first dimension ``M``.
    :param label_names: optional names of the label columns (the factors of ``shapes``).

    .. warning:: ``event_shape`` is ``(C, H, W)`` for images and ``(D,)`` for flat data;
        other ranks are rejected.
    """

    name: str
    train: torch.Tensor  # (N, *event_shape)
    test: torch.Tensor  # (M, *event_shape)
    train_labels: torch.Tensor | None = None  # (N,) or (N, F)
    test_labels: torch.Tensor | None = None  # (M,) or (M, F)
    label_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for part, x in (("train", self.train), ("test", self.test)):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{part} must be a torch.Tensor, got {type(x).__name__}")
            if x.dtype not in (torch.uint8, torch.float32):
                raise TypeError(f"{part} must be uint8 or float32, got {x.dtype}")
            if x.dim() not in (2, 4):
                raise ValueError(
                    f"{part} must have shape (N, D) or (N, C, H, W), got {tuple(x.shape)}"
                )
        if self.train.device != self.test.device:
            raise ValueError(
                f"{self.name}: train is on {self.train.device} but test on {self.test.device}"
            )
        if self.train.dtype != self.test.dtype:
            raise DataFormatError(
                f"{self.name}: train is {self.train.dtype} but test is {self.test.dtype}; "
                "both splits must share a dtype (8-bit uint8 or float)"
            )
        if self.train.shape[1:] != self.test.shape[1:]:
            raise DataFormatError(
                f"{self.name}: train items have shape {tuple(self.train.shape[1:])} but "
                f"test items have shape {tuple(self.test.shape[1:])}"
            )
        if self.train.shape[0] == 0:
            raise DataFormatError(f"{self.name}: the training split is empty")
        for part, x, y in (
            ("train", self.train, self.train_labels),
            ("test", self.test, self.test_labels),
        ):
            if y is not None and (y.dim() == 0 or y.shape[0] != x.shape[0]):
                raise DataFormatError(
                    f"{self.name}: {part} has {x.shape[0]} items but labels of shape "
                    f"{tuple(y.shape)}"
                )

    @property
    def event_shape(self) -> torch.Size:
        """Shape of one datapoint, e.g. ``(1, 28, 28)`` or ``(D,)``."""
        return self.train.shape[1:]

    @property
    def is_8bit(self) -> bool:
        """Whether the data are 8-bit levels (dtype uint8, values 0..255)."""
        return self.train.dtype == torch.uint8

    def __repr__(self) -> str:
        labels = "yes" if self.train_labels is not None else "no"
        return (
            f"DataSplit(name={self.name!r}, train={tuple(self.train.shape)}, "
            f"test={tuple(self.test.shape)}, dtype={self.train.dtype}, labels={labels})"
        )


# ----------------------------------------------------------------------------- loading


def load_data(
    source: str | Path,
    *,
    data_dir: str | Path = "data",
    test_size: int = 1000,
    seed: int = 0,
    num_shapes: int = 10000,
    download: bool = False,
) -> DataSplit:
    """Load a dataset as a raw :class:`DataSplit`.

    ``source`` is looked up as a built-in name first (case-insensitive), then as a path:

    * ``"shapes"``: :func:`pyro_vae.shapes.make_shapes`, ``num_shapes`` training and
      ``test_size`` test images from independent streams of ``seed`` (so the test set does
      not change with ``num_shapes``); labels are the six generating factors.
    * ``"mnist"``, ``"fashion-mnist"``, ``"kmnist"``, ``"cifar10"``: torchvision datasets
      under ``data_dir`` with their official train/test splits (``test_size`` and ``seed``
      are ignored). MNIST-style raw files may also be left gzipped.
    * a folder of idx files (``*-images-idx3-ubyte`` with optional ``*-labels-idx1-ubyte``,
      raw or ``.gz``): one train and one test (``t10k``/``test``) file keep that split; a
      single images file is split by ``test_size``.
    * a ``.npy`` file, split by ``test_size``.
    * a ``.npz`` file: ``x_train``/``x_test`` (with optional ``y_train``/``y_test``) keep
      that split; otherwise data come from ``x``, ``images``, ``data`` or the first array,
      labels from ``y`` or ``labels``, and the array is split by ``test_size``.

    Arrays may be ``(N, D)``, ``(N, H, W)`` or ``(N, C, H, W)``. ``uint8`` stays 8-bit; other
    integer types must hold 0..255 and become ``uint8``; ``bool`` and floats become
    ``float32`` (any finite values; likelihoods check their support later).

    :param source: dataset name or path.
    :param data_dir: folder for torchvision datasets.
    :param test_size: items held out for testing from sources without their own split.
    :param seed: seed of the held-out permutation (and of ``shapes``).
    :param num_shapes: number of ``shapes`` training images.
    :param download: let torchvision fetch a missing dataset into ``data_dir``; without it
        nothing touches the network.
    :raises DatasetNotFoundError: a torchvision dataset is missing and ``download`` is False.
    :raises DataFormatError: a source holds unusable data (message says what was found).
    :raises ValueError: unknown name, or a ``test_size`` that leaves no training data.
    :raises FileNotFoundError: a path that does not exist.
    """
    test_size = operator.index(test_size)
    if test_size < 0:
        raise ValueError(f"test_size must be >= 0, got {test_size}")
    if isinstance(source, str) and source.strip().lower() in DATASETS:
        name = source.strip().lower()
        if name == "shapes":
            return _load_shapes(num_shapes, test_size, seed)
        return _load_torchvision(name, Path(data_dir).expanduser(), download)

    path = Path(source).expanduser()
    if path.is_dir():
        return _load_idx_folder(path, test_size, seed)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".npy":
            return _load_npy(path, test_size, seed)
        if suffix == ".npz":
            return _load_npz(path, test_size, seed)
        match = _IDX_IMAGES_RE.match(path.name)
        if match:
            return _load_idx_files(str(path), path.parent, {match["prefix"]: path}, test_size, seed)
        raise DataFormatError(
            f"{path}: unsupported file type {suffix or '(none)'}; expected a .npy or .npz "
            "file, or a folder of idx files"
        )
    text = str(source)
    if isinstance(source, Path) or "/" in text or "\\" in text or Path(text).suffix:
        raise FileNotFoundError(f"no such file or folder: {path}")
    valid = sorted(DATASETS)
    message = (
        f"unknown dataset {text!r}; valid choices: {', '.join(valid)} "
        "(or a path to an idx folder, .npy or .npz file)"
    )
    close = difflib.get_close_matches(text.lower(), valid, n=1)
    if close:
        message += f"; did you mean {close[0]!r}?"
    raise ValueError(message)


def read_idx(path: str | Path) -> np.ndarray:
    """Read one idx file (the MNIST format), raw or gzipped.

    :param path: file path; a ``.gz`` suffix means gzip.
    :return: a writable, native-endian array with the dims stored in the header.
    :raises DataFormatError: bad magic number, unknown type code, truncated file or
        trailing bytes, or a corrupt gzip stream.
    """
    path = Path(path)
    if path.name.lower().endswith(".gz"):
        try:
            with gzip.open(path, "rb") as f:
                raw = f.read()
        except (gzip.BadGzipFile, EOFError, zlib.error) as err:
            raise DataFormatError(f"{path}: corrupt or truncated gzip file ({err})") from err
    else:
        raw = path.read_bytes()
    if len(raw) < 4:
        raise DataFormatError(
            f"{path}: truncated idx file: {len(raw)} bytes, shorter than the 4-byte magic number"
        )
    type_code, ndim = raw[2], raw[3]
    if raw[0] != 0 or raw[1] != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        codes = ", ".join(f"0x{c:02X} {d.name}" for c, d in _IDX_DTYPES.items())
        raise DataFormatError(
            f"{path}: not an idx file: magic number 0x{int.from_bytes(raw[:4], 'big'):08X}; "
            f"expected 0x0000TTDD with TT a type code ({codes}) and DD >= 1 the number of "
            "dimensions (0x00000803 for uint8 images, 0x00000801 for uint8 labels)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFormatError(
            f"{path}: truncated idx file: the header needs {header} bytes for {ndim} "
            f"dimensions, the file has {len(raw)}"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_DTYPES[type_code]
    count = math.prod(dims)
    expected = count * dtype.itemsize
    found = len(raw) - header
    if found < expected:
        raise DataFormatError(
            f"{path}: truncated idx file: the header promises shape {dims} of {dtype.name} "
            f"({expected} bytes of data) but only {found} bytes follow"
        )
    if found > expected:
        raise DataFormatError(
            f"{path}: {found - expected} unexpected trailing bytes after the {expected} bytes "
            f"of data promised by the header (shape {dims} of {dtype.name})"
        )
    arr = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)
    # astype copies: the result is writable (torch.from_numpy warns on read-only buffers)
    # and native-endian.
    return arr.astype(dtype.newbyteorder("="))


def _load_shapes(num_shapes: int, test_size: int, seed: int) -> DataSplit:
    num_shapes = operator.index(num_shapes)
    if num_shapes < 1:
        raise ValueError(f"num_shapes must be >= 1, got {num_shapes}")
    # Independent child streams: the test set is the same whatever num_shapes is.
    train_seq, test_seq = np.random.SeedSequence(seed).spawn(2)
    x_train, y_train, names = make_shapes(num_shapes, seed=train_seq)
    x_test, y_test, _ = make_shapes(test_size, seed=test_seq)
    return DataSplit(
        name="shapes",
        train=torch.from_numpy(x_train),
        test=torch.from_numpy(x_test),
        train_labels=torch.from_numpy(y_train),
        test_labels=torch.from_numpy(y_test),
        label_names=tuple(names),
    )


def _load_torchvision(name: str, data_dir: Path, download: bool) -> DataSplit:
    # Imported here: torchvision costs seconds to import and only these sources need it.
    from torchvision import datasets

    cls = getattr(datasets, _TORCHVISION_CLASSES[name])
    try:
        parts = [cls(str(data_dir), train=t, download=False) for t in (True, False)]
    except RuntimeError:
        if download:
            parts = [cls(str(data_dir), train=t, download=True) for t in (True, False)]
        elif name == "cifar10":
            raise DatasetNotFoundError(_missing_cifar_message(cls, data_dir)) from None
        else:
            # torchvision only reads extracted files; accept the .gz files as published.
            return _load_mnist_like_raw(name, cls, data_dir)

    if name == "cifar10":
        # torchvision keeps CIFAR as (N, H, W, C) numpy; the event shape here is (C, H, W).
        xs = [np.ascontiguousarray(p.data.transpose(0, 3, 1, 2)) for p in parts]
        ys = [np.asarray(p.targets, dtype=np.int64) for p in parts]
    else:
        xs = [p.data.numpy() for p in parts]  # (N, 28, 28) uint8
        ys = [p.targets.numpy() for p in parts]
    return _official_split(name, xs[0], ys[0], xs[1], ys[1], what=name)


def _load_mnist_like_raw(name: str, cls: type, data_dir: Path) -> DataSplit:
    raw_dir = data_dir / cls.__name__ / "raw"
    stems = [_strip_gz(filename) for filename, _ in cls.resources]
    found = {}
    for stem in stems:
        for candidate in (raw_dir / stem, raw_dir / f"{stem}.gz"):
            if candidate.is_file():
                found[stem] = candidate
                break
    if len(found) < len(stems):
        raise DatasetNotFoundError(
            f"dataset {name!r} not found: expected the files {', '.join(stems)} "
            f"(raw or gzipped .gz) in the folder {raw_dir.resolve()}/; put them there, "
            "or pass --download (download=True) to fetch them"
        )
    arrays = {stem: read_idx(path) for stem, path in found.items()}
    x_train, y_train, x_test, y_test = (arrays[s] for s in stems)
    return _official_split(name, x_train, y_train, x_test, y_test, what=str(raw_dir))


def _missing_cifar_message(cls: type, data_dir: Path) -> str:
    folder = data_dir / cls.base_folder
    files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    return (
        f"dataset 'cifar10' not found (or corrupted): expected the files {', '.join(files)} "
        f"in the folder {folder.resolve()}/ (the extracted {cls.filename}); put them there, "
        "or pass --download (download=True) to fetch them"
    )


def _strip_gz(filename: str) -> str:
    return filename[:-3] if filename.lower().endswith(".gz") else filename


def _load_idx_folder(folder: Path, test_size: int, seed: int) -> DataSplit:
    images: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        match = _IDX_IMAGES_RE.match(path.name)
        if match and path.is_file():
            prefix = match["prefix"]
            # Prefer the uncompressed copy when both exist: same data, no decompression.
            if prefix not in images or len(path.name) < len(images[prefix].name):
                images[prefix] = path
    if not images:
        present = sorted(p.name for p in folder.iterdir())
        shown = ", ".join(present[:10]) + (", ..." if len(present) > 10 else "")
        raise DataFormatError(
            f"{folder}: no idx image files found (contents: {shown or 'empty'}); expected files "
            "named like 'train-images-idx3-ubyte' or 't10k-images-idx3-ubyte' (optionally "
            ".gz), with matching '*-labels-idx1-ubyte' files for labels"
        )
    return _load_idx_files(str(folder), folder, images, test_size, seed)


def _load_idx_files(
    name: str, folder: Path, images: dict[str, Path], test_size: int, seed: int
) -> DataSplit:
    """Load idx image files keyed by prefix, each with its labels file if present."""
    loaded = {}
    for prefix, image_path in images.items():
        x = read_idx(image_path)
        label_path = _find_idx_labels(folder, prefix)
        y = read_idx(label_path) if label_path is not None else None
        if y is not None and y.shape[0] != x.shape[0]:
            raise DataFormatError(
                f"{label_path}: {y.shape[0]} labels for the {x.shape[0]} images in "
                f"{image_path.name}"
            )
        loaded[prefix] = (x, y, image_path)

    if len(loaded) == 1:
        x, y, image_path = next(iter(loaded.values()))
        return _single_split(name, x, y, test_size, seed, what=str(image_path))
    roles = {_idx_role(prefix): prefix for prefix in loaded}
    if len(loaded) == 2 and set(roles) == {"train", "test"}:
        x_train, y_train, _ = loaded[roles["train"]]
        x_test, y_test, _ = loaded[roles["test"]]
        return _official_split(name, x_train, y_train, x_test, y_test, what=str(folder))
    raise DataFormatError(
        f"{folder}: found {len(loaded)} idx image files "
        f"({', '.join(sorted(p.name for p in images.values()))}); expected one (split by "
        "test_size) or exactly one 'train-*' and one 't10k-*'/'test-*' file"
    )


def _find_idx_labels(folder: Path, prefix: str) -> Path | None:
    best = None
    for path in sorted(folder.iterdir()):
        match = _IDX_LABELS_RE.match(path.name)
        if match and match["prefix"] == prefix and path.is_file():
            if best is None or len(path.name) < len(best.name):
                best = path
    return best


def _idx_role(prefix: str) -> str:
    low = prefix.lower()
    if low.startswith("train"):
        return "train"
    if low.startswith(("t10k", "test")):
        return "test"
    return "unknown"


def _load_npy(path: Path, test_size: int, seed: int) -> DataSplit:
    try:
        x = np.load(path, allow_pickle=False)
    except ValueError as err:  # object arrays, or not an npy file at all
        raise DataFormatError(f"{path}: cannot read as a numeric .npy array ({err})") from err
    return _single_split(str(path), x, None, test_size, seed, what=str(path))


def _load_npz(path: Path, test_size: int, seed: int) -> DataSplit:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except ValueError as err:
        raise DataFormatError(f"{path}: cannot read as a numeric .npz archive ({err})") from err
    if not arrays:
        raise DataFormatError(f"{path}: the .npz archive holds no arrays")
    if "x_train" in arrays or "x_test" in arrays:
        if "x_train" not in arrays or "x_test" not in arrays:
            raise DataFormatError(
                f"{path}: has {'x_train' if 'x_train' in arrays else 'x_test'} but not "
                f"{'x_test' if 'x_train' in arrays else 'x_train'}; a split archive needs both"
            )
        return _official_split(
            str(path),
            arrays["x_train"],
            arrays.get("y_train"),
            arrays["x_test"],
            arrays.get("y_test"),
            what=str(path),
        )
    data_key = next((k for k in _NPZ_DATA_KEYS if k in arrays), None)
    if data_key is None:
        data_key = next((k for k in arrays if k not in _NPZ_LABEL_KEYS), None)
    if data_key is None:
        raise DataFormatError(
            f"{path}: only label arrays ({', '.join(arrays)}); expected a data array "
            f"({', '.join(_NPZ_DATA_KEYS)} or any other key)"
        )
    label_key = next((k for k in _NPZ_LABEL_KEYS if k in arrays), None)
    y = arrays[label_key] if label_key is not None else None
    return _single_split(
        str(path), arrays[data_key], y, test_size, seed, what=f"{path}[{data_key!r}]"
    )


# ------------------------------------------------------------------- array normalization


def _as_data_array(arr: np.ndarray, what: str) -> np.ndarray:
    """Validate and convert to uint8 or float32 of shape (N, D) or (N, C, H, W)."""
    arr = np.asarray(arr)
    if arr.ndim not in (2, 3, 4):
        raise DataFormatError(
            f"{what}: expected data of shape (N, D), (N, H, W) or (N, C, H, W); found shape "
            f"{arr.shape} ({arr.ndim}-D)"
        )
    if arr.size == 0:
        raise DataFormatError(
            f"{what}: empty data, shape {arr.shape}; need at least one item with at least one "
            "value"
        )
    if arr.ndim == 4 and arr.shape[1] > 4 and arr.shape[-1] in (1, 3, 4):
        # Channels-last is common (Keras, PIL); reading it as (N, C, H, W) would silently
        # train on scrambled images.
        raise DataFormatError(
            f"{what}: shape {arr.shape} looks channels-last (N, H, W, C); expected "
            "(N, C, H, W): transpose with np.transpose(x, (0, 3, 1, 2))"
        )
    kind = arr.dtype.kind
    if arr.dtype == np.uint8:
        out = arr
    elif kind == "b":
        out = arr.astype(np.float32)
    elif kind in "iu":
        low, high = int(arr.min()), int(arr.max())
        if low < 0 or high > 255:
            raise DataFormatError(
                f"{what}: integer data ({arr.dtype}) are read as 8-bit levels and must lie in "
                f"0..255; found values in [{low}, {high}]; convert to float to keep them"
            )
        out = arr.astype(np.uint8)
    elif kind == "f":
        bad = ~np.isfinite(arr)
        num_bad = int(bad.sum())
        if num_bad:
            first = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), arr.shape))
            raise DataFormatError(
                f"{what}: data must be finite; found {num_bad} NaN/inf value"
                f"{'s' if num_bad > 1 else ''} (first at index {first})"
            )
        limit = float(np.finfo(np.float32).max)
        if arr.dtype.itemsize > 4 and float(np.abs(arr).max()) > limit:
            raise DataFormatError(
                f"{what}: values up to {float(np.abs(arr).max()):.3g} in magnitude overflow "
                f"float32 (max {limit:.3g})"
            )
        out = arr.astype(np.float32, copy=False)
    else:
        raise DataFormatError(
            f"{what}: unsupported dtype {arr.dtype}; expected uint8, another integer type "
            "with values 0..255, bool or float"
        )
    if out.ndim == 3:
        out = out[:, None]  # (N, 1, H, W)
    return out


def _as_label_array(y: np.ndarray, n: int, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 0 or y.shape[0] != n:
        raise DataFormatError(f"{what}: labels of shape {y.shape} for {n} items")
    if y.dtype.kind in "biu":
        return y.astype(np.int64)
    if y.dtype.kind == "f":
        return y.astype(np.float32)
    raise DataFormatError(f"{what}: unsupported label dtype {y.dtype}; expected integers or floats")


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(arr)


def _single_split(
    name: str, x: np.ndarray, y: np.ndarray | None, test_size: int, seed: int, what: str
) -> DataSplit:
    x = _as_data_array(x, what)
    n = x.shape[0]
    labels = _as_label_array(y, n, what) if y is not None else None
    if test_size >= n:
        raise ValueError(
            f"{what}: test_size={test_size} leaves no training data: the source holds only "
            f"{n} items; use test_size < {n}"
        )
    perm = np.random.default_rng(seed).permutation(n)
    # Sorted indices keep the source order within each split; the draw itself is seeded.
    test_idx = np.sort(perm[:test_size])
    train_idx = np.sort(perm[test_size:])
    return DataSplit(
        name=name,
        train=_to_tensor(x[train_idx]),
        test=_to_tensor(x[test_idx]),
        train_labels=_to_tensor(labels[train_idx]) if labels is not None else None,
        test_labels=_to_tensor(labels[test_idx]) if labels is not None else None,
    )


def _official_split(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray | None,
    x_test: np.ndarray,
    y_test: np.ndarray | None,
    what: str,
) -> DataSplit:
    x_train = _as_data_array(x_train, f"{what} (train)")
    x_test = _as_data_array(x_test, f"{what} (test)")
    if y_train is not None:
        y_train = _as_label_array(y_train, x_train.shape[0], f"{what} (train)")
    if y_test is not None:
        y_test = _as_label_array(y_test, x_test.shape[0], f"{what} (test)")
    return DataSplit(
        name=name,
        train=_to_tensor(x_train),
        test=_to_tensor(x_test),
        train_labels=_to_tensor(y_train) if y_train is not None else None,
        test_labels=_to_tensor(y_test) if y_test is not None else None,
    )


# ----------------------------------------------------------------------- preprocessing


def _check_modes(binarize: str, dequantize: bool) -> None:
    if binarize not in BINARIZE:
        raise ValueError(
            f"unknown binarize mode {binarize!r}; valid choices: {', '.join(BINARIZE)}"
        )
    if dequantize and binarize != "none":
        raise ValueError(
            f"dequantize=True needs binarize='none' (got {binarize!r}): dequantization spreads "
            "8-bit levels over [0, 1) for continuous likelihoods; binarized data are discrete"
        )


def _check_probabilities(split: DataSplit, binarize: str) -> None:
    for part, x in (("train", split.train), ("test", split.test)):
        if x.numel() == 0:
            continue
        low, high = float(x.min()), float(x.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"binarize={binarize!r} reads float data as probabilities in [0, 1], but "
                f"{split.name} {part} values span [{low:.4g}, {high:.4g}]"
            )


def _bernoulli(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    probs = x.to(torch.float32) / 255.0 if x.dtype == torch.uint8 else x.to(torch.float32)
    return torch.bernoulli(probs, generator=generator)


def _threshold(x: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.uint8:
        return x > 127  # k / 255 > 0.5 exactly when k >= 128; integer compare avoids rounding
    return x > 0.5


def prepare_split(
    split: DataSplit, *, binarize: str, dequantize: bool = False, seed: int = 0
) -> DataSplit:
    """Apply the one-off, seeded transforms to a whole split.

    * ``'static'``: one draw ``x ~ Bernoulli(k / 255)`` (or ``Bernoulli(x)`` for float data)
      from a :class:`torch.Generator` seeded with ``seed``, for the test split first and then
      the training split; both become float32 0/1 and stay fixed for every epoch.
    * ``'dynamic'``: the test split gets the same seeded draw as under ``'static'`` (so test
      ELBOs are comparable across epochs and with static runs); the training split is left
      as is for a fresh draw per batch in :func:`batch_transform`. For 8-bit data the fixed
      test draw is stored as the levels 0 and 255, so both splits stay uint8 (one dtype per
      split, a quarter of the memory) and every mode of :func:`batch_transform` maps it to
      exactly 0/1 (``Bernoulli(0) = 0``, ``Bernoulli(1) = 1``).
    * ``'threshold'``: ``k / 255 > 0.5`` (``x > 0.5`` for float data) as float32 0/1.
    * ``'none'``: unchanged.

    :param split: raw split from :func:`load_data`.
    :param binarize: one of :data:`BINARIZE`.
    :param dequantize: whether batches will be dequantized; validated here only (needs
        8-bit data and ``binarize='none'``).
    :param seed: seed of the static draw.
    :return: a new :class:`DataSplit` (labels and name kept).

    .. warning:: binarizing float data reads them as probabilities, so they must lie in
        ``[0, 1]``.
    """
    _check_modes(binarize, dequantize)
    if dequantize and not split.is_8bit:
        raise ValueError(
            f"dequantize=True needs 8-bit (uint8) data, but {split.name} holds "
            f"{split.train.dtype} values that are already continuous"
        )
    if binarize == "none":
        return split
    if not split.is_8bit:
        _check_probabilities(split, binarize)
    if binarize == "threshold":
        train = _threshold(split.train).to(torch.float32)
        test = _threshold(split.test).to(torch.float32)
    else:
        generator = torch.Generator(device=split.train.device).manual_seed(seed)
        test = _bernoulli(split.test, generator)
        if binarize == "static":
            train = _bernoulli(split.train, generator)
        else:
            train = split.train
            if split.is_8bit:
                test = (test * 255).to(torch.uint8)
    return dataclasses.replace(split, train=train, test=test)


def batch_transform(
    x: torch.Tensor,
    *,
    binarize: str,
    dequantize: bool = False,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Map a batch of a prepared split into model space, on the batch's device.

    Move the raw (uint8) batch to the device first; this runs there. uint8 batches:

    * ``'dynamic'``: a fresh ``Bernoulli(k / 255)`` draw from the global torch RNG, in
      training and evaluation alike (a statically binarized test split arrives as float);
    * ``'threshold'``: ``k >= 128`` as 0/1;
    * ``'static'``: an error, since the static draw belongs to :func:`prepare_split`;
    * ``'none'`` with ``dequantize``: ``(k + u) / 256``, ``u ~ U[0, 1)`` from the global torch
      RNG in training and evaluation alike (a fixed ``u`` would void the bits/dim bound),
      clamped below ``(k + 1) / 256`` so rounding cannot reach the next level;
    * ``'none'``: ``k / 255``.

    A test split that :func:`prepare_split` binarized under ``'dynamic'`` holds only the
    levels 0 and 255 (or the floats 0 and 1), so its fresh draw is the fixed draw.

    Float batches: ``'dynamic'`` draws ``Bernoulli(x)`` (identity on 0/1 data),
    ``'threshold'`` gives ``x > 0.5`` (idempotent), ``'static'`` and ``'none'`` return ``x``.

    :param x: batch ``(B, *event_shape)``, uint8 or float.
    :param binarize: one of :data:`BINARIZE`.
    :param dequantize: uniform dequantization of 8-bit data (``binarize='none'`` only).
    :param dtype: floating dtype of the result.
    :return: ``(B, *event_shape)`` tensor of ``dtype`` on ``x.device``.
    """
    _check_modes(binarize, dequantize)
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating type, got {dtype}")
    # Draw probabilities in at least float32 so low-precision outputs do not bias them.
    work = torch.promote_types(dtype, torch.float32)
    if x.dtype == torch.uint8:
        if binarize == "dynamic":
            return torch.bernoulli(x.to(work) / 255.0).to(dtype)
        if binarize == "threshold":
            return _threshold(x).to(dtype)
        if binarize == "static":
            raise ValueError(
                "binarize='static' is drawn once by prepare_split, but this batch is still "
                "8-bit; pass batches of the prepared split"
            )
        if dequantize:
            levels = x.to(dtype)  # (B, *event_shape)
            u = torch.rand(x.shape, dtype=dtype, device=x.device)  # (B, *event_shape)
            zero = torch.zeros((), dtype=dtype, device=x.device)
            upper = torch.nextafter((levels + 1.0) / 256.0, zero)
            return torch.minimum((levels + u) / 256.0, upper)
        return x.to(dtype) / 255.0
    if not x.dtype.is_floating_point:
        raise TypeError(f"expected a uint8 or floating batch, got {x.dtype}")
    if dequantize:
        raise ValueError(
            "dequantize=True needs 8-bit (uint8) batches; float data are already continuous"
        )
    if binarize == "dynamic":
        return torch.bernoulli(x.to(work)).to(dtype)
    if binarize == "threshold":
        return _threshold(x).to(dtype)
    return x.to(dtype)


@dataclass(frozen=True)
class Preprocess:
    """How raw data become model input: binarization mode, dequantization and seed.

    :param binarize: one of :data:`BINARIZE` (see :func:`prepare_split` and
        :func:`batch_transform` for what each does).
    :param dequantize: uniform dequantization of 8-bit data, for continuous likelihoods;
        requires ``binarize='none'``.
    :param seed: seed of the one-off static draw in :meth:`prepare`.

    Usage: ``split = pre.prepare(load_data(...))`` once, then ``x = pre(batch.to(device))``
    for every batch.
    """

    binarize: str = "none"
    dequantize: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        _check_modes(self.binarize, self.dequantize)

    def prepare(self, split: DataSplit) -> DataSplit:
        """Apply the one-off transforms; see :func:`prepare_split`."""
        return prepare_split(
            split, binarize=self.binarize, dequantize=self.dequantize, seed=self.seed
        )

    def __call__(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Transform one batch; see :func:`batch_transform`."""
        return batch_transform(x, binarize=self.binarize, dequantize=self.dequantize, dtype=dtype)

"""Datasets as raw CPU tensors: built-in names and paths.

:func:`load_data` reads a source (a built-in name from :data:`DATASETS`, or a path to an idx
folder, a ``.npy`` or a ``.npz`` file) into a :class:`~pyro_vae.data.DataSplit` of raw
train/test tensors. 8-bit data stay ``uint8`` (levels 0..255): a quarter of the bytes to move
to the device, and the exact levels that binarization and dequantization need. Everything else
becomes ``float32``.

Event shapes: images are always ``(C, H, W)`` (an ``(N, H, W)`` array becomes
``(N, 1, H, W)``); flat ``(N, D)`` data keep event shape ``(D,)``.
"""

from __future__ import annotations

import operator
import zipfile
from pathlib import Path

import numpy as np
import torch

from pyro_vae.data.arrays import (
    DataFormatError,
    DataSplit,
    official_split,
    orient,
    single_split,
)
from pyro_vae.data.idx import IDX_IMAGES_RE, load_idx_files, load_idx_folder, read_idx
from pyro_vae.data.shapes import make_shapes
from pyro_vae.registry import Registry, UnknownNameError

#: Built-in dataset names, each with a one-line description.
DATASETS: Registry[str] = Registry("dataset", hint="or a path to an idx folder, .npy or .npz file")
for _name, _description in {
    "shapes": "procedurally generated grey-scale shapes, 1x28x28, embedded (no files needed)",
    "mnist": "MNIST handwritten digits, 1x28x28, official 60k/10k split (torchvision)",
    "fashion-mnist": "Fashion-MNIST clothing, 1x28x28, official 60k/10k split (torchvision)",
    "kmnist": "Kuzushiji-MNIST characters, 1x28x28, official 60k/10k split (torchvision)",
    "cifar10": "CIFAR-10 natural images, 3x32x32, official 50k/10k split (torchvision)",
}.items():
    DATASETS.add(_name, _description)

_TORCHVISION_CLASSES = {
    "mnist": "MNIST",
    "fashion-mnist": "FashionMNIST",
    "kmnist": "KMNIST",
    "cifar10": "CIFAR10",
}
_NPZ_DATA_KEYS = ("x", "images", "data")
_NPZ_LABEL_KEYS = ("y", "labels")


class DatasetNotFoundError(FileNotFoundError):
    """A built-in dataset's files are missing and downloading was not requested."""


def canonical_source(source: str) -> str:
    """A built-in dataset's name as it is; a path as the absolute path it resolves to, so that
    a run records its data by a name that means the same from any folder."""
    if source.strip().lower() in DATASETS:
        return source
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else source


def load_data(
    source: str | Path,
    *,
    data_dir: str | Path = "data",
    test_size: int = 1000,
    seed: int = 0,
    num_shapes: int = 10000,
    download: bool = False,
    layout: str = "auto",
) -> DataSplit:
    """Load a dataset as a raw :class:`DataSplit`.

    ``source`` is looked up as a built-in name first (case-insensitive), then as a path:

    * ``"shapes"``: :func:`pyro_vae.data.shapes.make_shapes`, ``num_shapes`` training and
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
    :param layout: how a 4-D array of a ``.npy`` or ``.npz`` file is read (see
        :data:`~pyro_vae.data.arrays.LAYOUTS` and :func:`~pyro_vae.data.arrays.orient`).
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
        return load_idx_folder(path, test_size, seed)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".npy":
            return _load_npy(path, test_size, seed, layout)
        if suffix == ".npz":
            return _load_npz(path, test_size, seed, layout)
        match = IDX_IMAGES_RE.match(path.name)
        if match:
            return load_idx_files(str(path), path.parent, {match["prefix"]: path}, test_size, seed)
        raise DataFormatError(
            f"{path}: unsupported file type {suffix or '(none)'}; expected a .npy or .npz "
            "file, or a folder of idx files"
        )
    text = str(source)
    if isinstance(source, Path) or "/" in text or "\\" in text or Path(text).suffix:
        raise FileNotFoundError(f"no such file or folder: {path}")
    raise UnknownNameError(DATASETS.unknown_message(text))


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
    return official_split(name, xs[0], ys[0], xs[1], ys[1], what=name)


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
    return official_split(name, x_train, y_train, x_test, y_test, what=str(raw_dir))


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


def _unreadable(path: Path, kind: str, err: Exception) -> DataFormatError:
    """The one message for a file numpy cannot read (never numpy's own advice to unpickle)."""
    with open(path, "rb") as f:
        head = f.read(6)
    if not head:
        why = "the file is empty (0 bytes)"
    elif head == b"\x93NUMPY" and ("pickled" in str(err) or "allow_pickle" in str(err)):
        why = (
            "it holds pickled Python objects, which pyro-vae never loads (unpickling can run "
            "code); save a numeric array with numpy.save"
        )
    else:
        why = f"it is truncated, damaged, or not a {kind} file (numpy.save writes one)"
    return DataFormatError(f"{path} is not a valid {kind} array file: {why}")


def _load_npy(path: Path, test_size: int, seed: int, layout: str) -> DataSplit:
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as err:  # object arrays, or not an npy file at all
        raise _unreadable(path, ".npy", err) from err
    if not isinstance(x, np.ndarray):
        raise DataFormatError(f"{path} is a .npz archive named .npy; rename it to .npz")
    x = orient(x, layout, str(path))
    return single_split(str(path), x, None, test_size, seed, what=str(path))


def _load_npz(path: Path, test_size: int, seed: int, layout: str) -> DataSplit:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (ValueError, EOFError, OSError, zipfile.BadZipFile) as err:
        raise _unreadable(path, ".npz", err) from err
    if not arrays:
        raise DataFormatError(f"{path}: the .npz archive holds no arrays")
    if "x_train" in arrays or "x_test" in arrays:
        if "x_train" not in arrays or "x_test" not in arrays:
            raise DataFormatError(
                f"{path}: has {'x_train' if 'x_train' in arrays else 'x_test'} but not "
                f"{'x_test' if 'x_train' in arrays else 'x_train'}; a split archive needs both"
            )
        return official_split(
            str(path),
            orient(arrays["x_train"], layout, f"{path}['x_train']"),
            arrays.get("y_train"),
            orient(arrays["x_test"], layout, f"{path}['x_test']"),
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
    what = f"{path}[{data_key!r}]"
    x = orient(arrays[data_key], layout, what)
    return single_split(str(path), x, y, test_size, seed, what=what)

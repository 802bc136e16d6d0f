"""The idx format of MNIST and its kin: one file, or a folder of image and label files.

:func:`read_idx` reads one file (raw or gzipped); :func:`load_idx_folder` pairs the image files
of a folder with their label files and keeps a train/test split when the folder has one.
"""

from __future__ import annotations

import gzip
import math
import re
import struct
import zlib
from pathlib import Path

import numpy as np

from pyro_vae.data.arrays import DataFormatError, DataSplit, official_split, single_split

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
IDX_IMAGES_RE = re.compile(r"^(?P<prefix>.*?)[-_.]?images[-_.]idx\d-ubyte(?:\.gz)?$", re.I)
_IDX_LABELS_RE = re.compile(r"^(?P<prefix>.*?)[-_.]?labels[-_.]idx1-ubyte(?:\.gz)?$", re.I)


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


def load_idx_folder(folder: Path, test_size: int, seed: int) -> DataSplit:
    images: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        match = IDX_IMAGES_RE.match(path.name)
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
    return load_idx_files(str(folder), folder, images, test_size, seed)


def load_idx_files(
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
        return single_split(name, x, y, test_size, seed, what=str(image_path))
    roles = {_idx_role(prefix): prefix for prefix in loaded}
    if len(loaded) == 2 and set(roles) == {"train", "test"}:
        x_train, y_train, _ = loaded[roles["train"]]
        x_test, y_test, _ = loaded[roles["test"]]
        return official_split(name, x_train, y_train, x_test, y_test, what=str(folder))
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

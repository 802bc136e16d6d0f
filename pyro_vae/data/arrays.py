"""Arrays as the loaders hold them: validated, converted, and split into train and test.

Every source ends here: :func:`as_data_array` turns an array into ``uint8`` (8-bit levels)
or ``float32`` of shape ``(N, D)`` or ``(N, C, H, W)``, refusing anything else with a message
that says what was found; :func:`single_split` holds out a seeded subset of one array and
:func:`official_split` keeps a source's own split; both return a :class:`DataSplit`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from pyro_vae.registry import Registry


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

    def fingerprint(self) -> str:
        """A SHA-256 of every array of the split (dtype, shape and bytes, labels included): a
        run records it, and a resumed run or an evaluation on other data is refused. About
        0.1 s for MNIST."""
        digest = hashlib.sha256()
        for t in (self.train, self.test, self.train_labels, self.test_labels):
            if t is None:
                digest.update(b"none")
                continue
            t = t.detach().cpu().contiguous()
            digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return digest.hexdigest()[:32]

    def __repr__(self) -> str:
        labels = "yes" if self.train_labels is not None else "no"
        return (
            f"DataSplit(name={self.name!r}, train={tuple(self.train.shape)}, "
            f"test={tuple(self.test.shape)}, dtype={self.train.dtype}, labels={labels})"
        )


#: how a 4-D array's axes are read: ``(N, C, H, W)`` or ``(N, H, W, C)``; ``auto`` reads the
#: first where the shape leaves no doubt and refuses a shape that fits both
LAYOUTS: Registry[None] = Registry.of("layout", ("auto", "channels-first", "channels-last"))
_CHANNELS = (1, 3, 4)  # grey, RGB, RGBA


def orient(arr: np.ndarray, layout: str, what: str) -> np.ndarray:
    """A 4-D image array as ``(N, C, H, W)``, its layout read as ``layout`` says; other ranks
    unchanged.

    :raises DataFormatError: with ``auto``, a shape that reads both ways (``(N, 4, 4, 3)``: 4
        channels of 4x3, or 3 channels of 4x4) or plainly channels-last; the message names
        ``--layout``.
    """
    LAYOUTS.check(layout)
    if np.ndim(arr) != 4 or layout == "channels-first":
        return arr
    if layout == "channels-last":
        return np.transpose(arr, (0, 3, 1, 2))
    # a reading is plausible if its channel count is one of 1, 3, 4 and its images are more
    # than one pixel across: (N, 1, 4, 4) is one grey channel, not 1x4 images of 4 channels
    first = arr.shape[1] in _CHANNELS and arr.shape[3] > 1
    last = arr.shape[3] in _CHANNELS and arr.shape[1] > 1
    if first and last:
        raise DataFormatError(
            f"{what}: shape {arr.shape} reads as {arr.shape[1]} channels of "
            f"{arr.shape[2]}x{arr.shape[3]} (N, C, H, W) or as {arr.shape[3]} channels of "
            f"{arr.shape[1]}x{arr.shape[2]} (N, H, W, C); say which with --layout "
            f"channels-first or --layout channels-last"
        )
    if last:
        raise DataFormatError(
            f"{what}: shape {arr.shape} looks channels-last (N, H, W, C); expected "
            f"(N, C, H, W): give --layout channels-last to read it so, or transpose with "
            f"np.transpose(x, (0, 3, 1, 2))"
        )
    return arr


def as_data_array(arr: np.ndarray, what: str) -> np.ndarray:
    """Validate and convert to uint8 or float32 of shape (N, D) or (N, C, H, W).

    :param what: names the source in error messages.
    :raises DataFormatError: a bad shape or dtype, NaN/inf, integers outside 0..255, an
        empty array, or a channels-last layout.
    """
    arr = np.asarray(arr)
    if arr.ndim not in (2, 3, 4):
        raise DataFormatError(
            f"{what}: expected data of shape (N, D), (N, H, W) or (N, C, H, W); found shape "
            f"{arr.shape} ({arr.ndim}-D)"
        )
    if arr.size == 0:
        raise DataFormatError(
            f"{what}: empty data, shape {arr.shape}; need at least one item with at least one value"
        )
    if arr.ndim == 4 and arr.shape[1] > 4 and arr.shape[-1] in _CHANNELS:
        # channels-last is common (Keras, PIL): reading it as (N, C, H, W) would silently
        # train on scrambled images (the file loaders read --layout first, see orient)
        raise DataFormatError(
            f"{what}: shape {arr.shape} looks channels-last (N, H, W, C); expected "
            "(N, C, H, W): transpose with np.transpose(x, (0, 3, 1, 2)), or give a file "
            "--layout channels-last"
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


def as_label_array(y: np.ndarray, n: int, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 0 or y.shape[0] != n:
        raise DataFormatError(f"{what}: labels of shape {y.shape} for {n} items")
    if y.dtype.kind in "biu":
        return y.astype(np.int64)
    if y.dtype.kind == "f":
        return y.astype(np.float32)
    raise DataFormatError(f"{what}: unsupported label dtype {y.dtype}; expected integers or floats")


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(arr)


def single_split(
    name: str, x: np.ndarray, y: np.ndarray | None, test_size: int, seed: int, what: str
) -> DataSplit:
    x = as_data_array(x, what)
    n = x.shape[0]
    labels = as_label_array(y, n, what) if y is not None else None
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
        train=to_tensor(x[train_idx]),
        test=to_tensor(x[test_idx]),
        train_labels=to_tensor(labels[train_idx]) if labels is not None else None,
        test_labels=to_tensor(labels[test_idx]) if labels is not None else None,
    )


def official_split(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray | None,
    x_test: np.ndarray,
    y_test: np.ndarray | None,
    what: str,
) -> DataSplit:
    x_train = as_data_array(x_train, f"{what} (train)")
    x_test = as_data_array(x_test, f"{what} (test)")
    if y_train is not None:
        y_train = as_label_array(y_train, x_train.shape[0], f"{what} (train)")
    if y_test is not None:
        y_test = as_label_array(y_test, x_test.shape[0], f"{what} (test)")
    return DataSplit(
        name=name,
        train=to_tensor(x_train),
        test=to_tensor(x_test),
        train_labels=to_tensor(y_train) if y_train is not None else None,
        test_labels=to_tensor(y_test) if y_test is not None else None,
    )


def as_loaded(x, what: str = "the data") -> torch.Tensor:
    """``x`` (an array or a tensor) as :func:`~pyro_vae.data.load_data` would hold it: uint8
    or float32, ``(N, D)`` or ``(N, C, H, W)``, on the CPU; the loader's errors for anything
    else (a tensor takes the same checks as an array, no fast path)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return to_tensor(as_data_array(x, what))

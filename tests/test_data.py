"""Tests for :mod:`pyro_vae.data` (with :mod:`pyro_vae.data.shapes`): loading, validation,
preprocessing.

Everything runs offline on tiny fixtures written into ``tmp_path``; the real MNIST test
file is used when the shared data folder is present.
"""

from __future__ import annotations

import gzip
import math
import socket
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pyro_vae.data import (
    BINARIZE,
    DATASETS,
    DataFormatError,
    DatasetNotFoundError,
    DataSplit,
    Preprocess,
    batch_transform,
    load_data,
    prepare_split,
    read_idx,
)
from pyro_vae.data import shapes as shapes_module
from pyro_vae.data.shapes import FACTOR_NAMES, SHAPE_CLASSES, make_shapes

MNIST_T10K = Path(__file__).resolve().parents[2] / "shared/data/mnist-t10k"

_IDX_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(np.int16): 0x0B,
    np.dtype(np.int32): 0x0C,
    np.dtype(np.float32): 0x0D,
    np.dtype(np.float64): 0x0E,
}


def idx_bytes(arr: np.ndarray) -> bytes:
    """Encode an array in the idx format: magic, big-endian dims, big-endian data."""
    arr = np.asarray(arr)
    header = bytes([0, 0, _IDX_CODES[arr.dtype], arr.ndim]) + struct.pack(
        f">{arr.ndim}I", *arr.shape
    )
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, arr: np.ndarray) -> Path:
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


@pytest.fixture
def no_network(monkeypatch):
    """Fail loudly if anything tries to open a connection."""

    def refuse(*args, **kwargs):
        raise AssertionError("test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def random_images(rng: np.random.Generator, n: int, h: int = 5, w: int = 4) -> np.ndarray:
    return rng.integers(0, 256, size=(n, h, w), dtype=np.uint8)


def write_idx_split(folder, suffix, n_train, n_test, *hw):
    """MNIST-named train/t10k image and label idx files in ``folder``; returns the arrays."""
    rng = np.random.default_rng(0)
    x_train, x_test = random_images(rng, n_train, *hw), random_images(rng, n_test, *hw)
    y_train = rng.integers(0, 10, n_train, dtype=np.uint8)
    y_test = rng.integers(0, 10, n_test, dtype=np.uint8)
    for prefix, x, y in (("train", x_train, y_train), ("t10k", x_test, y_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", x)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", y)
    return x_train, y_train, x_test, y_test


# ----------------------------------------------------------------------------- shapes


def test_make_shapes_is_deterministic_for_a_seed():
    x1, y1, names1 = make_shapes(300, seed=7)
    x2, y2, names2 = make_shapes(300, seed=7)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert names1 == names2
    x3, y3, _ = make_shapes(300, seed=8)
    assert not np.array_equal(x1, x3)
    assert not np.array_equal(y1, y3)


def test_make_shapes_does_not_depend_on_render_chunking(monkeypatch):
    x_default, y_default, _ = make_shapes(150, seed=1)
    monkeypatch.setattr(shapes_module, "_CHUNK", 7)
    x_small, y_small, _ = make_shapes(150, seed=1)
    np.testing.assert_array_equal(x_default, x_small)
    np.testing.assert_array_equal(y_default, y_small)


def test_make_shapes_content():
    n, size = 1000, 28
    x, y, names = make_shapes(n, seed=0, size=size)
    assert x.dtype == np.uint8 and x.shape == (n, 1, size, size)
    assert y.dtype == np.float32 and y.shape == (n, len(FACTOR_NAMES))
    assert names == list(FACTOR_NAMES) == ["class", "x", "y", "scale", "rotation"]
    # Every class is present and labels lie in their documented ranges.
    cls = y[:, 0]
    np.testing.assert_array_equal(np.unique(cls), np.arange(len(SHAPE_CLASSES)))
    assert np.all((y[:, 1:3] >= 0) & (y[:, 1:3] <= 1))
    assert np.all((y[:, 3] >= 0.6) & (y[:, 3] <= 1))
    assert np.all((y[:, 4] >= 0) & (y[:, 4] < 2 * math.pi))
    # Shapes stay inside the frame: the one-pixel border is black everywhere.
    border = np.concatenate([x[:, 0, 0, :], x[:, 0, -1, :], x[:, 0, :, 0], x[:, 0, :, -1]], axis=1)
    assert border.max() == 0
    # Bigger shapes cover more pixels.
    area = (x > 0).reshape(n, -1).sum(axis=1)
    assert np.corrcoef(area, y[:, 3])[0, 1] > 0.8


def test_make_shapes_are_white_and_large_enough_to_see():
    """White shapes (a fully covered pixel is 255) with a one-pixel anti-aliased outline, so
    that dynamic binarization keeps the shape: the smallest covers dozens of pixels."""
    n = 1000
    x, y, _ = make_shapes(n, seed=0)
    flat = x.reshape(n, -1).astype(np.float64) / 255
    assert np.all(flat.max(axis=1) == 1.0)  # every shape has fully covered pixels at 255
    # 8-bit grey levels on the one-pixel outline; the inside is fully on
    lit = (flat > 0).sum(axis=1)
    assert np.median((flat == 1).sum(axis=1) / lit) > 0.6
    assert len(np.unique(x)) > 100
    # what a Bernoulli draw keeps: its expected "on" pixels, mostly inside the shape
    on = flat.sum(axis=1)
    assert np.all(on >= 40)
    assert np.all((flat == 1).sum(axis=1) / on > 0.6)
    assert (flat > 0.5).mean() > 0.12  # the old grey, small shapes: 6% of pixels


def test_make_shapes_rotation_turns_the_shape():
    """The rotation factor turns the shape about its centre: the principal axis of an ellipse
    (the one class with a single axis of length) follows the rotation, modulo pi."""
    x, y, _ = make_shapes(3000, seed=4)
    ellipses = y[:, 0] == SHAPE_CLASSES.index("ellipse")
    rows, cols = np.mgrid[0:28, 0:28]
    errors = []
    for image, rotation in zip(x[ellipses, 0].astype(np.float64), y[ellipses, 4]):
        w = image / image.sum()
        u, v = cols - (w * cols).sum(), (w * rows).sum() - rows  # v upward, as the rotation
        cov = [[(w * u * u).sum(), (w * u * v).sum()], [(w * u * v).sum(), (w * v * v).sum()]]
        evals, evecs = np.linalg.eigh(cov)
        angle = math.atan2(evecs[1, 1], evecs[0, 1])  # the longer axis
        errors.append(abs((angle - rotation + math.pi / 2) % math.pi - math.pi / 2))
    assert len(errors) > 400 and np.median(errors) < 0.15


def test_make_shapes_position_factor_moves_the_shape():
    n = 2000
    x, y, _ = make_shapes(n, seed=3)
    mass = x[:, 0].astype(np.float64)
    cols = (mass.sum(axis=1) * np.arange(28)).sum(axis=1) / mass.sum(axis=(1, 2))
    rows = (mass.sum(axis=2) * np.arange(28)).sum(axis=1) / mass.sum(axis=(1, 2))
    assert np.corrcoef(cols, y[:, 1])[0, 1] > 0.9
    assert np.corrcoef(rows, y[:, 2])[0, 1] > 0.9  # y = 0 at the top


def test_make_shapes_is_fast():
    start = time.perf_counter()
    x, _, _ = make_shapes(10000, seed=0)
    elapsed = time.perf_counter() - start
    assert x.shape[0] == 10000
    # Budget is < 2 s on a 2-core CPU; the slack guards against busy CI, not per-pixel loops.
    assert elapsed < 6.0


def test_make_shapes_other_size_and_empty():
    x, y, _ = make_shapes(50, seed=0, size=32)
    assert x.shape == (50, 1, 32, 32)
    assert x[:, 0, 0, :].max() == 0
    x0, y0, _ = make_shapes(0)
    assert x0.shape == (0, 1, 28, 28) and y0.shape == (0, len(FACTOR_NAMES))
    with pytest.raises(ValueError, match="size"):
        make_shapes(3, size=4)


def test_load_shapes_split():
    split = load_data("shapes", num_shapes=300, test_size=50, seed=2)
    assert split.name == "shapes"
    assert split.train.shape == (300, 1, 28, 28) and split.test.shape == (50, 1, 28, 28)
    assert split.is_8bit and split.event_shape == torch.Size([1, 28, 28])
    assert split.train_labels.shape == (300, 5) and split.test_labels.shape == (50, 5)
    assert split.label_names == FACTOR_NAMES
    # The test set is its own stream: it does not change with the training size.
    other = load_data("shapes", num_shapes=100, test_size=50, seed=2)
    assert torch.equal(split.test, other.test)
    assert not torch.equal(split.test, load_data("shapes", num_shapes=100, test_size=50).test)
    assert "shapes" in DATASETS


# -------------------------------------------------------------------------------- idx


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_folder_with_train_and_test_round_trips(tmp_path, suffix):
    x_train, y_train, x_test, y_test = write_idx_split(tmp_path, suffix, 12, 5)

    split = load_data(tmp_path, test_size=3)  # official split: test_size is ignored
    assert split.train.dtype == torch.uint8
    assert split.event_shape == torch.Size([1, 5, 4])
    np.testing.assert_array_equal(split.train[:, 0].numpy(), x_train)
    np.testing.assert_array_equal(split.test[:, 0].numpy(), x_test)
    np.testing.assert_array_equal(split.train_labels.numpy(), y_train)
    np.testing.assert_array_equal(split.test_labels.numpy(), y_test)
    assert split.train_labels.dtype == torch.int64


def test_idx_single_split_keeps_labels_with_their_images(tmp_path):
    rng = np.random.default_rng(1)
    x = random_images(rng, 20)
    labels = np.arange(20, dtype=np.uint8)  # label = original index
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", x)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    split = load_data(str(tmp_path), test_size=6, seed=4)
    assert split.train.shape == (14, 1, 5, 4) and split.test.shape == (6, 1, 5, 4)
    train_idx, test_idx = split.train_labels.numpy(), split.test_labels.numpy()
    assert sorted(np.concatenate([train_idx, test_idx])) == list(range(20))
    np.testing.assert_array_equal(split.train[:, 0].numpy(), x[train_idx])
    np.testing.assert_array_equal(split.test[:, 0].numpy(), x[test_idx])
    # The held-out set is seeded: same seed same split, other seed other split.
    again = load_data(str(tmp_path), test_size=6, seed=4)
    assert torch.equal(again.test_labels, split.test_labels)
    other = load_data(str(tmp_path), test_size=6, seed=5)
    assert not torch.equal(other.test_labels, split.test_labels)
    # A single images file can also be named directly, and labels are optional.
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    direct = load_data(tmp_path / "t10k-images-idx3-ubyte.gz", test_size=6, seed=4)
    assert direct.train_labels is None
    assert torch.equal(direct.test, split.test)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_decodes_big_endian_types(tmp_path, dtype):
    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    out = read_idx(write_idx(tmp_path / "a-images-idx3-ubyte", arr))
    np.testing.assert_array_equal(out, arr)
    assert out.dtype == np.dtype(dtype) and out.flags.writeable


def test_idx_bad_magic_is_a_clear_error(tmp_path):
    data = bytearray(idx_bytes(random_images(np.random.default_rng(0), 3)))
    data[0:4] = b"\x12\x34\x08\x03"
    (tmp_path / "train-images-idx3-ubyte").write_bytes(bytes(data))
    with pytest.raises(DataFormatError, match=r"not an idx file: magic number 0x12340803"):
        load_data(tmp_path)
    data[0:4] = b"\x00\x00\x07\x03"  # unknown type code
    (tmp_path / "train-images-idx3-ubyte").write_bytes(bytes(data))
    with pytest.raises(DataFormatError, match="magic number 0x00000703"):
        load_data(tmp_path)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_truncated_is_a_clear_error(tmp_path, suffix):
    data = idx_bytes(random_images(np.random.default_rng(0), 3))
    path = tmp_path / f"train-images-idx3-ubyte{suffix}"
    path.write_bytes(gzip.compress(data[:-7]) if suffix else data[:-7])
    with pytest.raises(DataFormatError, match=r"truncated idx file.*\(3, 5, 4\).*60 bytes.*53"):
        load_data(tmp_path)
    path.write_bytes(data[:9])  # cut inside the header
    if suffix:
        path.write_bytes(gzip.compress(data)[:-10])  # cut inside the gzip stream
        with pytest.raises(DataFormatError, match="corrupt or truncated gzip"):
            load_data(tmp_path)
    else:
        with pytest.raises(DataFormatError, match="truncated idx file: the header needs 16"):
            load_data(tmp_path)


def test_idx_errors_on_mismatched_labels_and_missing_images(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte", random_images(rng, 4))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(DataFormatError, match="3 labels for the 4 images"):
        load_data(tmp_path, test_size=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataFormatError, match="no idx image files"):
        load_data(empty)


@pytest.mark.skipif(not MNIST_T10K.is_dir(), reason="shared MNIST t10k folder not present")
def test_real_mnist_t10k_folder():
    split = load_data(MNIST_T10K, test_size=1000, seed=0)
    assert split.train.shape == (9000, 1, 28, 28) and split.train.dtype == torch.uint8
    assert split.test.shape == (1000, 1, 28, 28)
    assert int(split.train.max()) == 255 and int(split.train.min()) == 0
    assert split.train_labels.shape == (9000,) and split.test_labels.shape == (1000,)
    assert sorted(split.train_labels.unique().tolist()) == list(range(10))
    assert 0 <= int(split.test_labels.min()) and int(split.test_labels.max()) <= 9


# ---------------------------------------------------------------------- npy and npz


def test_npy_layouts(tmp_path):
    rng = np.random.default_rng(0)
    images = random_images(rng, 10)
    np.save(tmp_path / "a.npy", images)
    split = load_data(tmp_path / "a.npy", test_size=2)
    assert split.is_8bit and split.event_shape == torch.Size([1, 5, 4])
    assert split.train.shape[0] == 8 and split.test.shape[0] == 2
    assert split.train_labels is None

    chw = rng.random((10, 3, 4, 4)).astype(np.float64)
    np.save(tmp_path / "b.npy", chw)
    with pytest.raises(DataFormatError, match="reads as 3 channels of 4x4"):  # or 4 of 3x4
        load_data(str(tmp_path / "b.npy"), test_size=2)
    split = load_data(str(tmp_path / "b.npy"), test_size=2, layout="channels-first")
    assert split.train.dtype == torch.float32 and split.event_shape == torch.Size([3, 4, 4])
    both = torch.cat([split.train, split.test]).numpy()
    assert np.allclose(np.sort(both.ravel()), np.sort(chw.astype(np.float32).ravel()))

    flat = rng.normal(size=(10, 7)).astype(np.float32) * 100  # any finite values
    np.save(tmp_path / "c.npy", flat)
    split = load_data(tmp_path / "c.npy", test_size=0)
    assert split.event_shape == torch.Size([7]) and split.test.shape == (0, 7)
    np.testing.assert_array_equal(split.train.numpy(), flat)

    np.save(tmp_path / "d.npy", rng.random((6, 3)) > 0.5)
    split = load_data(tmp_path / "d.npy", test_size=1)
    assert split.train.dtype == torch.float32
    assert set(torch.cat([split.train, split.test]).unique().tolist()) <= {0.0, 1.0}


def test_npz_with_and_without_split(tmp_path):
    rng = np.random.default_rng(0)
    x_train, x_test = random_images(rng, 8), random_images(rng, 3)
    y_train, y_test = rng.integers(0, 5, 8), rng.integers(0, 5, 3)
    np.savez(tmp_path / "split.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    split = load_data(tmp_path / "split.npz", test_size=100)  # own split: test_size ignored
    np.testing.assert_array_equal(split.train[:, 0].numpy(), x_train)
    np.testing.assert_array_equal(split.test[:, 0].numpy(), x_test)
    np.testing.assert_array_equal(split.train_labels.numpy(), y_train)
    np.testing.assert_array_equal(split.test_labels.numpy(), y_test)

    np.savez(tmp_path / "nolabels.npz", x_train=x_train, x_test=x_test)
    split = load_data(tmp_path / "nolabels.npz")
    assert split.train_labels is None and split.test_labels is None

    labels = np.arange(8)
    np.savez(tmp_path / "images.npz", labels=labels, images=x_train)
    split = load_data(tmp_path / "images.npz", test_size=3, seed=1)
    assert split.train.shape == (5, 1, 5, 4) and split.test.shape == (3, 1, 5, 4)
    np.testing.assert_array_equal(split.test[:, 0].numpy(), x_train[split.test_labels.numpy()])

    np.savez(tmp_path / "first.npz", whatever=x_train.reshape(8, -1))
    split = load_data(tmp_path / "first.npz", test_size=1)
    assert split.event_shape == torch.Size([20])

    np.savez(tmp_path / "half.npz", x_train=x_train)
    with pytest.raises(DataFormatError, match="needs both"):
        load_data(tmp_path / "half.npz")


def test_nan_and_inf_are_rejected_with_count_and_first_index(tmp_path):
    x = np.zeros((4, 3, 5), dtype=np.float32)
    x[1, 2, 3] = np.nan
    x[2, 0, 0] = np.inf
    x[3, 1, 1] = -np.inf
    np.save(tmp_path / "bad.npy", x)
    with pytest.raises(DataFormatError, match=r"3 NaN/inf values \(first at index \(1, 2, 3\)\)"):
        load_data(tmp_path / "bad.npy", test_size=1)


def test_rejects_empty_wrong_rank_and_bad_values(tmp_path):
    cases = {
        "empty.npy": (np.zeros((0, 5), np.float32), r"empty data, shape \(0, 5\)"),
        "empty_items.npy": (np.zeros((3, 0), np.float32), r"empty data, shape \(3, 0\)"),
        "flat.npy": (np.zeros(5, np.float32), r"found shape \(5,\) \(1-D\)"),
        "five.npy": (np.zeros((2, 1, 1, 2, 2), np.uint8), r"\(N, C, H, W\); found shape"),
        "range.npy": (np.full((3, 4), 300, np.int16), r"0\.\.255; found values in \[300, 300\]"),
        "last.npy": (np.zeros((3, 8, 8, 3), np.uint8), "looks channels-last"),
        "huge.npy": (np.full((3, 2), 1e300), "overflow float32"),
        "text.npy": (np.array([["a", "b"], ["c", "d"]]), "unsupported dtype"),
    }
    for name, (arr, message) in cases.items():
        np.save(tmp_path / name, arr)
        with pytest.raises(DataFormatError, match=message):
            load_data(tmp_path / name, test_size=1)


def test_test_size_must_leave_training_data(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((5, 3), np.float32))
    with pytest.raises(ValueError, match="test_size=5 leaves no training data"):
        load_data(tmp_path / "a.npy", test_size=5)
    with pytest.raises(ValueError, match="test_size must be >= 0"):
        load_data(tmp_path / "a.npy", test_size=-1)
    assert load_data(tmp_path / "a.npy", test_size=4).train.shape == (1, 3)


def test_unknown_name_lists_choices_and_suggests():
    with pytest.raises(ValueError) as info:
        load_data("mnsit")
    message = str(info.value)
    assert message.startswith(
        "unknown dataset 'mnsit'; valid choices: cifar10, fashion-mnist, kmnist, mnist, shapes "
        "(or a path to an idx folder, .npy or .npz file)"
    )
    assert "did you mean 'mnist'?" in message
    assert not isinstance(info.value, FileNotFoundError)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_data("nowhere/data.npy")


def test_name_lookup_ignores_case():
    assert load_data("Shapes", num_shapes=10, test_size=2).name == "shapes"


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_property_any_valid_array_loads_with_the_right_event_shape(data):
    ndim = data.draw(st.integers(2, 4), label="ndim")
    n = data.draw(st.integers(2, 6), label="n")
    if ndim == 2:
        shape = (n, data.draw(st.integers(1, 9)))
    elif ndim == 3:
        shape = (n, data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6)))
    else:
        shape = (n, data.draw(st.integers(1, 4)), *data.draw(st.tuples(*[st.integers(1, 5)] * 2)))
    dtype = data.draw(st.sampled_from([np.uint8, np.float32, np.float64, np.int16]))
    if dtype in (np.uint8, np.int16):
        elements = st.integers(0, 255)
    else:
        width = 32 if dtype == np.float32 else 64
        elements = st.floats(-1e6, 1e6, allow_nan=False, width=width)
    arr = data.draw(hnp.arrays(dtype, shape, elements=elements), label="array")

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.npy"
        np.save(path, arr)
        # an (N, C, H, W) array stated so (auto refuses those that also read as (N, H, W, C))
        split = load_data(path, test_size=1, seed=0, layout="channels-first")

    expected_event = (1, *shape[1:]) if ndim == 3 else shape[1:]
    assert split.event_shape == torch.Size(expected_event)
    assert split.train.shape[0] == n - 1 and split.test.shape[0] == 1
    expected = torch.uint8 if dtype in (np.uint8, np.int16) else torch.float32
    assert split.train.dtype == expected and split.test.dtype == expected
    merged = np.sort(torch.cat([split.train, split.test]).numpy().ravel())
    np.testing.assert_array_equal(merged, np.sort(arr.astype(split.train.numpy().dtype).ravel()))


# ---------------------------------------------------------------------- torchvision


@pytest.mark.parametrize(
    ("name", "folder", "files"),
    [
        ("mnist", "MNIST/raw", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
        ("fashion-mnist", "FashionMNIST/raw", ["train-labels-idx1-ubyte"]),
        ("kmnist", "KMNIST/raw", ["t10k-images-idx3-ubyte"]),
        ("cifar10", "cifar-10-batches-py", ["data_batch_1", "data_batch_5", "test_batch"]),
    ],
)
def test_missing_torchvision_dataset_names_the_files(tmp_path, no_network, name, folder, files):
    with pytest.raises(DatasetNotFoundError) as info:
        load_data(name, data_dir=tmp_path)
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert str((tmp_path / folder).resolve()) in message
    for file in files:
        assert file in message
    assert "--download" in message
    assert not any(tmp_path.iterdir())  # nothing was created or fetched


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_mnist_from_local_files(tmp_path, no_network, suffix):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    x_train, y_train, x_test, y_test = write_idx_split(raw, suffix, 6, 4, 28, 28)
    split = load_data("mnist", data_dir=tmp_path, test_size=2)  # official split
    assert split.name == "mnist" and split.event_shape == torch.Size([1, 28, 28])
    np.testing.assert_array_equal(split.train[:, 0].numpy(), x_train)
    np.testing.assert_array_equal(split.test[:, 0].numpy(), x_test)
    np.testing.assert_array_equal(split.train_labels.numpy(), y_train)
    np.testing.assert_array_equal(split.test_labels.numpy(), y_test)


# --------------------------------------------------------------------- preprocessing


def levels_split(n_train: int = 64, n_test: int = 32) -> DataSplit:
    """Every 8-bit level several times, in a (N, 1, 16, 16) image layout."""
    gen = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (n_train, 1, 16, 16), dtype=torch.uint8, generator=gen)
    test = torch.randint(0, 256, (n_test, 1, 16, 16), dtype=torch.uint8, generator=gen)
    return DataSplit("levels", train, test)


def test_dynamic_binarization_draws_fresh_from_the_global_rng():
    split = levels_split()
    prepared = prepare_split(split, binarize="dynamic", seed=0)
    assert prepared.train.dtype == torch.uint8  # left for per-batch draws
    assert torch.equal(prepared.train, split.train)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = batch_transform(prepared.train, binarize="dynamic")
    b = batch_transform(prepared.train, binarize="dynamic")
    assert a.dtype == torch.float32 and a.shape == split.train.shape
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(a, b)
    # Restoring the global RNG (as a checkpoint does) restores the draw.
    torch.set_rng_state(state)
    assert torch.equal(batch_transform(prepared.train, binarize="dynamic"), a)
    # The draws follow the pixel intensities: E[x] = k / 255.
    draws = torch.stack([batch_transform(split.train, binarize="dynamic") for _ in range(200)])
    probs = split.train.float() / 255
    # Mean absolute error of a 200-draw average is about 0.022 here.
    assert (draws.mean(0) - probs).abs().mean() < 0.03
    assert torch.equal(draws[:, split.train == 0].amax(), torch.tensor(0.0))
    assert torch.equal(draws[:, split.train == 255].amin(), torch.tensor(1.0))


def test_dynamic_binarization_fixes_the_test_split():
    split = levels_split()
    p1 = prepare_split(split, binarize="dynamic", seed=3)
    p2 = prepare_split(split, binarize="dynamic", seed=3)
    # Stored as the 8-bit levels 0/255 so that both splits keep one dtype.
    assert p1.test.dtype == torch.uint8 and p1.is_8bit
    assert set(p1.test.unique().tolist()) == {0, 255}
    assert torch.equal(p1.test, p2.test)
    assert not torch.equal(p1.test, prepare_split(split, binarize="dynamic", seed=4).test)
    # Every evaluation pass sees the same 0/1 test data despite the fresh draw.
    fixed = p1.test.float() / 255
    for _ in range(3):
        assert torch.equal(batch_transform(p1.test, binarize="dynamic"), fixed)
    # Same test copy as a static run with the same seed: ELBOs are comparable.
    assert torch.equal(fixed, prepare_split(split, binarize="static", seed=3).test)
    # Float data keep float: the fixed draw is 0/1.
    floats = DataSplit("f", split.train.float() / 255, split.test.float() / 255)
    pf = prepare_split(floats, binarize="dynamic", seed=3)
    assert torch.equal(pf.test, fixed) and torch.equal(pf.train, floats.train)


def test_static_binarization_is_one_seeded_draw():
    split = levels_split()
    torch.manual_seed(0)
    p1 = prepare_split(split, binarize="static", seed=11)
    torch.manual_seed(1)  # the global RNG plays no part
    p2 = prepare_split(split, binarize="static", seed=11)
    for part in ("train", "test"):
        x1, x2 = getattr(p1, part), getattr(p2, part)
        assert x1.dtype == torch.float32 and set(x1.unique().tolist()) == {0.0, 1.0}
        assert torch.equal(x1, x2)
    p3 = prepare_split(split, binarize="static", seed=12)
    assert not torch.equal(p1.train, p3.train)
    # Every epoch sees the same data.
    epoch1 = batch_transform(p1.train, binarize="static")
    epoch2 = batch_transform(p1.train, binarize="static")
    assert torch.equal(epoch1, epoch2) and torch.equal(epoch1, p1.train)
    assert p1.train_labels is split.train_labels and p1.name == split.name
    with pytest.raises(ValueError, match="prepare_split"):
        batch_transform(split.train, binarize="static")


def test_threshold_binarization():
    levels = torch.arange(256, dtype=torch.uint8).reshape(1, 256)
    split = DataSplit("levels", levels, levels)
    prepared = prepare_split(split, binarize="threshold", seed=0)
    expected = (torch.arange(256) >= 128).float().reshape(1, 256)  # k / 255 > 0.5
    assert torch.equal(prepared.train, expected) and torch.equal(prepared.test, expected)
    assert torch.equal(batch_transform(levels, binarize="threshold"), expected)
    assert torch.equal(batch_transform(prepared.train, binarize="threshold"), expected)
    floats = torch.tensor([[0.0, 0.5, 0.51, 1.0]])
    assert batch_transform(floats, binarize="threshold").tolist() == [[0.0, 0.0, 1.0, 1.0]]


def test_dequantization_stays_within_each_level():
    levels = torch.arange(256, dtype=torch.uint8).repeat(400).reshape(400, 256)
    torch.manual_seed(0)
    a = batch_transform(levels, binarize="none", dequantize=True)
    b = batch_transform(levels, binarize="none", dequantize=True)
    k = levels.float()
    for y in (a, b):
        assert y.dtype == torch.float32
        assert bool((y >= k / 256).all()) and bool((y < (k + 1) / 256).all())
    assert not torch.equal(a, b)
    # The noise is spread over the whole level, not a fixed offset.
    u = (a * 256 - k).flatten()
    assert float(u.min()) < 0.01 and float(u.max()) > 0.99
    assert abs(float(u.mean()) - 0.5) < 0.01
    y64 = batch_transform(levels, binarize="none", dequantize=True, dtype=torch.float64)
    assert y64.dtype == torch.float64 and bool((y64 < (k.double() + 1) / 256).all())


def test_dequantization_clamps_the_float32_rounding_edge(monkeypatch):
    # u just below 1 rounds 255 + u up to 256 in float32; the result must stay below 1.
    levels = torch.tensor([[255, 128, 0]], dtype=torch.uint8)
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: torch.full(shape, 1 - 2**-24, **kw))
    y = batch_transform(levels, binarize="none", dequantize=True)
    assert bool((y < (levels.float() + 1) / 256).all())
    assert float(y[0, 0]) > 255 / 256


def test_dequantized_levels_lie_strictly_inside_the_unit_interval(monkeypatch):
    # u = 0 (torch.rand can return it) would put level 0 at exactly 0, outside a Beta's support
    levels = torch.tensor([[0, 1, 255]], dtype=torch.uint8)
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: torch.zeros(shape, **kw))
    for dtype in (torch.float32, torch.float64):
        y = batch_transform(levels, binarize="none", dequantize=True, dtype=dtype)
        eps = torch.finfo(dtype).eps
        assert float(y[0, 0]) == eps / 256  # u is at least epsilon: just inside level 0's bin
        assert bool((y > 0).all()) and bool((y < 1).all())
        assert bool((y >= levels.to(dtype) / 256).all())


def test_no_binarization_scales_8bit_levels():
    levels = torch.arange(256, dtype=torch.uint8).reshape(1, 256)
    y = batch_transform(levels, binarize="none")
    assert torch.equal(y, torch.arange(256, dtype=torch.float32).reshape(1, 256) / 255)
    floats = torch.tensor([[-3.0, 0.25, 7.0]])
    assert torch.equal(batch_transform(floats, binarize="none"), floats)
    split = levels_split()
    assert prepare_split(split, binarize="none", dequantize=True, seed=0) is split


def test_float_data_binarize_as_probabilities():
    gen = torch.Generator().manual_seed(0)
    probs = torch.rand(40, 30, generator=gen)
    split = DataSplit("probs", probs, probs[:10].clone())
    static = prepare_split(split, binarize="static", seed=0)
    assert set(static.train.unique().tolist()) == {0.0, 1.0}
    draw = batch_transform(probs, binarize="dynamic")
    assert set(draw.unique().tolist()) <= {0.0, 1.0}
    grey = DataSplit("grey", probs * 2, probs[:10] * 2)
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        prepare_split(grey, binarize="static", seed=0)


def test_invalid_preprocessing_combinations():
    split = levels_split()
    with pytest.raises(ValueError, match="valid choices: dynamic, static, threshold, none"):
        Preprocess(binarize="dynamc")
    with pytest.raises(ValueError, match="needs binarize='none'"):
        Preprocess(binarize="dynamic", dequantize=True)
    floats = DataSplit("f", split.train.float(), split.test.float())
    with pytest.raises(ValueError, match="needs 8-bit"):
        prepare_split(floats, binarize="none", dequantize=True, seed=0)
    with pytest.raises(ValueError, match="needs 8-bit"):
        batch_transform(floats.train, binarize="none", dequantize=True)
    with pytest.raises(ValueError, match="floating"):
        batch_transform(split.train, binarize="none", dtype=torch.int32)
    assert tuple(BINARIZE) == ("dynamic", "static", "threshold", "none")


def test_preprocess_object_matches_the_functions():
    split = levels_split()
    pre = Preprocess(binarize="static", seed=5)
    prepared = pre.prepare(split)
    assert torch.equal(prepared.train, prepare_split(split, binarize="static", seed=5).train)
    assert torch.equal(pre(prepared.test), prepared.test)
    assert pre(prepared.test, dtype=torch.float64).dtype == torch.float64
    deq = Preprocess(dequantize=True)
    assert deq.prepare(split) is split
    assert deq(split.test).dtype == torch.float32


def test_datasplit_validates_its_fields():
    x = torch.zeros(3, 4, dtype=torch.uint8)
    with pytest.raises(DataFormatError, match="share a dtype"):
        DataSplit("mixed", x, x.float())
    with pytest.raises(DataFormatError, match="items have shape"):
        DataSplit("shapes", x, torch.zeros(3, 5, dtype=torch.uint8))
    with pytest.raises(DataFormatError, match="labels of shape"):
        DataSplit("labels", x, x, train_labels=torch.zeros(2))
    with pytest.raises(TypeError, match="uint8 or float32"):
        DataSplit("int", x.long(), x.long())
    split = DataSplit("ok", x, x[:0])
    assert split.event_shape == torch.Size([4]) and split.is_8bit
    assert "train=(3, 4)" in repr(split)

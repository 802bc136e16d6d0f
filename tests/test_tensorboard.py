"""``--tensorboard``: every epoch's metrics and pictures in an event file, read back with
TensorBoard's own reader; logging leaves the training unchanged; without the extra, one line."""

import json
import sys

import numpy as np
import pytest
import torch

from pyro_vae.apps import cli
from pyro_vae.config import TrainConfig
from pyro_vae.data import Preprocess
from pyro_vae.models import build_vae
from pyro_vae.train import fit
from pyro_vae.train.tensorboard import INSTALL_HINT, TensorBoardLog, picture_grids


def _metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def flat_npy(tmp_path):
    """80 datapoints of 16 random 8-bit levels (4x4 pictures)."""
    path = tmp_path / "flat.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (80, 16), dtype=np.uint8))
    return path


def _train(capsys, data, *extra) -> tuple[int, str]:
    """``pyro-vae train`` on ``data``: 64 to train in 4 batches of 16, 16 to test."""
    argv = ["train", "--dataset", data, "--test-size", 16, "--batch-size", 16,
            "--latent-dim", 2, "--hidden", 8, "--quiet", *extra]  # fmt: skip
    rc = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def test_every_epoch_is_logged_and_the_run_is_unchanged(tmp_path, flat_npy, capsys):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logged, plain = tmp_path / "logged", tmp_path / "plain"
    for run, extra in ((logged, ["--tensorboard"]), (plain, [])):
        rc, err = _train(capsys, flat_npy, "--epochs", 3, "--out", run, *extra)
        assert rc == 0, err
    metrics = _metrics(logged)
    # the pictures are drawn under a forked RNG: the training's stream, hence every number, is
    # the same as without TensorBoard
    assert metrics == [{**row, "seconds": m["seconds"]} for row, m in zip(_metrics(plain), metrics)]

    events = EventAccumulator(str(logged / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    for key, tag in (("train_elbo", "elbo/train"), ("test_elbo", "elbo/test"), ("lr", "lr"),
                     ("beta", "beta")):  # fmt: skip
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2, 3]
        assert [s.value for s in scalars] == pytest.approx([m[key] for m in metrics], rel=1e-6)
    # 16 flat dimensions are 4x4 pictures: 8 inputs above their 8 reconstructions; 8x8 samples
    # (make_grid: 2 px of padding around each)
    sizes = {"reconstructions": (2 * 6 + 2, 8 * 6 + 2), "samples": (8 * 6 + 2, 8 * 6 + 2)}
    for tag, (height, width) in sizes.items():
        images = events.Images(tag)
        assert [im.step for im in images] == [1, 2, 3]
        assert {(im.height, im.width) for im in images} == {(height, width)}
    # the last epoch's picture is what the model shows at its final parameters
    assert images[0].encoded_image_string != images[-1].encoded_image_string


def test_picture_grids_show_inputs_above_their_reconstructions():
    vae = build_vae((1, 4, 4), "bernoulli", latent_dim=2, hidden=(8,))
    x = (torch.arange(10 * 16).reshape(10, 1, 4, 4) % 3 == 0).float()
    grids = picture_grids(vae, x, Preprocess("none"))
    recon = grids["reconstructions"]  # (3, 14, 50): row 1 the inputs, row 2 the reconstructions
    assert recon.shape == (3, 14, 50) and grids["samples"].shape == (3, 50, 50)
    first_input = recon[0, 2:6, 2:6]  # the first cell, inside its padding
    torch.testing.assert_close(first_input, x[0, 0])
    assert bool(((recon[0, 8:12, 2:6] > 0) & (recon[0, 8:12, 2:6] < 1)).all())  # Bernoulli means


def test_without_the_extra_one_line_and_nothing_written(tmp_path, flat_npy, capsys, monkeypatch):
    # what an environment without the tensorboard package does: torch's module fails to import
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    run = tmp_path / "run"
    rc, err = _train(capsys, flat_npy, "--tensorboard", "--out", run)
    assert rc == 1
    assert len(err.strip().splitlines()) == 1, err
    assert "--tensorboard needs the tensorboard package" in err and INSTALL_HINT in err
    assert not run.exists()  # refused before the run directory was made


def test_a_log_needs_a_run_directory():
    off = TensorBoardLog.start(TrainConfig(), None)
    assert not off.enabled
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    with pytest.raises(ValueError, match="--tensorboard writes into the run directory"):
        TensorBoardLog.start(TrainConfig(tensorboard=True), None)


def test_fit_without_tensorboard_never_imports_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # any import would fail
    vae = build_vae((4,), "bernoulli", latent_dim=2, hidden=(4,))
    x = torch.bernoulli(torch.full((8, 4), 0.5))
    result = fit(vae, x, None, TrainConfig(epochs=1, batch_size=4, quiet=True))
    assert len(result.metrics) == 1

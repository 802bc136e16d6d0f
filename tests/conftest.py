"""Every test starts from a clean Pyro state, validation on, and a fixed seed."""

import shutil
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from cli_runs import flat_args

from pyro_vae.apps import cli

#: The real MNIST test split, beside the checkout (never committed); tests skip without it.
MNIST_T10K = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-t10k"


@pytest.fixture(autouse=True)
def _pyro_state():
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny float64 ops gain nothing from a second on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def flat_data(tmp_path_factory) -> Path:
    """80 datapoints of 16 random 8-bit levels (Bernoulli after dynamic binarization)."""
    path = tmp_path_factory.mktemp("data") / "flat.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (80, 16), dtype=np.uint8))
    return path


@pytest.fixture(scope="module")
def _template_run(tmp_path_factory, flat_data) -> Path:
    run = tmp_path_factory.mktemp("template") / "run"
    assert cli.main([str(a) for a in flat_args(flat_data, "--epochs", 2, "--out", run)]) == 0
    return run


@pytest.fixture
def finished_run(tmp_path, _template_run) -> Path:
    """A copy of a finished 2-epoch run (64 training datapoints, 4 steps per epoch)."""
    return Path(shutil.copytree(_template_run, tmp_path / "run"))

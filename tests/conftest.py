"""Every test starts from a clean Pyro state, validation on, and a fixed seed; every test, and
every subprocess a test starts, uses one intra-op thread."""

import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from cli_runs import flat_args

from pyro_vae.apps import cli

# The tests' models are tiny: a second OpenMP thread gains nothing, and on a machine busy with
# other work two threads waiting on each other make a step some 50 times slower (measured: a
# 1500-step test took 586 s with two threads beside another job, 14 s with one). Subprocesses
# (the command line, the experiment scripts) inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

# A shell that starts the suite in the background without job control ignores SIGINT, and an
# ignored signal stays ignored in every subprocess: the Ctrl-C tests need its usual handling.
signal.signal(signal.SIGINT, signal.default_int_handler)

#: The real MNIST test split, beside the checkout (never committed); tests skip without it.
MNIST_T10K = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-t10k"


@pytest.fixture(autouse=True)
def _pyro_state():
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


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

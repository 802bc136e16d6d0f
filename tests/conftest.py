"""Every test starts from a clean Pyro state, validation on, and a fixed seed."""

from pathlib import Path

import pyro
import pytest
import torch

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

"""Every test starts from a clean Pyro state, validation on, and a fixed seed."""

from pathlib import Path

import pyro
import pytest

#: The real MNIST test split, beside the checkout (never committed); tests skip without it.
MNIST_T10K = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-t10k"


@pytest.fixture(autouse=True)
def _pyro_state():
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()

"""Checkpoints that survive crashes and cannot run code.

Writes go to a temporary file in the same folder, are fsynced, then renamed over the target, so
a reader sees either the old file or the new one, never half of one. Reads use
``torch.load(weights_only=True)``: a pickle that would execute code is refused.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np
import torch


class CheckpointError(RuntimeError):
    """A checkpoint could not be read, or does not fit the model it is loaded into."""


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, rename it over ``path``
    and fsync the folder: readers see the old file or the new one, never a part of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def safe_load(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only.

    A pickle that names any other global (the way a malicious file runs code) is refused
    before anything in it is called.

    :raises CheckpointError: for a missing, truncated, corrupt or unsafe file; the message says
        which and that nothing was run or overwritten.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings():
            # e.g. "Detected pickle protocol 4": the refusal below says what matters
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} was refused: it is not a weights-only checkpoint (tensors and plain "
            f"containers). It is corrupt, or holds objects that could run code when unpickled; "
            f"nothing in it was run and nothing was overwritten (torch.load with "
            f"weights_only=True: {_last_line(e)}). Only load checkpoints from a source you trust."
        ) from e
    except Exception as e:  # noqa: BLE001 (a corrupt file fails in many ways inside torch.load)
        raise CheckpointError(
            f"{path} is truncated or corrupt and cannot be read ({type(e).__name__}: "
            f"{_last_line(e)}); nothing was overwritten"
        ) from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a pyro-vae checkpoint")
    return obj


def _last_line(error: BaseException) -> str:
    """The informative part of torch.load's long messages."""
    text = str(error).strip()
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0].split(". ")[0][:200] if lines else type(error).__name__


def rng_state() -> dict:
    """Every global RNG state (torch CPU and CUDA, numpy, python), as plain tensors and lists."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    # RNG states are CPU byte tensors, wherever map_location put the checkpoint
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"],
         n["cached_gaussian"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))

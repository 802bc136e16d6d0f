"""Memory measured, not guessed: the bytes that the operations of any model allocate.

:class:`Allocations` counts every new tensor under it, whatever op made it (a network layer,
a likelihood's log density, a mixture prior's per-component terms, a backward pass). The
importance sampler sizes its chunks with it (:func:`~pyro_vae.eval.bounds.bytes_per_pair`)
and training refuses a step that would not fit in memory before the first step
(:func:`~pyro_vae.train.checks.check_step_memory`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class Allocations(TorchDispatchMode):
    """Counts the bytes of every new tensor the operations under it allocate (views and
    in-place results, which share an input's storage, are not new).

    The sum over-counts the peak (most tensors are freed as later ops run): an estimate made
    with it is an upper bound.
    """

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = {
            t.untyped_storage().data_ptr()
            for t in tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in given:
                self.bytes += t.untyped_storage().nbytes()
        return out


def available_bytes(device: torch.device) -> int | None:
    """The memory free for new tensors on ``device`` now: CUDA's free memory, or the host's
    available memory (Linux ``MemAvailable``); ``None`` where it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None

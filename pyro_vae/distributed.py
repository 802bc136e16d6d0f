"""Data-parallel runs on :mod:`torch.distributed`: the process group torchrun describes, and
the few collective operations training and evaluation need.

``torchrun --nproc-per-node N -m pyro_vae train ...`` starts N processes, each with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in its
environment. :func:`init_from_env` joins them into one process group (``nccl`` on CUDA,
``gloo`` on CPU) with a timeout, so a rank that dies makes the others fail with an error
instead of waiting forever. Library code asks :func:`current` for the :class:`World` it runs
in: a single process is ``World(rank=0, size=1)`` and every collective below is then a no-op,
so one code path serves both.

Gradients are averaged by :class:`~torch.nn.parallel.DistributedDataParallel` (see
:class:`~pyro_vae.train.TrainStep`); what remains here is host-side agreement (every rank
stops at the same step), sums of per-rank scalars, gathering per-datapoint results, and
handing rank 0's objects (a checkpoint, a run directory name) to the others.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

#: how long a collective waits for the other ranks before it fails (seconds)
DEFAULT_TIMEOUT_S = 600.0

#: separates the permutations' seeds from the ranks' (see :func:`epoch_seed`)
_PERMUTATION_STREAM = 0x5045524D

#: the environment torchrun gives each process
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class PeerError(RuntimeError):
    """Another rank failed (its own output names why) or stopped answering; this rank stops
    too, writing nothing.

    :ivar failed_rank: the rank whose failure this is (it says why itself), or ``None``: the
        other ranks stopped answering.
    """

    def __init__(self, message: str, failed_rank: int | None = None):
        super().__init__(message)
        self.failed_rank = failed_rank


@dataclass(frozen=True)
class World:
    """The processes of a run: this one's ``rank`` among ``size``, and ``local_rank`` on its
    machine (the CUDA device it drives).

    :ivar cpu_group: a ``gloo`` process group for host-side flags when the default group is
        ``nccl`` (``None``: the default group serves).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    cpu_group: Any = field(default=None, compare=False, repr=False)

    @property
    def active(self) -> bool:
        """Whether there is more than one process."""
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run directory and prints."""
        return self.rank == 0

    # -------------------------------------------------------------- host-side agreement

    def max_int(self, value: int) -> int:
        """The largest ``value`` over the ranks (e.g. a stop signal's number, 0 for none)."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        _collective(dist.all_reduce, t, op=dist.ReduceOp.MAX, group=self.cpu_group)
        return int(t)

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the ranks, in place (on ``t``'s device)."""
        if self.active:
            _collective(dist.all_reduce, t, op=dist.ReduceOp.SUM)
        return t

    def max_(self, t: torch.Tensor) -> torch.Tensor:
        """``t``'s element-wise maximum over the ranks, in place (on ``t``'s device)."""
        if self.active:
            _collective(dist.all_reduce, t, op=dist.ReduceOp.MAX)
        return t

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank (pickled: small objects only)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.size
        _collective(dist.all_gather_object, out, obj, group=self.cpu_group)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (the others' ``obj`` is ignored)."""
        if not self.active:
            return obj
        box = [obj if self.is_main else None]
        _collective(dist.broadcast_object_list, box, src=0, group=self.cpu_group)
        return box[0]

    def barrier(self) -> None:
        """Wait until every rank is here."""
        if self.active:
            _collective(dist.barrier, group=self.cpu_group)

    def on_main(self, fn, *args, **kwargs) -> Any:
        """``fn(*args, **kwargs)`` run on rank 0 only (a write to the run directory); its
        result there, ``None`` elsewhere. An exception on rank 0 is raised there and becomes a
        :class:`PeerError` on the others, so no rank waits for a collective the failed one
        will never join."""
        if not self.active:
            return fn(*args, **kwargs)
        return self.each(fn, *args, only=self.is_main, **kwargs)

    def each(self, fn, *args, only: bool = True, **kwargs) -> Any:
        """``fn(*args, **kwargs)`` on every rank where ``only`` is true (every rank calls
        this); the result there, ``None`` elsewhere. If it raised on any rank (a stop signal
        too), the ranks hear it before going on: a rank where it raised re-raises its own
        exception, the others a :class:`PeerError` naming the first rank that failed, so no
        rank waits for a collective a failed one will never join."""
        if not self.active:
            return fn(*args, **kwargs) if only else None
        result, error = None, None
        if only:
            try:
                result = fn(*args, **kwargs)
            except BaseException as e:  # noqa: BLE001 (re-raised below, once the others know)
                error = e
        failures = self.gather_objects(None if error is None else str(error))
        if error is not None:
            raise error
        failed = next((r for r, m in enumerate(failures) if m is not None), None)
        if failed is not None:
            raise PeerError(f"rank {failed} failed: {failures[failed]}", failed_rank=failed)
        return result

    def main_then_others(self, fn, *args, **kwargs) -> Any:
        """``fn(*args, **kwargs)`` on rank 0 first (a refusal is said once), then on the first
        process of every other machine (a download happens once per machine), then on the
        rest; its result on every rank. A failure in the first two rounds stops every rank
        (see :meth:`each`)."""
        if not self.active:
            return fn(*args, **kwargs)
        result = self.on_main(fn, *args, **kwargs)
        leader = self.local_rank == 0 and not self.is_main  # another machine's first
        led = self.each(fn, *args, only=leader, **kwargs)
        if leader:
            return led
        return result if self.is_main else fn(*args, **kwargs)

    def own(self, device: torch.device) -> torch.device:
        """``device`` as this rank uses it: with several ranks on CUDA, its own
        ``cuda:LOCAL_RANK``."""
        if device.type == "cuda" and self.active:
            return torch.device("cuda", self.local_rank)
        return device

    # ---------------------------------------- contiguous blocks (evaluation, held-out data)

    def block(self, n: int) -> tuple[int, int]:
        """``(start, stop)``: this rank's contiguous share of ``n`` items (sizes differ by at
        most one; a rank may get none when ``n < size``)."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    def gather_blocks(self, part: torch.Tensor, n: int) -> torch.Tensor:
        """The ``(n, ...)`` tensor whose rows :meth:`block` split across the ranks, from this
        rank's ``part`` (its rows), on every rank."""
        if not self.active:
            return part
        width = -(-n // self.size)  # the largest block
        # nccl gathers device tensors, gloo host tensors
        on = torch.device("cuda", torch.cuda.current_device()) if self.cpu_group else part.device
        padded = part.new_zeros((width, *part.shape[1:]), device=on)
        padded[: len(part)] = part
        pieces = [torch.empty_like(padded) for _ in range(self.size)]
        _collective(dist.all_gather, pieces, padded)
        sizes = [World(r, self.size).block(n) for r in range(self.size)]
        rows = [p[: stop - start] for p, (start, stop) in zip(pieces, sizes)]
        return torch.cat(rows).to(part.device)


def _collective(collective, *args, **kwargs):
    """Run a collective; a rank that died or stopped answering becomes a :class:`PeerError`
    with what to do, not a C++ traceback."""
    try:
        return collective(*args, **kwargs)
    except RuntimeError as e:  # dist.DistError and the backends' own errors
        raise lost_contact(e) from e


#: words of the process group's errors (gloo's, nccl's, the store's) when a peer is gone
_PEER_WORDS = ("gloo", "nccl", "connection closed", "connection reset", "broken pipe", "timed out")


def from_process_group(error: BaseException) -> bool:
    """Whether ``error``, raised where DDP communicates (a backward), comes from the process
    group: another rank died, or a collective timed out."""
    if isinstance(error, dist.DistError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(word in text for word in _PEER_WORDS)


def lost_contact(error: BaseException) -> PeerError:
    """The :class:`PeerError` that says what ``error`` (from the process group) means."""
    first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    return PeerError(
        f"lost contact with another rank ({first}): a rank failed, was killed or stopped "
        f"answering; its output says why. The last checkpoint is kept: resume with the same "
        f"number of processes"
    )


def current(timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
    """The :class:`World` of the initialized default process group, or a single process.

    Every rank must call it at the same point (with ``nccl`` it creates the ``gloo`` group for
    host-side flags, a collective): :func:`~pyro_vae.train.fit`, ``run_training`` and
    ``evaluate_run`` call it when they are not given a world; the command line makes one with
    :func:`init_from_env` and passes it on.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    cpu_group = None
    if dist.get_backend() != "gloo":
        cpu_group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return World(dist.get_rank(), dist.get_world_size(), local_rank, cpu_group)


def launched_by_torchrun() -> bool:
    """Whether the environment describes a multi-process run (torchrun's variables)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
    """Join the process group torchrun describes (``env://``), or stay a single process.

    The backend is ``nccl`` when this rank trains on CUDA (``device`` ``cuda``, or ``auto``
    with CUDA available), each rank on ``cuda:LOCAL_RANK``; else ``gloo``. With ``nccl``, a
    second ``gloo`` group carries host-side flags, so agreeing on a stop costs no device sync.

    :param timeout_s: how long a collective waits for the other ranks.
    :raises ValueError: a torchrun variable is missing or not a number.
    """
    if not launched_by_torchrun():
        return World()
    missing = [name for name in TORCHRUN_ENV if name not in os.environ]
    if missing:
        raise ValueError(
            f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but {', '.join(missing)} is not set: "
            f"start multi-process runs with torchrun (see the README, Several GPUs or machines)"
        )
    try:
        local_rank = int(os.environ["LOCAL_RANK"])
        int(os.environ["RANK"])
    except ValueError as e:
        raise ValueError(f"torchrun's RANK or LOCAL_RANK is not a number ({e})") from e
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s)
        try:
            dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
        except (RuntimeError, dist.DistError) as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise PeerError(f"could not join the other ranks ({first})") from e
    return current(timeout_s)


def shutdown() -> None:
    """Leave the process group, every rank together (a rank that tears its group down while
    another still talks to it can abort in gloo's threads). The command line leaves its own
    way (see ``pyro_vae.apps.cli``); this is for programs that call :func:`fit` themselves."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        except RuntimeError:  # a rank is gone already: nothing to wait for
            pass
        dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s random stream (binarization, dequantization, particles):
    ``seed`` itself on rank 0, so a single process and rank 0 draw alike; a hash of
    ``(seed, rank)`` elsewhere, so the ranks' draws are independent."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])  # 32 bits (numpy's)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s permutation of the training data: the same on every
    rank, whatever their random streams."""
    return int(np.random.SeedSequence([seed, epoch, _PERMUTATION_STREAM]).generate_state(1)[0])

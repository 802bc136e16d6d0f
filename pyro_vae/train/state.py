"""Where a run stands (:class:`TrainState`, :class:`EpochCursor`) and what its steps are
(:class:`Schedule`): the state a checkpoint saves besides the module and the optimizer."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from pyro_vae.config import TrainConfig
from pyro_vae.distributed import World, epoch_seed


@dataclass
class EpochCursor:
    """The epoch in progress.

    :ivar perm: ``(N,)`` the epoch's permutation of the training data, on the device (the
        same on every rank; each takes its shard, see :meth:`Schedule.shard_of`).
    :ivar batch: the next batch of the epoch.
    :ivar loss_sum: the sum over the epoch's datapoints so far of the per-datapoint loss (a
        device scalar: no host sync per step); this rank's datapoints only.
    :ivar seconds: the epoch's time so far (before an interruption, for a resumed epoch).
    """

    perm: torch.Tensor  # (N,)
    batch: int = 0
    loss_sum: torch.Tensor | None = None  # ()
    seconds: float = 0.0

    @classmethod
    def start(cls, n: int, device: torch.device, seed: int, epoch: int) -> EpochCursor:
        """A new epoch (0-based ``epoch``): its permutation drawn from a generator seeded with
        ``(seed, epoch)`` alone, so every rank draws the same one whatever its own random
        stream, and a device draws what the CPU draws."""
        generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        perm = torch.randperm(n, generator=generator).to(device)  # (N,) on the device
        return cls(perm, 0, torch.zeros((), device=device))


@dataclass
class TrainState:
    """What a run has done so far.

    :ivar epoch: epochs completed.
    :ivar step: optimizer steps taken.
    :ivar best: the best score so far: the held-out ELBO, or the training ELBO without
        held-out data.
    :ivar metrics: one row per completed epoch (see :data:`pyro_vae.train.rundir.METRIC_FIELDS`).
    :ivar cursor: the epoch a checkpoint cut short, to continue (``None``: start a new one).
    """

    epoch: int = 0
    step: int = 0
    best: float = -math.inf
    metrics: list[dict] = field(default_factory=list)
    cursor: EpochCursor | None = None


@dataclass(frozen=True)
class Schedule:
    """The steps of a run: how many per epoch, in all, beta at each, and which datapoints
    each rank trains on.

    With ``world_size`` ranks, an epoch's permutation is padded by wrapping around to a
    multiple of ``world_size`` (as :class:`torch.utils.data.DistributedSampler` does) and
    rank ``r`` takes every ``world_size``-th datapoint from position ``r``: equal shards, so
    every rank takes the same number of steps of the same batch size, and step ``i`` of the
    ranks together covers positions ``[i B W, (i + 1) B W)`` of the padded permutation, what
    one process with batch ``B W`` would train on.

    :param n: training datapoints.
    :param batch_size: per rank.
    """

    n: int
    batch_size: int
    epochs: int
    beta: float = 1.0
    warmup_epochs: int = 0
    world_size: int = 1
    rank: int = 0

    @classmethod
    def of(cls, n: int, cfg: TrainConfig, world: World = World()) -> Schedule:
        return cls(
            n, cfg.batch_size, cfg.epochs, cfg.beta, cfg.warmup_epochs, world.size, world.rank
        )

    @property
    def shard_size(self) -> int:
        """Datapoints per rank per epoch (``n`` for one process)."""
        return math.ceil(self.n / self.world_size)

    @property
    def datapoints_per_epoch(self) -> int:
        """Datapoints all ranks train on per epoch: ``n``, plus the fewer than
        ``world_size`` that padding repeats."""
        return self.shard_size * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.shard_size / self.batch_size)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def warmup_steps(self) -> int:
        return self.warmup_epochs * self.steps_per_epoch

    def beta_at(self, step: int) -> float:
        """The KL weight of step ``step + 1``: rising linearly to ``beta`` over the warm-up."""
        if not self.warmup_steps:
            return self.beta
        return self.beta * min(1.0, (step + 1) / self.warmup_steps)

    def in_warmup(self, step: int) -> bool:
        """Whether step ``step + 1`` changes beta (then a recorded graph would serve once)."""
        return step < self.warmup_steps

    def shard_of(self, perm: torch.Tensor) -> torch.Tensor:
        """``(shard_size,)`` this rank's datapoints of the epoch whose permutation is
        ``perm`` (``perm`` itself for one process)."""
        if self.world_size == 1:
            return perm
        padded = perm.repeat(math.ceil(self.datapoints_per_epoch / self.n))
        padded = padded[: self.datapoints_per_epoch]
        return padded[self.rank :: self.world_size]

    def indices(self, shard: torch.Tensor, batch: int) -> torch.Tensor:
        """The datapoints of batch ``batch`` of this rank's ``shard`` (:meth:`shard_of`)."""
        return shard[batch * self.batch_size : (batch + 1) * self.batch_size]

    def batch_of_step(self, step: int) -> int:
        """The batch (within its epoch) of the 1-based step ``step``."""
        return (step - 1) % self.steps_per_epoch

    def epoch_of_step(self, step: int) -> int:
        """The 1-based epoch of the 1-based step ``step``."""
        return (step - 1) // self.steps_per_epoch + 1

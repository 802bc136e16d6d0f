"""Where a run stands (:class:`TrainState`, :class:`EpochCursor`) and what its steps are
(:class:`Schedule`): the state a checkpoint saves besides the module and the optimizer."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from pyro_vae.config import TrainConfig


@dataclass
class EpochCursor:
    """The epoch in progress.

    :ivar perm: ``(N,)`` the epoch's permutation of the training data, on the device.
    :ivar batch: the next batch of the epoch.
    :ivar loss_sum: the sum over the epoch's datapoints so far of the per-datapoint loss (a
        device scalar: no host sync per step).
    :ivar seconds: the epoch's time so far (before an interruption, for a resumed epoch).
    """

    perm: torch.Tensor  # (N,)
    batch: int = 0
    loss_sum: torch.Tensor | None = None  # ()
    seconds: float = 0.0

    @classmethod
    def start(cls, n: int, device: torch.device) -> EpochCursor:
        """A new epoch: a fresh permutation from the global torch RNG (restored on resume)."""
        perm = torch.randperm(n, device=device)  # (N,) on the device
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
    """The steps of a run: how many per epoch, in all, and beta at each.

    :param n: training datapoints.
    """

    n: int
    batch_size: int
    epochs: int
    beta: float = 1.0
    warmup_epochs: int = 0

    @classmethod
    def of(cls, n: int, cfg: TrainConfig) -> Schedule:
        return cls(n, cfg.batch_size, cfg.epochs, cfg.beta, cfg.warmup_epochs)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n / self.batch_size)

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

    def indices(self, perm: torch.Tensor, batch: int) -> torch.Tensor:
        """The datapoints of batch ``batch`` of the epoch whose permutation is ``perm``."""
        return perm[batch * self.batch_size : (batch + 1) * self.batch_size]

    def batch_of_step(self, step: int) -> int:
        """The batch (within its epoch) of the 1-based step ``step``."""
        return (step - 1) % self.steps_per_epoch

    def epoch_of_step(self, step: int) -> int:
        """The 1-based epoch of the 1-based step ``step``."""
        return (step - 1) // self.steps_per_epoch + 1

"""One optimization step, and what stops training when a step goes non-finite.

:class:`TrainStep` is the step :func:`~pyro_vae.train.fit` takes and
``benchmarks/bench_train.py`` times: the estimator's loss (recorded once per batch shape and
replayed, see :class:`~pyro_vae.infer.CapturedLoss`), backward, a finiteness check of every
gradient on the device, and one fused Adam update (replayed, see
:class:`~pyro_vae.train.update.AdamReplay`) that :class:`NonFiniteGuard` skips on the device
once a step went bad. No host sync per step. :func:`diagnose_non_finite` names the ELBO
term of a bad step by tracing it once more with validation on.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from pyro import poutine
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pyro_vae.config import TrainConfig
from pyro_vae.distributed import World, from_process_group, lost_contact
from pyro_vae.infer import CapturedLoss, make_estimator
from pyro_vae.models import latent_sites, observed_sites
from pyro_vae.train.schedules import BurdaLR
from pyro_vae.train.update import AdamReplay
from pyro_vae.validation import constraint_text, invalid_distribution_argument


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; training stopped, checkpoints kept.

    :ivar step: the first step (1-based) whose loss was not finite.
    :ivar term: ``"reconstruction"``, ``"KL"``, ``"parameters"`` (they were already non-finite)
        or ``None`` (one traced pass could not reproduce it); see :func:`diagnose_non_finite`.
    """

    def __init__(self, message: str, step: int, term: str | None):
        super().__init__(message)
        self.step, self.term = step, term


class DivergedError(NonFiniteLossError):
    """The loss stayed finite but rose by orders of magnitude above its best: the run diverged
    (see :class:`DivergenceWatch`); training stopped, checkpoints kept. ``term`` is
    ``"diverged"``."""


def make_optimizer(module: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam over every parameter of ``module``, fused: one kernel per step, and it honours
    ``found_inf`` (see :class:`NonFiniteGuard`)."""
    return torch.optim.Adam(
        module.parameters(), lr=cfg.lr, eps=cfg.adam_eps, weight_decay=cfg.weight_decay,
        fused=True,
    )  # fmt: skip


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The learning-rate schedule of ``cfg`` over ``total_steps`` (``None``: constant)."""
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    if cfg.lr_schedule == "burda":
        return BurdaLR(optimizer, cfg.epochs, total_steps // cfg.epochs)
    return None


class TrainStep:
    """One optimization step of :func:`~pyro_vae.train.fit`, with no host sync.

    The estimator's loss per datapoint (recorded once per batch shape and replayed, see
    :class:`~pyro_vae.infer.CapturedLoss`), backward, the non-finite guard's check of every
    gradient element and the loss (of the total norm instead when clipping with
    ``grad_clip``: one pass, not two), and one fused Adam update that the guard can skip on the
    device (``optimizer.step()``'s kernel, replayed by :class:`~pyro_vae.train.update.AdamReplay`
    without its per-call Python). ``benchmarks/bench_train.py`` times exactly this object.

    With several ranks (``world``), the loss runs inside
    :class:`~torch.nn.parallel.DistributedDataParallel`, whose backward averages every
    gradient over the ranks (the recorded graph replays inside it: its parameters are the
    module's, so DDP's gradient hooks fire as in an eager step), and the guard's verdict is
    the ranks' maximum, so every rank skips the same updates and keeps the same parameters.

    :ivar optimizer: the one torch optimizer over ``model.parameters()``.
    :ivar update: its :class:`~pyro_vae.train.update.AdamReplay`, which takes each update.
    :ivar guard: the :class:`NonFiniteGuard`; call ``guard.check`` to read it.
    :ivar loss: the :class:`~pyro_vae.infer.CapturedLoss`; ``loss.mode`` says how it runs.
    """

    def __init__(self, model, cfg: TrainConfig, device: torch.device, world: World = World()):
        self.model = model
        self.grad_clip = cfg.grad_clip
        estimator = make_estimator(cfg.estimator, cfg.particles, alpha=cfg.alpha)
        self.loss = CapturedLoss(model, estimator, cfg.capture)
        loss = _StepLoss(self.loss, collective=world.active)
        # one process calls the loss as it is: no module machinery in the timed step
        self._forward = data_parallel(loss, device) if world.active else loss.forward
        self.optimizer = make_optimizer(model, cfg)
        self.update = AdamReplay(self.optimizer)
        self._params = self.optimizer.param_groups[0]["params"]  # the optimizer's own list
        self.guard = NonFiniteGuard(device, world)
        self.world = world

    def __call__(
        self, x: torch.Tensor, step: int, *inputs: torch.Tensor, capture: bool = True
    ) -> torch.Tensor:
        """Train on the batch ``x`` (and its extra inputs) as step ``step`` (1-based); return
        the loss (detached).

        :param capture: ``False`` runs the Pyro program itself (e.g. while beta changes every
            step during warm-up, where a recorded graph would be used once).
        """
        loss = self._forward(x, *inputs, capture=capture) / x.shape[0]
        detached = loss.detach()
        self.optimizer.zero_grad(set_to_none=True)
        try:
            loss.backward()  # with several ranks, DDP averages the gradients here
        except RuntimeError as e:
            if not (self.world.active and from_process_group(e)):
                raise
            raise lost_contact(e) from e
        if self.grad_clip is not None:  # the norm is finite iff every gradient is (or they
            # are too large to measure: a bad step too), and clipping by it keeps them so
            norm = torch.nn.utils.clip_grad_norm_(self._params, self.grad_clip)
            checked = [norm.view(1), detached.view(1)]
        else:  # every element of every gradient, and the loss
            checked = [p.grad for p in self._params if p.grad is not None]
            checked.append(detached.view(1))
        # stays on the device: a finite loss with a non-finite gradient is a bad step too (it
        # would poison every parameter); from the first bad step on, updates are skipped
        self.update.step(found_inf=self.guard.observe(checked, step))
        return detached


class _StepLoss(nn.Module):
    """``forward(x, *inputs, capture)``: the estimator's loss of the model on ``x``, replayed
    (:class:`~pyro_vae.infer.CapturedLoss`) or, with ``capture=False``, the Pyro program
    itself; a module owning the model's parameters, for
    :class:`~torch.nn.parallel.DistributedDataParallel` to wrap.

    With ``collective=True`` (several ranks) a distribution parameter that Pyro's validation
    refuses on this rank's batch gives a NaN loss through every parameter instead of the
    error: the other ranks are waiting to average gradients with this one, and the
    :class:`NonFiniteGuard` then stops every rank at this step, naming the term.
    """

    def __init__(self, loss: CapturedLoss, collective: bool = False):
        super().__init__()
        self.vae = loss.vae  # the parameters DDP averages
        self._loss = [loss]  # not a submodule: the parameters are registered once, above
        self.collective = collective

    def forward(self, x: torch.Tensor, *inputs: torch.Tensor, capture: bool = True):
        loss = self._loss[0]
        try:
            return loss(x, *inputs) if capture else loss.eager(x, *inputs)
        except ValueError as e:
            if not (self.collective and invalid_distribution_argument(e)):
                raise
            return sum(p.sum() for p in self.vae.parameters()) * math.nan


def data_parallel(module: nn.Module, device: torch.device) -> DistributedDataParallel:
    """``module`` in :class:`~torch.nn.parallel.DistributedDataParallel` on ``device``.

    DDP broadcasts rank 0's parameters and buffers once, here; per step it averages the
    gradients only. Buffers are not re-broadcast each forward: a model whose buffers change
    during training (batch-norm statistics) runs its program eagerly (see
    :class:`~pyro_vae.infer.CapturedLoss`) and every rank updates its own.
    """
    options = {"device_ids": [device.index] if device.type == "cuda" else None}
    accepted = inspect.signature(DistributedDataParallel).parameters
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in accepted else "broadcast_buffers"
    options[no_sync] = False
    return DistributedDataParallel(module, **options)


class NonFiniteGuard:
    """Watches the loss and the gradient for NaN/inf on the device, with no host sync per step.

    Each step tests every element of the gradients and the loss on the device, in one kernel,
    and counts the steps from the first bad one on (one scalar addition). From that step on,
    the fused Adam update is skipped on the device through the optimizer's ``found_inf`` (the
    mechanism :class:`torch.amp.GradScaler` uses), so a bad step changes no parameter. When
    the flag is read (every ``log_every`` steps, before any checkpoint, or at once when Pyro's
    validation rejects a NaN distribution parameter), the model still holds the parameters of
    the last good step, and :func:`diagnose_non_finite` traces that step's batch (rebuilt from
    the epoch's permutation by ``batch_of``) with them to name the term that failed.

    With several ranks, a step is bad when it is bad on any rank (one all-reduce of a flag
    on the device): every rank skips the same updates, and :meth:`check` stops every rank at
    the same step.
    """

    def __init__(self, device: torch.device, world: World = World()):
        #: 1.0 from the first bad step on, else 0.0: the optimizer's ``found_inf``
        self.found_inf = torch.zeros((), device=device)
        self._bad_steps = torch.zeros((), device=device)  # steps observed since, that one too
        self._one = torch.ones((), device=device)
        self._last_step = 0
        self.world = world

    def observe(self, checked: list[torch.Tensor], step: int) -> torch.Tensor:
        """Record step ``step`` (1-based; steps come one after another); return ``found_inf``
        for the optimizer.

        :param checked: the tensors a good step has finite in every element: the gradients
            (or their norm) and the loss, scalars as 1-element views.

        Every element is tested, in one pass over all of them: the kernel
        :class:`torch.amp.GradScaler` unscales with, at a scale of exactly 1 (it writes each
        value back unchanged), which sets ``found_inf`` to 1 on a NaN or an infinity. The flag
        is sticky, so the first bad step is the last step minus the number of flagged steps
        plus one, worked out when :meth:`check` reads them (one host sync).
        """
        torch._amp_foreach_non_finite_check_and_unscale_(checked, self.found_inf, self._one)
        if self.world.active:  # bad on any rank: every rank skips
            self.world.max_(self.found_inf)
        self._bad_steps += self.found_inf
        self._last_step = step
        return self.found_inf

    @property
    def first_bad(self) -> int:
        """The first step (1-based) whose loss or gradient was not finite; -1: none (one host
        sync)."""
        bad = int(self._bad_steps)
        return self._last_step - bad + 1 if bad else -1

    def check(
        self,
        model,
        kept: str,
        batch_of: Callable[[int], tuple[torch.Tensor, ...]],
        epoch_of: Callable[[int], int],
        cause: Exception | None = None,
        step: int | None = None,
    ) -> None:
        """Raise :class:`NonFiniteLossError` if a bad step was seen (one host sync).

        :param kept: what the stop leaves behind, for the message.
        :param batch_of: ``step -> (x, *inputs)`` of that (1-based) step of the current epoch.
        :param epoch_of: ``step -> epoch`` (1-based), for the message.
        :param cause: Pyro's validation error at step ``step``, which counts as bad.
        """
        bad = self.first_bad
        if bad < 0 and cause is None:
            return
        what = "the training loss or its gradient became non-finite"
        if bad < 0:
            bad = step
            what = "Pyro's validation refused a distribution parameter"
        # every rank traces (a failure there stops the others too, see World.each)
        term, detail = self.world.each(lambda: diagnose_non_finite(model, *batch_of(bad)))
        if self.world.active:  # each rank traced its own batch: the first that names a term
            found = self.world.gather_objects((term, detail))
            rank = next((r for r, (t, _) in enumerate(found) if t is not None), 0)
            term, detail = found[rank]
            detail = f"{detail} (rank {rank}'s batch)"
        epoch = epoch_of(bad)
        raise NonFiniteLossError(
            f"{what} at step {bad} (epoch {epoch}): {detail}. Training stopped; {kept}. "
            f"Lower --lr, add --grad-clip, check the data, or check that the model's "
            f"parameterization keeps every parameter in its constraint (a scale > 0).",
            step=bad,
            term=term,
        ) from cause


@torch.no_grad()
def diagnose_non_finite(model, x: torch.Tensor, *inputs: torch.Tensor) -> tuple[str | None, str]:
    """Which ELBO term of ``model`` is non-finite on the batch ``x``: one traced pass.

    The guide and then the model (replaying the guide's latent values) run under
    ``poutine.trace`` with validation on, and the log densities that enter the loss are read
    per site, whatever the sites are called: reconstruction = an observed site's
    ``log p(x | ...)``, KL = ``log q(z | ...) - log p(z | ...)`` of a latent site. A
    distribution parameter that validation rejects names its side: the guide's (the KL term)
    or the model's (the reconstruction term, or the prior's KL term).

    :returns: ``(term, sentence)``; ``term`` is ``"parameters"`` when parameters themselves
        are non-finite, ``"KL"``, ``"reconstruction"``, or ``None`` when this pass is finite
        (the fault depended on the random draw).
    """
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        names = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        return "parameters", f"the parameters {names} are non-finite"
    devices = [x.device] if x.is_cuda else []
    with torch.random.fork_rng(devices=devices):
        try:
            guide = poutine.trace(model.guide).get_trace(x, *inputs)
        except ValueError as e:
            if not invalid_distribution_argument(e):
                raise
            return "KL", f"the KL term: the guide's q(z|x) is invalid ({constraint_text(e)})"
        try:
            replayed = poutine.replay(model.model, trace=guide)
            trace = poutine.trace(replayed).get_trace(x, *inputs)
        except ValueError as e:
            if not invalid_distribution_argument(e):
                raise
            return "reconstruction", (
                f"the reconstruction term: the model's p(x|z) is invalid ({constraint_text(e)})"
            )
        guide.compute_log_prob()
        trace.compute_log_prob()
    kl = {
        s["name"]: s["log_prob"] - trace.nodes[s["name"]]["log_prob"] for s in latent_sites(guide)
    }  # (B,) each
    recon = {s["name"]: s["log_prob"] for s in observed_sites(trace)}  # (B,) each
    bad_kl = [name for name, t in kl.items() if not torch.isfinite(t).all()]
    bad_recon = [name for name, t in recon.items() if not torch.isfinite(t).all()]
    if bad_kl:
        also = "finite" if not bad_recon else "non-finite too"
        return "KL", (
            f"the KL term log q(z|x) - log p(z) is non-finite at site {bad_kl[0]!r} "
            f"(reconstruction: {also})"
        )
    if bad_recon:
        return "reconstruction", (
            f"the reconstruction term log p(x|z) is non-finite at site {bad_recon[0]!r} "
            f"(KL: finite)"
        )
    return None, (
        "one traced pass of that batch with the same parameters gives finite terms: the "
        "gradient was non-finite, or the fault depended on the random draw of z"
    )


def non_finite_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> str | None:
    """The first parameter or optimizer state of ``module`` that holds a NaN or an infinity,
    by name (``None``: all finite); one host sync.

    The guard checks the loss and the gradients before each update; an update can still
    overflow (a learning rate too large), and a checkpoint must never keep what it made.
    """
    names = {p: name for name, p in module.named_parameters()}
    named = [(name, p) for name, p in module.named_parameters()]
    for p, slots in optimizer.state.items():
        for key, t in slots.items():
            if isinstance(t, torch.Tensor) and t.dim() > 0:
                named.append((f"the optimizer's {key} of {names.get(p, 'a parameter')}", t))
    named = [(name, t) for name, t in named if t.is_floating_point()]
    if not named:
        return None
    finite = torch.stack([t.isfinite().all() for _, t in named])  # (n,)
    if bool(finite.all()):
        return None
    return named[int((~finite).nonzero()[0, 0])][0]


@dataclass
class DivergenceWatch:
    """Stops a diverged run: a loss that stays finite but rises by orders of magnitude above
    the best seen (``--lr 1e6`` with a Bernoulli likelihood reaches a loss of 1e27 nats).

    The loss per datapoint is read at the loop's host syncs (every ``log_every`` steps); a
    run has diverged when it exceeds the best by ``factor * max(|best|, 1)``.

    :param factor: how far above the best counts as diverged (``0``: never).
    :ivar best: the lowest loss per datapoint seen.
    """

    factor: float
    best: float = math.inf

    def diverged(self, loss: float) -> bool:
        """Record ``loss`` (per datapoint); whether it shows the run has diverged."""
        if self.factor > 0 and math.isfinite(self.best):
            if loss - self.best > self.factor * max(abs(self.best), 1.0):
                return True
        self.best = min(self.best, loss)
        return False


def non_finite_parameter(error: ValueError, model) -> bool:
    """Whether ``error``, raised by a step, comes from a non-finite parameter or from Pyro's
    refusal of a distribution parameter: a bad step for :class:`NonFiniteGuard` to name."""
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        return True
    return invalid_distribution_argument(error)

"""The training loop: the only one in pyro-vae.

One torch optimizer over every parameter of the model, the loss from a Pyro estimator's
``differentiable_loss`` (recorded once per batch shape and replayed, see
:class:`~pyro_vae.infer.CapturedLoss`), data held on the training device and indexed by a
random permutation there (no per-item DataLoader), binarization and dequantization per batch
on the device, and the loss read back only every ``log_every`` steps: no host sync per step.

Validation: every datapoint is checked against the likelihood's support before the first step;
Pyro's validation runs on the first batch of each shape (when the loss is recorded), and on
every step where the program runs uncaptured; the loss and gradients are checked for
finiteness on the device every step.

Several processes (``torchrun``, see :mod:`pyro_vae.distributed`): each rank trains on its
shard of every epoch's permutation with its own random stream, DDP averages the gradients,
and the ranks agree between steps on a stop request and on every check, so they stop at the
same step; rank 0 alone writes the run directory.

Faults stop training without losing work: a non-finite loss is caught on the device and named
(step and ELBO term); Ctrl-C (SIGINT), SIGTERM or SIGHUP writes a checkpoint between two
steps, from which
``resume`` continues bit-identically; a full disk or an unwritable run directory stops with
the previous checkpoint intact. Checkpoints are written atomically, so a process killed at any
moment leaves a ``checkpoint.pt`` that loads.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
from pyro.infer.elbo import ELBO
from torch import nn
from tqdm.auto import tqdm

from pyro_vae.config import TrainConfig, resolve_device
from pyro_vae.data import Preprocess
from pyro_vae.distributed import World, current, rank_seed
from pyro_vae.eval.bounds import evaluate_elbo, heldout_choice
from pyro_vae.eval.plots import write_pictures
from pyro_vae.infer import check_beta, estimator_refusal
from pyro_vae.signals import Interrupted, StopRequest, signal_name
from pyro_vae.train.checkpoint import Checkpointer
from pyro_vae.train.checks import (
    check_data,
    check_sizes,
    check_step_memory,
    probe,
    step_memory,
)
from pyro_vae.train.state import EpochCursor, Schedule, TrainState
from pyro_vae.train.step import (
    DivergedError,
    DivergenceWatch,
    NonFiniteLossError,
    TrainStep,
    make_scheduler,
    non_finite_parameter,
    non_finite_state,
)
from pyro_vae.train.tensorboard import TensorBoardLog
from pyro_vae.validation import constraint_text, invalid_distribution_argument, validation_on


class TrainingInterrupted(Interrupted):
    """A stop signal (Ctrl-C, SIGTERM, SIGHUP) stopped :func:`fit` between two steps, after it
    saved a checkpoint.

    :ivar step: steps done; ``checkpoint.pt`` holds the state after this step.
    :ivar run_dir: where the checkpoint is (``None``: no run directory, nothing was saved).
    :ivar signum: the signal (the command line exits with ``128 + signum``).
    """

    def __init__(self, step: int, run_dir: Path | None, signum: int = signal.SIGINT):
        super().__init__(signum)
        where = f"resume with pyro-vae train --resume {run_dir}" if run_dir else "nothing saved"
        self.args = (f"interrupted by {signal_name(signum)} at step {step}; {where}",)
        self.step, self.run_dir = step, run_dir


@dataclass
class TrainResult:
    """What :func:`fit` returns.

    :ivar model: the trained model (also ``vae``, its earlier name).
    :ivar metrics: one dict per epoch (see :data:`pyro_vae.train.rundir.METRIC_FIELDS`).
    :ivar best_test_elbo: best held-out ELBO per datapoint (nats), ``nan`` without test data.
    :ivar capture: how the steps ran the loss: ``graph``, ``compile`` or ``eager: <why>``
        (see :class:`~pyro_vae.infer.CapturedLoss`).
    :ivar test_elbo_estimator: how the held-out ELBO is estimated for this model (the analytic
        KL where it applies, else a Monte Carlo KL; see
        :func:`~pyro_vae.eval.bounds.heldout_choice`).
    """

    model: nn.Module
    run_dir: Path | None
    metrics: list[dict] = field(default_factory=list)
    best_test_elbo: float = math.nan
    capture: str = ""
    test_elbo_estimator: str = ""

    @property
    def vae(self) -> nn.Module:
        """The trained model (its name before models other than the VAE)."""
        return self.model

    @property
    def test_elbo(self) -> float:
        """Held-out ELBO per datapoint after the last epoch."""
        return self.metrics[-1]["test_elbo"] if self.metrics else math.nan


@validation_on
def fit(
    model: nn.Module,
    train: torch.Tensor,
    test: torch.Tensor | None = None,
    config: TrainConfig = TrainConfig(),
    *,
    preprocess: Preprocess = Preprocess(),
    out: str | Path | None = None,
    run_config: dict | None = None,
    resume: bool = False,
    train_inputs: Sequence[torch.Tensor] = (),
    test_inputs: Sequence[torch.Tensor] = (),
    world: World | None = None,
) -> TrainResult:
    """Train ``model`` (any model of :mod:`pyro_vae.models.protocol`) on ``train`` and evaluate
    the held-out ELBO on ``test`` every epoch.

    With a run directory, ``checkpoint.pt`` is written before the first step (so the folder is
    proven writable and a run killed at any moment can be resumed), after every epoch, and on
    Ctrl-C; ``best.pt`` after every epoch that improves the score (see
    :class:`~pyro_vae.train.checkpoint.Checkpointer`), so ``resume`` continues bit-identically
    on CPU from any of them.

    :param train: ``(N, *event_shape)``; uint8 levels or floats, as :class:`Preprocess` expects.
    :param test: held-out data of the same kind, or ``None``.
    :param config: optimization settings.
    :param preprocess: per-batch binarization / dequantization.
    :param out: run directory for checkpoints, metrics and pictures (``None``: keep nothing).
    :param run_config: the full configuration saved in checkpoints (by
        :func:`~pyro_vae.runs.run_training`).
    :param resume: continue from ``out/checkpoint.pt`` exactly where it stopped.
    :param train_inputs: the model's extra inputs (``model.inputs``, e.g. the labels), each
        ``(N, ...)``: indexed with the same permutation as ``train``.
    :param test_inputs: the same for ``test``.
    :param world: the processes of the run (default: :func:`~pyro_vae.distributed.current`,
        the initialized process group or one process).
    :raises NonFiniteLossError: if the loss becomes NaN or infinite; names the step and term,
        and keeps the last checkpoint.
    :raises TrainingInterrupted: on Ctrl-C (SIGINT), SIGTERM or SIGHUP, read between two
        steps, after writing ``checkpoint.pt``.
    :raises RunDirectoryError: the run directory is not writable, is locked by another
        process, or (a new run) is not empty, before training; or a checkpoint write failed
        (e.g. a full disk), and the previous checkpoint is intact.
    :raises CheckpointError: on ``resume``, an unreadable checkpoint or one of another
        configuration; nothing is written then.
    :raises ValueError: data outside the model's support, or an estimator that does not apply
        to the model (named, with what to use instead), before any step.
    :raises PeerError: with several ranks, another rank failed or stopped answering.

    Under an initialized :mod:`torch.distributed` process group (``torchrun``), every rank
    calls ``fit`` with the same arguments: each trains on its shard of the data (see
    :class:`~pyro_vae.train.state.Schedule`) with batch ``config.batch_size``, rank ``r > 0``
    reseeds its random stream with ``rank_seed(config.seed, r)``, and only rank 0 writes to
    ``out`` and shows progress.
    """
    world = world or current(config.dist_timeout)
    cfg = _for_rank(config, world)
    # --tensorboard refuses before anything is written (on rank 0; the others then stop too)
    board = world.main_then_others(TensorBoardLog.start, cfg, out)
    check_beta(cfg.estimator, cfg.beta, warmup=cfg.warmup_epochs > 0)
    device = world.own(resolve_device(cfg.device))
    model.to(device)
    train, train_inputs = train.to(device), tuple(t.to(device) for t in train_inputs)
    if test is None or len(test) == 0:  # --test-size 0
        test, test_inputs = None, ()
    else:
        test, test_inputs = test.to(device), tuple(t.to(device) for t in test_inputs)
    # rank 0 first: a refusal is said once, and the other ranks (same data) then pass
    held_out, how = world.main_then_others(
        _preflight, model, cfg, preprocess, train, train_inputs, test, test_inputs
    )
    pictured = (test, test_inputs) if test is not None else (train, train_inputs)

    schedule = Schedule.of(len(train), cfg, world)
    step = TrainStep(model, cfg, device, world)
    scheduler = make_scheduler(step.optimizer, cfg, schedule.total_steps)
    saved = dict(run_config) if run_config is not None else {"train": dataclasses.asdict(config)}
    saved["test_elbo_estimator"] = how
    with Checkpointer(out, model, step.optimizer, scheduler, saved, resume, world) as checkpoints:
        state = checkpoints.restore(schedule, device) if resume else TrainState()
        run = _Run(model, train, train_inputs, test, test_inputs, preprocess, cfg, schedule,
                   step, scheduler, checkpoints, held_out, world)  # fmt: skip
        run.resume_at(state)
        model.train()
        with run.stop, warnings.catch_warnings():
            # the guard reports a NaN loss with its step and term; Pyro's would repeat it
            warnings.filterwarnings("ignore", "Encountered NaN", UserWarning)
            checkpoints.begin(state, None if run_config is None else saved)
            while state.epoch < cfg.epochs:
                run.end_epoch(state, run.run_epoch(state))
                board.epoch(model, state.metrics[-1], preprocess, *pictured)
        board.close()
        if checkpoints.run_dir is not None:
            x, inputs = pictured
            world.on_main(
                write_pictures, model, x, checkpoints.run_dir, state.metrics,
                preprocess=preprocess, inputs=inputs,
            )  # fmt: skip
    return TrainResult(model, checkpoints.run_dir, state.metrics, state.best, step.loss.mode, how)


def _for_rank(cfg: TrainConfig, world: World) -> TrainConfig:
    """The settings as this rank runs them: rank 0 shows progress and writes TensorBoard
    events; a rank ``r > 0`` is quiet and reseeds its random stream with
    ``rank_seed(seed, r)``, so the ranks draw independently."""
    if world.is_main:
        return cfg
    pyro.set_rng_seed(rank_seed(cfg.seed, world.rank))
    return dataclasses.replace(cfg, quiet=True, tensorboard=False)


def _preflight(
    model, cfg: TrainConfig, preprocess: Preprocess, train, train_inputs, test, test_inputs
) -> tuple[ELBO, str]:
    """Before the first step: the sizes, every datapoint against the model's support, the
    estimator against the model (one traced pass of two datapoints), the memory of a step,
    and the estimator of the held-out ELBO with how it takes the KL.

    :raises ValueError: naming what does not fit and what to do.
    """
    check_sizes(train, cfg.batch_size)
    check_data(model, train, preprocess, "training", train_inputs)
    if test is not None:
        check_data(model, test, preprocess, "test", test_inputs)
    first_two = _first_two(train, train_inputs, preprocess)
    traced = probe(model, *first_two)
    why = None if traced is None else estimator_refusal(cfg.estimator, *traced)
    if why is not None:
        raise ValueError(why)
    if traced is not None:  # else the first step names the invalid parameters
        check_step_memory(step_memory(model, cfg, *first_two), cfg, train.device)
    return heldout_choice(traced)


def _first_two(
    data: torch.Tensor, inputs: tuple[torch.Tensor, ...], preprocess: Preprocess
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Two datapoints as the model sees them, drawn under a forked RNG (the training's random
    stream is untouched)."""
    with torch.random.fork_rng(devices=[data.device] if data.is_cuda else []):
        return preprocess(data[:2]), tuple(t[:2] for t in inputs)


@dataclass
class _Epoch:
    """An epoch being trained: where it stands, its progress bar and when it started."""

    cursor: EpochCursor
    shard: torch.Tensor  # (shard_size,) this rank's datapoints of the epoch's permutation
    bar: tqdm
    started: float  # time.perf_counter() at its start, less the seconds before a resume


@dataclass
class _Run:
    """The parts of a training run that stay the same from step to step."""

    model: nn.Module
    train: torch.Tensor  # (N, *event_shape) on the device
    train_inputs: tuple[torch.Tensor, ...]  # each (N, ...) on the device
    test: torch.Tensor | None  # (M, *event_shape) on the device
    test_inputs: tuple[torch.Tensor, ...]  # each (M, ...) on the device
    preprocess: Preprocess
    cfg: TrainConfig
    schedule: Schedule
    step: TrainStep
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    checkpoints: Checkpointer
    held_out: ELBO  # the estimator of the held-out ELBO
    world: World = World()
    stop: StopRequest = field(default_factory=StopRequest)
    watch: DivergenceWatch = field(init=False)
    checked_step: int = field(init=False)  # the last step whose parameters were checked

    def __post_init__(self):
        self.watch = DivergenceWatch(self.cfg.divergence_factor)

    def resume_at(self, state: TrainState) -> None:
        """Continue the watches of a run from ``state`` (the best training loss so far)."""
        self.checked_step = state.step
        self.watch.best = min((-r["train_elbo"] for r in state.metrics), default=math.inf)

    def run_epoch(self, state: TrainState) -> _Epoch:
        """Train on the epoch's remaining batches, reading the loss every ``log_every`` steps.

        :raises TrainingInterrupted: on a stop request, after saving the epoch's cursor.
        """
        spe = self.schedule.steps_per_epoch
        cursor = state.cursor or EpochCursor.start(
            self.schedule.n, self.train.device, self.cfg.seed, state.epoch
        )
        state.cursor = None
        bar = tqdm(
            total=spe,
            initial=cursor.batch,
            desc=f"epoch {state.epoch + 1}/{self.cfg.epochs}",
            disable=self.cfg.quiet,
            leave=True,
            dynamic_ncols=True,
        )
        shard = self.schedule.shard_of(cursor.perm)  # this rank's datapoints
        epoch = _Epoch(cursor, shard, bar, time.perf_counter() - cursor.seconds)
        window_loss, window_n = torch.zeros((), device=self.train.device), 0
        for i in range(cursor.batch, spe):
            signum = self._stop_signal()
            if signum:
                self._interrupt(state, epoch, i, signum)
            x, inputs = self._batch(shard, i)  # (B, *event_shape), each (B, ...)
            loss = self._step(state, epoch, x, inputs)
            if state.step == 1:  # the untrained model's loss: the divergence check's baseline
                self.watch.diverged(self._rank_mean(loss.clone()))
            cursor.loss_sum += loss * x.shape[0]
            window_loss += loss
            window_n += 1
            bar.update()
            if state.step % self.cfg.log_every == 0 or i == spe - 1:
                self._check(state, epoch)
                mean_loss = self._rank_mean(window_loss / window_n)  # per datapoint
                self._check_divergence(state, epoch, mean_loss, "training loss")
                if not self.cfg.quiet:
                    bar.set_postfix(elbo=f"{-mean_loss:.2f}")
                window_loss.zero_()
                window_n = 0
        return epoch

    def end_epoch(self, state: TrainState, epoch: _Epoch) -> None:
        """The epoch's metrics (training ELBO, held-out ELBO, time), then its checkpoints."""
        loss_sum = self.world.sum_(epoch.cursor.loss_sum.clone())  # over the ranks
        train_elbo = -(loss_sum / self.schedule.datapoints_per_epoch).item()
        test_elbo = math.nan
        if self.test is not None:
            test_elbo = self._test_elbo(state, epoch)
        state.metrics.append(
            {
                "epoch": state.epoch + 1,
                "step": state.step,
                "train_elbo": train_elbo,
                "test_elbo": test_elbo,
                "seconds": time.perf_counter() - epoch.started,
                "lr": self.step.optimizer.param_groups[0]["lr"],
                "beta": getattr(self.model, "beta", 1.0),
            }
        )
        epoch.bar.set_postfix(train=f"{train_elbo:.2f}", test=f"{test_elbo:.2f}")
        epoch.bar.close()
        score = train_elbo if self.test is None else test_elbo
        improved = score > state.best
        state.best = max(state.best, score)
        state.epoch += 1
        self.checkpoints.end_epoch(state, improved)

    def _test_elbo(self, state: TrainState, epoch: _Epoch) -> float:
        """The held-out ELBO per datapoint; a test ELBO that diverged, or that Pyro's
        validation refuses on any rank's share (a distribution parameter made invalid by the
        update), stops every rank naming the step, before any checkpoint is written."""
        test_elbo, refusal = self._sharded_test_elbo()
        if refusal is not None:
            epoch.bar.close()
            raise NonFiniteLossError(
                f"the held-out ELBO after step {state.step} (epoch {state.epoch + 1}) could not "
                f"be computed: Pyro's validation refused a distribution parameter "
                f"({refusal}). Training stopped; {self.checkpoints.kept()}. Lower "
                f"--lr or add --grad-clip.",
                step=state.step,
                term=None,
            )
        if state.metrics and math.isfinite(state.best):
            watch = DivergenceWatch(self.cfg.divergence_factor, -state.best)
            if watch.diverged(-test_elbo):
                self._diverged(state, epoch, -test_elbo, watch.best, "held-out loss")
        return test_elbo

    def _sharded_test_elbo(self) -> tuple[float, str | None]:
        """The held-out ELBO per datapoint, each rank scoring its share of the test data, and
        the first rank's refusal by Pyro's validation (``None``: none), the same on every
        rank."""
        total, refusal = self.world.each(self._share_of_test_elbo)
        if self.world.active:
            refusal = next((r for r in self.world.gather_objects(refusal) if r), None)
        return (self.world.sum_(total) / len(self.test)).item(), refusal

    def _share_of_test_elbo(self) -> tuple[torch.Tensor, str | None]:
        """This rank's sum of the held-out ELBO over its share, and validation's refusal."""
        start, stop = self.world.block(len(self.test))
        total = torch.zeros((), dtype=torch.float64, device=self.test.device)
        if stop == start:
            return total, None
        try:
            part = evaluate_elbo(
                self.model, self.test[start:stop], self.preprocess,
                inputs=tuple(t[start:stop] for t in self.test_inputs), estimator=self.held_out,
            )  # fmt: skip
        except ValueError as e:
            if not invalid_distribution_argument(e):
                raise
            return total, constraint_text(e)
        return total + part * (stop - start), None

    def _rank_mean(self, loss: torch.Tensor) -> float:
        """A per-datapoint loss averaged over the ranks (each trains on as many datapoints):
        what every rank's checks read, so they decide alike."""
        return (self.world.sum_(loss) / self.world.size).item()

    def _stop_signal(self) -> int:
        """The stop signal asked for on any rank (0: none): every rank stops at this step."""
        signum = self.stop.signum or 0
        return self.world.max_int(signum) if self.world.active else signum

    def _batch(self, shard: torch.Tensor, batch: int) -> tuple[torch.Tensor, tuple]:
        """Batch ``batch`` of this rank's ``shard`` of the epoch, as the model sees it, and
        its extra inputs."""
        idx = self.schedule.indices(shard, batch)
        return self.preprocess(self.train[idx]), tuple(t[idx] for t in self.train_inputs)

    def _step(self, state: TrainState, epoch: _Epoch, x: torch.Tensor, inputs) -> torch.Tensor:
        """One optimizer step on ``x`` with this step's beta; the loss, on the device."""
        if hasattr(self.model, "beta"):
            self.model.beta = self.schedule.beta_at(state.step)
        try:
            # a recorded graph per batch shape once beta is constant (after warm-up)
            capture = not self.schedule.in_warmup(state.step)
            loss = self.step(x, state.step + 1, *inputs, capture=capture)
        except ValueError as e:
            # Pyro's validation (at a capture, or every step of an uncaptured program)
            # rejects a NaN distribution parameter before any loss exists
            if not non_finite_parameter(e, self.model):
                raise
            self._check(state, epoch, cause=e, step=state.step + 1)
            raise
        if self.scheduler is not None:
            self.scheduler.step()
        state.step += 1
        return loss

    def _check(self, state: TrainState, epoch: _Epoch, cause=None, step=None) -> None:
        """Stop with :class:`NonFiniteLossError` if the guard saw a bad step (one host sync)."""

        def batch_of(bad_step: int) -> tuple[torch.Tensor, ...]:
            x, inputs = self._batch(epoch.shard, self.schedule.batch_of_step(bad_step))
            return (x, *inputs)

        try:
            self.step.guard.check(
                self.model,
                self.checkpoints.kept(),
                batch_of,
                self.schedule.epoch_of_step,
                cause=cause,
                step=step,
            )
        except NonFiniteLossError:
            epoch.bar.close()
            raise
        bad = non_finite_state(self.model, self.step.optimizer)
        if bad is not None:
            epoch.bar.close()
            raise NonFiniteLossError(
                f"{bad} became non-finite in an update between steps {self.checked_step + 1} "
                f"and {state.step} (epoch {state.epoch + 1}), although every loss and gradient "
                f"was finite: the update overflowed. Training stopped; "
                f"{self.checkpoints.kept()}. Lower --lr, or add --grad-clip.",
                step=state.step,
                term="update",
            )
        self.checked_step = state.step

    def _check_divergence(self, state: TrainState, epoch: _Epoch, loss: float, what: str):
        """Stop with :class:`DivergedError` if ``loss`` shows the run diverged."""
        best = self.watch.best
        if self.watch.diverged(loss):
            self._diverged(state, epoch, loss, best, what)

    def _diverged(self, state: TrainState, epoch: _Epoch, loss: float, best: float, what: str):
        epoch.bar.close()
        raise DivergedError(
            f"the run diverged at step {state.step} (epoch {state.epoch + 1}): the {what} per "
            f"datapoint rose to {loss:.4g} nats from its best {best:.4g}, more than "
            f"--divergence-factor {self.cfg.divergence_factor:g} x max(|best|, 1) above it. "
            f"Training stopped; {self.checkpoints.kept()}. Lower --lr or add --grad-clip (or "
            f"raise --divergence-factor; 0 turns the check off).",
            step=state.step,
            term="diverged",
        )

    def _interrupt(self, state: TrainState, epoch: _Epoch, batch: int, signum: int) -> None:
        """Save the epoch's cursor at ``batch`` (after the guard's check) and stop."""
        epoch.bar.close()
        self._check(state, epoch)
        epoch.cursor.batch = batch
        epoch.cursor.seconds = time.perf_counter() - epoch.started
        self.checkpoints.save("checkpoint.pt", state, epoch.cursor)
        raise TrainingInterrupted(state.step, self.checkpoints.run_dir, signum)

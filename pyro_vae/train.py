"""The training loop: the only one in pyro-vae.

One torch optimizer over every parameter of the :class:`~pyro_vae.model.VAE`, the loss from a
Pyro estimator's ``differentiable_loss`` (recorded once per batch shape and replayed, see
:mod:`pyro_vae.capture`), data held on the training device and indexed by a random
permutation there (no per-item DataLoader), binarization and dequantization per batch on the
device, and the loss read back only every ``log_every`` steps: no host sync per step.

Validation: every datapoint is checked against the likelihood's support before the first step;
Pyro's validation runs on the first batch of each shape (when the loss is recorded), and on
every step where the program runs uncaptured; the loss and gradients are checked for
finiteness on the device every step.

Faults stop training without losing work: a non-finite loss is caught on the device and named
(step and ELBO term); Ctrl-C (SIGINT) writes a checkpoint between two steps, from which
``resume`` continues bit-identically; a full disk or an unwritable run directory stops with
the previous checkpoint intact. Checkpoints are written atomically, so a process killed at any
moment leaves a ``checkpoint.pt`` that loads.

:func:`fit` trains a VAE on tensors (the Python API); :func:`run_training` is what
``pyro-vae train`` calls: it loads data and builds the model from a :class:`RunConfig` first.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
from pyro import poutine
from tqdm.auto import tqdm

from pyro_vae import plots, rundir
from pyro_vae.checkpoint import CheckpointError, atomic_save, rng_state, safe_load, set_rng_state
from pyro_vae.config import RunConfig, TrainConfig
from pyro_vae.data import DataSplit, Preprocess, load_data
from pyro_vae.likelihoods import DataSupportError
from pyro_vae.capture import CapturedLoss
from pyro_vae.estimators import ESTIMATORS, check_beta, make_estimator
from pyro_vae.model import VAE, build_vae, evaluation_mode
from pyro_vae.rundir import RunDirectoryError

CHECK_CHUNK = 8192  # datapoints per chunk when checking the support before training


#: checkpoint layout written by :func:`fit` (1: epoch boundaries only; 2: adds mid-epoch state)
CHECKPOINT_FORMAT = 2


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; training stopped, checkpoints kept.

    :ivar step: the first step (1-based) whose loss was not finite.
    :ivar term: ``"reconstruction"``, ``"KL"``, ``"parameters"`` (they were already non-finite)
        or ``None`` (one traced pass could not reproduce it); see :func:`diagnose_non_finite`.
    """

    def __init__(self, message: str, step: int, term: str | None):
        super().__init__(message)
        self.step, self.term = step, term


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped :func:`fit` between two steps, after it saved a checkpoint.

    :ivar step: steps done; ``checkpoint.pt`` holds the state after this step.
    :ivar run_dir: where the checkpoint is (``None``: no run directory, nothing was saved).
    """

    def __init__(self, step: int, run_dir: Path | None):
        where = f"resume with pyro-vae train --resume {run_dir}" if run_dir else "nothing saved"
        super().__init__(f"interrupted at step {step}; {where}")
        self.step, self.run_dir = step, run_dir


@dataclass
class TrainResult:
    """What :func:`fit` returns.

    :ivar metrics: one dict per epoch (see :data:`pyro_vae.rundir.METRIC_FIELDS`).
    :ivar best_test_elbo: best held-out ELBO per datapoint (nats), ``nan`` without test data.
    :ivar capture: how the steps ran the estimator's loss.
    """

    vae: VAE
    run_dir: Path | None
    metrics: list[dict] = field(default_factory=list)
    best_test_elbo: float = math.nan
    #: how the steps ran the loss: ``graph``, ``compile`` or ``eager: <why>``
    #: (see :class:`~pyro_vae.capture.CapturedLoss`)
    capture: str = ""

    @property
    def test_elbo(self) -> float:
        """Held-out ELBO per datapoint after the last epoch."""
        return self.metrics[-1]["test_elbo"] if self.metrics else math.nan


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA device is available; use cpu")
    return torch.device(name)


def _validation_on(fn):
    """Run ``fn`` with Pyro's and torch's argument validation on, whatever ``python -O`` or the
    caller set (validation defaults to ``__debug__``); the previous setting is restored."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with pyro.validation_enabled(True):
            return fn(*args, **kwargs)

    return wrapper


def evaluate_elbo(
    vae: VAE, data: torch.Tensor, preprocess: Preprocess, batch_size: int = 1000
) -> float:
    """ELBO per datapoint in nats (higher is better) of ``data`` under the VAE.

    Uses the analytic-KL estimator with beta = 1 whatever the training objective, so numbers
    are comparable across estimators and warm-up schedules. One sync at the end.
    """
    if len(data) == 0:
        return math.nan
    est = make_estimator("meanfield")
    total = torch.zeros((), device=data.device)
    with evaluation_mode(vae):  # eval(), beta = 1, no_grad, validation on; restored after
        for i in range(0, len(data), batch_size):
            x = preprocess(data[i : i + batch_size])  # (b, *event_shape)
            total += est.differentiable_loss(vae.model, vae.guide, x)
    return -(total / len(data)).item()


def check_data(vae: VAE, data: torch.Tensor, preprocess: Preprocess, what: str) -> None:
    """Check every datapoint, as the model will see it, against the likelihood's support.

    First the likelihood's own check (its actionable message for the built-in likelihoods),
    then the support of the distribution it builds, whatever the likelihood (a custom one
    included): with the loss recorded as a graph, Pyro validates only the first batch.
    Runs under a forked RNG so the check draws nothing from the training's random stream.
    """
    vae.check_shape(data, what)
    support = _observation_support(vae, data)
    with torch.random.fork_rng(devices=[data.device] if data.is_cuda else []):
        for i in range(0, len(data), CHECK_CHUNK):
            x = preprocess(data[i : i + CHECK_CHUNK])  # (b, *event_shape)
            vae.likelihood.check_support(x)
            if support is None:
                continue
            try:
                inside = support.check(x).reshape(len(x), -1).all(-1)  # (b,)
            except NotImplementedError:  # a support that depends on the parameters
                support = None
                continue
            if not bool(inside.all()):
                first = i + int((~inside).nonzero()[0, 0])
                raise DataSupportError(
                    f"{what} datapoint {first} (and {int((~inside).sum()) - 1} more among "
                    f"datapoints {i}..{i + len(x) - 1}) lies outside the support of the "
                    f"{vae.likelihood.name or type(vae.likelihood).__name__} likelihood "
                    f"({support}). Transform the data, or choose a likelihood whose support "
                    f"holds them (pyro-vae diagnose lists the valid ones)."
                )


@torch.no_grad()
def _observation_support(vae: VAE, data: torch.Tensor):
    """The support of p(x | z) at z = 0, read from a real decoder output (so the
    distribution's parameters are valid), or ``None`` if they are not; a lookup, not a pass
    of the model, so the decoder's hooks are not run."""
    z = torch.zeros(1, vae.latent_dim, device=data.device)
    try:
        return vae.likelihood.distribution(vae.decoder.forward(z)).support
    except ValueError:  # invalid parameters already: the first step names them
        return None


def _make_optimizer(vae: VAE, cfg: TrainConfig) -> torch.optim.Optimizer:
    # fused: one kernel per step, and it honours ``found_inf`` (see _NonFiniteGuard)
    return torch.optim.Adam(vae.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


class TrainStep:
    """One optimization step of :func:`fit`, with no host sync.

    The estimator's loss per datapoint (recorded once per batch shape and replayed, see
    :class:`~pyro_vae.capture.CapturedLoss`), backward, a finiteness check of every gradient
    (their sum; the total norm when clipping with ``grad_clip``), the non-finite guard, and one
    fused Adam update that the guard can skip on the device. ``benchmarks/bench_train.py``
    times exactly this object.

    :ivar optimizer: the one torch optimizer over ``vae.parameters()``.
    :ivar guard: the :class:`_NonFiniteGuard`; call ``guard.check`` to read it.
    :ivar loss: the :class:`~pyro_vae.capture.CapturedLoss`; ``loss.mode`` says how it runs.
    """

    def __init__(self, vae: VAE, cfg: TrainConfig, device: torch.device):
        self.vae = vae
        self.grad_clip = cfg.grad_clip
        estimator = make_estimator(cfg.estimator, cfg.particles, alpha=cfg.alpha)
        spec = ESTIMATORS.get(cfg.estimator)
        self.loss = CapturedLoss(vae, estimator, cfg.capture, capturable=spec.capturable)
        self.optimizer = _make_optimizer(vae, cfg)
        self._params = list(vae.parameters())  # the optimizer's, in its order
        self.guard = _NonFiniteGuard(device)

    def __call__(self, x: torch.Tensor, step: int, capture: bool = True) -> torch.Tensor:
        """Train on the batch ``x`` as step ``step`` (1-based); return the loss (detached).

        :param capture: ``False`` runs the Pyro program itself (e.g. while beta changes every
            step during warm-up, where a recorded graph would be used once).
        """
        loss = (self.loss(x) if capture else self.loss.eager(x)) / x.shape[0]
        detached = loss.detach()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is not None:
            grad_check = torch.nn.utils.clip_grad_norm_(self._params, self.grad_clip)
        else:  # finite iff every gradient is (barring overflow); half the cost of a norm
            sums = [p.grad.sum() for p in self._params if p.grad is not None]
            grad_check = torch.stack(sums).sum() if sums else detached.new_zeros(())
        # stays on the device: a finite loss with a non-finite gradient is a bad step too (it
        # would poison every parameter); from the first bad step on, updates are skipped
        self.optimizer.found_inf = self.guard.observe(detached, grad_check, step)
        self.optimizer.step()
        return detached


class _NonFiniteGuard:
    """Watches the loss and the gradient for NaN/inf on the device, with no host sync per step.

    Each step records, on the device, the first step whose loss or gradient is not finite (a
    few scalar operations). From that step on, the fused Adam update is skipped on the device
    through the optimizer's ``found_inf`` (the mechanism :class:`torch.amp.GradScaler` uses),
    so a bad step changes no parameter. When the flag is read (every ``log_every`` steps,
    before any checkpoint, or at once when Pyro's validation rejects a NaN distribution
    parameter), the model still holds the parameters of the last good step, and
    :func:`diagnose_non_finite` traces that step's batch (rebuilt from the epoch's
    permutation by ``batch_of``) with them to name the term that failed.
    """

    def __init__(self, device: torch.device):
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def observe(self, loss: torch.Tensor, grad_check: torch.Tensor, step: int) -> torch.Tensor:
        """Record step ``step`` (1-based); return ``found_inf`` for the optimizer.

        :param grad_check: a scalar that is finite iff every gradient is (a sum or a norm).
        """
        bad = ~torch.isfinite(loss + grad_check)
        self.first_bad = torch.where(bad & (self.first_bad < 0), step, self.first_bad)
        return (self.first_bad >= 0).to(torch.float32)

    def check(
        self,
        vae: VAE,
        steps_per_epoch: int,
        kept: str,
        batch_of,
        cause: Exception | None = None,
        step: int | None = None,
    ) -> None:
        """Raise :class:`NonFiniteLossError` if a bad step was seen (one host sync).

        :param batch_of: ``step -> batch`` of that (1-based) step of the current epoch.
        :param cause: Pyro's validation error at step ``step``, which counts as bad.
        """
        bad = int(self.first_bad)
        if bad < 0 and cause is None:
            return
        what = "the training loss or its gradient became non-finite"
        if bad < 0:
            bad = step
            what = "Pyro's validation refused a distribution parameter"
        term, detail = diagnose_non_finite(vae, batch_of(bad))
        epoch = (bad - 1) // steps_per_epoch + 1
        raise NonFiniteLossError(
            f"{what} at step {bad} (epoch {epoch}): {detail}. Training stopped; {kept}. "
            f"Lower --lr, add --grad-clip, check the data, or check that the model's "
            f"parameterization keeps every parameter in its constraint (a scale > 0).",
            step=bad,
            term=term,
        ) from cause


@torch.no_grad()
def diagnose_non_finite(vae: VAE, x: torch.Tensor) -> tuple[str | None, str]:
    """Which ELBO term of ``vae`` is non-finite on the batch ``x``: one traced pass.

    The guide and then the model (replaying the guide's ``z``) run under ``poutine.trace``
    with validation on, and the log densities that enter the loss are read per site:
    reconstruction = the ``x`` site's ``log p(x|z)``, KL = ``log q(z|x) - log p(z)`` of the
    ``z`` sites. A distribution parameter that validation rejects names its side: the encoder's
    ``q(z|x)`` (the KL term) or the decoder's ``p(x|z)`` (reconstruction).

    :returns: ``(term, sentence)``; ``term`` is ``"parameters"`` when parameters themselves
        are non-finite, ``"KL"``, ``"reconstruction"``, or ``None`` when this pass is finite
        (the fault depended on the random draw).
    """
    bad = [name for name, p in vae.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        names = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        return "parameters", f"the parameters {names} are non-finite"
    devices = [x.device] if x.is_cuda else []
    with torch.random.fork_rng(devices=devices):
        try:
            guide = poutine.trace(vae.guide).get_trace(x)
        except ValueError as e:
            if not _invalid_distribution_argument(e):
                raise
            return "KL", f"the KL term: the guide's q(z|x) is invalid ({_constraint(e)})"
        try:
            model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x)
        except ValueError as e:
            if not _invalid_distribution_argument(e):
                raise
            return "reconstruction", (
                f"the reconstruction term: the model's p(x|z) is invalid ({_constraint(e)})"
            )
        guide.compute_log_prob()
        model.compute_log_prob()
    recon = model.nodes["x"]["log_prob"]  # (B,)
    kl = guide.nodes["z"]["log_prob"] - model.nodes["z"]["log_prob"]  # (B,)
    recon_ok, kl_ok = bool(torch.isfinite(recon).all()), bool(torch.isfinite(kl).all())
    if not kl_ok:
        also = "finite" if recon_ok else "non-finite too"
        return "KL", f"the KL term log q(z|x) - log p(z) is non-finite (reconstruction: {also})"
    if not recon_ok:
        return "reconstruction", "the reconstruction term log p(x|z) is non-finite (KL: finite)"
    return None, (
        "one traced pass of that batch with the same parameters gives finite terms: the "
        "gradient was non-finite, or the fault depended on the random draw of z"
    )


class _StopRequest:
    """SIGINT (Ctrl-C) sets a flag that the loop reads between steps, so a checkpoint is never
    taken in the middle of an optimizer update; a second SIGINT interrupts at once.

    Installed only in the main thread (the only one Python delivers signals to); the previous
    handler is restored on exit.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        self._installed = False

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            previous = self._previous if self._previous is not None else signal.default_int_handler
            signal.signal(signal.SIGINT, previous)
            self._installed = False


@_validation_on
def fit(
    vae: VAE,
    train: torch.Tensor,
    test: torch.Tensor | None = None,
    config: TrainConfig = TrainConfig(),
    *,
    preprocess: Preprocess = Preprocess(),
    out: str | Path | None = None,
    run_config: dict | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train ``vae`` on ``train`` and evaluate the held-out ELBO on ``test`` every epoch.

    With a run directory, ``checkpoint.pt`` is written before the first step (so the folder is
    proven writable and a run killed at any moment can be resumed), after every epoch, and on
    Ctrl-C; ``best.pt`` after every epoch that improves the score. A checkpoint holds the model,
    optimizer, LR schedule, every RNG state, epoch, step, the metrics so far and, mid-epoch,
    the epoch's permutation, the next batch index and the epoch's loss sum, so ``resume``
    continues bit-identically on CPU from any of them.

    :param train: ``(N, *event_shape)``; uint8 levels or floats, as :class:`Preprocess` expects.
    :param test: held-out data of the same kind, or ``None``.
    :param config: optimization settings.
    :param preprocess: per-batch binarization / dequantization.
    :param out: run directory for checkpoints, metrics and pictures (``None``: keep nothing).
    :param run_config: the full configuration saved in checkpoints (by :func:`run_training`).
    :param resume: continue from ``out/checkpoint.pt`` exactly where it stopped.
    :raises NonFiniteLossError: if the loss becomes NaN or infinite; names the step and term,
        and keeps the last checkpoint.
    :raises TrainingInterrupted: on Ctrl-C (SIGINT), after writing ``checkpoint.pt``.
    :raises RunDirectoryError: the run directory is not writable (before training), or a
        checkpoint write failed (e.g. a full disk); the previous checkpoint is intact.
    :raises CheckpointError: on ``resume``, an unreadable checkpoint or one of another
        configuration; nothing is written then.

    .. warning:: Without ``resume``, ``out`` must not hold a checkpoint already: a new run
        would overwrite it.
    """
    cfg = config
    check_beta(cfg.estimator, cfg.beta, warmup=cfg.warmup_epochs > 0)
    device = resolve_device(cfg.device)
    vae.to(device)
    train = train.to(device)
    test = None if test is None or len(test) == 0 else test.to(device)  # --test-size 0
    n = len(train)
    if n == 0:
        raise ValueError("the training data are empty")
    if cfg.batch_size > n:
        raise ValueError(
            f"batch size {cfg.batch_size} is larger than the {n} training datapoints; "
            f"lower --batch-size"
        )
    check_data(vae, train, preprocess, "training")
    if test is not None:
        check_data(vae, test, preprocess, "test")

    run_dir = None if out is None else rundir.prepare(out)
    if resume and run_dir is None:
        raise ValueError("resume=True needs the run directory (out=...)")
    if run_dir is not None and not resume and (run_dir / "checkpoint.pt").exists():
        raise FileExistsError(
            f"{run_dir} already holds a run (checkpoint.pt); continue it with "
            f"pyro-vae train --resume {run_dir}, or choose another --out"
        )
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = cfg.warmup_epochs * steps_per_epoch
    train_step = TrainStep(vae, cfg, device)
    optimizer = train_step.optimizer
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
        if cfg.lr_schedule == "cosine"
        else None
    )
    saved_config = run_config if run_config is not None else {"train": dataclasses.asdict(cfg)}

    epoch, step, best = 0, 0, -math.inf
    metrics: list[dict] = []
    mid_epoch = None  # (perm, next batch, loss sum, seconds) of an epoch a checkpoint cut
    saved_step: int | None = None  # step of the last checkpoint.pt written or resumed from
    if resume:
        state = load_checkpoint(run_dir / "checkpoint.pt", vae, saved_config, device)
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # the flags come back from the file: keep ours
            group["fused"], group["foreach"] = True, None
        if scheduler is not None and state.get("scheduler") is not None:
            if state["scheduler"].get("T_max") != scheduler.T_max:
                # torch's cosine schedule is recursive in the last lr: it cannot be re-spanned
                raise CheckpointError(
                    f"this run's cosine learning-rate schedule spans "
                    f"{state['scheduler'].get('T_max')} steps; resuming with another --epochs "
                    f"would change it mid-run. Resume with the run's own --epochs, or start a "
                    f"new run (or use --lr-schedule constant, which can be extended)"
                )
            scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        epoch, step, best = state["epoch"], state["step"], state["best_test_elbo"]
        if "metrics" in state:
            metrics = list(state["metrics"])
        else:  # format 1
            metrics = [r for r in rundir.read_metrics(run_dir) if r["epoch"] <= epoch]
        if state.get("perm") is not None:
            mid_epoch = _restore_mid_epoch(state, n, steps_per_epoch, device)
        saved_step = step
        rundir.remove_stale_temp_files(run_dir)

    def written(path: Path, write) -> None:
        """Run ``write``; turn a failure (full disk, ...) into a clear stop."""
        try:
            write()
        except OSError as e:
            if step == 0 and not resume:
                what, then = "before training; nothing was trained", "start again"
            else:
                what = f"at step {step}; training stopped. {kept_text()}"
                then = f"resume with pyro-vae train --resume {run_dir}"
            raise RunDirectoryError(
                f"could not write {path} {what} ({e.strerror or e}); no temporary file is "
                f"left. Make room, then {then}",
                e.errno,
            ) from e

    def save(path: Path, batch: int = 0, perm=None, epoch_loss=None, seconds=0.0) -> None:
        nonlocal saved_step
        state = {
            "format": CHECKPOINT_FORMAT,
            "model": vae.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "rng": rng_state(),
            "epoch": epoch,
            "step": step,
            "batch": batch,
            "perm": perm,
            "epoch_loss": epoch_loss,
            "epoch_seconds": seconds,
            "best_test_elbo": best,
            "metrics": metrics,
            "config": saved_config,
        }
        written(path, lambda: atomic_save(state, path))
        if path.name == "checkpoint.pt":
            saved_step = step

    def kept_text() -> str:
        if run_dir is None:
            return "no run directory was given, so nothing was saved"
        if saved_step is None or saved_step == 0:
            return "no checkpoint of trained parameters was written yet"
        return f"{run_dir / 'checkpoint.pt'} from step {saved_step} is kept"

    stop = _StopRequest()
    guard = train_step.guard
    vae.train()
    with stop, warnings.catch_warnings():
        # the guard reports a NaN loss with its step and term; Pyro's warning would repeat it
        warnings.filterwarnings("ignore", "Encountered NaN", UserWarning)
        if resume:
            written(run_dir / "metrics.jsonl", lambda: rundir.write_metrics(run_dir, metrics))
        elif run_dir is not None:
            if run_config is not None:
                written(run_dir / "config.json", lambda: rundir.write_config(run_dir, run_config))
            save(run_dir / "checkpoint.pt")  # step 0: proves the folder takes a checkpoint
        for epoch in range(epoch, cfg.epochs):  # noqa: B020 (epoch persists into save())
            if mid_epoch is not None:
                perm, first, epoch_loss, seconds_before = mid_epoch
                mid_epoch = None
            else:
                perm = torch.randperm(n, device=device)  # (N,) on the device
                first, epoch_loss, seconds_before = 0, torch.zeros((), device=device), 0.0
            start = time.perf_counter() - seconds_before
            bar = tqdm(
                total=steps_per_epoch,
                initial=first,
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
                disable=cfg.quiet,
                leave=True,
                dynamic_ncols=True,
            )
            window_loss, window_n = torch.zeros((), device=device), 0

            def batch_of(bad_step: int, perm=perm, epoch=epoch) -> torch.Tensor:
                j = bad_step - 1 - epoch * steps_per_epoch  # its batch in this epoch
                return preprocess(train[perm[j * cfg.batch_size : (j + 1) * cfg.batch_size]])

            for i in range(first, steps_per_epoch):
                if stop.requested:
                    bar.close()
                    guard.check(vae, steps_per_epoch, kept_text(), batch_of)
                    if run_dir is not None:
                        save(run_dir / "checkpoint.pt", i, perm, epoch_loss,
                             time.perf_counter() - start)
                    raise TrainingInterrupted(step, run_dir)
                idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
                x = preprocess(train[idx])  # (B, *event_shape)
                vae.beta = (
                    cfg.beta * min(1.0, (step + 1) / warmup_steps) if warmup_steps else cfg.beta
                )
                try:
                    # a recorded graph per batch shape once beta is constant (after warm-up)
                    detached = train_step(x, step + 1, capture=step >= warmup_steps)
                except ValueError as e:
                    # Pyro's validation (at a capture, or every step of an uncaptured program)
                    # rejects a NaN distribution parameter before any loss exists
                    if not _non_finite_parameter(e, vae):
                        raise
                    bar.close()
                    guard.check(
                        vae, steps_per_epoch, kept_text(), batch_of, cause=e, step=step + 1
                    )
                    raise
                if scheduler is not None:
                    scheduler.step()
                step += 1
                epoch_loss += detached * x.shape[0]
                window_loss += detached
                window_n += 1
                bar.update()
                if step % cfg.log_every == 0 or i == steps_per_epoch - 1:
                    guard.check(vae, steps_per_epoch, kept_text(), batch_of)
                    if not cfg.quiet:
                        bar.set_postfix(elbo=f"{-(window_loss / window_n).item():.2f}")
                    window_loss.zero_()
                    window_n = 0
            train_elbo = -(epoch_loss / n).item()
            test_elbo = math.nan if test is None else evaluate_elbo(vae, test, preprocess)
            row = {
                "epoch": epoch + 1,
                "step": step,
                "train_elbo": train_elbo,
                "test_elbo": test_elbo,
                "seconds": time.perf_counter() - start,
                "lr": optimizer.param_groups[0]["lr"],
                "beta": vae.beta,
            }
            metrics.append(row)
            bar.set_postfix(train=f"{train_elbo:.2f}", test=f"{test_elbo:.2f}")
            bar.close()
            score = train_elbo if test is None else test_elbo
            improved = score > best
            best = max(best, score)
            epoch += 1
            if run_dir is not None:
                # best.pt first: a kill between the two writes redoes this epoch on resume,
                # which rewrites the same best.pt; the other order could lose it
                if improved:
                    save(run_dir / "best.pt")
                save(run_dir / "checkpoint.pt")
                written(run_dir / "metrics.jsonl", lambda: rundir.write_metrics(run_dir, metrics))
    if run_dir is not None:
        write_pictures(vae, test if test is not None else train, preprocess, run_dir, metrics)
    return TrainResult(vae=vae, run_dir=run_dir, metrics=metrics, best_test_elbo=best,
                       capture=train_step.loss.mode)


def _restore_mid_epoch(state: dict, n: int, steps_per_epoch: int, device) -> tuple:
    perm, batch = state["perm"], state.get("batch", 0)
    if (
        not isinstance(perm, torch.Tensor)
        or perm.shape != (n,)
        or not 0 <= batch < steps_per_epoch
        or state["step"] != state["epoch"] * steps_per_epoch + batch
    ):
        raise CheckpointError(
            f"the mid-epoch state in the checkpoint (batch {batch} of {steps_per_epoch}, "
            f"permutation of {None if perm is None else tuple(perm.shape)}) does not fit "
            f"{n} training datapoints in batches of this size"
        )
    return perm.to(device), batch, state["epoch_loss"].to(device), state.get("epoch_seconds", 0.0)


def _invalid_distribution_argument(error: ValueError) -> bool:
    """Whether ``error`` is torch's validation error for a distribution parameter (e.g. NaN)."""
    return "Expected parameter" in str(error)


def _constraint(error: ValueError) -> str:
    """torch's invalid-argument message, without the dump of the tensor's values."""
    return str(error).split(", but found invalid values")[0] + ", but found invalid values"


def _non_finite_parameter(error: ValueError, vae: VAE) -> bool:
    if not all(torch.isfinite(p).all() for p in vae.parameters()):
        return True
    return _invalid_distribution_argument(error)


def write_pictures(
    vae: VAE, data: torch.Tensor, preprocess: Preprocess, run_dir: Path, metrics: list[dict]
) -> None:
    """reconstructions.png, samples.png and curves.png; draws under a forked, seeded RNG."""
    devices = [data.device] if data.is_cuda else []
    with evaluation_mode(vae), torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        x = preprocess(data[:8])
        plots.save_reconstructions(x, vae.reconstruct(x), run_dir / "reconstructions.png")
        mean, _ = vae.sample(64)
        plots.save_grid(mean, run_dir / "samples.png")
    if metrics:
        plots.plot_curves(metrics, run_dir / "curves.png")


def load_checkpoint(
    path: str | Path, vae: VAE, expected_config: dict | None = None, device="cpu"
) -> dict:
    """Load a checkpoint (``weights_only=True``) into ``vae`` and return it.

    :param expected_config: the configuration the checkpoint must have been written under;
        every setting but those in :data:`RESUMABLE` must match.
    :raises CheckpointError: unreadable, truncated or unsafe file, or a checkpoint of another
        model/config (the message lists every mismatching setting or parameter). Nothing is
        loaded into ``vae`` then.
    """
    state = safe_load(path, map_location=device)
    missing = {"model", "optimizer", "rng", "epoch", "step", "config"} - set(state)
    if missing:
        raise CheckpointError(f"{path} is not a pyro-vae checkpoint (missing {sorted(missing)})")
    if state.get("format", 1) > CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {state['format']}, newer than this pyro-vae reads "
            f"({CHECKPOINT_FORMAT}); update pyro-vae"
        )
    if expected_config is not None:
        diffs = _config_diff(state["config"], expected_config)
        if diffs:
            raise CheckpointError(
                f"{path} was written for another configuration: " + "; ".join(diffs)
                + ". Use the checkpoint's settings, or start a new run with another --out."
            )
    try:
        vae.load_state_dict(state["model"])
    except RuntimeError as e:
        detail = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise CheckpointError(f"{path} holds parameters of another model: {detail}") from e
    return state


#: settings that may differ on resume (the rest must match the checkpoint)
RESUMABLE = frozenset(
    {"epochs", "quiet", "log_every", "device", "data_dir", "download", "capture"}
)

#: facts about the data recorded beside the settings; a resumed run must see the same
_DATA_FACTS = ("event_shape", "num_train", "num_test")


def _config_diff(saved: dict, expected: dict) -> list[str]:
    # as config.json holds them: tuples and lists compare equal
    saved, expected = json.loads(json.dumps(saved)), json.loads(json.dumps(expected))
    diffs = []
    for section in ("model", "data", "train"):
        a, b = saved.get(section), expected.get(section)
        if a is None or b is None:  # e.g. fit() without run_config records train only
            continue
        for key in sorted(set(a) | set(b)):
            if key not in RESUMABLE and a.get(key) != b.get(key):
                diffs.append(f"{section}.{key}: checkpoint {a.get(key)!r}, now {b.get(key)!r}")
    for key in _DATA_FACTS:
        if key in saved and key in expected and saved[key] != expected[key]:
            diffs.append(f"{key}: checkpoint {saved[key]!r}, now {expected[key]!r}")
    return diffs


def resolve_data(cfg: RunConfig) -> tuple[DataSplit, Preprocess, RunConfig]:
    """Load and prepare the data of ``cfg``; fill binarize/dequantize defaults from the data."""
    d = cfg.data
    split = load_data(
        d.dataset,
        data_dir=d.data_dir,
        test_size=d.test_size,
        seed=cfg.train.seed,
        num_shapes=d.num_shapes,
        download=d.download,
    )
    resolved = d.resolved(cfg.model.likelihood)
    if d.dequantize is None and not split.is_8bit:
        resolved = dataclasses.replace(resolved, dequantize=False)
    pre = Preprocess(resolved.binarize, resolved.dequantize, cfg.train.seed)
    return pre.prepare(split), pre, dataclasses.replace(cfg, data=resolved)


def run_training(cfg: RunConfig, out: str | Path | None = None, resume: bool = False) -> TrainResult:
    """Load data, build the VAE and :func:`fit` it: ``pyro-vae train``."""
    pyro.set_rng_seed(cfg.train.seed)
    split, pre, cfg = resolve_data(cfg)
    m = cfg.model
    vae = build_vae(
        split.event_shape,
        m.likelihood,
        m.latent_dim,
        m.hidden,
        m.arch,
        m.activation,
        beta=cfg.train.beta,
        **m.likelihood_options(),
    )
    if out is None:
        out = rundir.default_run_dir(cfg.data.dataset, m.likelihood, cfg.train.estimator)
    full = {
        **cfg.to_dict(),
        "event_shape": list(split.event_shape),
        "num_train": len(split.train),
        "num_test": len(split.test),
        "environment": rundir.environment(),
    }
    return fit(
        vae, split.train, split.test, cfg.train, preprocess=pre, out=out, run_config=full,
        resume=resume,
    )


def load_run(run_dir: str | Path, which: str = "best", device: str = "cpu") -> tuple[VAE, dict]:
    """Rebuild the VAE of a run directory from ``config.json`` and ``<which>.pt``.

    :raises CheckpointError: the checkpoint is unreadable or unsafe, or was written for
        another configuration than ``config.json`` (the mismatches are listed).
    """
    run_dir = Path(run_dir)
    config = rundir.read_config(run_dir)
    m = config["model"]
    vae = build_vae(
        config["event_shape"], m["likelihood"], m["latent_dim"], m["hidden"], m["arch"],
        m["activation"], scale=m.get("scale"),
    )
    load_checkpoint(run_dir / f"{which}.pt", vae, expected_config=config, device=device)
    return vae.to(device), config

"""The training loop: the only one in pyro-vae.

One torch optimizer over every parameter of the :class:`~pyro_vae.model.VAE`, the loss from a
Pyro estimator's ``differentiable_loss``, data held on the training device and indexed by a
random permutation there (no per-item DataLoader), binarization and dequantization per batch on
the device, and the loss read back only every ``log_every`` steps.

:func:`fit` trains a VAE on tensors (the Python API); :func:`run_training` is what
``pyro-vae train`` calls: it loads data and builds the model from a :class:`RunConfig` first.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
from tqdm.auto import tqdm

from pyro_vae import plots, rundir
from pyro_vae.checkpoint import CheckpointError, atomic_save, rng_state, safe_load, set_rng_state
from pyro_vae.config import RunConfig, TrainConfig
from pyro_vae.data import DataSplit, Preprocess, load_data
from pyro_vae.estimators import check_beta, make_estimator
from pyro_vae.model import VAE, build_vae

CHECK_CHUNK = 8192  # datapoints per chunk when checking the support before training


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; training stopped, checkpoints kept."""


@dataclass
class TrainResult:
    """What :func:`fit` returns.

    :ivar metrics: one dict per epoch (see :data:`pyro_vae.rundir.METRIC_FIELDS`).
    :ivar best_test_elbo: best held-out ELBO per datapoint (nats), ``nan`` without test data.
    """

    vae: VAE
    run_dir: Path | None
    metrics: list[dict] = field(default_factory=list)
    best_test_elbo: float = math.nan

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


@torch.no_grad()
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
    beta, vae.beta = vae.beta, 1.0
    was_training = vae.training
    vae.eval()
    total = torch.zeros((), device=data.device)
    try:
        for i in range(0, len(data), batch_size):
            x = preprocess(data[i : i + batch_size])  # (b, *event_shape)
            total += est.differentiable_loss(vae.model, vae.guide, x)
    finally:
        vae.beta = beta
        vae.train(was_training)
    return -(total / len(data)).item()


def check_data(vae: VAE, data: torch.Tensor, preprocess: Preprocess, what: str) -> None:
    """Check every datapoint, as the model will see it, against the likelihood's support.

    Runs under a forked RNG so the check draws nothing from the training's random stream.
    """
    if len(data) == 0:
        raise ValueError(f"the {what} data are empty")
    shape = tuple(data.shape[1:])
    if shape != tuple(vae.event_shape):
        raise ValueError(
            f"the {what} data have datapoints shaped {shape}, but the model expects "
            f"{tuple(vae.event_shape)}"
        )
    with torch.random.fork_rng(devices=[data.device] if data.is_cuda else []):
        for i in range(0, len(data), CHECK_CHUNK):
            vae.likelihood.check_support(preprocess(data[i : i + CHECK_CHUNK]))


def _make_optimizer(vae: VAE, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    extra = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.Adam(vae.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)


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

    :param train: ``(N, *event_shape)``; uint8 levels or floats, as :class:`Preprocess` expects.
    :param test: held-out data of the same kind, or ``None``.
    :param config: optimization settings.
    :param preprocess: per-batch binarization / dequantization.
    :param out: run directory for checkpoints, metrics and pictures (``None``: keep nothing).
    :param run_config: the full configuration saved in checkpoints (by :func:`run_training`).
    :param resume: continue from ``out/checkpoint.pt`` exactly where it stopped.
    :raises NonFiniteLossError: if the loss becomes NaN or infinite; the checkpoints from the
        last finished epoch are kept.
    """
    cfg = config
    check_beta(cfg.estimator, cfg.beta, warmup=cfg.warmup_epochs > 0)
    device = resolve_device(cfg.device)
    vae.to(device)
    train = train.to(device)
    test = None if test is None else test.to(device)
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
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = cfg.warmup_epochs * steps_per_epoch
    estimator = make_estimator(cfg.estimator, cfg.particles, alpha=cfg.alpha)
    optimizer = _make_optimizer(vae, cfg, device)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
        if cfg.lr_schedule == "cosine"
        else None
    )
    saved_config = run_config if run_config is not None else {"train": dataclasses.asdict(cfg)}

    epoch, step, best = 0, 0, -math.inf
    metrics: list[dict] = []
    if resume:
        if run_dir is None:
            raise ValueError("resume=True needs the run directory (out=...)")
        state = load_checkpoint(run_dir / "checkpoint.pt", vae, saved_config, device)
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        epoch, step, best = state["epoch"], state["step"], state["best_test_elbo"]
        metrics = [r for r in rundir.read_metrics(run_dir) if r["epoch"] <= epoch]
    elif run_dir is not None and run_config is not None:
        rundir.write_config(run_dir, run_config)

    def checkpoint(path: Path) -> None:
        atomic_save(
            {
                "format": 1,
                "model": vae.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": None if scheduler is None else scheduler.state_dict(),
                "rng": rng_state(),
                "epoch": epoch,
                "step": step,
                "best_test_elbo": best,
                "config": saved_config,
            },
            path,
        )

    vae.train()
    for epoch in range(epoch, cfg.epochs):  # noqa: B020 (epoch persists into checkpoint())
        start = time.perf_counter()
        perm = torch.randperm(n, device=device)  # (N,) on the device
        epoch_loss = torch.zeros((), device=device)
        first_bad = torch.full((), -1, device=device, dtype=torch.long)
        bar = tqdm(
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=cfg.quiet,
            leave=True,
            dynamic_ncols=True,
        )
        window_loss, window_n = torch.zeros((), device=device), 0
        for i in range(steps_per_epoch):
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            x = preprocess(train[idx])  # (B, *event_shape)
            vae.beta = cfg.beta * min(1.0, (step + 1) / warmup_steps) if warmup_steps else cfg.beta
            try:
                loss = estimator.differentiable_loss(vae.model, vae.guide, x) / x.shape[0]
            except ValueError as e:
                # with validation on, a NaN/inf distribution parameter (from NaN weights or an
                # overflow) fails Pyro's argument check before any loss exists
                if not _non_finite_parameter(e, vae):
                    raise
                if int(first_bad) < 0:  # keep an earlier bad step already seen on the device
                    first_bad.fill_(step + 1)
                _raise_if_bad(first_bad, epoch, run_dir, cause=e)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            step += 1
            detached = loss.detach()
            # stays on the device: no host sync per step
            first_bad = torch.where(
                (first_bad < 0) & ~torch.isfinite(detached), step, first_bad
            )
            epoch_loss += detached * x.shape[0]
            window_loss += detached
            window_n += 1
            bar.update()
            if step % cfg.log_every == 0 or i == steps_per_epoch - 1:
                _raise_if_bad(first_bad, epoch, run_dir)
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
            rundir.write_metrics(run_dir, metrics)
            checkpoint(run_dir / "checkpoint.pt")
            if improved:
                checkpoint(run_dir / "best.pt")
    if run_dir is not None:
        write_pictures(vae, test if test is not None else train, preprocess, run_dir, metrics)
    return TrainResult(vae=vae, run_dir=run_dir, metrics=metrics, best_test_elbo=best)


def _non_finite_parameter(error: ValueError, vae: VAE) -> bool:
    if not all(torch.isfinite(p).all() for p in vae.parameters()):
        return True
    return "Expected parameter" in str(error)  # torch's message for an invalid distribution arg


def _raise_if_bad(
    first_bad: torch.Tensor, epoch: int, run_dir: Path | None, cause: Exception | None = None
) -> None:
    bad = int(first_bad)  # the one host sync per log interval
    if bad >= 0:
        kept = (
            f"the checkpoints in {run_dir} from the last finished epoch ({epoch}) are kept"
            if run_dir is not None and epoch > 0
            else "no checkpoint was written yet"
        )
        raise NonFiniteLossError(
            f"the training loss became non-finite at step {bad} (epoch {epoch + 1}); training "
            f"stopped and {kept}. Lower --lr, add --grad-clip, or check the data."
        ) from cause


@torch.no_grad()
def write_pictures(
    vae: VAE, data: torch.Tensor, preprocess: Preprocess, run_dir: Path, metrics: list[dict]
) -> None:
    """reconstructions.png, samples.png and curves.png; draws under a forked, seeded RNG."""
    with torch.random.fork_rng(devices=[data.device] if data.is_cuda else []):
        torch.manual_seed(0)
        vae.eval()
        x = preprocess(data[:8])
        plots.save_reconstructions(x, vae.reconstruct(x), run_dir / "reconstructions.png")
        mean, _ = vae.sample(64)
        plots.save_grid(mean, run_dir / "samples.png")
        vae.train()
    if metrics:
        plots.plot_curves(metrics, run_dir / "curves.png")


def load_checkpoint(
    path: str | Path, vae: VAE, expected_config: dict | None = None, device="cpu"
) -> dict:
    """Load a checkpoint into ``vae`` and return it.

    :raises CheckpointError: unreadable file, or a checkpoint of another model/config (the
        message lists the mismatching settings or parameters).
    """
    state = safe_load(path, map_location=device)
    missing = {"model", "optimizer", "rng", "epoch", "step", "config"} - set(state)
    if missing:
        raise CheckpointError(f"{path} is not a pyro-vae checkpoint (missing {sorted(missing)})")
    if expected_config is not None:
        diffs = _config_diff(state["config"], expected_config)
        if diffs:
            raise CheckpointError(
                f"{path} was written for another configuration: " + "; ".join(diffs)
            )
    try:
        vae.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path} holds parameters of another model: {e}") from e
    return state


#: settings that may differ on resume (the rest must match the checkpoint)
_RESUMABLE = {"epochs", "quiet", "log_every", "device", "data_dir", "download"}


def _config_diff(saved: dict, expected: dict) -> list[str]:
    diffs = []
    for section in ("model", "data"):
        a, b = saved.get(section, {}), expected.get(section, {})
        for key in sorted(set(a) | set(b)):
            if key not in _RESUMABLE and a.get(key) != b.get(key):
                diffs.append(f"{section}.{key}: checkpoint {a.get(key)!r}, now {b.get(key)!r}")
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
    """Rebuild the VAE of a run directory from ``config.json`` and ``<which>.pt``."""
    run_dir = Path(run_dir)
    config = rundir.read_config(run_dir)
    m = config["model"]
    vae = build_vae(
        config["event_shape"], m["likelihood"], m["latent_dim"], m["hidden"], m["arch"],
        m["activation"], scale=m.get("scale"),
    )
    load_checkpoint(run_dir / f"{which}.pt", vae, device=device)
    return vae.to(device), config

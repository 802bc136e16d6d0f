"""The experiment: train each mistake beside its correct program, evaluate both under the
correct model, and write the report.

:func:`run_pitfalls` trains every pitfall of a :class:`PitfallsConfig` through the one
training loop, from the same initial networks and on the same batches, and writes
``pitfalls.md`` (:mod:`~pyro_vae.apps.pitfalls.report`), one picture per pitfall
(reconstructions and samples side by side), ``results.json`` and ``config.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyro
import torch
from pyro import poutine

from pyro_vae.apps.pitfalls.catalogue import PITFALL_ORDER, PITFALLS, Pitfall
from pyro_vae.apps.pitfalls.report import pitfalls_markdown, pitfalls_table
from pyro_vae.config import (
    RunConfig,
    TrainConfig,
    add_flags,
    at_least,
    from_flat,
    given,
    resolve_device,
    section,
    setting,
    setting_names,
    settings_of,
)
from pyro_vae.data import DataSplit, Preprocess
from pyro_vae.eval.bounds import (
    DEFAULT_MEMORY_BUDGET_MB,
    bits_per_dim,
    bits_per_dim_reason,
    elbo_terms,
    importance_log_px,
    standard_error,
)
from pyro_vae.eval.latents import active_units
from pyro_vae.eval.plots import save_panels
from pyro_vae.files import atomic_write_text
from pyro_vae.models import VAE, Likelihood, evaluation_mode
from pyro_vae.models.likelihoods import mse_scale
from pyro_vae.runs import load_split
from pyro_vae.train import NonFiniteLossError, fit
from pyro_vae.train.rundir import environment, prepare
from pyro_vae.validation import validation_refusal

#: the run settings the pitfalls use (the likelihood, preprocessing and networks are each
#: program's own): the flags of ``experiments/loss_pitfalls.py``
RUN_FLAGS = (
    "dataset",
    "test_size",
    "num_shapes",
    "latent_dim",
    "hidden",
    "epochs",
    "batch_size",
    "lr",
    "seed",
    "device",
    "quiet",
)


@dataclass(frozen=True)
class PitfallsConfig:
    """What :func:`run_pitfalls` trains and how hard it evaluates.

    :ivar run: the data source (its held-out split), the latent size and hidden layers of the
        MLP networks, and the training settings every program shares (by default
        ``meanfield``, the analytic-KL ELBO, with beta = 1).
    """

    pitfalls: tuple[str, ...] = setting(
        PITFALL_ORDER, f"which of {', '.join(PITFALL_ORDER)}, in report order"
    )
    num_train: int | None = setting(
        None, "train on the first N training datapoints", default_text="all"
    )
    num_test: int | None = setting(
        None,
        "importance-sample log p(x) on the first N held-out datapoints (the ELBO uses all)",
        default_text="all",
    )
    iw_samples: int = setting(1000, "K of the importance-sampled log p(x)")
    elbo_particles: int = setting(10, "particles of the held-out ELBO's reconstruction term")
    mse_weight: float = setting(1.0, "w of the mse mistake, w * sum (x - mu)^2: sigma = 1/sqrt(2w)")
    memory_budget_mb: float = setting(
        DEFAULT_MEMORY_BUDGET_MB, "memory for one chunk of particles x datapoints in evaluation"
    )
    run: RunConfig = section(lambda: RunConfig(train=TrainConfig(epochs=10)))

    def __post_init__(self):
        object.__setattr__(self, "pitfalls", tuple(self.pitfalls))
        for name in self.pitfalls:
            PITFALLS.check(name)
        if not self.pitfalls or len(set(self.pitfalls)) != len(self.pitfalls):
            raise ValueError(f"pitfalls must be distinct names, got {list(self.pitfalls)}")
        at_least("iw-samples", self.iw_samples, 1)
        at_least("elbo-particles", self.elbo_particles, 1)
        at_least("test-size", self.run.data.test_size, 1)  # the programs are judged on it
        for name in ("num_train", "num_test"):
            if getattr(self, name) is not None:
                at_least(name.replace("_", "-"), getattr(self, name), 1)
        mse_scale(self.mse_weight)
        at_least("memory-budget-mb", self.memory_budget_mb, 0, strict=True)

    @property
    def quiet(self) -> bool:
        return self.run.train.quiet


@dataclass
class ProgramResult:
    """One trained program; numbers in nats per datapoint (higher is better) on the held-out
    data under the correct model, ``None`` where there is none.

    :ivar objective: the held-out value of the program's **own** objective after training
        (its ELBO as written, e.g. scaled by 1/D, or unnormalized): what its author sees.
    :ivar refused: Pyro's validation message when the program could not be trained.
    """

    pitfall: str
    role: str  # "mistake" or "correct"
    program: str
    objective: float | None = None
    elbo: float | None = None
    elbo_se: float | None = None
    kl: float | None = None
    active_units: int | None = None
    log_px: float | None = None
    log_px_se: float | None = None
    ess_median: float | None = None
    bits_per_dim: float | None = None
    train_seconds: float = 0.0
    refused_step: int | None = None
    refused: str | None = None
    picture: str | None = None
    metrics: list[dict] = field(default_factory=list, repr=False)


@dataclass
class PitfallsReport:
    """What :func:`run_pitfalls` returns; ``markdown`` is ``pitfalls.md``."""

    config: PitfallsConfig
    out: Path
    results: list[ProgramResult]
    markdown: str


@torch.no_grad()
def prior_means(
    vae: VAE, num: int, seed: int, likelihood: Likelihood | None = None
) -> torch.Tensor:
    """Likelihood means at ``num`` draws ``z ~ p(z)`` of ``vae``'s model, from ``seed``.

    :param likelihood: read the decoder's output with this likelihood's :meth:`mean` instead
        (the same z, since the model draws z first).
    :returns: ``(num, *event_shape)``.
    """
    ref = next(vae.parameters())
    with evaluation_mode(vae), torch.random.fork_rng(devices=[ref.device] if ref.is_cuda else []):
        torch.manual_seed(seed)
        trace = poutine.trace(vae.model).get_trace(None, num)
    params = trace.nodes["_RETURN"]["value"]  # (num, *param_shape)
    return (likelihood or vae.likelihood).mean(params)


def _evaluate(view: VAE, x: torch.Tensor, cfg: PitfallsConfig, dequantized: bool) -> dict:
    """The held-out numbers of a program read under the correct model ``view``."""
    seed = cfg.run.train.seed
    terms = elbo_terms(
        view,
        x,
        cfg.elbo_particles,
        seed=seed,
        memory_budget_mb=cfg.memory_budget_mb,
        quiet=cfg.quiet,
    )
    units = active_units(view, x) if len(x) > 1 else None
    imp = importance_log_px(
        view,
        x[: cfg.num_test] if cfg.num_test else x,
        cfg.iw_samples,
        seed=seed,
        memory_budget_mb=cfg.memory_budget_mb,
        quiet=cfg.quiet,
    )
    reason = bits_per_dim_reason(view, dequantized)
    return {
        "elbo": terms.elbo.mean().item(),
        "elbo_se": standard_error(terms.elbo),
        "kl": terms.kl.mean().item(),
        "active_units": None if units is None else units.count,
        "log_px": imp.mean,
        "log_px_se": imp.se,
        "ess_median": imp.ess.median().item(),
        "bits_per_dim": None if reason else bits_per_dim(imp.mean, math.prod(view.event_shape)),
    }


def _pictures(programs: list[tuple[str, VAE, VAE]], x: torch.Tensor, seed: int, path: Path) -> bool:
    """Test inputs, then each program's reconstructions, then its samples (likelihood means
    at the same prior draws), in labelled rows: ``(role, trained program, correct reading)``."""
    recon, samples = [], []
    for role, vae, view in programs:
        with evaluation_mode(view):
            recon.append((f"{role}: reconstructions", vae.reconstruct(x)))
            samples.append((f"{role}: samples", prior_means(view, 16, seed, vae.likelihood)))
            if view.likelihood is not vae.likelihood:
                what = f"{role} read as {view.likelihood.name} (its mean)"
                recon.append((f"{what}: reconstructions", view.reconstruct(x)))
                samples.append((f"{what}: samples", prior_means(view, 16, seed)))
    return save_panels([("test inputs", x)] + recon + samples, path)


def run_pitfalls(config: PitfallsConfig, out: str | Path | None = None) -> PitfallsReport:
    """Train and evaluate every pitfall of ``config``; write the report into ``out``.

    :param out: output folder (default ``runs/pitfalls-<time>-<dataset>``); refused if it
        already holds a ``pitfalls.md``.
    """
    cfg = config
    started = time.perf_counter()
    dataset = cfg.run.data.dataset
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"pitfalls-{stamp}-{Path(dataset).name or dataset}"
    if (Path(out) / "pitfalls.md").exists():
        raise FileExistsError(f"{out} already holds a pitfalls report; choose another --out")
    out = prepare(out)
    split = load_split(cfg.run.data, cfg.run.train.seed)
    if len(split.test) == 0:
        raise ValueError(f"{dataset} has no test data to evaluate on")
    device = resolve_device(cfg.run.train.device)
    results: list[ProgramResult] = []
    for name in cfg.pitfalls:
        results += _run_pitfall(PITFALLS.get(name), split, cfg, device, out)

    shape = tuple(split.event_shape)
    facts = {
        "dataset": dataset,
        "event_shape": list(shape),
        "num_dims": math.prod(shape),
        "num_train": len(split.train[: cfg.num_train] if cfg.num_train else split.train),
        "num_test": len(split.test),
        "num_test_iw": min(cfg.num_test or len(split.test), len(split.test)),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "seconds": time.perf_counter() - started,
    }
    atomic_write_text(
        out / "config.json",
        json.dumps({"config": asdict(cfg), "data": facts, "environment": environment()}, indent=2)
        + "\n",
    )
    atomic_write_text(
        out / "results.json",
        json.dumps(
            {
                "units": "nats per datapoint, higher is better, under the correct model",
                "data": facts,
                "programs": [asdict(r) for r in results],
            },
            indent=2,
        )
        + "\n",
    )
    markdown = pitfalls_markdown(cfg, results, facts)
    atomic_write_text(out / "pitfalls.md", markdown)
    return PitfallsReport(cfg, out, results, markdown)


def _run_pitfall(
    pitfall: Pitfall, split: DataSplit, cfg: PitfallsConfig, device: torch.device, out: Path
) -> list[ProgramResult]:
    """The mistake and the correct program of ``pitfall``, trained and evaluated, and their
    picture."""
    seed = cfg.run.train.seed
    dequantize = not pitfall.binarized and split.is_8bit
    pre = Preprocess("dynamic" if pitfall.binarized else "none", dequantize, seed)
    data = pre.prepare(split)
    train = data.train[: cfg.num_train] if cfg.num_train else data.train
    with torch.random.fork_rng(devices=[]):  # one fixed draw of the held-out data
        torch.manual_seed(seed)
        x = pre(data.test).to(device)  # (M, *event_shape)
    results, trained = [], []
    for role in ("mistake", "correct"):
        pyro.set_rng_seed(seed)  # the same initial networks and batches for both
        builder = pitfall.mistake if role == "mistake" else pitfall.correct
        vae = builder(tuple(split.event_shape), cfg)
        text = pitfall.mistake_program if role == "mistake" else pitfall.correct_program
        result = ProgramResult(pitfall.name, role, text)
        t0 = time.perf_counter()
        try:
            fitted = fit(vae, train, data.test, cfg.run.train, preprocess=pre)
        except (NonFiniteLossError, ValueError) as e:
            refusal = validation_refusal(e)
            if role == "correct" or refusal is None:
                raise
            result.refused, result.refused_step = refusal, getattr(e, "step", None)
        result.train_seconds = time.perf_counter() - t0
        if result.refused is None:
            result.metrics = fitted.metrics
            result.objective = fitted.test_elbo
            view = pitfall.as_correct_model(vae) if role == "mistake" else vae
            for key, value in _evaluate(view, x, cfg, dequantize).items():
                setattr(result, key, value)
            trained.append((role, vae, view))
        results.append(result)
        if not cfg.quiet:
            print(_progress_line(result), flush=True)
    picture = f"{pitfall.name}.png"
    if _pictures(trained, x[:8], seed, out / picture):
        for r in results:
            r.picture = picture
    return results


def _progress_line(r: ProgramResult) -> str:
    if r.refused is not None:
        return f"{r.pitfall} {r.role}: refused at step {r.refused_step}: {r.refused}"
    return (
        f"{r.pitfall} {r.role}: own objective {r.objective:.2f}, ELBO {r.elbo:.2f}, "
        f"log p(x) {r.log_px:.2f} ({r.train_seconds:.0f} s training)"
    )


def add_pitfalls_flags(p: argparse.ArgumentParser, default_dataset: str = "shapes") -> None:
    """The flags of ``experiments/loss_pitfalls.py``: the pitfalls' settings and the run
    settings they use (:data:`RUN_FLAGS`)."""
    names = (
        *(f.name for f, _ in settings_of(PitfallsConfig) if f.name not in setting_names(RunConfig)),
        *RUN_FLAGS,
    )
    defaults = from_flat(PitfallsConfig(), {"dataset": default_dataset})
    add_flags(p, PitfallsConfig, defaults=defaults, only=names)
    p.set_defaults(pitfalls_defaults=defaults)  # what the flags not given keep
    p.add_argument(
        "--out", default=None, help="output folder (default: runs/pitfalls-<time>-<dataset>)"
    )


def config_from_args(args: argparse.Namespace) -> PitfallsConfig:
    """A :class:`PitfallsConfig` from parsed :func:`add_pitfalls_flags` flags."""
    base = getattr(args, "pitfalls_defaults", PitfallsConfig())
    return from_flat(base, given(args, PitfallsConfig))


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``experiments/loss_pitfalls.py``: invalid settings end in ``parser.error`` (exit 2)."""
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    report = run_pitfalls(cfg, args.out)
    print(pitfalls_table(report.results, cfg.iw_samples))
    print(f"report: {report.out / 'pitfalls.md'}")
    return 0

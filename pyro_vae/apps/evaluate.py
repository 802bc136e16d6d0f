"""``pyro-vae evaluate``: every evaluation of a run directory, written beside it.

:func:`evaluate_run` loads a checkpoint of the run, prepares its split as in training
(:func:`~pyro_vae.runs.evaluation_data`), and writes ``summary.json`` (every number),
``report.md`` and ``report.html`` (the table with the pictures) and the pictures under
``evaluation/``. Every figure is in nats per datapoint, higher is better, and comes from the
Pyro model and guide (:mod:`pyro_vae.eval`).

Under ``torchrun`` the datapoints are sharded across the ranks for the importance-sampled
log p(x) and the ELBO terms, and the per-datapoint results gathered: the particles are a
function of (seed, datapoint, particle) (:class:`~pyro_vae.eval.noise.CounterNoise`), so
the numbers equal a single process's up to float rounding. Rank 0 writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pyro_vae.config import DEVICES, DataConfig, at_least, resolve_device, setting
from pyro_vae.distributed import World, current
from pyro_vae.eval import report
from pyro_vae.eval.bounds import (
    DEFAULT_MEMORY_BUDGET_MB,
    ElboTerms,
    ImportanceResult,
    bits_per_dim_figures,
    elbo_terms,
    importance_log_px,
    standard_error,
)
from pyro_vae.eval.latents import (
    ACTIVE_THRESHOLD,
    ActiveUnits,
    active_units,
    latent_layout,
    posterior_means,
)
from pyro_vae.eval.plots import LatentSummary, write_pictures
from pyro_vae.files import atomic_write_text
from pyro_vae.runs import CHECKPOINTS, SPLITS, evaluation_data, inputs_for, load_run
from pyro_vae.train.checks import check_data
from pyro_vae.train.rundir import read_metrics, visiting


@dataclass(frozen=True)
class EvalConfig:
    """How hard to evaluate a run, and on what."""

    iw_samples: int = setting(5000, "importance samples K per datapoint (Burda et al.: 5000)")
    split: str = setting("test", "the run's split to evaluate", choices=SPLITS)
    batch_size: int | None = setting(
        None, "most datapoints per chunk", default_text="as the memory budget allows"
    )
    device: str = setting("cpu", "where to evaluate (auto: cuda when available)", choices=DEVICES)
    memory_budget_mb: float = setting(
        DEFAULT_MEMORY_BUDGET_MB, "memory for one chunk of particles x datapoints"
    )
    seed: int = setting(
        0, "particles, dequantization noise and pictures; results do not depend on chunking"
    )
    which: str = setting("best", "the checkpoint to evaluate", choices=CHECKPOINTS)
    elbo_particles: int = setting(100, "Monte Carlo particles of the ELBO's reconstruction term")
    quiet: bool = setting(False, "no progress bars")
    dist_timeout: float = setting(
        600.0, "under torchrun: seconds a process waits for the others before it stops"
    )

    def __post_init__(self):
        at_least("iw_samples", self.iw_samples, 1)
        SPLITS.check(self.split)
        if self.batch_size is not None:
            at_least("batch_size", self.batch_size, 1)
        DEVICES.check(self.device)
        at_least("memory_budget_mb", self.memory_budget_mb, 0, strict=True)
        at_least("seed", self.seed, 0)
        CHECKPOINTS.check(self.which)
        at_least("elbo_particles", self.elbo_particles, 1)
        at_least("dist_timeout", self.dist_timeout, 0, strict=True)


def evaluate_run(
    run_dir: str | Path, config: EvalConfig | None = None, world: World | None = None, **settings
) -> dict:
    """Evaluate a run directory: ``pyro-vae evaluate``.

    Loads ``<which>.pt``, prepares the split as in training, and writes ``summary.json`` (the
    returned dict), ``report.md``, ``report.html`` and the pictures under ``evaluation/`` in
    ``run_dir``.

    :param config: the settings (:class:`EvalConfig`); or give them as keywords
        (``iw_samples=5000, seed=0, ...``). The same seed gives the same numbers whatever the
        batch size and memory budget.

    Under an initialized process group (``torchrun``, or ``world``), every rank calls it; the
    datapoints are sharded across the ranks, rank 0 writes and returns the summary, the others
    ``{}``.
    """
    cfg = dataclasses.replace(config or EvalConfig(), **settings)
    world = world or current(cfg.dist_timeout)
    with visiting(run_dir) if world.is_main else contextlib.nullcontext():
        return _evaluate(Path(run_dir), cfg, world)


def _evaluate(run_dir: Path, cfg: EvalConfig, world: World) -> dict:
    dev = world.own(resolve_device(cfg.device))
    # rank 0 first: a refusal (no best.pt, changed data, ...) is said once
    model, x, labels, label_names, run, inputs = world.main_then_others(
        _model_and_data, run_dir, cfg, dev
    )

    start = time.perf_counter()
    imp, terms = _sharded_bounds(model, x, inputs, cfg, world)
    if not world.is_main:
        return {}
    means = posterior_means(model, x, cfg.batch_size or 1000, inputs=inputs)
    units = active_units(means=means) if len(x) > 1 else None
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - start

    layout = latent_layout(model, x, *inputs)
    summary = {
        "run_dir": str(run_dir),
        "which": cfg.which,
        "split": cfg.split,
        "num": len(x),
        "num_dims": math.prod(model.event_shape),
        "model": run.model.model,
        "latent_sites": {name: list(event) for name, event in layout},
        "latent_dim": sum(math.prod(event) for _, event in layout),
        "likelihood": run.model.likelihood,
        "dataset": run.data.dataset,
        "seed": cfg.seed,
        "device": str(dev),
        **_figures(model, imp, terms, units, run.data, cfg, inputs),
        "seconds": seconds,
    }
    latents = LatentSummary(means, terms.kl_per_dim.mean(0), layout, labels, label_names)
    pictures = write_pictures(
        model, x, run_dir / "evaluation", read_metrics(run_dir), seed=cfg.seed,
        latents=latents, inputs=inputs,
    )  # fmt: skip
    summary["pictures"] = {k: str(Path("evaluation") / v) for k, v in pictures.items()}
    summary = _finite(summary)
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(run_dir / "report.md", report.markdown(summary))
    atomic_write_text(run_dir / "report.html", report.html(summary))
    return summary


def _model_and_data(run_dir: Path, cfg: EvalConfig, dev: torch.device):
    """The run's model on ``dev`` and its split as the model sees it, checked against the
    model's support: ``(model, x, labels, label_names, run config, inputs)``."""
    model, _ = load_run(run_dir, cfg.which, device=str(dev))
    x_cpu, labels, label_names, run = evaluation_data(run_dir, cfg.split, cfg.seed)
    inputs = tuple(t.to(dev) for t in inputs_for(model, labels))
    x = x_cpu.to(dev)
    check_data(model, x, _as_is, "evaluation", inputs)
    return model, x, labels, label_names, run, inputs


def _as_is(x: torch.Tensor) -> torch.Tensor:
    return x


def _sharded_bounds(
    model, x: torch.Tensor, inputs: tuple, cfg: EvalConfig, world: World
) -> tuple[ImportanceResult, ElboTerms]:
    """The importance-sampled log p(x) and the ELBO terms of every datapoint of ``x``, each
    rank scoring its block (:meth:`~pyro_vae.distributed.World.block`, with its offset, so
    it draws the particles one process would), gathered on every rank."""
    if len(x) < world.size:
        raise ValueError(
            f"{len(x)} datapoint(s) cannot be shared by {world.size} processes; evaluate with "
            f"at most {len(x)}"
        )
    start, stop = world.block(len(x))
    budget = {"memory_budget_mb": cfg.memory_budget_mb, "batch_size": cfg.batch_size}
    common = {
        "seed": cfg.seed, "quiet": cfg.quiet or not world.is_main, "data_offset": start,
        "inputs": tuple(t[start:stop] for t in inputs), **budget,
    }  # fmt: skip
    imp, terms = world.each(
        lambda: (
            importance_log_px(model, x[start:stop], cfg.iw_samples, **common),
            elbo_terms(model, x[start:stop], cfg.elbo_particles, **common),
        )
    )  # a failure on one rank stops the others too
    if not world.active:
        return imp, terms
    n = len(x)
    imp = dataclasses.replace(
        imp,
        log_px=world.gather_blocks(imp.log_px, n),
        ess=world.gather_blocks(imp.ess, n),
        chunk_invariant=all(world.gather_objects(imp.chunk_invariant)),
    )
    terms = dataclasses.replace(
        terms,
        recon=world.gather_blocks(terms.recon, n),
        kl_per_site={k: world.gather_blocks(v, n) for k, v in terms.kl_per_site.items()},
        kl_per_dim=world.gather_blocks(terms.kl_per_dim, n),
    )
    return imp, terms


def _figures(
    model,
    imp: ImportanceResult,
    terms: ElboTerms,
    units: ActiveUnits | None,
    data: DataConfig,
    cfg: EvalConfig,
    inputs: tuple,
) -> dict:
    """The numbers of ``summary.json`` (see the README's table of its keys); ``data`` is the
    run's resolved data section (how the data were prepared)."""
    elbo = terms.elbo.mean().item()
    bits = bits_per_dim_figures(
        model, imp.mean, imp.se, dequantized=bool(data.dequantize),
        binarized=data.binarize != "none", inputs=inputs,
    )  # fmt: skip
    return {
        "units": "nats per datapoint, higher is better; kl is the term the ELBO subtracts",
        "iw_samples": cfg.iw_samples,
        "log_px": imp.mean,
        "log_px_se": imp.se,
        "log_px_mc_se": (imp.mc_se.square().sum().sqrt() / len(imp.log_px)).item(),
        "ess_mean": imp.ess.mean().item(),
        "ess_median": imp.ess.median().item(),
        "ess_min": imp.ess.min().item(),
        "elbo_particles": cfg.elbo_particles,
        "elbo": elbo,
        "elbo_se": standard_error(terms.elbo),
        "recon": terms.recon.mean().item(),
        "kl": terms.kl.mean().item(),
        "kl_per_site": {name: kl.mean().item() for name, kl in terms.kl_per_site.items()},
        "kl_kind": terms.kl_kind,
        "log_px_minus_elbo": imp.mean - elbo,
        "kl_per_dim": terms.kl_per_dim.mean(0).tolist(),
        "active_threshold": ACTIVE_THRESHOLD,
        "unit_activity": None if units is None else units.activity.tolist(),
        "active_units": None if units is None else units.count,
        "active_dims": None if units is None else units.active.nonzero().flatten().tolist(),
        **bits,
        "particle_chunk": imp.particle_chunk,
        "data_chunk": imp.data_chunk,
        "memory_budget_mb": cfg.memory_budget_mb,
        "bytes_per_pair": imp.bytes_per_pair,
        "chunk_invariant": imp.chunk_invariant,
    }


def _finite(value):
    """JSON-safe: non-finite floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value

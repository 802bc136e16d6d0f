"""The estimator comparison: ``pyro-vae compare`` and ``experiments/compare_estimators.py``.

Trains the same model on the same data, for the same number of epochs, once per estimator, K
and seed (``elbo``, ``meanfield`` and ``stl`` with one particle; ``iwae`` and ``dreg`` with
each K), all through :func:`pyro_vae.runs.run_training`. Then, for each run at its final
parameters:

* the held-out ELBO (analytic KL, beta = 1) after the last epoch, from the run's metrics;
* the importance-sampled log p(x) with ``iw_samples`` particles
  (:func:`pyro_vae.eval.importance_log_px`) on the run's test split (its first
  ``num_test`` datapoints), prepared by :func:`pyro_vae.runs.evaluation_data`;
* seconds per epoch (training plus the held-out ELBO), from ``metrics.jsonl``;
* the encoder and decoder gradient SNR of the run's own estimator and K
  (:func:`pyro_vae.eval.gradient_snr`) on the first ``snr_batch`` test datapoints.

Every figure is in nats per datapoint, higher is better, reported as mean +- sd over seeds.
Finally :func:`~pyro_vae.eval.gradient_snr` at *fixed* parameters (the final ``meanfield``
model of the first seed) for every estimator and every K in ``{1} + ks`` gives the SNR-vs-K
picture.

The seed is the training seed; for sources without their own test split (the embedded shapes,
a single idx file such as MNIST's t10k) it also chooses the held-out datapoints, so every seed
has its own split and the estimators are compared on the same split within a seed.

Writes into ``out``: ``comparison.md``, ``comparison.csv`` (one line per estimator and K),
``runs.csv`` (one line per run), ``snr.csv``, ``learning_curves.png``, ``snr.png`` and the
run directories under ``runs/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from pyro_vae.config import (
    RunConfig,
    TrainConfig,
    add_flags,
    at_least,
    flat_dict,
    from_flat,
    given,
    section,
    setting,
)
from pyro_vae.eval import gradient_snr, importance_log_px
from pyro_vae.eval.gradients import plot_snr, snr_noise_floor, snr_table
from pyro_vae.files import atomic_write_text, csv_text, save_figure
from pyro_vae.infer import estimator_refusal
from pyro_vae.models import LabelInfo, build_model
from pyro_vae.runs import evaluation_data, inputs_for, model_inputs, resolve_data, run_training
from pyro_vae.train.checks import probe
from pyro_vae.train.rundir import default_run_dir, prepare

#: the estimators with one particle, then the importance-weighted ones at every K
SINGLE_PARTICLE = ("elbo", "meanfield", "stl")
MULTI_PARTICLE = ("iwae", "dreg")
#: fewest seeds a comparison reports a spread over
MIN_SEEDS = 3
#: the run whose final parameters the SNR-vs-K picture is drawn at
SNR_REFERENCE = "meanfield"


#: the run settings that a comparison sets per run, or that its bounds refuse (iwae and dreg
#: have no KL weight), so ``compare`` does not offer them
PER_RUN = ("estimator", "particles", "alpha", "seed", "beta", "warmup_epochs")


@dataclass(frozen=True)
class CompareConfig:
    """What to compare, and how hard.

    :ivar run: the settings every run shares (data, model, optimization); its estimator,
        particles and seed are set per run.
    """

    seeds: tuple[int, ...] = setting((0, 1, 2), f"training seeds, at least {MIN_SEEDS}")
    ks: tuple[int, ...] = setting((5, 50), "K of iwae and dreg (each a separate run)")
    iw_samples: int = setting(5000, "K of the importance-sampled log p(x) (Burda et al.: 5000)")
    num_test: int | None = setting(
        None, "evaluate log p(x) on the first N test datapoints", default_text="all"
    )
    snr_draws: int = setting(100, "gradient draws R per SNR estimate")
    snr_batch: int = setting(100, "test datapoints in the batch the SNR is measured on")
    run: RunConfig = section(lambda: RunConfig(train=TrainConfig(epochs=10)))

    def __post_init__(self):
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "ks", tuple(int(k) for k in self.ks))
        if len(set(self.seeds)) < MIN_SEEDS or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(
                f"a comparison needs at least {MIN_SEEDS} distinct seeds (mean +- sd over "
                f"seeds), got {list(self.seeds)}"
            )
        if not self.ks or any(k < 1 for k in self.ks) or len(set(self.ks)) != len(self.ks):
            raise ValueError(f"ks must be distinct K >= 1, got {list(self.ks)}")
        for name in ("iw_samples", "snr_batch"):
            at_least(name.replace("_", "-"), getattr(self, name), 1)
        at_least("snr-draws", self.snr_draws, 2)
        if self.num_test is not None:
            at_least("num-test", self.num_test, 1)
        for estimator, K in self.runs():
            self.run_config(estimator, K, self.seeds[0])  # every run's settings validate

    @property
    def quiet(self) -> bool:
        return self.run.train.quiet

    def runs(self) -> list[tuple[str, int]]:
        """``(estimator, K)`` of every compared configuration, in report order."""
        return [(e, 1) for e in SINGLE_PARTICLE] + [(e, k) for e in MULTI_PARTICLE for k in self.ks]

    def run_config(self, estimator: str, K: int, seed: int) -> RunConfig:
        """The settings of one run: the shared ones with this estimator, K and seed."""
        train = dataclasses.replace(self.run.train, estimator=estimator, particles=K, seed=seed)
        return dataclasses.replace(self.run, train=train)


@dataclass
class RunSummary:
    """One trained run's numbers (nats per datapoint, higher is better)."""

    estimator: str
    K: int
    seed: int
    test_elbo: float
    log_px: float
    log_px_se: float
    seconds_per_epoch: float
    encoder_snr: float
    decoder_snr: float
    run_dir: str
    #: log p(x) minus that of the same seed's meanfield run (same split and particles)
    log_px_gain: float = math.nan
    curve: list[float] = field(default_factory=list, repr=False)  # test ELBO per epoch
    train_curve: list[float] = field(default_factory=list, repr=False)  # training objective


@dataclass
class Comparison:
    """What :func:`run_comparison` returns; ``markdown`` is ``comparison.md``."""

    config: CompareConfig
    out: Path
    runs: list[RunSummary]
    table: list[dict]
    snr: list  # GradientStats at fixed parameters
    markdown: str
    #: the run the log p(x) differences and the SNR-vs-K picture refer to
    reference: str = SNR_REFERENCE
    #: ``{estimator: why}`` for those that do not apply to the model
    refused: dict[str, str] = field(default_factory=dict)


#: aggregated columns: name in the table, RunSummary attribute, decimals
_COLUMNS = (
    ("test ELBO", "test_elbo", 2),
    ("log p(x)", "log_px", 2),
    ("log p(x) - {reference}", "log_px_gain", 2),
    ("s / epoch", "seconds_per_epoch", 2),
    ("encoder SNR", "encoder_snr", 3),
    ("decoder SNR", "decoder_snr", 3),
)


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    values = [float(v) for v in values]
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def aggregate(runs: Sequence[RunSummary]) -> list[dict]:
    """Mean and sd over seeds per (estimator, K): one dict per configuration."""
    keys = list(dict.fromkeys((r.estimator, r.K) for r in runs))
    table = []
    for est, K in keys:
        group = [r for r in runs if (r.estimator, r.K) == (est, K)]
        row = {"estimator": est, "K": K, "seeds": len(group)}
        for _, attr, _ in _COLUMNS:
            row[f"{attr}_mean"], row[f"{attr}_sd"] = _mean_sd([getattr(r, attr) for r in group])
        table.append(row)
    return table


def _markdown_table(table: Sequence[dict], iw_samples: int, reference: str = SNR_REFERENCE) -> str:
    head = ["estimator", "K"] + [
        f"log p(x), IS K={iw_samples}" if attr == "log_px" else name.format(reference=reference)
        for name, attr, _ in _COLUMNS
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * len(_COLUMNS)]
    for row in table:
        cells = [row["estimator"], str(row["K"])]
        for _, attr, digits in _COLUMNS:
            cells.append(f"{row[f'{attr}_mean']:.{digits}f} +- {row[f'{attr}_sd']:.{digits}f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_learning_curves(runs: Sequence[RunSummary]):
    """Held-out ELBO and training objective per epoch: mean over seeds, band +- sd, one line
    per (estimator, K). Returns a :class:`matplotlib.figure.Figure`."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 4.2), dpi=110)
    axes = fig.subplots(1, 2)
    keys = list(dict.fromkeys((r.estimator, r.K) for r in runs))
    panels = (
        ("curve", "held-out ELBO (analytic KL, beta = 1)"),
        ("train_curve", "training objective (each estimator's bound)"),
    )
    for ax, (attr, title) in zip(axes, panels):
        for est, K in keys:
            curves = torch.tensor(
                [getattr(r, attr) for r in runs if (r.estimator, r.K) == (est, K)]
            )  # (seeds, epochs)
            mean = curves.mean(0)
            sd = curves.std(0) if len(curves) > 1 else torch.zeros_like(mean)
            epochs = range(1, len(mean) + 1)
            label = est if est in SINGLE_PARTICLE else f"{est} K={K}"
            (line,) = ax.plot(epochs, mean, marker="o", ms=3, label=label)
            ax.fill_between(epochs, mean - sd, mean + sd, alpha=0.15, color=line.get_color())
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats per datapoint (higher is better)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def refusals(cfg: CompareConfig) -> dict[str, str]:
    """``{estimator: why}`` for the compared estimators that do not apply to the model (a flow
    guide for stl and dreg, sites out of order for meanfield): one model built on the first
    seed's data, one traced batch."""
    run = cfg.run_config("elbo", 1, cfg.seeds[0])
    split, pre, run = resolve_data(run)
    labels = LabelInfo.of(split.train_labels, split.test_labels)
    model = build_model(run.model, split.event_shape, labels=labels)
    train_inputs, _ = model_inputs(model, split)
    with torch.random.fork_rng(devices=[]):
        x = pre(split.train[:2])
    traced = probe(model, x, train_inputs)
    if traced is None:  # invalid parameters: the first run names the fault
        return {}
    reasons = {est: estimator_refusal(est, *traced) for est, _ in cfg.runs()}
    return {est: why for est, why in reasons.items() if why is not None}


def run_comparison(config: CompareConfig, out: str | Path | None = None) -> Comparison:
    """Train, evaluate and report every (estimator, K, seed) of ``config`` into ``out``.

    :param out: output folder (default ``runs/<time>-<dataset>-<likelihood>-compare``).
    """
    cfg = config
    started = time.perf_counter()
    if out is not None and any((Path(out) / "runs").glob("*/checkpoint.pt")):
        raise FileExistsError(f"{out} already holds a comparison's runs; choose another --out")
    if out is None:
        out = default_run_dir(cfg.run.data.dataset, cfg.run.model.likelihood, "compare")
    out = prepare(out)
    refused = refusals(cfg)
    if not cfg.quiet:
        for why in refused.values():
            print(f"not compared: {why}", flush=True)
    plan = [(est, K, seed) for seed in cfg.seeds for est, K in cfg.runs() if est not in refused]
    reference_estimator = next(e for e in (SNR_REFERENCE, "elbo") if e not in refused)
    data: dict[int, tuple] = {}  # seed -> the test split as the model sees it, and its inputs
    runs: list[RunSummary] = []
    reference = None
    for i, (est, K, seed) in enumerate(plan):
        label = est if est in SINGLE_PARTICLE else f"{est}-K{K}"
        run_dir = out / "runs" / f"{label}-seed{seed}"
        run, vae = _train_and_measure(cfg, est, K, seed, run_dir, data)
        runs.append(run)
        if reference is None and est == reference_estimator:
            device = next(vae.parameters()).device
            x, inputs = (data[seed][0][: cfg.snr_batch], data[seed][1])
            ins = tuple(t[: cfg.snr_batch].to(device) for t in inputs)
            reference = (vae, x.to(device), ins, seed)
        if not cfg.quiet:
            print(
                f"[{i + 1}/{len(plan)}] {label} seed {seed}: test ELBO {run.test_elbo:.2f}, "
                f"log p(x) {run.log_px:.2f}, {run.seconds_per_epoch:.2f} s/epoch, SNR encoder "
                f"{run.encoder_snr:.3g} decoder {run.decoder_snr:.3g}",
                flush=True,
            )

    vae, x_snr, inputs_snr, seed = reference
    snr_ks = sorted({1, *cfg.ks})
    compared = [e for e in SINGLE_PARTICLE + MULTI_PARTICLE if e not in refused]
    snr_rows = gradient_snr(
        vae, x_snr, compared, snr_ks, R=cfg.snr_draws, seed=seed, inputs=inputs_snr
    )
    base = {r.seed: r.log_px for r in runs if r.estimator == reference_estimator}
    for r in runs:
        r.log_px_gain = r.log_px - base[r.seed]
    table = aggregate(runs)
    _write_tables_and_pictures(out, cfg, runs, table, snr_rows, seed, reference_estimator)
    markdown = _comparison_markdown(
        cfg, table, snr_rows, seed, len(data[cfg.seeds[0]][0]), time.perf_counter() - started,
        reference_estimator, refused,
    )  # fmt: skip
    atomic_write_text(out / "comparison.md", markdown)
    return Comparison(cfg, out, runs, table, snr_rows, markdown, reference_estimator, refused)


def _train_and_measure(
    cfg: CompareConfig, est: str, K: int, seed: int, run_dir: Path, data: dict
) -> tuple[RunSummary, torch.nn.Module]:
    """Train one run, then measure it at its final parameters; ``data`` caches each seed's
    test split as the model sees it."""
    result = run_training(cfg.run_config(est, K, seed), out=run_dir)
    vae = result.vae
    if seed not in data:
        x, labels, _, _ = evaluation_data(result.run_dir)
        inputs = inputs_for(vae, labels)
        if cfg.num_test:
            x, inputs = x[: cfg.num_test], tuple(t[: cfg.num_test] for t in inputs)
        data[seed] = (x, inputs)
    device = next(vae.parameters()).device
    x, inputs = data[seed][0].to(device), tuple(t.to(device) for t in data[seed][1])
    iw = importance_log_px(vae, x, cfg.iw_samples, seed=0, quiet=cfg.quiet, inputs=inputs)
    n = cfg.snr_batch
    stats = gradient_snr(
        vae, x[:n], est, [K], R=cfg.snr_draws, seed=seed, inputs=tuple(t[:n] for t in inputs)
    )
    snr = {s.group: s.snr for s in stats}
    run = RunSummary(
        estimator=est,
        K=K,
        seed=seed,
        test_elbo=result.test_elbo,
        log_px=iw.mean,
        log_px_se=iw.se,
        seconds_per_epoch=statistics.fmean(m["seconds"] for m in result.metrics),
        encoder_snr=snr["encoder"],
        decoder_snr=snr["decoder"],
        run_dir=str(result.run_dir),
        curve=[m["test_elbo"] for m in result.metrics],
        train_curve=[m["train_elbo"] for m in result.metrics],
    )
    return run, vae


def _write_tables_and_pictures(
    out: Path, cfg: CompareConfig, runs, table, snr_rows, seed: int, reference: str
) -> None:
    """``comparison.csv``, ``runs.csv``, ``snr.csv``, ``learning_curves.png``, ``snr.png``."""
    atomic_write_text(out / "comparison.csv", csv_text(table))
    per_run = [
        {k: v for k, v in asdict(r).items() if k not in ("curve", "train_curve")} for r in runs
    ]
    atomic_write_text(out / "runs.csv", csv_text(per_run))
    atomic_write_text(out / "snr.csv", csv_text([s.as_dict() for s in snr_rows]))
    save_figure(plot_learning_curves(runs), out / "learning_curves.png")
    title = f"gradient SNR at the final {reference} parameters (seed {seed}), R = {cfg.snr_draws}"
    save_figure(plot_snr(snr_rows, title=title), out / "snr.png")


def _comparison_markdown(
    cfg: CompareConfig,
    table,
    snr_rows,
    seed: int,
    n_test: int,
    elapsed: float,
    reference: str = SNR_REFERENCE,
    refused: dict[str, str] | None = None,
) -> str:
    """``comparison.md``: the settings, what each column means, and both tables."""
    shown = {k: v for k, v in flat_dict(cfg).items() if k not in (*PER_RUN, "quiet")}
    settings = ", ".join(f"{k}={v}" for k, v in shown.items())
    return f"""# Estimator comparison

Settings: {settings}. Torch threads: {torch.get_num_threads()}. Wall time: {elapsed / 60:.1f} min.

Mean +- sd over {len(cfg.seeds)} seeds ({", ".join(map(str, cfg.seeds))}); nats per datapoint, \
higher is better.

- test ELBO: the held-out ELBO (beta = 1; the analytic KL where it applies to the model, else \
a Monte Carlo KL) on the whole test split after the last epoch.
- log p(x): importance sampling with K = {cfg.iw_samples} on {n_test} test datapoints; \
`log p(x) - {reference}`: its difference to the same seed's `{reference}` run (same \
datapoints and particles), which removes the spread of the per-seed test splits.
- s / epoch: training plus the held-out ELBO.
- SNR: mean over parameters of |E g| / sd(g) for the run's own estimator and K at its final \
parameters, R = {cfg.snr_draws} draws on {min(cfg.snr_batch, n_test)} test datapoints (a \
parameter with no signal still shows ~{snr_noise_floor(cfg.snr_draws):.3f}).

{_markdown_table(table, cfg.iw_samples, reference)}
{"".join(f"{chr(10)}Not compared: {why}.{chr(10)}" for why in (refused or {}).values())}
## Gradient SNR against K at fixed parameters

The final `{reference}` model of seed {seed}; every estimator draws R = {cfg.snr_draws} \
gradients at each K from the same seed (K: importance samples for iwae and dreg, averaged \
particles otherwise). SNR +- an upper bound on its standard error; variance: mean over \
parameters of Var(g).

{snr_table(snr_rows)}

Files: `comparison.csv`, `runs.csv`, `snr.csv`, `learning_curves.png`, `snr.png`, `runs/`.
"""


# ----------------------------------------------------------------------- command line


def add_compare_flags(p: argparse.ArgumentParser) -> None:
    """The flags of ``pyro-vae compare`` and ``experiments/compare_estimators.py``: the
    comparison's settings and every shared run setting (not those of :data:`PER_RUN`)."""
    add_flags(p, CompareConfig, exclude=PER_RUN)
    p.add_argument(
        "--out",
        default=None,
        help="output folder (default: runs/<time>-<dataset>-<likelihood>-compare)",
    )


def config_from_args(args: argparse.Namespace) -> CompareConfig:
    """A :class:`CompareConfig` from parsed :func:`add_compare_flags` flags."""
    return from_flat(CompareConfig(), given(args, CompareConfig))


def report_comparison(config: CompareConfig, out: str | Path | None = None) -> int:
    """:func:`run_comparison`, then print the table and where the report is."""
    result = run_comparison(config, out)
    print(_markdown_table(result.table, config.iw_samples, result.reference))
    print(f"report: {result.out / 'comparison.md'}")
    return 0


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``experiments/compare_estimators.py``: invalid settings end in ``parser.error``."""
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    return report_comparison(cfg, args.out)

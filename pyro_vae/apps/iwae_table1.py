"""Burda, Grosse & Salakhutdinov (2016), Table 1, rerun: ``experiments/iwae_table1.py``.

The paper's MNIST protocol, as run settings of the library's own models, estimators and loop:

* 1 stochastic layer: the ``vae`` model, 784-200-200-50 tanh networks (``--hidden 200 200
  --latent-dim 50``); 2 stochastic layers: the ``two-layer`` model, 100 latents with 200-200
  networks next to ``x`` and 50 latents with 100-100 networks above them;
* Bernoulli decoder, dynamic binarization (a fresh draw per batch; one seeded draw for the
  test set);
* the VAE's bound with k particles is ``elbo`` (Pyro's ``Trace_ELBO``, k vectorized particles
  averaged), the IWAE's ``iwae`` with K = k (``dreg`` can be added as a column);
* Adam with eps = 1e-4, batch 20, the ``burda`` learning-rate schedule: 8 stages, stage i for
  3^i of 3,280 passes at 1e-3 * 10^(-i/7) (:mod:`pyro_vae.train.schedules`); ``passes_scale``
  shrinks the 3,280 passes (every stage keeps at least one pass);
* the test log p(x) by importance sampling with K = 5000 and the active units
  (Cov_x E_q[z | x] > 0.01), per layer, at the final parameters (:func:`evaluate_run`).

With k = 1 the VAE and the IWAE bounds are the same function (the paper's table repeats the
number), so that cell is trained once and reported in both rows.

Each cell trains into ``out/<estimator>-<layers>l-k<k>/`` and is evaluated there; a cell whose
``summary.json`` exists under the same configuration is reused, so an interrupted table
continues where it stopped. Writes ``table1.md`` and ``table1.csv`` into ``out``.

References: Y. Burda, R. Grosse, R. Salakhutdinov, *Importance Weighted Autoencoders*, ICLR
2016, Table 1 and section 5.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from pyro_vae.apps.evaluate import evaluate_run
from pyro_vae.config import (
    DataConfig,
    RunConfig,
    add_flags,
    at_least,
    from_flat,
    given,
    section,
    setting,
)
from pyro_vae.files import atomic_write_text, csv_text
from pyro_vae.registry import Registry
from pyro_vae.runs import run_config, run_training
from pyro_vae.train import CheckpointError, RunDirectoryError, TrainingInterrupted
from pyro_vae.train.schedules import BURDA_PASSES, BURDA_STAGES

#: the paper's columns: the bound trained, and the library's estimator of it
BOUNDS: Registry[str] = Registry("bound")
BOUNDS.add("vae", "elbo")
BOUNDS.add("iwae", "iwae")
BOUNDS.add("dreg", "dreg")

#: the paper's networks, as model settings
ARCHITECTURES = {
    1: {"model": "vae", "latent_dim": 50, "hidden": (200, 200), "activation": "tanh"},
    2: {
        "model": "two-layer",
        "latent_dim": 100,
        "hidden": (200, 200),
        "top_latent_dim": 50,
        "top_hidden": (100, 100),
        "activation": "tanh",
    },
}

#: Table 1's MNIST test log p(x) (nats), by (bound, layers), for k = 1, 5, 50
PAPER = {
    ("vae", 1): (-86.76, -86.47, -86.35),
    ("iwae", 1): (-86.76, -85.54, -84.78),
    ("vae", 2): (-85.33, -85.01, -84.78),
    ("iwae", 2): (-85.33, -83.89, -82.90),
}
PAPER_KS = (1, 5, 50)
#: passes of the paper's schedule: 3^0 + ... + 3^7
PAPER_PASSES = BURDA_PASSES

#: the optimization of every cell (the paper's)
PROTOCOL = {"batch_size": 20, "lr": 1e-3, "adam_eps": 1e-4, "lr_schedule": "burda"}
#: the run settings a user may set for the whole table (the rest is the protocol's)
SHARED = ("dataset", "data_dir", "test_size", "num_shapes", "download", "seed", "device", "quiet",
          "capture")  # fmt: skip


@dataclass(frozen=True)
class Table1Config:
    """Which cells of Table 1, and how long to train them.

    :ivar run: the settings every cell shares (the data, the seed, the device); the model,
        estimator, particles and optimization are the protocol's.
    """

    bounds: tuple[str, ...] = setting(("vae", "iwae"), "the rows: vae, iwae, dreg")
    layers: tuple[int, ...] = setting((1, 2), "stochastic layers: 1, 2")
    ks: tuple[int, ...] = setting(PAPER_KS, "the columns: particles k of the training bound")
    passes_scale: float = setting(1.0, f"passes trained, as a fraction of {PAPER_PASSES}")
    iw_samples: int = setting(5000, "K of the test log p(x) (the paper's: 5000)")
    run: RunConfig = section(lambda: RunConfig(data=DataConfig(dataset="mnist")))

    def __post_init__(self):
        for name in ("bounds", "layers", "ks"):
            values = getattr(self, name)
            values = (values,) if isinstance(values, (str, int)) else tuple(values)
            object.__setattr__(self, name, values)
        for bound in self.bounds:
            BOUNDS.check(bound)
        if not set(self.layers) <= set(ARCHITECTURES):
            raise ValueError(f"layers must be 1 or 2, got {list(self.layers)}")
        if any(int(k) < 1 for k in self.ks):
            raise ValueError(f"ks must be >= 1, got {list(self.ks)}")
        at_least("passes-scale", self.passes_scale, 0, strict=True)
        at_least("iw-samples", self.iw_samples, 1)

    @property
    def passes(self) -> int:
        """Passes over the training data per cell (at least one per stage)."""
        return max(BURDA_STAGES, round(PAPER_PASSES * self.passes_scale))

    def cells(self) -> list[tuple[str, int, int]]:
        """``(bound, layers, k)`` of every cell to train, in table order; k = 1 once per
        layer count (every bound is the ELBO there)."""
        cells = []
        for layers in self.layers:
            for bound in self.bounds:
                for k in self.ks:
                    bound_k = "vae" if k == 1 else bound
                    if (bound_k, layers, k) not in cells:
                        cells.append((bound_k, layers, k))
        return cells

    def cell_config(self, bound: str, layers: int, k: int) -> RunConfig:
        """The run settings of one cell: the shared ones, the paper's networks and
        optimization, this bound with k particles."""
        values = {
            **ARCHITECTURES[layers],
            **PROTOCOL,
            "likelihood": "bernoulli",
            "binarize": "dynamic",
            "dequantize": False,  # as resolved for a Bernoulli: the saved settings compare equal
            "estimator": BOUNDS.get(bound),
            "particles": k,
            "epochs": self.passes,
        }
        dataset = Path(self.run.data.dataset).expanduser()
        if dataset.exists():  # a run records its data by absolute path
            values["dataset"] = str(dataset.resolve())
        return from_flat(self.run, values)


@dataclass(frozen=True)
class Cell:
    """One trained and evaluated cell (log p(x) in nats per test datapoint)."""

    bound: str
    layers: int
    k: int
    log_px: float
    log_px_se: float
    active: tuple[int, ...]  # active units per latent site, in guide order (z1 before z2)
    units: tuple[int, ...]  # dimensions per latent site
    train_seconds: float
    run_dir: str

    @property
    def paper(self) -> float | None:
        """The paper's number for this cell (``None``: not in Table 1)."""
        row = PAPER.get(("vae" if self.k == 1 else self.bound, self.layers))
        return row[PAPER_KS.index(self.k)] if row and self.k in PAPER_KS else None


def run_cell(cfg: Table1Config, bound: str, layers: int, k: int, out: Path) -> Cell | str:
    """Train and evaluate one cell in ``out/<bound>-<layers>l-k<k>``: a cell evaluated under
    the same settings is reused, one whose training stopped is resumed.

    :returns: the cell, or why its estimator does not apply to the model (``dreg`` and the
        two-layer guide's q(z2 | z1)), refused before any step.
    :raises CheckpointError: the folder holds a cell trained under other settings.
    """
    run_cfg = cfg.cell_config(bound, layers, k)
    run_dir = out / f"{bound}-{layers}l-k{k}"
    summary = _reusable_summary(run_dir, run_cfg, cfg.iw_samples)
    if summary is None:
        try:
            run_training(run_cfg, run_dir, resume=(run_dir / "config.json").is_file())
        except ValueError as e:  # refused before the first step: nothing was trained
            return str(e)
        summary = evaluate_run(run_dir, iw_samples=cfg.iw_samples, which="checkpoint",
                               seed=run_cfg.train.seed, quiet=run_cfg.train.quiet)  # fmt: skip
    return _cell_of(bound, layers, k, summary, run_dir)


def _reusable_summary(run_dir: Path, run_cfg: RunConfig, iw_samples: int) -> dict | None:
    """The evaluation of a finished cell under these settings (``None``: none)."""
    path = run_dir / "summary.json"
    if not path.is_file() or run_config(run_dir) != run_cfg:
        return None
    summary = json.loads(path.read_text())
    ok = summary.get("iw_samples") == iw_samples and summary.get("which") == "checkpoint"
    return summary if ok else None


def _cell_of(bound: str, layers: int, k: int, summary: dict, run_dir: Path) -> Cell:
    """A :class:`Cell` from an evaluation's ``summary.json`` and the run's metrics."""
    units = [_numel(shape) for shape in summary["latent_sites"].values()]
    active, start = [], 0
    for n in units:
        active.append(sum(start <= d < start + n for d in summary["active_dims"]))
        start += n
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    seconds = sum(row["seconds"] for row in metrics)
    return Cell(bound, layers, k, summary["log_px"], summary["log_px_se"], tuple(active),
                tuple(units), seconds, str(run_dir))  # fmt: skip


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def table_rows(cells: list[Cell], cfg: Table1Config) -> list[dict]:
    """One row per (bound, layers, k) of the table, in the paper's order; a k = 1 cell fills
    every bound's row."""
    by_key = {(c.bound, c.layers, c.k): c for c in cells}
    rows = []
    for layers in cfg.layers:
        for bound in cfg.bounds:
            for k in cfg.ks:
                cell = by_key.get(("vae" if k == 1 else bound, layers, k))
                if cell is None:
                    continue
                paper = cell.paper
                rows.append({
                    "layers": layers,
                    "bound": bound,
                    "k": k,
                    "log_px": cell.log_px,
                    "log_px_se": cell.log_px_se,
                    "paper": paper,
                    "difference": None if paper is None else cell.log_px - paper,
                    "active_units": "+".join(map(str, cell.active)),
                    "latent_units": "+".join(map(str, cell.units)),
                    "train_seconds": cell.train_seconds,
                    "run_dir": cell.run_dir,
                })  # fmt: skip
    return rows


def table_markdown(rows: list[dict], cfg: Table1Config) -> str:
    """The table beside the paper's numbers, with the difference per cell."""
    head = (
        f"Test log p(x) (nats, importance sampling with K = {cfg.iw_samples}, +- its standard "
        f"error over test datapoints) after {cfg.passes} passes ({cfg.passes_scale:g} of the "
        f"paper's {PAPER_PASSES}) on {cfg.run.data.dataset}; the paper's on MNIST after "
        f"{PAPER_PASSES}.\n\n"
        "| layers | bound | k | log p(x) | paper | difference | active units | train s |\n"
        "|---:|---|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for r in rows:
        paper = "" if r["paper"] is None else f"{r['paper']:.2f}"
        diff = "" if r["difference"] is None else f"{r['difference']:+.2f}"
        lines.append(
            f"| {r['layers']} | {r['bound']} | {r['k']} | {r['log_px']:.2f} +- "
            f"{r['log_px_se']:.2f} | {paper} | {diff} | {r['active_units']} / "
            f"{r['latent_units']} | {r['train_seconds']:.0f} |"
        )
    return head + "\n".join(lines) + "\n"


def run_table(cfg: Table1Config, out: str | Path = "runs/iwae-table1") -> tuple[list[dict], str]:
    """Train and evaluate every cell of ``cfg``; write ``table1.md`` and ``table1.csv`` into
    ``out``.

    :returns: ``(rows, markdown)``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cells = []
    for bound, layers, k in cfg.cells():
        cell = run_cell(cfg, bound, layers, k, out)
        if isinstance(cell, str):
            print(f"{bound}, {layers} layer(s), k = {k}: not trained: {cell}", file=sys.stderr)
        else:
            cells.append(cell)
    rows = table_rows(cells, cfg)
    markdown = table_markdown(rows, cfg)
    atomic_write_text(out / "table1.md", markdown)
    atomic_write_text(out / "table1.csv", csv_text(rows))
    return rows, markdown


def add_table1_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of ``experiments/iwae_table1.py``: the table's settings and the run settings
    every cell shares."""
    add_flags(parser, Table1Config, only=(*SHARED, "bounds", "layers", "ks", "passes_scale",
                                          "iw_samples"))  # fmt: skip
    parser.add_argument("--out", default="runs/iwae-table1", help="output folder")


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the table from parsed flags; invalid settings end in ``parser.error``."""
    try:
        cfg = from_flat(Table1Config(), given(args, Table1Config))
        for cell in cfg.cells():
            cfg.cell_config(*cell)  # every cell's settings validate before any training
    except ValueError as e:
        parser.error(str(e))
    try:
        _, markdown = run_table(cfg, args.out)
    except (CheckpointError, RunDirectoryError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    except TrainingInterrupted as e:  # the cell's checkpoint is saved: a rerun resumes it
        print(f"{parser.prog}: {e}; rerun the same command to continue", file=sys.stderr)
        return 128 + e.signum
    print(markdown, end="")
    print(f"table: {Path(args.out) / 'table1.md'}")
    return 0

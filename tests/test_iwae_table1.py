"""Burda et al. (2016)'s Table 1 protocol: the ``burda`` learning-rate schedule, each cell's
settings, the table beside the paper's numbers, and the experiment script end to end."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyro_vae.apps.iwae_table1 import PAPER, Cell, Table1Config, table_markdown, table_rows
from pyro_vae.config import TrainConfig
from pyro_vae.models import build_vae
from pyro_vae.train.schedules import BURDA_PASSES, BurdaLR, burda_stage_epochs
from pyro_vae.train.step import TrainStep, make_scheduler

ROOT = Path(__file__).resolve().parents[1]


def test_burda_stages_are_the_papers_and_scale_down():
    assert BURDA_PASSES == 3280
    assert burda_stage_epochs(3280) == [1, 3, 9, 27, 81, 243, 729, 2187]
    assert burda_stage_epochs(8) == [1] * 8
    for epochs in range(8, 400):
        stages = burda_stage_epochs(epochs)
        assert sum(stages) == epochs and min(stages) >= 1 and len(stages) == 8
        assert stages[-1] == max(stages) or epochs < 40  # the last stage is the longest
    with pytest.raises(ValueError, match="at least 8 epochs"):
        burda_stage_epochs(7)


def test_burda_learning_rate_at_every_step():
    """Stage i runs at lr * 10^(-i/7), from its first step to its last (3 steps per epoch)."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=1e-3)
    epochs, spe = 33, 3
    scheduler = BurdaLR(optimizer, epochs, spe)
    expected = []
    for i, length in enumerate(burda_stage_epochs(epochs)):
        expected += [1e-3 * 10 ** (-i / 7)] * (length * spe)
    seen = []
    for _ in range(epochs * spe):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx(expected, rel=1e-12)
    assert seen[-1] == pytest.approx(1e-4)  # the paper's last stage
    assert scheduler.T_max == epochs * spe  # what a resume with other --epochs is refused on


def test_the_protocols_optimizer_settings_reach_adam():
    vae = build_vae((4,), "bernoulli", latent_dim=2, hidden=(4,))
    cfg = TrainConfig(adam_eps=1e-4, lr_schedule="burda", epochs=8, batch_size=20)
    step = TrainStep(vae, cfg, torch.device("cpu"))
    assert step.optimizer.param_groups[0]["eps"] == 1e-4
    assert isinstance(make_scheduler(step.optimizer, cfg, 8 * 5), BurdaLR)
    with pytest.raises(ValueError, match="burda needs --epochs >= 8"):
        TrainConfig(lr_schedule="burda", epochs=7)
    with pytest.raises(ValueError, match="adam-eps must be > 0"):
        TrainConfig(adam_eps=0.0)


def test_cells_and_their_settings():
    cfg = Table1Config(passes_scale=1.0)
    # k = 1 is one cell per layer count: the VAE's and the IWAE's bound are the same there
    row = (("vae", 1), ("vae", 5), ("vae", 50), ("iwae", 5), ("iwae", 50))
    assert cfg.cells() == [(b, layers, k) for layers in (1, 2) for b, k in row]
    run = cfg.cell_config("iwae", 2, 50)
    m, t = run.model, run.train
    networks = (m.model, m.latent_dim, m.hidden, m.top_latent_dim, m.top_hidden, m.activation)
    assert networks == ("two-layer", 100, (200, 200), 50, (100, 100), "tanh")
    assert (m.likelihood, run.data.binarize) == ("bernoulli", "dynamic")
    optimization = (t.estimator, t.particles, t.batch_size, t.lr, t.adam_eps, t.lr_schedule)
    assert optimization == ("iwae", 50, 20, 1e-3, 1e-4, "burda")
    assert t.epochs == 3280
    one = cfg.cell_config("vae", 1, 5)
    assert (one.model.model, one.model.latent_dim, one.model.hidden) == ("vae", 50, (200, 200))
    assert one.train.estimator == "elbo"  # Trace_ELBO with k particles averaged
    assert Table1Config(passes_scale=0.01).passes == 33
    assert Table1Config(passes_scale=1e-6).passes == 8  # one pass per stage at least
    with pytest.raises(ValueError, match="layers must be 1 or 2"):
        Table1Config(layers=(3,))


def test_the_table_sits_beside_the_papers_numbers():
    cfg = Table1Config(ks=(1, 5), layers=(1,))
    cells = [Cell("vae", 1, 1, -90.0, 0.5, (40,), (50,), 12.0, "a"),
             Cell("vae", 1, 5, -89.0, 0.5, (41,), (50,), 13.0, "b"),
             Cell("iwae", 1, 5, -88.0, 0.5, (45,), (50,), 14.0, "c")]  # fmt: skip
    rows = table_rows(cells, cfg)
    assert [(r["bound"], r["k"], r["log_px"]) for r in rows] == [
        ("vae", 1, -90.0), ("vae", 5, -89.0), ("iwae", 1, -90.0), ("iwae", 5, -88.0)
    ]  # fmt: skip
    assert [r["paper"] for r in rows] == [-86.76, -86.47, -86.76, -85.54]
    for r in rows:
        assert r["difference"] == pytest.approx(r["log_px"] - r["paper"])
    text = table_markdown(rows, cfg)
    assert "| 1 | iwae | 5 | -88.00 +- 0.50 | -85.54 | -2.46 | 45 / 50 | 14 |" in text
    assert PAPER[("iwae", 2)][2] == -82.90  # the best cell of the paper


@pytest.mark.slow
def test_experiment_script_runs(tmp_path):
    """experiments/iwae_table1.py end to end on a few embedded shapes: both models, both bounds,
    a table of finite numbers; a second run reuses every cell."""
    out = tmp_path / "table"
    argv = [sys.executable, str(ROOT / "experiments" / "iwae_table1.py"), "--dataset", "shapes",
            "--num-shapes", "40", "--test-size", "10", "--ks", "1", "2", "--passes-scale", "1e-6",
            "--iw-samples", "3", "--quiet", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in (out / "table1.md").read_text().splitlines() if ln.startswith("| 1 ")
             or ln.startswith("| 2 ")]  # fmt: skip
    assert len(lines) == 8  # 2 layers x 2 bounds x 2 k
    for line in lines:
        assert math.isfinite(float(line.split("|")[4].split("+-")[0]))
    assert len(list(out.glob("*/summary.json"))) == 6  # k = 1 trained once per layer count
    again = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout == res.stdout  # every cell reused: the same table

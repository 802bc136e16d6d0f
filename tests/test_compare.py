"""The estimator comparison (:mod:`pyro_vae.apps.compare`), end to end: the command line, the
script and the README's section."""

import csv
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from pyro_vae.apps.cli import build_parser
from pyro_vae.apps.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]


def test_compare_needs_three_seeds(capsys):
    assert cli_main(["compare", "--seeds", "0", "1", "--out", "unused"]) == 2
    assert "at least 3 distinct seeds" in capsys.readouterr().err


def test_compare_script_smoke(tmp_path):
    out = tmp_path / "cmp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "error::DeprecationWarning"}
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "experiments" / "compare_estimators.py"),
            "--dataset",
            "shapes",
            "--num-shapes",
            "256",
            "--test-size",
            "40",
            "--epochs",
            "1",
            "--seeds",
            "0",
            "1",
            "2",
            "--ks",
            "2",
            "--iw-samples",
            "8",
            "--snr-draws",
            "3",
            "--snr-batch",
            "16",
            "--latent-dim",
            "2",
            "--hidden",
            "8",
            "--batch-size",
            "64",
            "--out",
            str(out),
            "--quiet",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    for name in (
        "comparison.md",
        "comparison.csv",
        "runs.csv",
        "snr.csv",
        "learning_curves.png",
        "snr.png",
    ):
        assert (out / name).is_file(), name
    with open(out / "comparison.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["estimator"], r["K"]) for r in table] == [
        ("elbo", "1"),
        ("meanfield", "1"),
        ("stl", "1"),
        ("iwae", "2"),
        ("dreg", "2"),
    ]
    for r in table:
        assert r["seeds"] == "3"
        for key in ("test_elbo_mean", "log_px_mean", "encoder_snr_mean", "decoder_snr_mean"):
            assert math.isfinite(float(r[key])), (r["estimator"], key)
    with open(out / "snr.csv") as f:
        snr = list(csv.DictReader(f))
    assert len(snr) == 5 * 2 * 2  # estimators x K in {1, 2} x groups
    assert "| dreg | 2 |" in (out / "comparison.md").read_text()
    assert "| dreg | 2 |" in res.stdout


def test_readme_compare_section_runs(tmp_path, monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text()
    section = re.search(r"^## Compare estimators\n(.*?)(?=^## )", readme, re.S | re.M).group(1)
    (command,) = re.findall(r"```bash\n(.*?)\n```", section, re.S)
    argv = shlex.split(command.replace("\\\n", " "))
    assert argv[:2] == [".venv/bin/pyro-vae", "compare"]
    build_parser().parse_args(argv[1:])  # the documented flags exist
    (block,) = re.findall(r"```python\n(.*?)```", section, re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    assert "| dreg | 10 |" in capsys.readouterr().out
    assert (tmp_path / "snr.png").is_file()

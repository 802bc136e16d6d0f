"""The README's promises: its Python snippets run, and its commands are the ones CI runs."""

import re
from pathlib import Path

from pyro_vae.models.likelihoods import LIKELIHOODS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    match = re.search(rf"^## {title}\n(.*?)(?=^## )", README, re.S | re.M)
    assert match, title
    return match.group(1)


def test_use_from_python_snippets_run(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", _section("Use from Python"), re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    try:
        for block in blocks:
            exec(compile(block, "README.md", "exec"), {})
    finally:
        LIKELIHOODS._entries.pop("student-t", None)
    out = capsys.readouterr().out
    elbo = float(re.search(r"test ELBO: (-?[\d.]+)", out).group(1))
    iwae = float(re.search(r"IWAE-50 bound: (-?[\d.]+)", out).group(1))
    assert iwae > elbo - 5  # the IWAE-50 bound sits above the ELBO (up to subset noise)


def _commands(title: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", _section(title), re.S)


def test_two_commands_on_a_fresh_machine_and_ci_runs_exactly_them():
    """The README's set-up is two commands: the first makes the environment, installs and
    trains the default run; the second lints, then tests. CI removes any old environment and
    runs exactly those two lines, last, in that order, stopping at the first failure."""
    setup, test = _commands("Set up")
    assert _commands("Train") == [] and _commands("Test") == []  # no third command
    assert setup.startswith("python3 -m venv .venv && ")
    assert '.venv/bin/pip install -e ".[dev]"' in setup
    assert setup.endswith(" && .venv/bin/pyro-vae train")  # the main job, on the embedded data
    lint = ".venv/bin/ruff check . && .venv/bin/ruff format --check ."
    assert test == f"{lint} && .venv/bin/python -m pytest -q"  # the linter before the tests
    ci = (ROOT / ".ci" / "run").read_text()
    lines = [line for line in ci.splitlines() if line.strip() and not line.startswith("#")]
    assert lines[-2:] == [setup, test]
    assert "set -euo pipefail" in lines and "rm -rf .venv" in lines[:-2]


TINY = {
    "train": ["--epochs", "1", "--num-shapes", "200", "--test-size", "40", "--latent-dim", "2",
              "--hidden", "16", "--batch-size", "50", "--quiet"],
    "evaluate": ["--iw-samples", "4", "--elbo-particles", "2", "--quiet"],
    "compare": ["--epochs", "1", "--num-shapes", "120", "--test-size", "30", "--latent-dim", "2",
                "--hidden", "8", "--batch-size", "40", "--iw-samples", "3", "--snr-draws", "2",
                "--snr-batch", "6", "--quiet"],
}  # fmt: skip


def test_write_your_own_model_runs_as_written(tmp_path, monkeypatch, capsys):
    """The section's model, saved as mymodel.py, trains, evaluates and compares through the
    section's own commands (with tiny sizes appended: the later flag wins)."""
    from pyro_vae.apps import cli

    section = _section("Write your own model")
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    (commands,) = re.findall(r"```bash\n(.*?)\n```", section, re.S)
    (tmp_path / "mymodel.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    lines = commands.replace("\\\n", " ").splitlines()
    assert [line.split()[:2] for line in lines] == [
        [".venv/bin/pyro-vae", c] for c in ("train", "evaluate", "compare")
    ]
    for line in lines:
        argv = line.split()[1:]
        assert cli.main(argv + TINY[argv[0]]) == 0, line
    summary = (tmp_path / "runs" / "laplace" / "summary.json").read_text()
    assert '"z": "analytic"' in summary  # KL(Normal || Laplace) has a closed form
    assert "| dreg | 5 |" in (tmp_path / "runs" / "laplace-compare" / "comparison.md").read_text()
    capsys.readouterr()


def test_several_gpus_commands_are_torchrun_of_valid_settings():
    """Every command of the section is torchrun running ``-m pyro_vae`` with settings the
    command line accepts."""
    from pyro_vae.apps.cli import build_parser

    parser = build_parser()
    lines = [
        line
        for block in _commands("Several GPUs or machines")
        for line in block.replace("\\\n", " ").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert len(lines) >= 4
    for line in lines:
        words = line.split()
        assert "torchrun" in " ".join(words[:2]) and "--nproc-per-node" in words, line
        argv = words[words.index("pyro_vae") + 1 :]
        args = parser.parse_args(argv)
        assert args.command in ("train", "evaluate"), line

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
        LIKELIHOODS._entries.pop("laplace", None)
    out = capsys.readouterr().out
    elbo = float(re.search(r"test ELBO: (-?[\d.]+)", out).group(1))
    iwae = float(re.search(r"IWAE-50 bound: (-?[\d.]+)", out).group(1))
    assert iwae > elbo - 5  # the IWAE-50 bound sits above the ELBO (up to subset noise)


def test_ci_runs_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    setup = re.search(r"```bash\n(.*?)\n```", _section("Set up"), re.S).group(1)
    test, lint = re.findall(r"```bash\n(.*?)\n```", _section("Test"), re.S)
    assert setup in ci and test in ci and lint in ci
    assert ci.index(lint) < ci.index(test)  # the linter before the tests

"""The run directory: a folder a person (or ``pyro-vae evaluate``) can reopen, every file of
it written atomically.

Layout::

    config.json         resolved configuration, versions, git SHA, data shape
    metrics.jsonl       one JSON line per epoch (epoch, step, train_elbo, test_elbo, seconds,
                        lr, beta)
    metrics.csv         the same as a table
    checkpoint.pt       latest state (model, optimizer, schedule, RNG, epoch, step, metrics,
                        config; after Ctrl-C also the epoch's permutation and next batch)
    best.pt             the state with the best test ELBO
    reconstructions.png test images (top) and their reconstructions (likelihood means)
    samples.png         likelihood means at prior draws z ~ N(0, I)
    curves.png          ELBO per epoch
    summary.json, report.md, report.html, evaluation/   written by ``pyro-vae evaluate``
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pyro
import torch

METRIC_FIELDS = ("epoch", "step", "train_elbo", "test_elbo", "seconds", "lr", "beta")


class RunDirectoryError(OSError):
    """The run directory cannot be created or written (a file in the way, read-only, full).

    ``errno`` is the underlying error's (``errno.ENOSPC`` for a full disk).
    """

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


def default_run_dir(dataset: str, likelihood: str, estimator: str, root: str = "runs") -> Path:
    """``runs/<time>-<dataset>-<likelihood>-<estimator>``."""
    name = Path(dataset).name or dataset  # a path names the run by its last part
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{stamp}-{name}-{likelihood}-{estimator}"


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, rename it over ``path``
    and fsync the folder: readers see the old file or the new one, never a part of one.

    The temporary file is named ``.<target>.<random>.tmp`` and removed if ``write`` fails;
    one that a killed process left behind is removed by :func:`remove_stale_temp_files`.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(text.encode()))


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment() -> dict:
    """Versions and code revision, recorded beside the configuration."""
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "pyro": str(pyro.__version__),
        "git_sha": _git_sha(),
    }


def prepare(run_dir: str | Path) -> Path:
    """Create ``run_dir`` and prove it is writable before any training starts.

    :raises RunDirectoryError: the folder cannot be created or written.
    """
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as e:
        raise RunDirectoryError(
            f"the run directory {run_dir} is not writable ({e.strerror or e}); nothing was "
            f"trained. Choose another --out, or make room.",
            e.errno,
        ) from e
    return run_dir


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temporary files of writes that a killed process left behind.

    :func:`atomic_write` names them ``.<target>.<random>.tmp``; a
    finished write renames its file, so any that remain belong to a dead writer.
    """
    stale = sorted(run_dir.glob(".*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def write_config(run_dir: Path, config: dict) -> None:
    atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")


def read_config(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: it has no config.json")
    return json.loads(path.read_text())


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a crash: everything before it stands
    return rows


def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    """Rewrite ``metrics.jsonl`` and ``metrics.csv`` from ``rows`` (atomic, each)."""
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(run_dir / "metrics.csv", buf.getvalue())

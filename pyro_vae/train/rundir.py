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

import contextlib
import json
import os
import platform
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pyro
import torch

from pyro_vae.files import atomic_write_text, csv_text, remove_temp_files

try:
    import fcntl
except ImportError:  # Windows: no run-directory lock
    fcntl = None

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


#: the run directory's lock file (see :class:`RunLock`)
LOCK_NAME = ".lock"
#: files of pyro-vae's own bookkeeping, which do not make a folder "hold" anything
_BOOKKEEPING = (LOCK_NAME, ".write-test")


class RunLock:
    """An exclusive lock on a run directory, held for the whole of a training run (new or
    resumed), so that two processes never write the same run.

    The lock is ``flock`` on ``RUN_DIR/.lock``, which names its holder (pid, host, time). The
    kernel releases it when the holder exits, however it exits (``kill -9`` included), so a
    lock left by a crash is stale at once: the next process takes it. Where ``flock`` is
    missing (Windows), there is no lock and nothing else changes.

    :raises RunDirectoryError: another live process holds the lock (it is named).
    """

    def __init__(self, run_dir: Path, created: bool = False):
        self.run_dir = Path(run_dir)
        self.created = created  # by this process: removed on release if nothing was written
        self._file = None

    def acquire(self) -> RunLock:
        if fcntl is None:
            return self
        path = self.run_dir / LOCK_NAME
        f = open(path, "a+")  # noqa: SIM115 (held open for as long as the lock is held)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise RunDirectoryError(
                f"{self.run_dir} is in use by another pyro-vae process ({holder}); wait for it "
                f"to finish, stop it, or choose another --out"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%H:%M:%S')}")
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        """Release the lock. The lock file stays (removing it would race with the next
        taker), unless this process created the folder and wrote nothing else in it: then the
        folder goes too."""
        if self._file is None:
            return
        if self.created and _holds_nothing(self.run_dir):
            with contextlib.suppress(OSError):
                (self.run_dir / LOCK_NAME).unlink()
                self.run_dir.rmdir()
        self._file.close()  # closing the descriptor releases the flock
        self._file = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def visiting(run_dir: str | Path) -> Iterator[bool]:
    """For a command that reads a run directory and writes beside it (``evaluate``,
    ``sample``): the lock is taken if it is free, and then the temporary files of writes a
    killed process left are removed; if a training run holds it, nothing is removed (its
    writes are live) and the command goes on (its own writes are atomic).

    :returns: whether the lock was taken.
    """
    run_dir = Path(run_dir)
    lock = RunLock(run_dir)
    held = False
    if (run_dir / "config.json").is_file():  # a run directory: no lock file in other folders
        try:
            held = bool(lock.acquire())
        except OSError:  # held by a training run (RunDirectoryError), or read-only
            pass
    try:
        if held:
            remove_temp_files(run_dir)
        yield held
    finally:
        lock.release()


def claim(run_dir: str | Path, resume: bool) -> RunLock:
    """Create (if needed) and lock the run directory of a training run; return the held lock.

    With the lock held, the temporary files of writes a killed process left are removed. A new
    run starts only in a folder that is absent or empty; a folder with an unfinished run of
    pyro-vae that has no checkpoint yet (killed while writing its first) is refused with how
    to resume it, and any other non-empty folder is refused: nothing in it is touched.

    :raises RunDirectoryError: the folder cannot be written, another process holds it, or it
        is not a folder a new run may start in.
    """
    created = not Path(run_dir).exists()
    run_dir = prepare(run_dir)
    lock = RunLock(run_dir, created).acquire()
    try:
        remove_temp_files(run_dir)
        if not resume:
            _check_new_run_folder(run_dir)
    except BaseException:
        lock.release()
        raise
    return lock


def _held(run_dir: Path) -> list[str]:
    """What the folder holds, besides pyro-vae's bookkeeping."""
    return sorted(p.name for p in run_dir.iterdir() if p.name not in _BOOKKEEPING)


def _holds_nothing(run_dir: Path) -> bool:
    try:
        return not _held(run_dir)
    except OSError:
        return False


def _check_new_run_folder(run_dir: Path) -> None:
    held = _held(run_dir)
    if not held:
        return
    if "checkpoint.pt" in held:
        raise RunDirectoryError(
            f"{run_dir} already holds a run (checkpoint.pt); continue it with pyro-vae train "
            f"--resume {run_dir}, or choose another --out"
        )
    if held == ["config.json"] and _is_run_config(run_dir / "config.json"):
        raise RunDirectoryError(
            f"{run_dir} holds a pyro-vae run that stopped before its first checkpoint; start "
            f"it with pyro-vae train --resume {run_dir}, or remove the folder"
        )
    shown = ", ".join(held[:4]) + (f" and {len(held) - 4} more" if len(held) > 4 else "")
    raise RunDirectoryError(
        f"{run_dir} is not empty (it holds {shown}); a new run starts only in an absent or "
        f"empty folder, so that nothing is overwritten: choose another --out"
    )


def _is_run_config(path: Path) -> bool:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and {"model", "data", "train"} <= set(config)


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
    atomic_write_text(run_dir / "metrics.csv", csv_text(rows, METRIC_FIELDS))

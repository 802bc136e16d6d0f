"""Files written atomically: a reader (or a process killed mid-write) sees the old file or the
new one, never a part of one.

Every file pyro-vae writes goes through :func:`atomic_write`: the run directory's
checkpoints, metrics and configuration, the pictures (:func:`save_figure`), the evaluation's
reports. A write goes to a temporary file beside its target, named ``.<target>.<random>.tmp``
(:data:`TEMP_PATTERN`), which is fsynced and renamed over the target; a temporary file left
behind belongs to a writer that was killed, and :func:`remove_temp_files` deletes it.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

#: the temporary files of :func:`atomic_write` (a glob pattern)
TEMP_PATTERN = ".*.tmp"


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, rename it over ``path``
    and fsync the folder.

    The temporary file is removed if ``write`` fails (or is interrupted).
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
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(text.encode()))


def csv_text(rows: Sequence[dict], fieldnames: Sequence[str] | None = None) -> str:
    """``rows`` as CSV text with a header: the columns ``fieldnames`` (default: the first row's
    keys; keys outside them are left out)."""
    buf = io.StringIO()
    names = list(fieldnames if fieldnames is not None else rows[0])
    writer = csv.DictWriter(buf, fieldnames=names, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def save_figure(fig: Any, path: str | Path, **savefig_kwargs) -> None:
    """A matplotlib figure saved atomically, in the format of ``path``'s suffix."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, **savefig_kwargs)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def remove_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files of :func:`atomic_write` in ``folder``.

    .. warning:: Only while no other process writes in ``folder`` (a run directory's lock
        held): a live writer's temporary file would be deleted under it.
    """
    stale = sorted(Path(folder).glob(TEMP_PATTERN))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale

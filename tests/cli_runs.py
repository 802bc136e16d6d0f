"""Running ``pyro-vae`` in tests: in this process (:func:`run_cli`) or as a subprocess
(:func:`pyro_vae_process`), on tiny flat data (:func:`flat_args`), and proving that nothing in
a folder changed (:func:`files`)."""

import os
import subprocess
import sys
import time
from pathlib import Path

from pyro_vae.apps import cli
from pyro_vae.train.rundir import LOCK_NAME

#: subprocesses use one intra-op thread, as the tests do in this process
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_cli(argv, capsys) -> tuple[int, str]:
    """``pyro-vae ARGV`` in this process: exit status and stderr (never a traceback)."""
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        rc = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def flat_args(data: Path, *extra) -> list:
    """``train`` on 80 flat datapoints: 64 to train in 4 batches of 16, 16 to test."""
    return ["train", "--dataset", data, "--test-size", 16, "--batch-size", 16,
            "--latent-dim", 2, "--hidden", 8, "--quiet", *extra]  # fmt: skip


def files(folder: Path) -> dict:
    """Every file's bytes and modification time: to prove nothing was written (but the lock
    file, which names the last process that held the folder)."""
    return {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.iterdir())
        if p.name != LOCK_NAME
    }


def temp_files(folder: Path) -> list:
    return sorted(p.name for p in folder.glob(".*.tmp"))


def pyro_vae_process(*args, **kwargs) -> subprocess.Popen:
    """``pyro-vae ARGS`` as a subprocess (the installed entry point), text pipes."""
    exe = Path(sys.executable).parent / "pyro-vae"
    return subprocess.Popen(
        [str(exe), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ONE_THREAD,
        **kwargs,
    )


def wait_for(predicate, timeout=120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)

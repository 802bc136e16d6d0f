"""Several processes of one run in tests: each started with the environment torchrun gives
its workers (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), so
a test can signal or kill one rank; :func:`torchrun` starts them with torchrun itself."""

import socket
import subprocess
import sys
from pathlib import Path

from cli_runs import ONE_THREAD

PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(
    n: int, argv: list, cwd: Path | None = None, env: dict | None = None
) -> list[subprocess.Popen]:
    """``python ARGV`` as ranks ``0 .. n-1`` of one process group on this machine (``env``:
    more environment variables)."""
    port = free_port()
    procs = []
    extra = env or {}
    for rank in range(n):
        env = {
            **ONE_THREAD,
            **extra,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(n),
            "LOCAL_WORLD_SIZE": str(n),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        procs.append(
            subprocess.Popen(
                [PYTHON, *map(str, argv)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=cwd,
            )
        )
    return procs


def finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[tuple[int, str, str]]:
    """Wait for every rank: ``(exit status, stdout, stderr)`` of each, in rank order."""
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        results.append((p.returncode, out, err))
    return results


def pyro_vae_ranks(
    n: int, *args, cwd: Path | None = None, env: dict | None = None
) -> list[subprocess.Popen]:
    """``pyro-vae ARGS`` as ``n`` ranks (``python -m pyro_vae``, as torchrun's ``-m`` runs it)."""
    return start_ranks(n, ["-m", "pyro_vae", *args], cwd=cwd, env=env)


def torchrun(n: int, *args, cwd: Path | None = None, timeout: float = 300):
    """``torchrun --standalone --nproc-per-node N -m pyro_vae ARGS``: the completed process."""
    env = {k: v for k, v in ONE_THREAD.items() if k not in ("RANK", "WORLD_SIZE")}
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
           "-m", "pyro_vae", *map(str, args)]  # fmt: skip
    return subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout, check=False
    )

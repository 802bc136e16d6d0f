"""Process memory readings shared by the benchmarks (Linux ``/proc``, with fallbacks)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

#: the real MNIST test split beside the project (never committed into it)
MNIST_T10K = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-t10k"


def proc_status_mb(field: str) -> float | None:
    """``VmHWM`` / ``VmRSS`` of this process in MB (Linux), else ``None``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (since the last :func:`reset_peak_rss`)."""
    hwm = proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 1024  # bytes on macOS, kB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class RSSSampler:
    """Samples the resident set size (and CUDA memory allocated) every ``interval`` seconds in
    a background thread, so peaks can be attributed to time windows (e.g. epochs)."""

    def __init__(self, interval: float = 0.02, cuda: bool = False):
        self.interval, self.cuda = interval, cuda
        self.samples: list[tuple[float, float, float]] = []  # (time, rss MB, cuda MB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import torch

        while not self._stop.is_set():
            rss = proc_status_mb("VmRSS") or 0.0
            gpu = torch.cuda.memory_allocated() / 2**20 if self.cuda else 0.0
            self.samples.append((time.perf_counter(), rss, gpu))
            time.sleep(self.interval)

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, start: float, end: float) -> tuple[float, float]:
        """Peak (RSS MB, CUDA MB) of the samples taken in ``[start, end]``."""
        inside = [(r, g) for t, r, g in self.samples if start <= t <= end] or [(0.0, 0.0)]
        return max(r for r, _ in inside), max(g for _, g in inside)

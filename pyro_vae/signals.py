"""Stop signals: Ctrl-C (SIGINT), SIGTERM and SIGHUP (what schedulers, ``timeout``, container
runtimes and a closed terminal send).

During training they are read between two steps (:class:`StopRequest`), so a checkpoint is
never taken in the middle of an optimizer update; during the command's imports they are
recorded the same way, and stop it once the imports are done; elsewhere (the data loading)
they raise :class:`Interrupted` (:func:`raise_on_stop_signals`). Either way a command stops
with one line and exit status ``128 + signum``. This module imports nothing heavy: the
command's entry point installs it before the seconds of importing torch.
"""

from __future__ import annotations

import signal
import threading
import time

#: the signals that stop a training run between two steps (SIGHUP where the system has it)
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class Interrupted(KeyboardInterrupt):
    """A stop signal raised as an exception (outside a training loop's steps, or a second
    signal during one).

    :ivar signum: the signal; the process exits with ``128 + signum``.
    """

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal_name(signum))
        self.signum = signum


def signal_name(signum: int) -> str:
    """``"Ctrl-C (SIGINT)"``, ``"SIGTERM"``, ..."""
    name = signal.Signals(signum).name
    return f"Ctrl-C ({name})" if signum == signal.SIGINT else name


def raise_on_stop_signals() -> None:
    """Make SIGTERM and SIGHUP raise :class:`Interrupted`, as SIGINT raises
    :exc:`KeyboardInterrupt`: the command line then stops with its one line and ``128 +
    signum`` wherever the signal lands (imports, data loading), instead of dying silently."""
    for signum in STOP_SIGNALS:
        if signum != signal.SIGINT:
            signal.signal(signum, _raise)


def signal_of(error: KeyboardInterrupt) -> int:
    """The stop signal behind ``error``: its own for :class:`Interrupted`, SIGINT for
    Python's Ctrl-C."""
    return error.signum if isinstance(error, Interrupted) else signal.SIGINT


def _raise(signum, frame) -> None:
    raise Interrupted(signum)


#: seconds within which a repeat of the stop signal counts as the same request
REPEAT_WINDOW_S = 0.5


class StopRequest:
    """A stop signal (:data:`STOP_SIGNALS`) sets a flag that the loop reads between steps, so
    a checkpoint is never taken in the middle of an optimizer update; a second one interrupts
    at once (:class:`Interrupted`).

    The same signal again within :data:`REPEAT_WINDOW_S` is the same request, not a second
    one: a Ctrl-C in a terminal reaches a torchrun worker twice, from the terminal and
    forwarded by torchrun.

    Installed only in the main thread (the only one Python delivers signals to); the previous
    handlers are restored on exit.

    :ivar signum: the signal that asked to stop (``None``: none yet).
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._at = 0.0  # time.monotonic() of the request

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            if signum == self.signum and time.monotonic() - self._at < REPEAT_WINDOW_S:
                return
            raise Interrupted(signum)
        self.signum, self._at = signum, time.monotonic()

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            if previous is None:  # installed outside Python
                previous = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
            signal.signal(signum, previous)
        self._previous.clear()

"""Stop requests: Ctrl-C (SIGINT) read between two steps, so a checkpoint is never taken in
the middle of an optimizer update."""

from __future__ import annotations

import signal
import threading


class StopRequest:
    """SIGINT (Ctrl-C) sets a flag that the loop reads between steps, so a checkpoint is never
    taken in the middle of an optimizer update; a second SIGINT interrupts at once.

    Installed only in the main thread (the only one Python delivers signals to); the previous
    handler is restored on exit.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        self._installed = False

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            previous = self._previous if self._previous is not None else signal.default_int_handler
            signal.signal(signal.SIGINT, previous)
            self._installed = False

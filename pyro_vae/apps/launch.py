"""The ``pyro-vae`` command's entry point (and ``python -m pyro_vae``'s).

Importing torch, Pyro and matplotlib takes seconds; a Ctrl-C, SIGTERM or SIGHUP in those
seconds would print a traceback (or kill the process silently). The stop signals are recorded
while the command line (:mod:`pyro_vae.apps.cli`) is imported, and one that came stops with one
line and exit status ``128 + signum`` once the imports are done; after them, a signal before
the command's own handling raises, and stops the same way.
"""

from __future__ import annotations

import sys

from pyro_vae.signals import StopRequest, raise_on_stop_signals, signal_name, signal_of


def main(argv: list[str] | None = None) -> int:
    """``pyro-vae ARGV``: the exit status (see :mod:`pyro_vae.apps.cli`)."""
    try:
        # A stop signal during the imports is recorded, not raised: raised inside third-party
        # import code (numpy's, torch's), it can be swallowed by a broad except there, or
        # leave a C extension half-loaded. Deferred on purpose (the one function-level import
        # of the package).
        with StopRequest() as stop:
            from pyro_vae.apps import cli
        if stop.requested:
            return _interrupted(stop.signum)
        raise_on_stop_signals()
        return cli.main(argv)
    except KeyboardInterrupt as e:  # raised before the command's own handling
        return _interrupted(signal_of(e))


def _interrupted(signum: int) -> int:
    """The one line of a stop before the command started; ``128 + signum``."""
    try:
        print(f"pyro-vae: interrupted by {signal_name(signum)}; nothing was written",
              file=sys.stderr)  # fmt: skip
    except OSError:  # SIGHUP: the terminal is gone
        pass
    return 128 + signum


if __name__ == "__main__":
    sys.exit(main())

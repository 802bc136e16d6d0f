"""The ``pyro-vae`` command's entry point (and ``python -m pyro_vae``'s).

Importing torch, Pyro and matplotlib takes seconds; a Ctrl-C, SIGTERM or SIGHUP in those
seconds would print a traceback (or kill the process silently). The stop signals are caught
first, then the command line (:mod:`pyro_vae.apps.cli`) is imported and run: a signal before
the command's own handling stops with one line and exit status ``128 + signum``.
"""

from __future__ import annotations

import signal
import sys

from pyro_vae.signals import Interrupted, raise_on_stop_signals, signal_name


def main(argv: list[str] | None = None) -> int:
    """``pyro-vae ARGV``: the exit status (see :mod:`pyro_vae.apps.cli`)."""
    raise_on_stop_signals()
    try:
        # deferred on purpose (the one function-level import of the package): a stop signal
        # during the imports is caught here
        from pyro_vae.apps import cli

        return cli.main(argv)
    except KeyboardInterrupt as e:  # raised before the command's own handling
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        try:
            print(f"pyro-vae: interrupted by {signal_name(signum)}; nothing was written",
                  file=sys.stderr)  # fmt: skip
        except OSError:  # SIGHUP: the terminal is gone
            pass
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())

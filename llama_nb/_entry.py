"""The `llama-nb` console script, kept import-light.

Before anything heavy is imported:
- a Ctrl-C while Python imports the CLI's dependencies (typer, rich and the command modules:
  about 0.3 s) exits 130 quietly, as a Ctrl-C does everywhere later, instead of printing a
  traceback: until the CLI is imported, SIGINT ends the process at once with one line;
- $NUMBA_NUM_THREADS is checked: Numba reads it when it is imported and raises a ValueError
  deep inside its import for 0 or a negative number.
"""

from __future__ import annotations

import os
import signal
import sys


def _interrupted_while_starting(signum, frame) -> None:
    try:
        os.write(2, b"\ninterrupted while starting\n")
    except OSError:
        pass
    os._exit(130)


def check_numba_env() -> str | None:
    """The one-line error for a $NUMBA_NUM_THREADS Numba would refuse at import, else None."""
    value = os.environ.get("NUMBA_NUM_THREADS")
    if value is None or not value.strip():
        return None
    try:
        threads = int(value)
    except ValueError:
        return f"$NUMBA_NUM_THREADS={value!r} is not a whole number: unset it or give the number of threads (>= 1)"
    if threads < 1:
        return f"$NUMBA_NUM_THREADS={value!r} must be >= 1: unset it to use all cores, or use --threads N"
    return None


def main() -> None:
    previous = None
    try:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when ignored (nohup)
            previous = signal.signal(signal.SIGINT, _interrupted_while_starting)
    except ValueError:  # not the main thread
        pass
    problem = check_numba_env()
    if problem is not None:
        try:
            print(f"error: {problem}", file=sys.stderr)
        except (OSError, ValueError, AttributeError):
            pass
        sys.exit(1)
    try:
        from llama_nb.cli import main as cli_main
    except KeyboardInterrupt:  # a Ctrl-C that came before the handler above was installed
        _interrupted_while_starting(signal.SIGINT, None)
    if previous is not None:
        signal.signal(signal.SIGINT, previous)
    cli_main()

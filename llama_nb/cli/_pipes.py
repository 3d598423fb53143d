"""Closed pipes: `llama-nb run ... | head -c 10` must end quietly, without Python's complaints."""

from __future__ import annotations

import os


def silence(stream) -> None:
    """Point a closed pipe's file descriptor at /dev/null, so the interpreter's flush at exit does
    not raise BrokenPipeError again (and print "Exception ignored ...")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
    except (OSError, ValueError):
        pass

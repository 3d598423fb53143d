"""Reading a line from the user, for `chat` and `menu`: line editing and history on a terminal.

The standard library's `readline` (GNU readline or libedit) gives arrow keys, Ctrl-A/E, Ctrl-R
search and history to the built-in `input()` once it is imported, with no new dependency;
prompt_toolkit would add one for features (completion menus, syntax colours) a chat prompt does
not need. History persists in $LLAMA_NB_HISTORY (default ~/.cache/llama_nb/history), one file for
chat and menu. Where `readline` is missing (Windows without pyreadline) input() still works,
without editing. When stdin is not a terminal, lines are read as they come (scripts, tests).

    ask(prompt)   -> the line, or None at end of input (Ctrl-D); Ctrl-C raises KeyboardInterrupt
"""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path

HISTORY_ENV = "LLAMA_NB_HISTORY"
HISTORY_LENGTH = 1000
_ready = False


def history_file() -> Path:
    env = os.environ.get(HISTORY_ENV)
    if env:
        return Path(env)
    base = os.environ.get("LLAMA_NB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "llama_nb")
    return Path(base) / "history"


def _setup() -> None:
    """Import readline (which hooks into input()) and load the history, once."""
    global _ready
    if _ready:
        return
    _ready = True
    if not sys.stdin.isatty():
        return
    try:
        import readline
    except ImportError:
        return
    path = history_file()
    try:
        readline.read_history_file(path)
    except (OSError, ValueError):
        pass
    readline.set_history_length(HISTORY_LENGTH)

    def save() -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(path)
        except (OSError, ValueError):
            pass

    atexit.register(save)


def ask(prompt: str) -> str | None:
    """One line from the user (without its newline); None at end of input."""
    _setup()
    try:
        if sys.stdin.isatty():
            return input(prompt)
        sys.stdout.write(prompt)
        sys.stdout.flush()
        line = sys.stdin.readline()
    except EOFError:
        return None
    if not line:
        return None
    return line.rstrip("\n").rstrip("\r")

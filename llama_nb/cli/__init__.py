"""The `llama-nb` command: one module per command; each parses, calls the library, renders.

Errors a user can cause are `LlamaNbError`s: `main()` prints them as one red line on stderr and
exits 1 (set LLAMA_NB_DEBUG=1 to see the traceback instead).
"""

from __future__ import annotations

import os
import sys

import typer

from llama_nb.cli._pipes import silence
from llama_nb.errors import LlamaNbError

app = typer.Typer(
    name="llama-nb",
    help="Llama 3.x inference on the CPU: every op a Numba kernel on raw bf16 weights.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# (command name, module under llama_nb.cli, function). Modules import heavy things lazily.
_COMMANDS = [
    ("run", "run", "run"),
    ("menu", "menu", "menu"),
    ("info", "info", "info"),
    ("tokenize", "tokenize", "tokenize"),
    ("ops", "ops", "ops"),
    ("bench", "bench", "bench"),
]


def _register_commands() -> None:
    import importlib

    for name, module, attr in _COMMANDS:
        target = getattr(importlib.import_module(f"llama_nb.cli.{module}"), attr)
        if isinstance(target, typer.Typer):
            app.add_typer(target, name=name)
        else:
            app.command(name)(target)


_register_commands()


def report_error(exc: BaseException) -> None:
    """Print a user error as one line on stderr (Rich markup off: messages contain brackets)."""
    from rich.console import Console

    err = Console(stderr=True, highlight=False)
    err.print("error: " + str(exc), style="bold red", markup=False, soft_wrap=True)
    if os.environ.get("LLAMA_NB_DEBUG") != "1":
        err.print("(set LLAMA_NB_DEBUG=1 for a traceback)", style="dim", markup=False)


def main() -> None:
    """Console-script entry point. Click handles usage errors itself (exit 2); commands handle
    Ctrl-C themselves (exit 130, after printing what they have), and typer turns a Ctrl-C they
    do not catch into a quiet exit 130 too."""
    try:
        app()
    except LlamaNbError as exc:
        if os.environ.get("LLAMA_NB_DEBUG") == "1":
            raise
        try:
            report_error(exc)
        except BrokenPipeError:  # `2>&1 | head -c 1`: nobody reads stderr any more
            silence(sys.stderr)
        sys.exit(1)
    except BrokenPipeError:  # the reader of our output left (`llama-nb info ... | head -1`)
        silence(sys.stdout)
        sys.exit(0)

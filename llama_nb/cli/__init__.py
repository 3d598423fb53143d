"""The `llama-nb` command: one module per command; each parses, calls the library, renders.

`main()` is the one place that decides what the user sees when something goes wrong, and the
exit code, for every command:

    0    done (also when the reader of stdout left: `llama-nb ops | head -1`)
    1    an error, said in one line on stderr: a `LlamaNbError` (bad file, bad folder, ...),
         or stdout that cannot be written (full disk, closed); LLAMA_NB_DEBUG=1 shows a traceback
    2    a usage error (unknown option, bad value), said in one line with the command's --help
    130  Ctrl-C: quietly, after whatever was generated is shown

stdout/stderr handling (closed, full, non-UTF-8) is in llama_nb/cli/_pipes.py.
"""

from __future__ import annotations

import os
import sys

from typing import TYPE_CHECKING, Annotated

import typer
from typer.core import TyperCommand, TyperGroup

from llama_nb.cli import _pipes  # noqa: F401  (rich, for the error lines, loads with the CLI)
from llama_nb.errors import LlamaNbError

if TYPE_CHECKING:
    from typer._click.exceptions import UsageError

class _FlagsWithoutType:
    """Help that shows flags as flags: Typer labels every bool option (and --help) `<bool>`, as if
    it took a value; a metavar of "" shows nothing there."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and not param.metavar:
                param.metavar = ""
        return params


class Command(_FlagsWithoutType, TyperCommand):
    pass


class Group(_FlagsWithoutType, TyperGroup):
    pass


app = typer.Typer(
    cls=Group,
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
    ("chat", "chat", "chat"),
    ("menu", "menu", "menu"),
    ("info", "info", "info"),
    ("tokenize", "tokenize", "tokenize"),
    ("ops", "ops", "ops"),
    ("bench", "bench", "bench"),
    ("serve", "serve", "serve"),
    ("quantize", "quantize", "quantize"),
]


def _register_commands() -> None:
    import importlib

    for name, module, attr in _COMMANDS:
        target = getattr(importlib.import_module(f"llama_nb.cli.{module}"), attr)
        if isinstance(target, typer.Typer):
            for info in target.registered_commands:
                if info.cls in (None, TyperCommand):
                    info.cls = Command
            app.add_typer(target, name=name, cls=Group)
        else:
            app.command(name, cls=Command)(target)


_register_commands()


def report_error(exc: BaseException) -> None:
    """Print a user error as one line on stderr (Rich markup off: messages contain brackets)."""
    from llama_nb.cli._pipes import say

    say("error: " + " ".join(str(exc).split()), style="bold red")
    if os.environ.get("LLAMA_NB_DEBUG") != "1":
        say("(set LLAMA_NB_DEBUG=1 for a traceback)", style="dim")


def _version(value: bool) -> None:
    if value:
        from llama_nb import __version__

        print(f"llama-nb {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Llama 3.x inference on the CPU: every op a Numba kernel on raw bf16 weights."""


def usage_line(exc: "UsageError") -> str:
    """A click usage error as one line: the problem, then where the help is."""
    message = " ".join(exc.format_message().split())
    ctx = exc.ctx
    where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return f"error: {message}{where}"


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the command, then exit with the code described above."""
    from typer._click.exceptions import UsageError  # typer's own copy of click

    from llama_nb.cli import _ranks
    from llama_nb.cli._pipes import GuardedStdout, OutputError, guard_streams, say, stdout_closed

    _ranks.begin()  # under mpirun: only rank 0 prints
    guard_streams()
    if stdout_closed():  # say so before any work is done for nothing
        say("error: stdout is closed: nothing could be printed", style="bold red")
        sys.exit(1)
    debug = os.environ.get("LLAMA_NB_DEBUG") == "1"
    code, failure = 0, None
    try:
        command = typer.main.get_command(app)
        with command.make_context("llama-nb", list(sys.argv[1:] if argv is None else argv)) as ctx:
            command.invoke(ctx)
    except typer.Exit as exc:
        code = exc.exit_code
    except UsageError as exc:
        say(usage_line(exc), style="bold red")
        code = 2
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    except OutputError as exc:
        code = _output_failed(exc)
    except LlamaNbError as exc:
        if debug:
            raise
        report_error(exc)
        code, failure = 1, exc
    except EOFError:
        code = 0
    except BrokenPipeError:  # a pipe other than stdout (a file given as stdout and then closed)
        code = 0
    # what is still buffered must reach stdout now, while a failure can still change the exit code
    try:
        sys.stdout.flush()
    except OutputError as exc:
        code = _output_failed(exc) if code == 0 else code
    if isinstance(sys.stdout, GuardedStdout):
        sys.stdout = sys.stdout.release()
    _ranks.end(code, failure)  # under mpirun: a failure not every rank shares ends them all
    sys.exit(code)


def _output_failed(exc) -> int:
    from llama_nb.cli._pipes import say

    if exc.reader_left:
        return 0
    say(f"error: {exc.reason}", style="bold red")
    return 1

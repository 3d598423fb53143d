"""The `llama-nb` console script, kept import-light: a Ctrl-C while Python imports the CLI's
dependencies (typer, rich and the command modules: about 0.3 s) exits 130 quietly, as a Ctrl-C
does everywhere later, instead of printing a traceback."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from llama_nb.cli import main as cli_main
    except KeyboardInterrupt:
        print("\ninterrupted while starting", file=sys.stderr)
        sys.exit(130)
    cli_main()

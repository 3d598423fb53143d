"""`llama-nb info`: what a model folder holds (the Go original's menu item 0).

Tensor table (name, dtype, shape, elements), hyperparameters, derived head_dim and FFN size,
total element count and size in GB. `--json` prints the same as one JSON object.
"""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer

from llama_nb.cli._options import JsonOpt, ModelOpt, resolve_model_dir
from llama_nb.errors import LlamaNbError

AllOpt = Annotated[bool, typer.Option("--all", help="List every tensor instead of collapsing layers 1..N-1.")]


def info(model: ModelOpt = None, json_out: JsonOpt = False, all_tensors: AllOpt = False) -> None:
    """Show a model's tensors, hyperparameters, derived sizes and total size."""
    from llama_nb.io.checkpoint import describe, load_model_files

    try:
        folder = resolve_model_dir(model)
        desc = describe(load_model_files(folder, require_tokenizer=False))
    except LlamaNbError as exc:
        if os.environ.get("LLAMA_NB_DEBUG") == "1":
            raise
        from llama_nb.cli import report_error

        report_error(exc)
        raise typer.Exit(1) from None

    if json_out:
        typer.echo(json.dumps(desc))
        return
    from rich.console import Console

    from llama_nb.cli._render import model_summary_table, tensors_table

    console = Console()
    console.print(tensors_table(desc["tensors"], all_tensors=all_tensors, title=f"tensors in {desc['checkpoint']}"))
    console.print(model_summary_table(desc))

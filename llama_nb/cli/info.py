"""`llama-nb info`: what a model folder holds (the Go original's menu item 0).

Tensor table (name, dtype, shape, elements), hyperparameters, derived head_dim and FFN size,
total element count and size in GB; for a GGUF file, its ggml tensor types and metadata too. `--json` prints the same as one JSON object.
`print_model_info` is the same view for the interactive menu.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from llama_nb.cli._options import JsonOpt, ModelOpt, resolve_model_dir
from llama_nb.errors import LlamaNbError

if TYPE_CHECKING:
    from rich.console import Console

AllOpt = Annotated[bool, typer.Option("--all", help="List every tensor instead of collapsing layers 1..N-1.")]


def info(model: ModelOpt = None, json_out: JsonOpt = False, all_tensors: AllOpt = False) -> None:
    """Show a model's tensors, hyperparameters, derived sizes and total size."""
    try:
        folder = resolve_model_dir(model)
        if json_out:
            typer.echo(json.dumps(model_info(folder)))
        else:
            print_model_info(folder, all_tensors=all_tensors)
    except LlamaNbError as exc:
        if os.environ.get("LLAMA_NB_DEBUG") == "1":
            raise
        from llama_nb.cli import report_error

        report_error(exc)
        raise typer.Exit(1) from None


def model_info(folder: Path) -> dict[str, Any]:
    """`describe()` of a model folder; the tokenizer may be missing (shown as such)."""
    from llama_nb.io.checkpoint import describe, load_model_files

    return describe(load_model_files(folder, require_tokenizer=False))


def print_model_info(folder: Path, *, console: "Console | None" = None, all_tensors: bool = False) -> dict[str, Any]:
    """Print the tensor table and the hyperparameter table of `folder`; return what was shown."""
    from rich.console import Console

    from llama_nb.cli._render import model_summary_table, tensors_table

    desc = model_info(folder)
    console = console or Console()
    console.print(tensors_table(desc["tensors"], all_tensors=all_tensors, title=f"tensors in {desc['checkpoint']}"))
    console.print(model_summary_table(desc))
    if "gguf" in desc:
        from llama_nb.cli._render import gguf_metadata_table

        console.print(gguf_metadata_table(desc["gguf"]))
    return desc

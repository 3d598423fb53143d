"""`llama-nb quantize [MODEL] --type q8_0|q4_k_m|bf16 -o FILE.gguf`: write a model as a GGUF file.

MODEL is anything llama_nb loads (a Meta folder, a GGUF file; by default the model `run` would use). The per-tensor types follow
llama.cpp's quantizer (llama_nb/model/quantize.py says which); the file loads in llama.cpp and in
llama_nb. A progress bar on stderr counts the bytes read; the file appears under its name only
when complete (nothing half-written is left on an error, a full disk or Ctrl-C).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from llama_nb.cli._options import resolve_model_dir
from llama_nb.errors import LlamaNbError

ModelArg = Annotated[Optional[Path], typer.Argument(help="The model: a Meta folder or a .gguf file (default: the one "
                                                     "`run` would use, e.g. the demo model).",
                                                     show_default=False)]
TypeOpt = Annotated[str, typer.Option("--type", "-t", metavar="q8_0|q4_k_m|bf16",
                                      help="Q8_0 (8.5 bits/weight), Q4_K_M (about 4.9; llama.cpp's mix of "
                                      "Q4_K and Q6_K) or BF16 (16).")]
OutOpt = Annotated[Path, typer.Option("--output", "-o", help="The GGUF file to write.", show_default=False)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


def quantize_progress(console, type_: str, out: Path, quiet: bool = False):
    """(a Rich Progress on `console`, on_start(plans), on_tensor(plan)): the bar of bytes written
    that quantize_model's callbacks advance (also `bench model --shape ... --type`)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                        console=console, disable=quiet, transient=True)
    task = None

    def on_start(plans):
        nonlocal task
        task = progress.add_task(f"{type_} -> {out.name}", total=sum(p.nbytes for p in plans))

    def on_tensor(plan):
        progress.update(task, advance=plan.nbytes, description=f"{type_}: {plan.name}")

    return progress, on_start, on_tensor


def quantize(out: OutOpt, model: ModelArg = None, type_: TypeOpt = "q8_0", quiet: QuietOpt = False) -> None:
    """Write MODEL as a GGUF file of type q8_0, q4_k_m or bf16, as llama.cpp's quantizer would.

    Example, on the default model (give MODEL, e.g. models-original/Meta-Llama-3.1-8B-Instruct, for another):

    llama-nb quantize -t q4_k_m -o ~/demo-q4_k_m.gguf -q && llama-nb info --model ~/demo-q4_k_m.gguf
    """
    from rich.console import Console

    from llama_nb.model.quantize import FILE_TYPES, quantize_model

    console = Console(stderr=True)
    progress, on_start, on_tensor = quantize_progress(console, type_, out, quiet)
    try:
        if type_ not in FILE_TYPES:
            raise LlamaNbError(f"--type {type_!r}: llama-nb quantize writes {', '.join(FILE_TYPES)}")
        folder = resolve_model_dir(model, quiet=quiet)
        with progress:
            size = quantize_model(folder, type_, out, on_start=on_start, on_tensor=on_tensor)
    except LlamaNbError as exc:
        if os.environ.get("LLAMA_NB_DEBUG") == "1":
            raise
        from llama_nb.cli import report_error

        report_error(exc)
        raise typer.Exit(1) from None
    if not quiet:
        console.print(f"wrote {out} ({size / 1e9:.3f} GB, {type_})", highlight=False, markup=False)

"""`llama-nb quantize MODEL --type q8_0|q4_k_m|bf16 -o FILE.gguf`: write a model as a GGUF file.

MODEL is anything llama_nb loads (a Meta folder, a GGUF file). The per-tensor types follow
llama.cpp's quantizer (llama_nb/model/quantize.py says which); the file loads in llama.cpp and in
llama_nb. A progress bar on stderr counts the bytes read; the file appears under its name only
when complete (nothing half-written is left on an error, a full disk or Ctrl-C).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from llama_nb.errors import LlamaNbError

ModelArg = Annotated[Path, typer.Argument(help="The model: a Meta folder or a .gguf file.", show_default=False)]
TypeOpt = Annotated[str, typer.Option("--type", "-t", metavar="q8_0|q4_k_m|bf16",
                                      help="Q8_0 (8.5 bits/weight), Q4_K_M (about 4.9; llama.cpp's mix of "
                                      "Q4_K and Q6_K) or BF16 (16).")]
OutOpt = Annotated[Path, typer.Option("--output", "-o", help="The GGUF file to write.", show_default=False)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


def quantize(model: ModelArg, out: OutOpt, type_: TypeOpt = "q8_0", quiet: QuietOpt = False) -> None:
    """Write MODEL as a GGUF file of type q8_0, q4_k_m or bf16, as llama.cpp's quantizer would.

    Examples:  llama-nb quantize models-original/Meta-Llama-3.1-8B-Instruct -t q4_k_m -o llama-3.1-8b.Q4_K_M.gguf
               llama-nb run --model llama-3.1-8b.Q4_K_M.gguf "The capital of France is"
    """
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from llama_nb.model.quantize import FILE_TYPES, quantize_model

    console = Console(stderr=True)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                        console=console, disable=quiet, transient=True)
    task = None

    def on_start(plans):
        nonlocal task
        task = progress.add_task(f"{type_} -> {out.name}", total=sum(p.nbytes for p in plans))

    def on_tensor(plan):
        progress.update(task, advance=plan.nbytes, description=f"{type_}: {plan.name}")

    try:
        if type_ not in FILE_TYPES:
            raise LlamaNbError(f"--type {type_!r}: llama-nb quantize writes {', '.join(FILE_TYPES)}")
        with progress:
            size = quantize_model(model, type_, out, on_start=on_start, on_tensor=on_tensor)
    except LlamaNbError as exc:
        if os.environ.get("LLAMA_NB_DEBUG") == "1":
            raise
        from llama_nb.cli import report_error

        report_error(exc)
        raise typer.Exit(1) from None
    if not quiet:
        console.print(f"wrote {out} ({size / 1e9:.3f} GB, {type_})", highlight=False, markup=False)

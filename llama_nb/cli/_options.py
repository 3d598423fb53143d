"""Option types shared by the commands, and the one place the default model folder is chosen."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llama_nb.errors import LlamaNbError

DEFAULT_MODEL_DIR = Path("models-original") / "Meta-Llama-3.1-8B-Instruct"

HOW_TO_GET_WEIGHTS = (
    "llama-nb needs Meta's original Llama 3.x files (consolidated.00.pth, params.json, "
    "tokenizer.model). Request access at https://llama.meta.com/llama-downloads/, download "
    "'meta-llama-3.1-8b-instruct' with Meta's download.sh (or `llama model download`), and move "
    f"the folder Meta-Llama-3.1-8B-Instruct into ./models-original/, or pass --model DIR."
)

ModelOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--model",
        "-m",
        help=f"Folder with Meta's consolidated.00.pth, params.json and tokenizer.model "
        f"[default: {DEFAULT_MODEL_DIR} when present, else the built-in demo model].",
        show_default=False,
    ),
]
ImplOpt = Annotated[
    Optional[str],
    typer.Option(
        "--impl",
        help="Kernel choice per op, e.g. 'matmul=reference,rope=numba' or 'reference' for all "
        "[default: $LLAMA_NB_IMPL, else each op's default]. See `llama-nb ops`.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object and nothing else.")]
def _precision(value: str) -> str:
    from llama_nb.ops.opset import PRECISIONS

    if value not in PRECISIONS:
        raise typer.BadParameter(f"must be {' or '.join(PRECISIONS)}, got {value!r}")
    return value


PrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision",
        callback=_precision,
        metavar="bf16|float32",
        help="bf16: activations rounded to bf16 before each weight product, like llama.cpp (prefill "
        "about 1.6x faster on CPUs with AVX512_BF16). float32: Meta's float32 model to within 1e-6.",
    ),
]
MmapOpt = Annotated[
    bool,
    typer.Option(
        "--mmap",
        help="Use the weights straight from the memory-mapped file instead of reading them into "
        "memory: starts at once, but decode runs 5-8% slower without huge pages.",
    ),
]


def resolve_model_dir(model: Path | None) -> Path:
    """The model folder to use: --model when given, else the default folder when present, else
    the built-in demo model (llama_nb/demo), announced in one line on stderr."""
    if model is None:
        if DEFAULT_MODEL_DIR.is_dir():
            return DEFAULT_MODEL_DIR
        from llama_nb.demo import demo_description, demo_model_dir

        _note(f"no --model and no {DEFAULT_MODEL_DIR.as_posix()}: using the built-in demo model "
              f"({demo_description()}); see README to get Meta's weights")
        return demo_model_dir()
    if not model.exists():
        raise LlamaNbError(f"--model {model}: no such folder. {HOW_TO_GET_WEIGHTS}")
    if not model.is_dir():
        from llama_nb.io.checkpoint import check_folder

        check_folder(model)  # says what the file is (a GGUF, a .pth, ...) and what llama_nb expects
    return model


def _note(text: str) -> None:
    """One yellow line on stderr (stdout stays clean for --json and pipes)."""
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(f"note: {text}", style="yellow", markup=False, highlight=False)

"""Option types shared by the commands, and the one place the default model folder is chosen."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from llama_nb.errors import LlamaNbError

MODEL_ENV = "LLAMA_NB_MODEL"
LOCAL_MODELS = Path("models-original")  # relative to the current folder
META_CHECKPOINTS = Path("~/.llama/checkpoints")  # where `llama model download` puts them
PREFERRED = "Llama-3.1-8B-Instruct"  # among several folders, the one an 8B-Instruct user expects

HOW_TO_GET_WEIGHTS = (
    "llama-nb needs Meta's original Llama 3.x files (consolidated.00.pth, params.json, "
    "tokenizer.model). Request access at https://llama.meta.com/llama-downloads/, download "
    "'meta-llama-3.1-8b-instruct' with Meta's download.sh (or `llama model download`), and move "
    "the folder Meta-Llama-3.1-8B-Instruct into ./models-original/, or pass --model DIR. A Hugging Face "
    "folder works too: `huggingface-cli download meta-llama/Llama-3.1-8B-Instruct --local-dir DIR`."
)

ModelOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--model",
        "-m",
        help="Folder with Meta's consolidated.00.pth, params.json and tokenizer.model, a Hugging Face "
        "folder (config.json, *.safetensors, tokenizer.json), or a .gguf file [default: "
        f"${MODEL_ENV}, else a Llama folder in ./{LOCAL_MODELS}/, else in {META_CHECKPOINTS}/, else the "
        "built-in demo model].",
        show_default=False,
    ),
]
ImplOpt = Annotated[
    Optional[str],
    typer.Option(
        "--impl",
        help="Kernel choice per op, e.g. 'linear=reference,rope=numba' or 'reference' for all "
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
def _kv_cache(value: str | None) -> str | None:
    from llama_nb.model.state import KV_CACHES

    if value is not None and value not in KV_CACHES:
        raise typer.BadParameter(f"must be {' or '.join(KV_CACHES)}, got {value!r}")
    return value


KvCacheOpt = Annotated[
    Optional[str],
    typer.Option(
        "--kv-cache",
        callback=_kv_cache,
        metavar="f32|bf16",
        help="The KV cache's element type: bf16 (keys and values rounded to bf16 as they are stored: "
        "half the memory and half the bytes decode attention reads) or f32 [default: bf16 at "
        "--precision bf16, f32 at --precision float32].",
        show_default=False,
    ),
]
MmapOpt = Annotated[
    bool,
    typer.Option(
        "--mmap",
        help="Use the weights straight from the memory-mapped file instead of reading them into "
        "memory: starts at once, but decode runs 5-8% slower without huge pages, and if the file is "
        "truncated or rewritten while the model runs, the process dies (SIGBUS, no message).",
    ),
]


def resolve_model_dir(model: Path | None, quiet: bool = False) -> Path:
    """The model folder to use, the first of: --model; $LLAMA_NB_MODEL; a Llama folder in
    ./models-original/; one in ~/.llama/checkpoints/ (`llama model download`); else the built-in
    demo model (llama_nb/demo). Every choice but --model is said in one line on stderr."""
    if model is not None:
        return _checked(model, "--model")
    env = os.environ.get(MODEL_ENV)
    if env:
        folder = _checked(Path(env), f"${MODEL_ENV}")
        _note(f"using ${MODEL_ENV}={env}", quiet)
        return folder
    for where in (LOCAL_MODELS, META_CHECKPOINTS):
        found = _find_llama_folder(where)
        if found is not None:
            _note(f"no --model: using {found.as_posix()}", quiet)
            return found
    from llama_nb.demo import demo_description, demo_model_dir

    _note(f"no --model, no ${MODEL_ENV} and no Llama folder in ./{LOCAL_MODELS}/ or {META_CHECKPOINTS}/: using "
          f"the built-in demo model ({demo_description()}); see README to get Meta's weights", quiet)
    return demo_model_dir()


def _checked(folder: Path, source: str) -> Path:
    if not folder.exists():
        raise LlamaNbError(f"{source} {folder}: no such folder. {HOW_TO_GET_WEIGHTS}")
    if not folder.is_dir():
        from llama_nb.io.checkpoint import check_folder

        check_folder(folder)  # says what the file is (a GGUF, a .pth, ...) and what llama_nb expects
    return folder


def _find_llama_folder(where: Path) -> Path | None:
    """A subfolder of `where` named like a Llama model and holding Meta's files: the 3.1
    8B-Instruct when there, else the first by name. None when there is none (or no such folder)."""
    try:
        base = where.expanduser()
        candidates = sorted(p for p in base.iterdir() if "llama" in p.name.lower() and p.is_dir()
                            and (p / "params.json").is_file() and (p / "consolidated.00.pth").is_file())
    except (OSError, RuntimeError):  # no such folder, no permission, no $HOME
        return None
    if not candidates:
        return None
    preferred = [p for p in candidates if PREFERRED.lower().replace("-", "") in p.name.lower().replace("-", "")]
    return (preferred or candidates)[0]


def _note(text: str, quiet: bool = False) -> None:
    """One yellow line on stderr (stdout stays clean for --json and pipes); none with --quiet."""
    if quiet:
        return
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(f"note: {text}", style="yellow", markup=False, highlight=False)


QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the generated text: no notes, no summary.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Also print the per-layer and per-op times and "
                                          "the full summary.")]
CtxOpt = Annotated[int, typer.Option("--ctx", min=1, help="Context length: prompt plus generated tokens (KV cache size).")]
ThreadsOpt = Annotated[
    Optional[int],
    typer.Option("--threads", "-t", min=1, help="Numba threads [default: all cores, less any another process keeps busy].", show_default=False),
]


# -- the Llama 3.1 system prompt and tools (llama_nb/io/tools.py), for `chat` and `run --chat` --
ToolsOpt = Annotated[
    Optional[str],
    typer.Option("--tools", metavar="NAMES", show_default=False,
                 help="Built-in tools to offer, comma-separated: brave_search, wolfram_alpha, photogen, "
                 "code_interpreter (Meta's 3.1 system prompt: 'Environment: ipython', 'Tools: ...')."),
]
ToolFileOpt = Annotated[
    Optional[Path],
    typer.Option("--tool-file", dir_okay=False, show_default=False,
                 help="A JSON list of tools: built-in names, or custom tools in Meta's ToolDefinition or "
                 "OpenAI's function form (offered in a user message, as Meta's templates do)."),
]
DateOpt = Annotated[
    Optional[str],
    typer.Option("--date", metavar="YYYY-MM-DD", show_default=False,
                 help="The system prompt's 'Today Date' [default: today; Llama 3.1+ models, or with tools].")
]
ToolFormatOpt = Annotated[
    str,
    typer.Option("--tool-format", metavar="json|function_tag",
                 help="How custom tools are offered and their calls written: Meta's JSON definitions, or "
                 "its <function=...> instructions."),
]


def chat_tools(tools: str | None, tool_file: Path | None, date: str | None, tool_format: str):
    """(tools, date) of the chat options, checked: usage errors name the option."""
    from llama_nb.io.tools import as_date, as_tools, parse_tool_names, read_tool_file

    try:
        if tool_format not in ("json", "function_tag"):
            raise LlamaNbError(f"--tool-format: must be json or function_tag, got {tool_format!r}")
        chosen = (parse_tool_names(tools) if tools else ()) + (read_tool_file(tool_file) if tool_file else ())
        return as_tools(chosen, "--tools/--tool-file"), (as_date(date) if date is not None else None)
    except LlamaNbError as exc:
        raise typer.BadParameter(str(exc)) from None

"""`llama-nb run PROMPT`: stream a completion (or a chat answer) with live timings.

Three output modes: a live Rich view on a terminal (text streaming above a panel of counts, speed
and per-layer timings, then a summary and per-op breakdown), plain streamed text when stdout is
not a terminal (the summary goes to stderr), and `--json` (one JSON object, nothing else).
Ctrl-C stops at once, prints what was generated and the timings, and exits 130.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from llama_nb.cli._options import ImplOpt, JsonOpt, MmapOpt, ModelOpt, PrecisionOpt, resolve_model_dir
from llama_nb.cli._pipes import silence
from llama_nb.cli._report import progress_panel

MaxTokensOpt = Annotated[int, typer.Option("--max-tokens", "-n", help="Most tokens to generate (capped to fit --ctx).")]
TemperatureOpt = Annotated[float, typer.Option("--temperature", "-t", help="0 is greedy; higher is more random.")]
TopKOpt = Annotated[Optional[int], typer.Option("--top-k", help="Sample only from the K most likely tokens.")]
TopPOpt = Annotated[Optional[float], typer.Option("--top-p", help="Sample from the smallest set of tokens whose probability reaches P.")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Seed for sampling: the same seed gives the same text.")]
CtxOpt = Annotated[int, typer.Option("--ctx", help="Context length: prompt plus generated tokens (KV cache size).")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", help="Numba threads [default: all cores].", show_default=False)]


def run(
    prompt: Annotated[str, typer.Argument(help="The prompt: text to continue, or with --chat a user message.")],
    model: ModelOpt = None,
    chat: Annotated[bool, typer.Option("--chat", help="Use Meta's chat template (an instruct model answers).")] = False,
    system: Annotated[Optional[str], typer.Option("--system", help="A system prompt (implies --chat).")] = None,
    max_tokens: MaxTokensOpt = 256,
    temperature: TemperatureOpt = 0.0,
    top_k: TopKOpt = None,
    top_p: TopPOpt = None,
    seed: SeedOpt = None,
    ctx: CtxOpt = 4096,
    impl: ImplOpt = None,
    threads: ThreadsOpt = None,
    precision: PrecisionOpt = "bf16",
    mmap: MmapOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Generate text from PROMPT, streaming tokens as they are produced."""
    from llama_nb.model.generate import check_sampling

    check_sampling(temperature, top_k, top_p)  # before the slow load
    if max_tokens < 1:
        raise typer.BadParameter(f"must be >= 1, got {max_tokens}", param_hint="--max-tokens")
    llm = load_for_cli(model, impl=impl, ctx=ctx, threads=threads, precision=precision, mmap=mmap)
    prompt_ids = llm.encode_prompt(prompt, chat=chat, system=system)
    code = stream(llm, prompt_ids, max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                  mode="json" if json_out else None)
    raise typer.Exit(code)


def load_for_cli(model: Path | None, *, impl: str | None, ctx: int, threads: int | None, precision: str = "bf16",
                 mmap: bool = False):
    """Resolve the folder, load and compile; Ctrl-C here exits 130 without a traceback.

    On a terminal a spinner on stderr says which of the two is going on: reading 16 GB of weights
    takes seconds, and so does the first run's compile."""
    import contextlib

    from rich.console import Console

    import llama_nb

    folder = resolve_model_dir(model)
    err = Console(stderr=True)

    def status(text: str):
        return err.status(text, spinner="dots") if err.is_terminal else contextlib.nullcontext()

    try:
        with status(f"loading {folder} ..."):
            llm = llama_nb.load_model(folder, impl=impl, ctx=ctx, threads=threads, precision=precision, mmap=mmap)
        with status("compiling the kernels (the first run only; later runs load them from a cache) ..."):
            llm.compile()
    except KeyboardInterrupt:
        print("\ninterrupted while loading", file=sys.stderr)
        raise typer.Exit(130)
    return llm


def stream(llm, prompt_ids: list[int], max_tokens: int, *, temperature: float = 0.0, top_k: int | None = None,
           top_p: float | None = None, seed: int | None = None, mode: str | None = None, console=None) -> int:
    """Generate and show it: mode "json", "plain" or "live" (None: live on a terminal, else plain).

    Returns the exit code: 0, or 130 after Ctrl-C (what was generated is still shown)."""
    from rich.console import Console

    from llama_nb.cli._report import RunReport, op_table, plain_summary, summary_table
    from llama_nb.model.load import set_threads

    console = console or Console()
    if mode is None:
        mode = "live" if console.is_terminal else "plain"
    report = RunReport(
        model=str(llm.folder), impl=llm.ops.describe(), impl_short=llm.ops.describe_short(),
        precision=llm.model.precision, threads=set_threads(None),
        load_seconds=llm.load_seconds, compile_seconds=llm.compile_seconds or 0.0, prompt_ids=list(prompt_ids),
    )
    room = llm.ctx - len(prompt_ids)
    if room < 1:  # checked here, before any output, so the error is the only thing shown
        from llama_nb.errors import LlamaNbError

        raise LlamaNbError(
            f"the prompt has {len(prompt_ids)} tokens but --ctx is {llm.ctx}, which must also hold the "
            f"generated tokens: shorten the prompt or raise --ctx (e.g. --ctx {len(prompt_ids) + max_tokens})"
        )
    if room < max_tokens:
        report.notes.append(f"--max-tokens {max_tokens} capped to {room}: the prompt has {len(prompt_ids)} tokens and --ctx is {llm.ctx}")
        max_tokens = room
    if mode != "json":
        for note in report.notes:
            Console(stderr=True).print(f"note: {note}", style="yellow", markup=False)
    events = llm.generate(prompt_ids, max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                          stats=report.stats)
    show = {"json": _show_json, "plain": _show_plain, "live": _show_live}[mode]
    interrupted = False
    try:
        show(events, report, max_tokens, console)
    except KeyboardInterrupt:
        interrupted = True
        events.close()  # runs generate()'s cleanup: stop reason, held-back bytes, op timings
        report.stats.stop_reason = "interrupted"
    except BrokenPipeError:  # `llama-nb run ... | head -c 10`: the reader left; stop quietly
        events.close()
        silence(sys.stdout)
        return 0
    report.text += report.stats.tail_text
    if mode == "json":
        try:
            print(json.dumps(report.as_json(), ensure_ascii=False), flush=True)
        except BrokenPipeError:
            silence(sys.stdout)
    elif mode == "plain":
        try:
            print(report.stats.tail_text, flush=True)
        except BrokenPipeError:
            silence(sys.stdout)
        print(plain_summary(report), file=sys.stderr)
    else:
        console.print()
        console.print(summary_table(report))
        console.print(op_table(report.stats.op_seconds, llm.ops.op_calls, llm.ops.choice))
    return 130 if interrupted else 0


def _collect(event, report) -> None:
    report.generated_ids.append(event.token)
    report.text += event.text


def _show_json(events, report, max_tokens, console) -> None:
    for event in events:
        _collect(event, report)


def _show_plain(events, report, max_tokens, console) -> None:
    for event in events:
        _collect(event, report)
        sys.stdout.write(event.text)
        sys.stdout.flush()


def _show_live(events, report, max_tokens, console) -> None:
    """Text streams above a panel that is redrawn after every token (Rich Live)."""
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    started = time.perf_counter()
    text = Text()
    layers, last = None, 0.0

    def view():
        panel = progress_panel(len(report.prompt_ids), len(report.generated_ids), max_tokens,
                               time.perf_counter() - started, last, report.stats.decode_tokens_per_second, layers)
        return Group(text, panel)

    with Live(view(), console=console, refresh_per_second=8, vertical_overflow="visible") as live:
        try:
            for event in events:
                _collect(event, report)
                text.append(event.text)
                layers, last = event.layer_seconds, event.seconds
                live.update(view())
        finally:  # also on Ctrl-C: the final frame shows everything generated so far
            text.append(report.stats.tail_text)
            live.update(view(), refresh=True)

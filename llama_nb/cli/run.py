"""`llama-nb run PROMPT`: stream a completion (or a chat answer).

Three output modes: on a terminal the text streams with one status line under it (tokens, tok/s)
and one summary line at the end (llama_nb/cli/_display.py); piped, the text streams plain to
stdout and the summary goes to stderr; `--json` prints one JSON object and nothing else.
`--verbose` adds the per-layer times (the mean of the decode passes) and the per-op breakdown;
`--quiet` leaves only the text. Ctrl-C stops at once, keeps what was generated, exits 130.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from llama_nb.cli._options import (CtxOpt, DateOpt, ImplOpt, JsonOpt, KvCacheOpt, MmapOpt, ModelOpt, PrecisionOpt,
                                   QuietOpt, ThreadsOpt, ToolFileOpt, ToolFormatOpt, ToolsOpt, VerboseOpt, chat_tools,
                                   resolve_model_dir)
from llama_nb.errors import LlamaNbError, UnknownImplError, UnknownOpError

MaxTokensOpt = Annotated[int, typer.Option("--max-tokens", "-n", min=1, help="Most tokens to generate (capped to fit --ctx).")]
TemperatureOpt = Annotated[float, typer.Option("--temperature", "--temp", help="0 is greedy; higher is more random.")]
TopKOpt = Annotated[Optional[int], typer.Option("--top-k", help="Sample only from the K most likely tokens.")]
TopPOpt = Annotated[Optional[float], typer.Option("--top-p", help="Sample from the smallest set of tokens whose probability reaches P.")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Any integer; the same seed gives the same text (-1: a random seed).")]
FileOpt = Annotated[Optional[Path], typer.Option("--file", "-f", help="Read the prompt from this file (UTF-8).",
                                                  dir_okay=False, show_default=False)]


# The parameter list repeats the other generating commands' on purpose: Typer reads a command's
# options from its signature. What they mean is declared once, in cli/_options.py.
def run(
    prompt: Annotated[Optional[str], typer.Argument(
        help="The prompt: text to continue, or with --chat a user message; '-' reads it from stdin.",
        show_default=False)] = None,
    file: FileOpt = None,
    model: ModelOpt = None,
    chat: Annotated[bool, typer.Option("--chat", help="Use Meta's chat template (an instruct model answers).")] = False,
    system: Annotated[Optional[str], typer.Option("--system", help="A system prompt (implies --chat).")] = None,
    tools: ToolsOpt = None,
    tool_file: ToolFileOpt = None,
    date: DateOpt = None,
    tool_format: ToolFormatOpt = "json",
    max_tokens: MaxTokensOpt = 256,
    temperature: TemperatureOpt = 0.0,
    top_k: TopKOpt = None,
    top_p: TopPOpt = None,
    seed: SeedOpt = None,
    ctx: CtxOpt = 4096,
    impl: ImplOpt = None,
    threads: ThreadsOpt = None,
    precision: PrecisionOpt = "bf16",
    kv_cache: KvCacheOpt = None,
    mmap: MmapOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Generate text from PROMPT, streaming tokens as they are produced.

    [dim]Examples:[/]

      llama-nb run "In the beginning God created" -n 24

      llama-nb run "Hello" --chat --system "Be brief" --temperature 0.8 --seed 42 -n 16

      echo "And Moses said" | llama-nb run - -n 16 --quiet

      llama-nb run "What is new today?" --tools brave_search,code_interpreter --date 2026-12-02 -n 16 --json
      llama-nb run "And it came to pass" -n 8 --ctx 131072 --kv-cache f32
    """
    text = read_prompt(prompt, file)
    check_sampling_options(temperature, top_k, top_p)  # before the slow load
    offered, day = chat_tools(tools, tool_file, date, tool_format)
    llm = load_for_cli(model, impl=impl, ctx=ctx, threads=threads, precision=precision, kv_cache=kv_cache, mmap=mmap,
                       quiet=quiet or json_out)
    text = llm.model.group.share(text)  # under mpirun: rank 0's (only it has stdin)
    chat = chat or system is not None or bool(offered) or day is not None
    prompt_ids = llm.encode_prompt(text, chat=chat, system=system, tools=offered, date=day, tool_format=tool_format)
    code = stream(llm, prompt_ids, max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                  mode="json" if json_out else None, quiet=quiet, verbose=verbose, chat=chat)
    raise typer.Exit(code)


def read_prompt(prompt: str | None, file: Path | None) -> str:
    """The prompt from the argument, '-' (stdin) or --file: exactly one of them."""
    if file is not None and prompt is not None:
        raise typer.BadParameter("give the prompt as an argument or with --file, not both", param_hint="PROMPT")
    if file is not None:
        try:
            return file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise LlamaNbError(f"--file {file}: cannot read it as UTF-8 text ({exc})") from None
    if prompt is None:
        raise typer.BadParameter("missing: give PROMPT, '-' to read it from stdin, or --file PATH", param_hint="PROMPT")
    if prompt == "-":
        if sys.stdin is None or sys.stdin.closed:
            raise LlamaNbError("PROMPT is '-' but stdin is closed")
        try:
            return sys.stdin.read()
        except UnicodeDecodeError as exc:
            raise LlamaNbError(f"stdin: the prompt is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return prompt


def check_sampling_options(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """The library's range checks on the sampling options, as usage errors (exit 2)."""
    from llama_nb.model.generate import check_sampling

    try:
        check_sampling(temperature, top_k, top_p)
    except LlamaNbError as exc:
        raise typer.BadParameter(str(exc)) from None


def load_for_cli(model: Path | None, *, impl: str | None, ctx: int, threads: int | None, precision: str = "bf16",
                 kv_cache: str | None = None, mmap: bool = False, quiet: bool = False, slots: int = 1, group=None):
    """Resolve the folder, load and compile. On a terminal a spinner on stderr says which of the
    two is going on, and only when it takes long enough to see: reading 16 GB of weights takes
    seconds, and so does compiling the kernels on the first run (later runs load them from the
    cache in a fraction of a second, and no spinner shows). `group`: load_model's (default: the
    MPI job this process is a rank of, if any)."""
    import llama_nb
    from llama_nb.cli._pipes import interruptible

    folder = resolve_model_dir(model, quiet=quiet)
    try:
        with interruptible():
            with _spinner(f"loading {folder} ..."):
                try:
                    llm = llama_nb.load_model(folder, impl=impl, ctx=ctx, threads=threads, precision=precision,
                                              mmap=mmap, slots=slots, kv_cache=kv_cache, group=group)
                except LlamaNbError as exc:
                    # a message naming an option, or an op/impl name from --impl: a bad option value
                    if str(exc).startswith("--") or isinstance(exc, (UnknownOpError, UnknownImplError)):
                        raise typer.BadParameter(str(exc)) from None
                    raise
            with _spinner("compiling the kernels (the first run only: later runs load them from the cache) ..."
                          if not _kernels_cached() else "loading the compiled kernels from the cache ..."):
                llm.compile()
            _note_uncached(quiet)
    except KeyboardInterrupt:
        print("\ninterrupted while loading", file=sys.stderr)
        raise typer.Exit(130)
    return llm


def _note_uncached(quiet: bool) -> None:
    """One line when Numba found no writable folder to cache the kernels in (every run compiles)."""
    from llama_nb.cli._pipes import say
    from llama_nb.ops import jit

    if jit.CACHE_NOTE and not quiet:
        say(f"note: kernels are compiled on every run: {jit.CACHE_NOTE}", style="yellow")


def _kernels_cached() -> bool:
    """Whether this run loads the kernels from Numba's on-disk cache (the compile policy's own
    answer, llama_nb/ops/jit.py), rather than compiling them."""
    from llama_nb.ops import jit

    return jit.CACHE and not jit.cache_is_cold()


SPINNER_DELAY = 0.7  # seconds; $LLAMA_NB_SPINNER_DELAY overrides (0: always, as tests/test_display.py does)


def _spinner(text: str):
    """A spinner on stderr that appears only if the block is still running after SPINNER_DELAY s."""
    import contextlib
    import os
    import threading

    from rich.console import Console

    from llama_nb.cli._display import clip

    err = Console(stderr=True)
    if not err.is_terminal:
        return contextlib.nullcontext()
    try:  # the terminal's own width: Rich would believe a stale $COLUMNS, and a wrapped spinner stays behind
        err = Console(stderr=True, width=os.get_terminal_size(sys.stderr.fileno()).columns)
    except (OSError, ValueError):
        pass
    text = clip(text, err.width - 3)  # the spinner and a space go before it
    try:
        delay = float(os.environ.get("LLAMA_NB_SPINNER_DELAY", SPINNER_DELAY))
    except ValueError:
        delay = SPINNER_DELAY

    @contextlib.contextmanager
    def spinning():
        status = err.status(text, spinner="dots")
        lock = threading.Lock()
        state = {"started": False, "done": False}

        def start():
            with lock:
                if not state["done"]:
                    status.start()
                    state["started"] = True

        timer = threading.Timer(delay, start)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            with lock:
                state["done"] = True
                timer.cancel()
                if state["started"]:
                    status.stop()

    return spinning()


def stream(llm, prompt_ids: list[int], max_tokens: int, *, temperature: float = 0.0, top_k: int | None = None,
           top_p: float | None = None, seed: int | None = None, mode: str | None = None, quiet: bool = False,
           verbose: bool = False, start_pos: int = 0, report=None, one_line: bool = False, chat: bool = False) -> int:
    """Generate and show it: mode "json", "plain" or "live" (None: live on a terminal, else plain).

    `prompt_ids` go at positions start_pos.. (earlier ones are in the KV cache: a chat turn).
    Returns the exit code: 0, or 130 after Ctrl-C (what was generated is still shown). What was
    generated (ids, text, stats) goes into `report` (RunReport.for_model) when one is given. The
    summary is one line on a terminal (or with `one_line`), else one fact per line. With `chat`
    the answer is also read as a message (tool calls: io/tool_calls.py) and shown so, or in the JSON."""
    from llama_nb.cli._display import PlainStream, TerminalStream
    from llama_nb.cli._report import RunReport, status_line
    from llama_nb.model.generate import generate

    out = sys.stdout
    if mode is None:
        mode = "live" if out.isatty() else "plain"
    report = report if report is not None else RunReport.for_model(llm, prompt_ids)
    end = start_pos + len(prompt_ids)
    room = llm.ctx - end
    if room < 1:  # checked here, before any output, so the error is the only thing shown
        raise LlamaNbError(
            f"the prompt has {end} tokens but --ctx is {llm.ctx}, which must also hold the "
            f"generated tokens: shorten the prompt or raise --ctx (e.g. --ctx {end + max_tokens})"
        )
    if room < max_tokens:
        report.notes.append(f"--max-tokens {max_tokens} capped to {room}: the prompt has {end} tokens and --ctx is {llm.ctx}")
        max_tokens = room
    if mode != "json" and not quiet:
        from llama_nb.cli._pipes import say

        for note in report.notes:
            say(f"note: {note}", style="yellow")
    llm.compile()
    events = generate(llm.model, llm.tokenizer, prompt_ids, max_tokens, temperature=temperature, top_k=top_k,
                      top_p=top_p, seed=seed, stats=report.stats, start_pos=start_pos)
    from llama_nb.cli._pipes import DeferredInterrupt

    view = TerminalStream(out, _columns()) if mode == "live" else PlainStream(out) if mode == "plain" else None
    started = time.perf_counter()
    interrupted = False
    try:
        with DeferredInterrupt() as guard:
            for event in events:
                with guard.held():  # the token is recorded and shown whole, or not at all
                    report.generated_ids.append(event.token)
                    report.text += event.text
                    if view is not None:
                        view.write(event.text)
                        view.status(status_line(len(report.generated_ids), max_tokens, time.perf_counter() - started,
                                                report.stats.decode_tokens_per_second))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        events.close()  # runs generate()'s cleanup: stop reason, held-back bytes, op timings
    for token, text in zip(report.stats.tokens[len(report.generated_ids):], report.stats.texts[len(report.generated_ids):]):
        report.generated_ids.append(token)  # what a Ctrl-C kept from being shown: shown now
        report.text += text
        if view is not None:
            view.write(text)
    if interrupted:  # also when the Ctrl-C came during the prefill, before the generator started
        report.stats.stop_reason = "interrupted"
    report.text += report.stats.tail_text
    if view is not None:
        view.write(report.stats.tail_text)
        view.close()
    if chat:
        report.message = answer_message(llm, report)
        if mode != "json":
            show_tool_calls(report.message, quiet)
    _finish(llm, report, mode, quiet, verbose, one_line or mode == "live")
    return 130 if interrupted else 0


def _columns() -> int:
    """The width the terminal wraps at: asked of the terminal itself ($COLUMNS may be stale)."""
    import os
    import shutil

    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns
    except (OSError, ValueError):
        return shutil.get_terminal_size((80, 24)).columns


def _finish(llm, report, mode: str, quiet: bool, verbose: bool, one_line: bool) -> None:
    """After the text: the JSON object, or the summary (one line; the tables with --verbose)."""
    from llama_nb.cli._pipes import say
    from llama_nb.cli._report import layer_table, mean_layer_seconds, op_table, plain_summary, summary_line, summary_table

    if mode == "json":
        print(json.dumps(report.as_json(), ensure_ascii=False), flush=True)
        return
    if mode == "plain":
        print(flush=True)  # the text ends with a newline
    if verbose:
        layers = mean_layer_seconds(report.stats)
        if layers is not None:
            say(f"time per layer, ms (mean of the {report.stats.decode_passes} decode passes)")
            say(layer_table(layers))
        say(op_table(report.stats.op_seconds, llm.ops.op_calls, llm.ops.choice))
        say(summary_table(report))
    elif not quiet:
        say(summary_line(report) if one_line else plain_summary(report), style="dim")


def answer_message(llm, report):
    """The generated chat answer as Meta's decoder reads it: content, tool calls, stop reason."""
    from llama_nb.io.tool_calls import parse_assistant

    return parse_assistant(report.text, llm.chat_format.stop_reason(report.stats.stop_token))


def show_tool_calls(message, quiet: bool) -> None:
    """One line per tool call of an answer (stderr), saying how to send the result back."""
    from llama_nb.cli._pipes import say

    for call in message.tool_calls if not quiet else ():
        args = call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments, ensure_ascii=False)
        say(f"tool call: {call.name} {args} (in chat: /tool RESULT sends its result back)", style="yellow")

"""`llama-nb bench ...`: measure the kernels, or whole forward passes of a model, llama-bench style.

    llama-nb bench ops [--op linear] [--impl numba] [--format q8_0] [--threads 2] [--repeat 5]
    llama-nb bench model --model DIR [-p 128,512] [-n 128] [-r 5] [--json]
    llama-nb bench model --shape llama3.2-1b        # random weights of that shape, written once
    llama-nb bench model --shape llama3.1-8b --type q4_k_m   # ... quantized once by llama-nb quantize
    llama-nb bench model --shape llama3.2-1b -p 0 -n 32 --at 1024,8192,32768   # decode at long contexts

`bench model` follows llama-bench's conventions (ppN, tgN, -r repetitions after an untimed warm-up;
llama_nb/model/bench.py says exactly what is timed); decode is also shown as GB/s of weights
streamed and as a fraction of the plain-read bandwidth measured in the same run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from llama_nb.cli._options import (ImplOpt, JsonOpt, KvCacheOpt, MmapOpt, ModelOpt, PrecisionOpt, ThreadsOpt,
                                   resolve_model_dir)
from llama_nb.errors import LlamaNbError
from llama_nb.model.bench import ModelBench, TestResult, mean, run_model_bench, stddev

bench = typer.Typer(help="Benchmarks: per-op kernel timings, or whole forward passes of a model.", no_args_is_help=True)


@bench.command("ops")
def bench_ops(
    op: Annotated[Optional[List[str]], typer.Option("--op", help="Op to time (repeatable) [default: all].")] = None,
    impl: Annotated[Optional[List[str]], typer.Option("--impl", help="Implementation to time (repeatable) [default: all].")] = None,
    threads: ThreadsOpt = None,
    repeat: Annotated[int, typer.Option("--repeat", min=1, help="Timed calls per case.")] = 5,
    weight_format: Annotated[Optional[List[str]], typer.Option(
        "--format", help="Weight format of the ops that take one (repeatable: bf16, q8_0, q4_k, ...) [default: bf16].")] = None,
) -> None:
    """Time every op x implementation over the shared case table (tiny, odd and Llama shapes)."""
    from rich.console import Console

    from llama_nb.ops import benchmark

    console = Console(highlight=False)

    def progress(result, row):
        if len(result.rows) == 1:
            console.print(benchmark.format_header(result), markup=False, soft_wrap=True)
        console.print(benchmark.format_row(row, result.read_gbps), markup=False, soft_wrap=True)

    from llama_nb.formats import get_format

    for name in weight_format or ():
        get_format(name)  # an unknown name: one line listing the formats
    benchmark.run(op, impl, threads, repeat, progress=progress, formats=weight_format)


# --- rendering (pure) ----------------------------------------------------------------------------


def model_bench_table(r: ModelBench):
    """A Rich Table of the tests, then the context lines (compile, warm-up, memory)."""
    from rich.table import Table

    def pm(xs):
        return f"{mean(xs):.2f} ± {stddev(xs):.2f}" if xs else ""

    title = (f"{r.shape or r.model}  (threads {r.threads}, precision {r.precision}, KV cache {r.kv_cache}, "
             f"weights {r.weights_bytes / 1e9:.2f} GB "
             f"in {r.weights_in}, decode streams {r.decode_bytes / 1e9:.2f} GB/token)")
    table = Table(title=title, title_justify="left")
    depth = any(t.depth for t in r.tests)  # the KV cache read matters at a long context only
    for col in ("test", "tokens/s", "weights GB/s") + (("KV GB/s",) if depth else ()) + ("plain-read GB/s", "of read bw"):
        table.add_column(col, justify="left" if col == "test" else "right")
    for t in r.tests:
        streamed = [w + kv for w, kv in zip(t.weights_gbps, t.kv_gbps)] if depth else t.weights_gbps
        frac = [w / b for w, b in zip(streamed, t.read_gbps)]
        table.add_row(t.name, pm(t.samples_ts), pm(t.weights_gbps), *((pm(t.kv_gbps),) if depth else ()),
                      pm(t.read_gbps), f"{mean(frac):.0%} ± {stddev(frac):.0%}" if frac else "")
    return table


def model_bench_notes(r: ModelBench) -> list[str]:
    expected = r.weights_bytes + r.kv_cache_bytes
    reps = len(r.tests[0].samples_ts) if r.tests else 0
    ranks = [] if r.ranks == 1 else [
        f"ranks       {r.ranks} MPI ranks; weights and memory per rank (rank 0's); collectives "
        f"{r.collective_seconds_per_token * 1e3:.3f} ms per decode token"
        + (f" ({r.collective_seconds_per_token * mean([t.avg_ts for t in r.tests if t.n_gen]):.0%} of each step)"
           if any(t.n_gen for t in r.tests) else "")]
    return ranks + [
        f"model       {r.model}",
        f"kernels     {r.impl_short}, precision {r.precision}",
        f"excluded    JIT compile / cache load {r.compile_seconds:.2f} s; warm-up runs {r.warmup_seconds:.2f} s",
        f"repeats     {reps} per test, mean ± sample standard deviation; tg includes the greedy argmax",
        f"memory      peak RSS {r.peak_rss_bytes / 1e9:.2f} GB (after warm-up) vs weights {r.weights_bytes / 1e9:.2f} GB"
        f" + KV cache {r.kv_cache_bytes / 1e9:.3f} GB = {expected / 1e9:.2f} GB "
        f"(peak {(r.peak_rss_bytes - expected) / 1e9:+.2f} GB beyond); " + (
            f"the weights were read into memory in {r.load_seconds:.1f} s" if r.weights_in == "memory" else
            f"the weights are memory-mapped, so only the {r.decode_bytes / 1e9:.2f} GB every pass reads (and the "
            f"embedding rows used) become resident"),
    ]


# --- the command ---------------------------------------------------------------------------------


def parse_counts(text: str, option: str) -> list[int]:
    """'128,512' -> [128, 512]; '0' or '' -> [] (llama-bench: 0 skips the test)."""
    try:
        counts = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise LlamaNbError(f"{option} {text!r}: expected comma-separated token counts, e.g. 128,512") from None
    if any(n < 0 for n in counts):
        raise LlamaNbError(f"{option} {text!r}: token counts must be >= 0")
    return sorted(set(n for n in counts if n > 0), key=counts.index)


@bench.command("model")
def bench_model(
    model: ModelOpt = None,
    shape: Annotated[Optional[str], typer.Option("--shape", help="Bench random weights of a real model's shape instead: llama3.2-1b, llama3.1-8b, llama3.1-8b-4layers (written once to $LLAMA_NB_CACHE/shapes, default ~/.cache/llama_nb).", show_default=False)] = None,
    shape_type: Annotated[Optional[str], typer.Option("--type", metavar="q8_0|q4_k_m|bf16", help="With --shape: bench that random model as a GGUF of this type, quantized once by `llama-nb quantize`'s code into the shape's cache folder (llama_nb-TYPE.gguf).", show_default=False)] = None,
    n_prompt: Annotated[str, typer.Option("-p", "--n-prompt", "--prompt", help="Prompt lengths of the prefill tests (ppN), comma-separated; 0 skips.")] = "128,512",
    n_gen: Annotated[str, typer.Option("-n", "--n-gen", "--generate", help="Tokens of the decode tests (tgN), comma-separated; 0 skips.")] = "128",
    repetitions: Annotated[int, typer.Option("-r", "--repetitions", "--repeat", min=1, help="Timed runs per test; mean and standard deviation.")] = 5,
    impl: ImplOpt = None,
    threads: ThreadsOpt = None,
    batch: Annotated[int, typer.Option("-b", "--batch", min=1, help="Most tokens per prefill pass (llama-bench's -ub).")] = 512,
    at: Annotated[str, typer.Option("--at", "-d", "--n-depth", help="Context positions to decode at too (tgN @ dD, llama-bench's -d), comma-separated, e.g. 1024,8192,32768: the KV cache is filled to D directly, then N tokens are decoded; 0 or empty skips.")] = "",
    precision: PrecisionOpt = "bf16",
    kv_cache: KvCacheOpt = None,
    mmap: MmapOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Prefill (ppN) and decode (tgN) tokens/s of a model folder or a random model of a known shape.

    Token ids only (no tokenizer, no sampling; greedy argmax included in tg); JIT warm-up excluded
    and reported separately; decode also as GB/s of weights streamed and as a fraction of the
    plain-read bandwidth measured in the same run; peak resident memory vs weights + KV cache.
    --at D: decode also at context position D (tgN @ dD), the KV cache filled to D directly."""
    from rich.console import Console

    from llama_nb.io.pth_write import ensure_shape_model

    err = Console(stderr=True, highlight=False)
    if model is not None and shape is not None:
        raise LlamaNbError("--model and --shape: give one of them")
    prompts, gens, depths = parse_counts(n_prompt, "-p"), parse_counts(n_gen, "-n"), parse_counts(at, "--at")
    if depths and not gens:
        raise LlamaNbError(f"--at {at}: decode at those positions needs -n, the tokens to generate there")
    if not prompts and not gens:
        raise LlamaNbError("-p 0 -n 0: nothing to run; give a prompt length or a number of tokens to generate")
    if shape_type is not None and shape is None:
        raise LlamaNbError(f"--type {shape_type}: goes with --shape (a model of your own: `llama-nb quantize` it, "
                           "then --model FILE.gguf)")
    if shape is not None:
        def on_write(folder, nbytes):
            err.print(f"writing a random {shape} model ({nbytes / 1e9:.1f} GB) to {folder} (once) ...", markup=False)
        if shape_type is None:
            folder = ensure_shape_model(shape, on_write=on_write)
        else:
            folder = _shape_gguf(shape, shape_type, on_write, err)
    else:
        folder = resolve_model_dir(model)

    def progress(test: TestResult):
        if not json_out:
            err.print(f"{test.name}: {test.avg_ts:.2f} ± {test.stddev_ts:.2f} tokens/s", markup=False)

    result = run_model_bench(folder, prompts, gens, repetitions, impl=impl, threads=threads, max_batch=batch,
                             shape=shape, precision=precision, mmap=mmap, progress=progress, depths=depths,
                             kv_cache=kv_cache)
    if json_out:
        typer.echo(json.dumps(result.to_json(), indent=2))
        return
    console = Console(highlight=False)
    console.print(model_bench_table(result))
    for line in model_bench_notes(result):
        console.print(line, markup=False)


def _shape_gguf(shape: str, shape_type: str, on_write, err) -> Path:
    """ensure_shape_gguf, with a line and a progress bar on `err` while it quantizes (once)."""
    from llama_nb.cli.quantize import quantize_progress
    from llama_nb.model.quantize import ensure_shape_gguf, shape_gguf_path

    out = shape_gguf_path(shape, shape_type)
    progress, on_start, on_tensor = quantize_progress(err, shape_type, out)

    def started(plans):
        err.print(f"quantizing the random {shape} model to {shape_type} ({sum(p.nbytes for p in plans) / 1e9:.1f} GB) "
                  f"to {out} (once) ...", markup=False)
        on_start(plans)

    with progress:
        return ensure_shape_gguf(shape, shape_type, on_write=on_write, on_start=started, on_tensor=on_tensor)


@bench.command("quality")
def bench_quality(
    model: Annotated[Optional[Path], typer.Argument(help="The model: a Meta folder or a .gguf file [default: as for run].", show_default=False)] = None,
    text: Annotated[Path, typer.Option("--text", help="A UTF-8 text file to score (e.g. wikitext-2's wiki.test.raw).", show_default=False)] = ...,
    types: Annotated[str, typer.Option("--types", help="Formats to compare with bf16, comma-separated: q8_0, q4_k_m.")] = "q8_0,q4_k_m",
    ctx: Annotated[int, typer.Option("--ctx", "-c", help="Tokens per chunk; the second half of each is scored (llama-perplexity's -c).")] = 512,
    chunks: Annotated[Optional[int], typer.Option("--chunks", min=1, help="At most this many chunks [default: all that fit].", show_default=False)] = None,
    threads: ThreadsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Perplexity of the bf16 model and of each quantized format, and each format's mean KL
    divergence from bf16 and top-1 agreement with it, llama-perplexity style.

    Example:

    llama-nb bench quality --text llama_nb/demo/README.md --types q8_0 --ctx 16 --chunks 1"""
    from rich.console import Console
    from rich.table import Table

    from llama_nb.io.files import read_regular_file
    from llama_nb.model.quality import measure_quality

    folder = resolve_model_dir(model)
    raw = read_regular_file(text, 1 << 30, "a text file")
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LlamaNbError(f"{text}: not UTF-8 text (byte {exc.start})") from None
    err = Console(stderr=True, highlight=False)
    wanted = [t for t in types.replace(" ", "").split(",") if t]
    results = measure_quality(folder, content, wanted, ctx=ctx, max_chunks=chunks, threads=threads,
                              progress=None if json_out else (lambda line: err.print(line, markup=False)))
    if json_out:
        typer.echo(json.dumps({"model": str(folder), "text": str(text), "ctx": ctx,
                               "results": [r.to_json() for r in results]}, indent=2))
        return
    table = Table(title=f"{folder}: {text.name}, {results[0].n_tokens} tokens scored (ctx {ctx})", title_justify="left")
    for col in ("type", "bits/weight", "perplexity", "mean KL vs bf16", "top-1 = bf16"):
        table.add_column(col, justify="left" if col == "type" else "right")
    for r in results:
        table.add_row(r.type, f"{r.bits_per_weight:.2f}", f"{r.perplexity:.4f} ± {r.perplexity_stderr:.4f}",
                      f"{r.kl_mean:.6f} ± {r.kl_stderr:.6f}", f"{r.top1:.2%}")
    Console(highlight=False).print(table)

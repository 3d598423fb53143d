"""`llama-nb bench ...`: measure the kernels, or whole forward passes of a model, llama-bench style.

    llama-nb bench ops [--op matmul] [--impl numba] [--threads 2] [--repeat 5]
    llama-nb bench model --model DIR [-p 128,512] [-n 128] [-r 5] [--json]
    llama-nb bench model --shape llama3.2-1b        # random weights of that shape, written once

`bench model` follows llama-bench's conventions:
    ppN   prefill of N token ids at positions 0..N-1 in one batched pass; tokens/s = N / seconds
    tgN   N decode passes of one token each at positions 0..N-1, each feeding back the greedy
          argmax of the previous logits (argmax included: ~0.1 ms of a 25+ ms pass); tokens/s =
          N / seconds
Each test runs `-r` times after an untimed, shortened warm-up run (at most 32 tokens, as
llama-bench shortens its warm-up prompt); the KV cache starts empty each time
(positions restart at 0). Token ids are fixed pseudo-random ids, so no tokenizer is needed and
tokenization and sampling are excluded. Loading (reading the weights into memory), the JIT
compile and the first pass are excluded and reported separately. Results are mean ± standard
deviation over the repetitions.

Decode is memory-bound: each pass streams every weight matrix once. So tg is also shown as GB/s
of weights streamed, and as a fraction of the plain-read bandwidth measured just before each
repetition (ops.benchmark.read_bandwidth): the host's bandwidth changes from one minute to the
next, so only numbers from the same run are compared.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from llama_nb.cli._options import ImplOpt, JsonOpt, MmapOpt, ModelOpt, PrecisionOpt, ThreadsOpt, resolve_model_dir
from llama_nb.errors import LlamaNbError

bench = typer.Typer(help="Benchmarks: per-op kernel timings, or whole forward passes of a model.", no_args_is_help=True)


@bench.command("ops")
def bench_ops(
    op: Annotated[Optional[List[str]], typer.Option("--op", help="Op to time (repeatable) [default: all].")] = None,
    impl: Annotated[Optional[List[str]], typer.Option("--impl", help="Implementation to time (repeatable) [default: all].")] = None,
    threads: ThreadsOpt = None,
    repeat: Annotated[int, typer.Option("--repeat", min=1, help="Timed calls per case.")] = 5,
) -> None:
    """Time every op x implementation over the shared case table (tiny, odd and Llama shapes)."""
    from rich.console import Console

    from llama_nb.ops import benchmark

    console = Console(highlight=False)

    def progress(result, row):
        if len(result.rows) == 1:
            console.print(benchmark.format_header(result), markup=False, soft_wrap=True)
        console.print(benchmark.format_row(row, result.read_gbps), markup=False, soft_wrap=True)

    benchmark.run(op, impl, threads, repeat, progress=progress)


# --- the model benchmark (library part: compare.py uses it too) ----------------------------------


def load_transformer(folder: Path, impl=None, *, ctx: int, max_batch: int = 512, threads: int | None = None,
                     precision: str = "bf16", mmap: bool = False):
    """A Transformer over the folder's weights (read into memory, or mapped: see load_model); no
    tokenizer needed (ids only)."""
    from llama_nb.io.checkpoint import load_model_files
    from llama_nb.model.load import build_transformer, set_threads
    from llama_nb.model.transformer import check_precision
    from llama_nb.ops.registry import OpSet

    set_threads(threads)
    ops = impl if isinstance(impl, OpSet) else OpSet.from_spec(impl)  # untimed: no per-call overhead
    check_precision(precision, ops)  # before reading anything
    files = load_model_files(folder, require_tokenizer=False)
    return build_transformer(files, ops, ctx=ctx, max_batch=max_batch, precision=precision, mmap=mmap)


def decode_bytes(weights) -> int:
    """Bytes one decode pass must read: every matrix and norm once (of the embedding table, one row;
    when the output is tied to it, the whole table once, as the output)."""
    total = weights.output.nbytes + weights.norm.nbytes
    for layer in weights.layers:
        a, f = layer.attention, layer.feed_forward
        total += sum(m.nbytes for m in (a.wq, a.wk, a.wv, a.wo, f.w1, f.w2, f.w3, layer.attention_norm, layer.ffn_norm))
    return total


def prompt_ids(n: int, vocab_size: int, seed: int = 0):
    """n fixed pseudo-random token ids (below 128000: Llama 3's ordinary, non-special tokens)."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, min(vocab_size, 128000), size=n).astype(np.int64)


def decode(model, first_token: int, n: int, start_pos: int = 0) -> list[int]:
    """n greedy decode passes: feed a token, take the argmax of its logits, feed that. Returns the
    n argmax tokens (the next token after each pass)."""
    argmax, out, token = model.ops.argmax, [], first_token
    for i in range(n):
        token = int(argmax(model.forward([token], start_pos + i)))
        out.append(token)
    return out


@dataclass
class TestResult:
    name: str  # "pp128", "tg128"
    n_prompt: int
    n_gen: int
    samples_ts: list[float]  # tokens/s of each repetition
    read_gbps: list[float] = field(default_factory=list)  # plain-read bandwidth before each repetition
    weights_gbps: list[float] = field(default_factory=list)  # tg only: decode bytes * tokens/s

    @property
    def avg_ts(self) -> float:
        return _mean(self.samples_ts)

    @property
    def stddev_ts(self) -> float:
        return _std(self.samples_ts)


@dataclass
class ModelBench:
    model: str
    shape: str | None
    params: dict
    threads: int
    impl: dict
    impl_short: str  # "defaults" or "defaults + rope=reference"
    precision: str  # "bf16" or "float32": the op of every weight product
    weights_in: str  # "memory" (read in, huge pages) or "mmap" (views of the mapped file)
    load_seconds: float  # reading params, the checkpoint index and (weights_in "memory") the weights
    compile_seconds: float  # JIT compile / cache load of every kernel (excluded)
    warmup_seconds: float  # the untimed first runs (page the weights in; excluded)
    weights_bytes: int  # every tensor of the checkpoint
    decode_bytes: int  # what one decode pass streams
    kv_cache_bytes: int
    peak_rss_bytes: int = 0  # ru_maxrss after load, compile and warm-up (before the bandwidth probe)
    tests: list[TestResult] = field(default_factory=list)

    def to_json(self) -> dict:
        d = asdict(self)
        for t, obj in zip(d["tests"], self.tests):
            t.update(avg_ts=obj.avg_ts, stddev_ts=obj.stddev_ts)
        return d


def run_model_bench(folder: Path, prompts: list[int], gens: list[int], repetitions: int, *, impl=None,
                    threads: int | None = None, max_batch: int = 512, shape: str | None = None,
                    precision: str = "bf16", mmap: bool = False, progress=None) -> ModelBench:
    """Run ppN for N in prompts and tgN for N in gens, `repetitions` times each (see module doc)."""
    import numba

    from llama_nb.ops.benchmark import read_bandwidth

    ctx = max(prompts + gens + [1])
    t0 = time.perf_counter()
    model = load_transformer(folder, impl, ctx=ctx, max_batch=max(1, min(max_batch, ctx)), threads=threads,
                             precision=precision, mmap=mmap)
    s = model.state
    result = ModelBench(
        model=str(folder), shape=shape, params=model.args.to_dict(), threads=numba.get_num_threads(),
        impl=dict(model.ops.choice), impl_short=model.ops.describe_short(), precision=precision, weights_in="mmap" if mmap else "memory",
        load_seconds=time.perf_counter() - t0,
        compile_seconds=model.warmup(), warmup_seconds=0.0,
        weights_bytes=_checkpoint_bytes(model.weights), decode_bytes=decode_bytes(model.weights),
        kv_cache_bytes=s.cache_k.nbytes + s.cache_v.nbytes,
    )
    ids = prompt_ids(max(prompts + [1]), model.args.vocab_size)

    def pp(n):
        t0 = time.perf_counter()
        model.forward(ids[:n], 0)
        return n / (time.perf_counter() - t0)

    def tg(n):
        t0 = time.perf_counter()
        decode(model, int(ids[0]), n)
        return n / (time.perf_counter() - t0)

    tests = [(f"pp{n}", n, 0, pp) for n in prompts] + [(f"tg{n}", 0, n, tg) for n in gens]
    t0 = time.perf_counter()
    for _name, n_prompt, n_gen, run in tests:  # llama-bench's warm-up run, shortened: same kernels, same pages
        run(min(n_prompt or n_gen, 32))
    result.warmup_seconds = time.perf_counter() - t0
    # sampled before the first bandwidth probe, whose 0.5 GB scratch array would count in the peak;
    # the timed runs allocate nothing (RunState and the KV cache were allocated with the model)
    result.peak_rss_bytes = _peak_rss_bytes()
    for name, n_prompt, n_gen, run in tests:
        test = TestResult(name, n_prompt, n_gen, [])
        for _ in range(repetitions):
            test.read_gbps.append(read_bandwidth(repeat=3))
            test.samples_ts.append(run(n_prompt or n_gen))
            if n_gen:
                test.weights_gbps.append(test.samples_ts[-1] * result.decode_bytes / 1e9)
        result.tests.append(test)
        if progress is not None:
            progress(test)
    return result


def _checkpoint_bytes(weights) -> int:
    """Bytes of every tensor of the checkpoint (a tied output is the embedding table: counted once)."""
    layers = decode_bytes(weights) - weights.output.nbytes - weights.norm.nbytes
    tied = weights.output is weights.tok_embeddings
    return weights.tok_embeddings.nbytes + (0 if tied else weights.output.nbytes) + weights.norm.nbytes + layers


def _peak_rss_bytes() -> int:
    """Peak resident set of this process; ru_maxrss is KiB on Linux, bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _std(xs: list[float]) -> float:
    """Sample standard deviation (n - 1), as llama-bench reports; 0 for a single sample."""
    if len(xs) < 2:
        return 0.0
    m = _mean(xs)
    return (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5


# --- rendering (pure) ----------------------------------------------------------------------------


def model_bench_table(r: ModelBench):
    """A Rich Table of the tests, then the context lines (compile, warm-up, memory)."""
    from rich.table import Table

    def pm(xs):
        return f"{_mean(xs):.2f} ± {_std(xs):.2f}" if xs else ""

    title = (f"{r.shape or r.model}  (threads {r.threads}, precision {r.precision}, weights {r.weights_bytes / 1e9:.2f} GB "
             f"in {r.weights_in}, decode streams {r.decode_bytes / 1e9:.2f} GB/token)")
    table = Table(title=title, title_justify="left")
    for col in ("test", "tokens/s", "weights GB/s", "plain-read GB/s", "of read bw"):
        table.add_column(col, justify="left" if col == "test" else "right")
    for t in r.tests:
        frac = [w / b for w, b in zip(t.weights_gbps, t.read_gbps)]
        table.add_row(t.name, pm(t.samples_ts), pm(t.weights_gbps), pm(t.read_gbps),
                      f"{_mean(frac):.0%} ± {_std(frac):.0%}" if frac else "")
    return table


def model_bench_notes(r: ModelBench) -> list[str]:
    expected = r.weights_bytes + r.kv_cache_bytes
    reps = len(r.tests[0].samples_ts) if r.tests else 0
    return [
        f"model       {r.model}",
        f"kernels     {r.impl_short}, precision {r.precision}",
        f"excluded    JIT compile / cache load {r.compile_seconds:.2f} s; warm-up runs {r.warmup_seconds:.2f} s",
        f"repeats     {reps} per test, mean ± sample standard deviation; tg includes the greedy argmax",
        f"memory      peak RSS {r.peak_rss_bytes / 1e9:.2f} GB (after warm-up) vs weights {r.weights_bytes / 1e9:.2f} GB"
        f" + KV cache {r.kv_cache_bytes / 1e9:.3f} GB = {expected / 1e9:.2f} GB; " + (
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
    n_prompt: Annotated[str, typer.Option("-p", "--n-prompt", "--prompt", help="Prompt lengths of the prefill tests (ppN), comma-separated; 0 skips.")] = "128,512",
    n_gen: Annotated[str, typer.Option("-n", "--n-gen", "--generate", help="Tokens of the decode tests (tgN), comma-separated; 0 skips.")] = "128",
    repetitions: Annotated[int, typer.Option("-r", "--repetitions", "--repeat", min=1, help="Timed runs per test; mean and standard deviation.")] = 5,
    impl: ImplOpt = None,
    threads: ThreadsOpt = None,
    batch: Annotated[int, typer.Option("-b", "--batch", min=1, help="Most tokens per prefill pass (llama-bench's -ub).")] = 512,
    precision: PrecisionOpt = "bf16",
    mmap: MmapOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Prefill (ppN) and decode (tgN) tokens/s of a model folder or a random model of a known shape.

    Token ids only (no tokenizer, no sampling; greedy argmax included in tg); JIT warm-up excluded
    and reported separately; decode also as GB/s of weights streamed and as a fraction of the
    plain-read bandwidth measured in the same run; peak resident memory vs weights + KV cache."""
    from rich.console import Console

    from llama_nb.io.pth_write import ensure_shape_model

    err = Console(stderr=True, highlight=False)
    if model is not None and shape is not None:
        raise LlamaNbError("--model and --shape: give one of them")
    prompts, gens = parse_counts(n_prompt, "-p"), parse_counts(n_gen, "-n")
    if not prompts and not gens:
        raise LlamaNbError("-p 0 -n 0: nothing to run; give a prompt length or a number of tokens to generate")
    if shape is not None:
        def on_write(folder, nbytes):
            err.print(f"writing a random {shape} model ({nbytes / 1e9:.1f} GB) to {folder} (once) ...", markup=False)
        folder = ensure_shape_model(shape, on_write=on_write)
    else:
        folder = resolve_model_dir(model)

    def progress(test: TestResult):
        if not json_out:
            err.print(f"{test.name}: {test.avg_ts:.2f} ± {test.stddev_ts:.2f} tokens/s", markup=False)

    result = run_model_bench(folder, prompts, gens, repetitions, impl=impl, threads=threads, max_batch=batch,
                             shape=shape, precision=precision, mmap=mmap, progress=progress)
    if json_out:
        typer.echo(json.dumps(result.to_json(), indent=2))
        return
    console = Console(highlight=False)
    console.print(model_bench_table(result))
    for line in model_bench_notes(result):
        console.print(line, markup=False)

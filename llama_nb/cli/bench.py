"""`llama-nb bench ...`: measure the kernels (and, with a model, whole forward passes).

    llama-nb bench ops [--op matmul] [--impl numba] [--threads 2] [--repeat 5]
    llama-nb bench model --model DIR [--prompt 128] [--generate 32] [--repeat 3]

Both report against a baseline measured in the same run (the plain-read memory bandwidth, and
for `model` the bytes of weights one decode pass must stream), never against numbers from
another run: the host's bandwidth changes from minute to minute.
"""

from __future__ import annotations

from typing import Annotated, List, Optional

import typer

from llama_nb.cli._options import ImplOpt, ModelOpt, resolve_model_dir

bench = typer.Typer(help="Benchmarks: per-op kernel timings, or whole forward passes of a model.", no_args_is_help=True)


@bench.command("ops")
def bench_ops(
    op: Annotated[Optional[List[str]], typer.Option("--op", help="Op to time (repeatable) [default: all].")] = None,
    impl: Annotated[Optional[List[str]], typer.Option("--impl", help="Implementation to time (repeatable) [default: all].")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", help="Numba threads [default: all cores].")] = None,
    repeat: Annotated[int, typer.Option("--repeat", min=1, help="Timed calls per case.")] = 5,
) -> None:
    """Time every op x implementation over the shared case table (tiny, odd and Llama shapes)."""
    from rich.console import Console

    from llama_nb.ops import benchmark

    console = Console(highlight=False)

    def progress(result, row):
        if len(result.rows) == 1:
            console.print(benchmark.format_header(result), markup=False)
        console.print(benchmark.format_row(row, result.read_gbps), markup=False)

    benchmark.run(op, impl, threads, repeat, progress=progress)


@bench.command("model")
def bench_model(
    model: ModelOpt = None,
    prompt: Annotated[int, typer.Option("--prompt", min=1, help="Prompt length of the prefill test (pp).")] = 128,
    generate: Annotated[int, typer.Option("--generate", min=1, help="Tokens of the decode test (tg).")] = 32,
    repeat: Annotated[int, typer.Option("--repeat", min=1, help="Repetitions; mean and standard deviation.")] = 3,
    impl: ImplOpt = None,
    threads: Annotated[Optional[int], typer.Option("--threads", help="Numba threads [default: all cores].")] = None,
) -> None:
    """Prefill (pp) and decode (tg) tokens/s of a model folder, llama-bench style.

    Token ids are fixed random ids (no tokenizer, no sampling: greedy argmax only); the JIT
    warm-up is excluded and reported separately; decode is also shown as GB/s of weights
    streamed and as a fraction of the plain-read bandwidth measured in the same run."""
    import time

    import numba
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    import llama_nb
    from llama_nb.ops.benchmark import read_bandwidth

    folder = resolve_model_dir(model)
    console = Console(highlight=False)
    llm = llama_nb.load_model(folder, impl=impl, ctx=prompt + generate + 1, threads=threads)
    compile_seconds = llm.compile()
    rng = np.random.default_rng(0)
    ids = [int(t) for t in rng.integers(0, min(llm.args.vocab_size, 128000), size=prompt)]

    # bytes one decode pass must read: every weight matrix once (the embedding row is negligible)
    w = llm.model.weights
    decode_bytes = w.output.nbytes + w.norm.nbytes + sum(
        m.nbytes for layer in w.layers for m in (
            layer.attention.wq, layer.attention.wk, layer.attention.wv, layer.attention.wo,
            layer.feed_forward.w1, layer.feed_forward.w2, layer.feed_forward.w3,
            layer.attention_norm, layer.ffn_norm))

    pp, tg, bw = [], [], []
    for _ in range(repeat):
        bw.append(read_bandwidth(repeat=3))
        t0 = time.perf_counter()
        logits = llm.forward(ids, 0)
        pp.append(prompt / (time.perf_counter() - t0))
        token = int(np.argmax(logits))
        t0 = time.perf_counter()
        for i in range(generate):
            token = llm.ops.argmax(llm.forward([token], prompt + i))
        tg.append(generate / (time.perf_counter() - t0))

    def mean_sd(values):
        return f"{np.mean(values):.2f} ± {np.std(values):.2f}"

    table = Table(title=f"{folder}  (threads {numba.get_num_threads()}, compile {compile_seconds:.2f} s, excluded)",
                  title_justify="left")
    table.add_column("test")
    table.add_column("tokens/s", justify="right")
    table.add_column("weights GB/s", justify="right")
    table.add_column("plain-read GB/s", justify="right")
    table.add_column("of read bw", justify="right")
    table.add_row(f"pp{prompt}", mean_sd(pp), "", "", "")
    gbps = [t * decode_bytes / 1e9 for t in tg]
    table.add_row(f"tg{generate}", mean_sd(tg), mean_sd(gbps), mean_sd(bw), f"{np.mean(gbps) / np.mean(bw):.0%}")
    console.print(table)

"""Whole forward passes of a model, timed llama-bench style (the library of `llama-nb bench model`
and bench/compare.py). It follows llama-bench's conventions:
    ppN   prefill of N token ids at positions 0..N-1 in one batched pass; tokens/s = N / seconds
    tgN   N decode passes of one token each at positions 0..N-1, each feeding back the greedy
          argmax of the previous logits (argmax included: ~0.1 ms of a 25+ ms pass); tokens/s =
          N / seconds
    tgN @ dD  the same N decode passes at positions D..D+N-1, after a context of D positions
          (llama-bench's -d, --n-depth): decode at a long context, where attention reads D
          positions of KV cache per layer per token. The D positions are not prefilled (32K
          positions of the 1B would take minutes): fill_cache writes them directly, with values
          of the magnitude real keys and values have; decode's work and bytes do not depend on them.
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

import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llama_nb.io.checkpoint import load_model_files
from llama_nb.model.load import build_transformer, opset_for
from llama_nb.model.parallel import default_threads, group_from_environment, together
from llama_nb.model.transformer import check_threads


def load_transformer(folder: Path, impl=None, *, ctx: int, max_batch: int = 512, threads: int | None = None,
                     precision: str | None = None, mmap: bool = False, weight_format: str | None = None,
                     kv_cache: str | None = None):
    """A Transformer over the folder's weights (read into memory, or mapped: see load_model); no
    tokenizer needed (ids only). Its OpSet is untimed: no per-call overhead."""
    ops = opset_for(impl, precision, timed=False)  # before reading anything
    check_threads(threads)
    group = group_from_environment()  # under mpirun: this rank's part of a model-parallel folder
    threads = default_threads(group, threads)

    def build():
        files = load_model_files(folder, require_tokenizer=False, rank=group.rank, ranks=group.size)
        return build_transformer(files, ops, ctx=ctx, max_batch=max_batch, mmap=mmap, threads=threads,
                                 weight_format=weight_format, group=group, kv_cache=kv_cache)

    return together(group, build)


_POOL = 1_000_003  # a prime: the pool tiled over a cache makes no two rows alike


def fill_cache(model, positions: int, seed: int = 0) -> None:
    """Write positions 0..positions-1 of every layer's KV cache directly: N(0, 1) values (the
    magnitude of Llama's keys and values after rope), stored as the cache stores them."""
    import numpy as np

    from llama_nb.formats import f32_to_bf16_np

    s = model.state
    pool = np.random.default_rng(seed).standard_normal(_POOL, dtype=np.float32)
    pool = f32_to_bf16_np(pool) if s.cache_k.dtype == np.uint16 else pool
    for cache in (s.cache_k[0], s.cache_v[0]):  # slot 0: the sequence forward() runs
        for layer in range(cache.shape[0]):
            for head in range(cache.shape[1]):
                rows = cache[layer, head, :positions]
                rows[...] = np.resize(pool[(layer * 7 + head) % 97 :], rows.size).reshape(rows.shape)


def kv_read_bytes(model, positions: int) -> int:
    """Bytes of KV cache one decode pass at `positions` filled positions reads (every layer's K and V)."""
    s = model.state
    return s.cache_k[0, :, :, :positions].nbytes + s.cache_v[0, :, :, :positions].nbytes


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
    depth: int = 0  # tgN @ dD: the positions already in the KV cache when the decode starts
    kv_gbps: list[float] = field(default_factory=list)  # tg only: KV cache bytes read * tokens/s

    @property
    def avg_ts(self) -> float:
        return mean(self.samples_ts)

    @property
    def stddev_ts(self) -> float:
        return stddev(self.samples_ts)


@dataclass
class ModelBench:
    model: str
    shape: str | None
    params: dict
    threads: int
    impl: dict
    impl_short: str  # "defaults" or "defaults + rope=reference"
    precision: str  # "bf16" or "float32": the activation type of every weight product
    weights_in: str  # "memory" (read in, huge pages) or "mmap" (views of the mapped file)
    load_seconds: float  # reading params, the checkpoint index and (weights_in "memory") the weights
    compile_seconds: float  # JIT compile / cache load of every kernel (excluded)
    warmup_seconds: float  # the untimed first runs (page the weights in; excluded)
    weights_bytes: int  # every weight as loaded (Weights.nbytes)
    decode_bytes: int  # what one decode pass streams
    kv_cache_bytes: int
    kv_cache: str = "f32"  # the KV cache's element type: "bf16" or "f32"
    peak_rss_bytes: int = 0  # ru_maxrss after load, compile and warm-up (before the bandwidth probe)
    ranks: int = 1  # MPI ranks sharing the model (weights_bytes etc. are this rank's: rank 0's)
    collective_seconds_per_token: float = 0.0  # tg: all-reduces and the logits' all-gather, per pass
    tests: list[TestResult] = field(default_factory=list)

    def to_json(self) -> dict:
        d = asdict(self)
        for t, obj in zip(d["tests"], self.tests):
            t.update(avg_ts=obj.avg_ts, stddev_ts=obj.stddev_ts)
        return d


def run_model_bench(folder: Path, prompts: list[int], gens: list[int], repetitions: int, *, impl=None,
                    threads: int | None = None, max_batch: int = 512, shape: str | None = None,
                    precision: str | None = None, mmap: bool = False, progress=None, depths: list[int] = (),
                    kv_cache: str | None = None) -> ModelBench:
    """Run ppN for N in prompts, tgN for N in gens, and tgN @ dD for D in depths, `repetitions`
    times each (see module doc)."""
    from llama_nb.ops.benchmark import read_bandwidth

    depths = list(depths)
    ctx = max(prompts + gens + [d + n for d in depths for n in gens] + [1])
    t0 = time.perf_counter()
    model = load_transformer(folder, impl, ctx=ctx, max_batch=max(1, min(max_batch, ctx)), threads=threads,
                             precision=precision, mmap=mmap, kv_cache=kv_cache)
    s = model.state
    result = ModelBench(
        model=str(folder), shape=shape, params=model.args.to_dict(), threads=model.threads,
        impl=dict(model.ops.choice), impl_short=model.ops.describe_short(), precision=model.precision,
        weights_in="mmap" if mmap else "memory", load_seconds=time.perf_counter() - t0,
        compile_seconds=model.warmup(), warmup_seconds=0.0,
        weights_bytes=model.weights.nbytes, decode_bytes=model.weights.decode_bytes,
        kv_cache_bytes=s.cache_k.nbytes + s.cache_v.nbytes, ranks=model.group.size, kv_cache=model.kv_cache,
    )
    ids = prompt_ids(max(prompts + [1]), model.args.vocab_size)

    def pp(n):
        t0 = time.perf_counter()
        model.forward(ids[:n], 0)
        return n / (time.perf_counter() - t0)

    def tg(n, depth=0):
        model.group.reset_timings()
        t0 = time.perf_counter()
        decode(model, int(ids[0]), n, start_pos=depth)
        result.collective_seconds_per_token = model.group.collective_seconds / n
        return n / (time.perf_counter() - t0)

    if depths:
        fill_cache(model, max(depths))  # each tg @ dD reads positions 0..D-1 and rewrites D..D+N-1
    tests = ([(f"pp{n}", n, 0, 0, pp) for n in prompts] + [(f"tg{n}", 0, n, 0, tg) for n in gens] +
             [(f"tg{n} @ d{d}", 0, n, d, lambda n, d=d: tg(n, d)) for d in depths for n in gens])
    t0 = time.perf_counter()
    for _name, n_prompt, n_gen, _depth, run in tests:  # llama-bench's warm-up run, shortened: same kernels, same pages
        run(min(n_prompt or n_gen, 32))
    result.warmup_seconds = time.perf_counter() - t0
    # sampled before the first bandwidth probe, whose 0.5 GB scratch array would count in the peak;
    # the timed runs allocate nothing (RunState and the KV cache were allocated with the model)
    result.peak_rss_bytes = _peak_rss_bytes()
    for name, n_prompt, n_gen, depth, run in tests:
        test = TestResult(name, n_prompt, n_gen, [], depth=depth)
        kv_bytes = kv_read_bytes(model, depth + n_gen // 2) if n_gen else 0  # the middle pass's
        for _ in range(repetitions):
            test.read_gbps.append(read_bandwidth(repeat=3))
            test.samples_ts.append(run(n_prompt or n_gen))
            if n_gen:
                test.weights_gbps.append(test.samples_ts[-1] * result.decode_bytes / 1e9)
                test.kv_gbps.append(test.samples_ts[-1] * kv_bytes / 1e9)
        result.tests.append(test)
        if progress is not None:
            progress(test)
    return result


def _peak_rss_bytes() -> int:
    """Peak resident set of this process; ru_maxrss is KiB on Linux, bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def stddev(xs: list[float]) -> float:
    """Sample standard deviation (n - 1), as llama-bench reports; 0 for a single sample."""
    if len(xs) < 2:
        return 0.0
    m = mean(xs)
    return (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5

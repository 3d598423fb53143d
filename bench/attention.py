"""Decode attention against the plain read: does one decode step's attention stream the KV cache at
the memory's bandwidth? In one run, alternating, round by round.

    python bench/attention.py [--heads 1b,8b] [--positions 32768] [--threads 1,2] [-r 5] [--cache bf16]

Each round, for every (threads, heads, positions): the plain-read probe (ops/benchmark.py: a
parallel Numba sum of a 512 MB uint16 array, best of 3), then the registered `attention` op at
T = 1 over a cache filled to `positions` (best of 5 calls; each reads 2 * KVH * S * Dh cache
values; a new cache each round, so that a run samples several placements of its pages), then the
probe again. The ratio is the op's GB/s of cache over the mean of the two probes around it, so a
spell of low bandwidth on this host moves both. Prints every round and the median
ratio; issue 17's target is >= 80% at 32K positions and more.

Heads: 1b = Llama 3.2 1B (32 query heads, 8 kv heads, head_dim 64); 8b = Llama 3.1 8B / 70B
per-layer widths (32/8 of 128; 70B has 64/8 heads of 128: twice the query heads per kv head).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numba
import numpy as np

HEADS = {"1b": (32, 8, 64), "8b": (32, 8, 128), "70b": (64, 8, 128)}


def best_seconds(fn, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def attention_case(heads: str, positions: int, cache: str):
    """A call of the registered attention op at T = 1, position positions - 1, over a full cache;
    returns (call, bytes of cache it reads)."""
    from llama_nb.ops import registry
    from llama_nb.ops.specs import KEY_BLOCK, QUERY_TILE

    n_heads, n_kv, head_dim = HEADS[heads]
    rng = np.random.default_rng(0)
    op = registry.get("attention_bf16kv" if cache == "bf16" else "attention", "numba")
    if cache == "bf16":
        bits = lambda shape: (rng.standard_normal(shape, np.float32).view(np.uint32) >> 16).astype(np.uint16)  # noqa: E731
    else:
        bits = lambda shape: rng.standard_normal(shape, np.float32)  # noqa: E731
    k_cache, v_cache = bits((n_kv, positions, head_dim)), bits((n_kv, positions, head_dim))
    q = rng.standard_normal((1, n_heads, head_dim), np.float32)
    k = rng.standard_normal((1, n_kv, head_dim), np.float32)
    v = rng.standard_normal((1, n_kv, head_dim), np.float32)
    out = np.zeros_like(q)
    threads = numba.config.NUMBA_NUM_THREADS
    key_tile = np.zeros((threads, KEY_BLOCK // 16, head_dim, 16), np.float32)
    rows = np.zeros((threads, 2, 4, KEY_BLOCK), np.float32)
    running = np.zeros((threads, QUERY_TILE, 2, 4), np.float32)

    def call():
        op(out, q, k, v, k_cache, v_cache, positions - 1, key_tile, rows, running)

    return call, k_cache.nbytes + v_cache.nbytes


def main(argv: list[str] | None = None) -> int:
    from llama_nb.ops.benchmark import _READ_BYTES, _sum_rows
    from llama_nb.ops.jit import threads as using_threads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", default="1b,8b", help=f"comma-separated, of {', '.join(HEADS)}")
    parser.add_argument("--positions", default="32768", help="comma-separated cache lengths")
    parser.add_argument("--threads", default=None, help="comma-separated (default: 1 and all cores)")
    parser.add_argument("-r", "--rounds", type=int, default=5)
    parser.add_argument("--cache", choices=("bf16", "f32"), default="bf16")
    args = parser.parse_args(argv)
    thread_counts = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, numba.config.NUMBA_NUM_THREADS})
    cases = [(h, int(p)) for h in args.heads.split(",") for p in args.positions.split(",")]
    probe = np.ones((_READ_BYTES // 2 // 8192, 8192), np.uint16)
    ratios: dict[tuple, list[float]] = {}
    for rnd in range(args.rounds):
        # A cache of its own each round: one process's placement of its pages moved the ratio
        # between 66% and 116% from one run to the next (AMD EPYC, 2026-12-04), so a run samples several
        calls = {case: attention_case(*case, args.cache) for case in cases}
        for n_threads in thread_counts:
            with using_threads(n_threads):
                for case in cases:
                    call, nbytes = calls[case]
                    before = probe.nbytes / best_seconds(lambda: _sum_rows(probe), 3) / 1e9
                    seconds = best_seconds(call, 5)
                    after = probe.nbytes / best_seconds(lambda: _sum_rows(probe), 3) / 1e9
                    gbps = nbytes / seconds / 1e9
                    ratio = gbps / ((before + after) / 2)
                    ratios.setdefault((n_threads, *case), []).append(ratio)
                    print(f"round {rnd}  threads {n_threads}  heads {case[0]:>3}  S {case[1]:>6}: {seconds * 1e3:7.2f} ms "
                          f"{gbps:5.1f} GB/s, plain read {before:4.1f}/{after:4.1f} GB/s -> {ratio:4.0%}", flush=True)
    print(f"\nmedian ratio to the plain read ({args.cache} cache, {args.rounds} rounds):")
    for (n_threads, heads, positions), values in ratios.items():
        print(f"  threads {n_threads}  heads {heads:>3}  S {positions:>6}: {statistics.median(values):4.0%} "
              f"(min {min(values):.0%}, max {max(values):.0%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

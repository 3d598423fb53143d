"""The block-format decode kernels (ops/quant_dot.py) against an older version of themselves and
the plain read, alternating in one process: do Q8_0, Q4_K and Q6_K stream their weights at the
memory's bandwidth?

    python bench/quant_kernels.py [--old REV] [--formats q4_k,q6_k,q8_0] [--shapes 4096x14336,...]
                                  [--threads 1,2] [-r 5] [-n 5] [-t 1]

The old kernels are `git show <old>:llama_nb/ops/quant_dot.py` (with that revision's simd_int8.py
and quant_rows.py) loaded as modules of their own, so both versions run in one process on the same
weights. Each round, for every (threads, format, shape): the plain-read probe (ops/benchmark.py: a
parallel Numba sum of a 512 MB uint16 array, best of 3), then the old and the new kernel in turns
(`-n` calls each, best kept), then the probe again. Weights smaller than 256 MB are replicated and
the calls rotate through the copies, so every call reads its weights from memory, not the L3
cache. Prints each round's GB/s of weight bytes, the ratio to the mean of the two probes, and
new / old; then the medians.

Shapes are K x N (the weight is N rows of K): the 1B's 2048x2048 (wq, wo), 2048x8192 (w1, w3),
8192x2048 (w2), the 8B's 4096x4096, 4096x14336, 14336x4096. `-t` tokens per call (1: decode).

Prefill mode, `-t` above FEW_TOKENS (8), e.g. `-t 128`: old is the decode kernel run on all T
tokens (each token against each row: what linear ran before the tiles), new the prefill tiles
(ops/quant_tiles.py), both of this tree (--old unused), alternating as above; each round also
prints GFLOP/s (2 T N K per call; GB/s stays the weight bytes per call).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHAPES = "2048x2048,2048x8192,8192x2048,4096x4096,4096x14336,14336x4096"
COLD_BYTES = 256 << 20
OLD = "cfa99a6"  # the last commit with the 256-bit, one-sub-block-at-a-time kernels


# in import order: each old one imports the ones before (a revision without one of them skips it)
OLD_MODULES = ("simd_int8", "simd_int8x64", "int8_variants", "quant_rows", "matvec", "quant_dot")


def old_kernels(rev: str):
    """KERNELS of ops/quant_dot.py as of git revision rev, with the simd_int8.py and quant_rows.py
    of that revision, each loaded as a module of its own (quant_old_<name>)."""
    folder = Path(tempfile.mkdtemp(prefix="quant_old_"))
    module = None
    for name in OLD_MODULES:
        shown = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:llama_nb/ops/{name}.py"],
                               capture_output=True, text=True)
        if shown.returncode != 0 and name != "quant_dot":
            continue  # not in that revision yet
        shown.check_returncode()
        source = shown.stdout
        for earlier in OLD_MODULES[: OLD_MODULES.index(name)]:
            source = source.replace(f"from llama_nb.ops.{earlier} import", f"from quant_old_{earlier} import")
        path = folder / f"quant_old_{name}.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
    return module.KERNELS


def random_blocks(fmt: str, n: int, k: int, rng) -> np.ndarray:
    """uint8[N, K / block * bytes]: random quants with small, finite half scales."""
    from llama_nb.ops.quant_rows import Q4_K_BYTES, Q6_K_BYTES, Q8_0_BYTES

    block, nbytes, scale_at = {"q8_0": (32, Q8_0_BYTES, (0,)), "q4_k": (256, Q4_K_BYTES, (0, 2)),
                               "q6_k": (256, Q6_K_BYTES, (208,))}[fmt]
    data = rng.integers(0, 256, (n, k // block, nbytes), dtype=np.uint8)
    half = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    for at in scale_at:
        data[:, :, at : at + 2] = half
    return data.reshape(n, -1)


def activations(t: int, k: int, rng):
    """(q, d, sums, dsum, xq): x's int8 blocks, views into the scratch xq."""
    from llama_nb.ops.quant_act import quantize_activations

    x = rng.standard_normal((t, k)).astype(np.float32)
    xq = np.zeros(t * k * 4, np.uint8)
    return (*quantize_activations(x, xq), xq)


def prefill_kernels(fmt: str, variant: str, nbytes: int, q, d, sums, dsum, xq, out) -> dict:
    """{"old": the decode kernel on all T tokens (each token against each row, as linear ran them
    before the tiles), "new": the prefill tiles}: functions of the weight's blocks."""
    from llama_nb.ops import quant_dot, quant_tiles

    decode, tiles = quant_dot.KERNELS[fmt][variant].pick(nbytes), quant_tiles.KERNELS[fmt][variant]
    return {"old": lambda c: decode(out, q, d, sums, dsum, c),
            "new": lambda c: quant_tiles.linear_tiles(tiles, fmt, out, q, d, sums, c, xq)}


def best_seconds(calls, repeat: int) -> float:
    calls[0]()
    best = float("inf")
    for i in range(repeat):
        t0 = time.perf_counter()
        calls[(i + 1) % len(calls)]()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    from llama_nb.ops import quant_dot
    from llama_nb.ops.benchmark import _READ_BYTES, _sum_rows
    from llama_nb.ops.jit import HAS_AVX512_VNNI
    from llama_nb.ops.jit import threads as using_threads
    from llama_nb.ops.matvec import FEW_TOKENS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default=OLD, help=f"git revision of the old kernels (default {OLD}: the 256-bit ones)")
    parser.add_argument("--formats", default="q4_k,q6_k,q8_0")
    parser.add_argument("--shapes", default=SHAPES, help="comma-separated KxN")
    parser.add_argument("--threads", default=None, help="comma-separated (default: 1 and all cores)")
    parser.add_argument("-r", "--rounds", type=int, default=5)
    parser.add_argument("-n", "--calls", type=int, default=5, help="timed calls of each kernel per round (best kept)")
    parser.add_argument("-t", "--tokens", type=int, default=1)
    args = parser.parse_args(argv)
    thread_counts = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, numba.config.NUMBA_NUM_THREADS})
    variant = "vnni" if HAS_AVX512_VNNI else "portable"
    prefill = args.tokens > FEW_TOKENS  # old: the decode kernels, new: the tiles (both of this tree)
    old, new = (None, None) if prefill else (old_kernels(args.old), quant_dot.KERNELS)
    rng = np.random.default_rng(0)
    probe = np.ones((_READ_BYTES // 2 // 8192, 8192), np.uint16)
    cases = [(fmt, *map(int, shape.split("x"))) for fmt in args.formats.split(",") for shape in args.shapes.split(",")]
    results: dict[tuple, list[tuple[float, float, float]]] = {}
    for rnd in range(args.rounds):
        for fmt, k, n in cases:
            w = random_blocks(fmt, n, k, rng)
            copies = [w] + [w.copy() for _ in range(min(15, COLD_BYTES // w.nbytes))]
            q, d, sums, dsum, xq = activations(args.tokens, k, rng)
            out = np.zeros((args.tokens, n), np.float32)
            for n_threads in thread_counts:
                with using_threads(n_threads):
                    if prefill:
                        kernels = prefill_kernels(fmt, variant, w.nbytes, q, d, sums, dsum, xq, out)
                    else:
                        kernels = {name: lambda c, fn=table[fmt][variant].pick(w.nbytes): fn(out, q, d, sums, dsum, c)
                                   for name, table in (("old", old), ("new", new))}
                    calls = {name: [lambda c=c, fn=fn: fn(c) for c in copies] for name, fn in kernels.items()}
                    before = probe.nbytes / best_seconds([lambda: _sum_rows(probe)], 3) / 1e9
                    seconds = {name: float("inf") for name in calls}
                    for _ in range(2):  # old, new, old, new: a change of spell mid-case touches both
                        for name in calls:
                            seconds[name] = min(seconds[name], best_seconds(calls[name], args.calls))
                    after = probe.nbytes / best_seconds([lambda: _sum_rows(probe)], 3) / 1e9
                    plain = (before + after) / 2
                    gbps = {name: w.nbytes / s / 1e9 for name, s in seconds.items()}
                    gflops = {name: 2 * args.tokens * n * k / s / 1e9 for name, s in seconds.items()}
                    if args.tokens > 1:
                        print(f"round {rnd}  threads {n_threads}  {fmt} {k}x{n} T={args.tokens}: old {gflops['old']:6.1f} "
                              f"GFLOP/s  new {gflops['new']:6.1f} GFLOP/s  new/old {gflops['new'] / gflops['old']:.2f}", flush=True)
                    results.setdefault((n_threads, fmt, k, n), []).append((gbps["old"] / plain, gbps["new"] / plain,
                                                                            gbps["new"] / gbps["old"], gflops["old"], gflops["new"]))
                    print(f"round {rnd}  threads {n_threads}  {fmt} {k}x{n}: old {gbps['old']:5.1f} GB/s  new "
                          f"{gbps['new']:5.1f} GB/s  plain read {before:4.1f}/{after:4.1f}  -> old {gbps['old'] / plain:4.0%} "
                          f"new {gbps['new'] / plain:4.0%}  new/old {gbps['new'] / gbps['old']:.2f}", flush=True)
    print(f"\nmedians over {args.rounds} rounds ({variant} kernels, {args.tokens} token(s); ratios to the plain read):")
    for (n_threads, fmt, k, n), values in results.items():
        old_r, new_r, speedup, old_f, new_f = (statistics.median(v) for v in zip(*values))
        flops = f"  GFLOP/s old {old_f:6.1f}  new {new_f:6.1f}" if args.tokens > 1 else ""
        print(f"  threads {n_threads}  {fmt} {k:>5}x{n:<5}: old {old_r:4.0%}  new {new_r:4.0%}  new/old {speedup:.2f}{flops}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

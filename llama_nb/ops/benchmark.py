"""Op benchmarks over the shared case table (ops/cases.py): ms, GB/s, GFLOP/s per (op, impl, case).

    result = run(ops=["matmul"], impls=["numba"], threads=2, repeat=5)
    print(format_table(result))

Used by bench/bench_ops.py and `llama-nb bench ops`. Every implementation is called once untimed
(the JIT compiles, or loads its cache), then `repeat` times; the median is reported.

GB/s counts the bytes an op must move at least once: every input it reads (for attention only the
filled cache rows, for embedding only the looked-up rows) plus its output. For matmul the weights
dominate. GFLOP/s counts multiply-adds as 2 flops (matmul, attention); other ops are memory-bound
and get none.

The same run measures the plain-read bandwidth of this machine: a Numba kernel summing a 512 MB
uint16 array (larger than any cache), parallel over rows like the matvec. A matvec reads each weight
once, so that bandwidth is its ceiling, and each matmul row shows the fraction of it reached.
To measure memory and not the L3 cache, weights smaller than 256 MB are replicated and the timed
calls rotate through the copies, as a forward pass reads each layer's weights once per token.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterable

import numba
import numpy as np
from numba import prange

from llama_nb.errors import LlamaNbError
from llama_nb.ops import registry
from llama_nb.ops._jit import njit_parallel
from llama_nb.ops.cases import CASES, FIELDS, MATMUL_OPS, make_inputs

_READ_BYTES = 512 << 20
_COLD_BYTES = 256 << 20  # weights are replicated up to this size so repeats miss the L3 cache


@njit_parallel
def _sum_rows(a):
    # Written like the matvec (ops/matmul.py): prange over blocks of 64 rows, a plain loop inside.
    n_rows = a.shape[0]
    total = 0
    for block in prange((n_rows + 63) // 64):
        for r in range(block * 64, min(block * 64 + 64, n_rows)):
            row = a[r]
            acc = np.uint32(0)
            for k in range(row.shape[0]):  # integer adds reassociate freely: vectorised
                acc += row[k]
            total += acc
    return total


def read_bandwidth(repeat: int = 5, nbytes: int = _READ_BYTES) -> float:
    """GB/s of a parallel Numba kernel that reads (sums) a large uint16 array once, best of repeat."""
    a = np.ones((nbytes // 2 // 8192, 8192), np.uint16)
    _sum_rows(a)
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        _sum_rows(a)
        best = min(best, time.perf_counter() - t0)
    return a.nbytes / best / 1e9


@dataclass
class Row:
    op: str
    impl: str
    case: tuple[int, ...]
    ms: float  # median of the timed calls
    best_ms: float
    nbytes: int
    flops: float

    @property
    def gbps(self) -> float:
        return self.nbytes / (self.ms * 1e-3) / 1e9

    @property
    def gflops(self) -> float:
        return self.flops / (self.ms * 1e-3) / 1e9


@dataclass
class Result:
    threads: int
    read_gbps: float
    rows: list[Row] = field(default_factory=list)


def traffic(op: str, case: tuple[int, ...], args: tuple) -> tuple[int, float]:
    """(bytes moved at least once, flops) of one call of `op` on `args`."""
    if op in MATMUL_OPS:
        n_tokens, k_in, n_out = case
        return sum(a.nbytes for a in args), 2.0 * n_tokens * k_in * n_out
    if op == "attention":
        n_tokens, n_heads, n_kv, head_dim, _, start_pos = case
        n_ctx = start_pos + n_tokens
        cache_bytes = 2 * n_kv * n_ctx * head_dim * 4
        # per (token, head): q.k for each visible position and a weighted sum of value rows
        visible = sum(start_pos + t + 1 for t in range(n_tokens))
        return args[0].nbytes + args[1].nbytes + cache_bytes, 4.0 * n_heads * visible * head_dim
    if op == "embedding":
        out, table, tokens = args
        return out.nbytes // 2 + out.nbytes + tokens.nbytes, 0.0  # rows read (bf16), then written
    if op == "rope":
        x, cos, sin, _ = args
        return 2 * x.nbytes + 2 * x.shape[0] * cos.shape[1] * 4, 0.0  # x read and written, table rows
    return sum(a.nbytes for a in args if isinstance(a, np.ndarray)), 0.0


def bench_case(op: str, impl: str, case: tuple[int, ...], args: tuple, repeat: int) -> Row:
    fn = registry.get(op, impl)
    copies = [args]
    weight_index = 2 if op in MATMUL_OPS else 1 if op == "embedding" else None
    if weight_index is not None and args[weight_index].nbytes < _COLD_BYTES:
        n = min(16, _COLD_BYTES // args[weight_index].nbytes)
        copies += [args[:weight_index] + (args[weight_index].copy(),) + args[weight_index + 1 :] for _ in range(n - 1)]
    fn(*args)  # compile (or load from the cache); not timed
    times = []
    for i in range(repeat):
        call_args = copies[(i + 1) % len(copies)]  # copies[0] was just warmed into the cache
        t0 = time.perf_counter()
        fn(*call_args)
        times.append(time.perf_counter() - t0)
    nbytes, flops = traffic(op, case, args)
    return Row(op, impl, case, 1e3 * float(np.median(times)), 1e3 * min(times), nbytes, flops)


def run(
    ops: Iterable[str] | None = None,
    impls: Iterable[str] | None = None,
    threads: int | None = None,
    repeat: int = 5,
    seed: int = 0,
    progress=None,
    read_bytes: int = _READ_BYTES,
) -> Result:
    """Benchmark every (op, impl, case) selected; None selects all.

    `progress(result, row)` is called after each row (result.read_gbps is known by then).
    """
    registry.load_plugins()
    ops = sorted(registry.impls) if ops is None else list(ops)
    for op in ops:
        if op not in CASES:
            raise LlamaNbError(f"--op {op!r}: no such op; have: {', '.join(sorted(CASES))}")
    impls = None if impls is None else list(impls)
    if impls is not None:
        known = {name for op in ops for name in registry.impls[op]}
        for name in impls:
            if name not in known:
                raise LlamaNbError(f"--impl {name!r}: none of the ops chosen has it; have: {', '.join(sorted(known))}")
    if threads is not None:
        if not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
            raise LlamaNbError(f"--threads {threads}: must be between 1 and {numba.config.NUMBA_NUM_THREADS}")
        numba.set_num_threads(threads)
    result = Result(numba.get_num_threads(), read_bandwidth(nbytes=read_bytes))
    rng = np.random.default_rng(seed)
    for op in ops:
        chosen = [i for i in sorted(registry.impls[op]) if impls is None or i in impls]
        for case in CASES[op]:
            if not chosen:
                break
            args = make_inputs(op, case, rng)
            for impl in chosen:
                row = bench_case(op, impl, case, args, repeat)
                result.rows.append(row)
                if progress is not None:
                    progress(result, row)
            del args
    return result


def format_row(row: Row, read_gbps: float) -> str:
    case = "x".join(map(str, row.case))
    names = ",".join(FIELDS[row.op])
    gflops = f"{row.gflops:8.1f}" if row.flops else f"{'-':>8}"
    frac = f"{row.gbps / read_gbps:6.0%}" if row.op in MATMUL_OPS else f"{'':>6}"
    return f"{row.op:<12} {row.impl:<14} {names + '=' + case:<40} {row.ms:10.3f} {row.best_ms:10.3f} {row.gbps:8.1f} {gflops} {frac}"


def format_header(result: Result) -> str:
    return (
        f"threads: {result.threads}   plain-read bandwidth (Numba sum of a 512 MB uint16 array): "
        f"{result.read_gbps:.1f} GB/s\n"
        f"{'op':<12} {'impl':<14} {'case':<40} {'median ms':>10} {'best ms':>10} {'GB/s':>8} {'GFLOP/s':>8} {'%read':>6}"
    )


def format_table(result: Result) -> str:
    return "\n".join([format_header(result)] + [format_row(r, result.read_gbps) for r in result.rows])

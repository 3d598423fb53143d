"""Op benchmarks over the case table (ops/cases.py): ms, GB/s, GFLOP/s per (slot, impl, case).

    result = run(ops=["linear"], impls=["numba"], threads=2, repeat=5)
    print(format_table(result))

Used by bench/bench_ops.py and `llama-nb bench ops`. Every implementation is called once untimed
(the JIT compiles, or loads its cache), then `repeat` times; the median is reported.

GB/s counts the bytes an op must move at least once and GFLOP/s its flops, both as the op's
declaration says (llama_nb/ops/specs.py: every array it reads and writes once unless it declares
otherwise: attention only the filled cache rows, embedding only the looked-up rows; multiply-adds
count 2 flops). For linear the weights dominate: a block format's bytes are its blocks (q8_0 1.0625
bytes a weight, q4_k 0.5625, q6_k 0.8203), so its GB/s is the weights it streams. Linear is
benchmarked for bf16 weights (the format of Meta's checkpoints) unless `formats` says otherwise
(block formats on their own cases: K a multiple of their block).

The same run measures the plain-read bandwidth of this machine: a Numba kernel summing a 512 MB
uint16 array (larger than any cache), parallel over rows like the matvec. A matvec reads each weight
once, so that bandwidth is its ceiling, and each linear row shows the fraction of it reached; so
does each decode attention row (T = 1), which reads the filled KV cache once (the 32K-position
cases: 64 MB of float32 cache or 32 MB of bf16 per call, beyond the L3 cache).
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
from llama_nb.formats import Weight, get_format
from llama_nb.ops import registry
from llama_nb.ops.cases import bench_cases, format_case, make_inputs
from llama_nb.ops.jit import njit_parallel

_READ_BYTES = 512 << 20
_COLD_BYTES = 256 << 20  # weights are replicated up to this size so repeats miss the L3 cache


@njit_parallel
def _sum_rows(a):
    # Written like the matvec (ops/matvec.py): prange over blocks of 64 rows, a plain loop inside.
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
    op: str  # the slot's name: "linear[bf16/bf16]", "rope"
    impl: str
    case: dict
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


def bench_case(slot: tuple, impl: str, case: dict, args: tuple, repeat: int) -> Row:
    op, fmt, act = slot
    spec = registry.spec(op)
    fn = registry.get(op, impl, format=fmt, act=act)
    copies = [args]
    index = spec.weight_arg
    if index is not None and args[index].nbytes < _COLD_BYTES:  # rotate through copies: miss the L3 cache
        w = args[index]
        n = min(16, _COLD_BYTES // max(1, w.nbytes))
        fresh = [Weight(w.format, w.shape, w.data.copy(), None if w.scales is None else w.scales.copy()) for _ in range(n - 1)]
        copies += [args[:index] + (c,) + args[index + 1 :] for c in fresh]
    fn(*args)  # compile (or load from the cache); not timed
    times = []
    for i in range(repeat):
        call_args = copies[(i + 1) % len(copies)]  # copies[0] was just warmed into the cache
        t0 = time.perf_counter()
        fn(*call_args)
        times.append(time.perf_counter() - t0)
    nbytes, flops = spec.traffic(case, args)
    return Row(registry.slot_name(slot), impl, case, 1e3 * float(np.median(times)), 1e3 * min(times), nbytes, flops)


def run(
    ops: Iterable[str] | None = None,
    impls: Iterable[str] | None = None,
    threads: int | None = None,
    repeat: int = 5,
    seed: int = 0,
    progress=None,
    read_bytes: int = _READ_BYTES,
    formats: Iterable[str] | None = None,
) -> Result:
    """Benchmark every (slot, impl, case) selected; None selects all ops and impls, bf16 weights.

    `progress(result, row)` is called after each row (result.read_gbps is known by then).
    """
    registry.load_plugins()
    ops = sorted(registry.ops) if ops is None else list(ops)
    for op in ops:
        if op not in registry.ops:
            raise LlamaNbError(f"--op {op!r}: no such op; have: {', '.join(sorted(registry.ops))}")
    wanted_formats = set(formats or ("bf16",))
    slots = [s for op in ops for s in registry.slots(op) if s[1] is None or s[1] in wanted_formats]
    impls = None if impls is None else list(impls)
    if impls is not None:
        known = {name for slot in slots for name in registry.impls[slot]}
        for name in impls:
            if name not in known:
                raise LlamaNbError(f"--impl {name!r}: none of the ops chosen has it; have: {', '.join(sorted(known))}")
    if threads is not None:
        if not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
            raise LlamaNbError(f"--threads {threads}: must be between 1 and {numba.config.NUMBA_NUM_THREADS}")
        numba.set_num_threads(threads)
    result = Result(numba.get_num_threads(), read_bandwidth(nbytes=read_bytes))
    rng = np.random.default_rng(seed)
    for slot in slots:
        chosen = [i for i in sorted(registry.impls[slot]) if impls is None or i in impls]
        fmt = get_format(slot[1]) if slot[1] else None
        for case in bench_cases(slot[0], fmt) if chosen else []:
            args = make_inputs(slot[0], case, rng, fmt)
            for impl in chosen:
                row = bench_case(slot, impl, case, args, repeat)
                result.rows.append(row)
                if progress is not None:
                    progress(result, row)
            del args
    return result


def format_row(row: Row, read_gbps: float) -> str:
    gflops = f"{row.gflops:8.1f}" if row.flops else f"{'-':>8}"
    streams = row.op.startswith("linear") or (row.op.startswith("attention") and row.case.get("T") == 1)
    frac = f"{row.gbps / read_gbps:6.0%}" if streams else f"{'':>6}"
    return f"{row.op:<20} {row.impl:<14} {format_case(row.case):<40} {row.ms:10.3f} {row.best_ms:10.3f} {row.gbps:8.1f} {gflops} {frac}"


def format_header(result: Result) -> str:
    return (
        f"threads: {result.threads}   plain-read bandwidth (Numba sum of a 512 MB uint16 array): "
        f"{result.read_gbps:.1f} GB/s\n"
        f"{'op':<20} {'impl':<14} {'case':<40} {'median ms':>10} {'best ms':>10} {'GB/s':>8} {'GFLOP/s':>8} {'%read':>6}"
    )


def format_table(result: Result) -> str:
    return "\n".join([format_header(result)] + [format_row(r, result.read_gbps) for r in result.rows])

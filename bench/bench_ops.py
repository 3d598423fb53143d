"""Benchmark every op's implementations on the shared case table (llama_nb/ops/cases.py).

    python bench/bench_ops.py [--op linear] [--impl numba] [--format q8_0] [--threads 2] [--repeat 5]

Prints ms (median and best), GB/s, GFLOP/s, and for linear the fraction of the machine's plain-read
bandwidth reached (measured in the same run). The logic lives in llama_nb.ops.benchmark.
"""

from __future__ import annotations

import argparse
import sys

from llama_nb.errors import LlamaNbError
from llama_nb.ops import benchmark


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--op", action="append", help="op to benchmark (repeatable; default: all)")
    parser.add_argument("--impl", action="append", help="implementation (repeatable; default: all)")
    parser.add_argument("--format", action="append", help="weight format (repeatable; default: bf16): q8_0, q4_k, ...")
    parser.add_argument("--threads", type=int, default=None, help="Numba threads (default: Numba's)")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per case (default 5)")
    args = parser.parse_args(argv)

    def progress(result: benchmark.Result, row: benchmark.Row) -> None:
        if len(result.rows) == 1:
            print(benchmark.format_header(result), flush=True)
        print(benchmark.format_row(row, result.read_gbps), flush=True)

    try:
        benchmark.run(args.op, args.impl, args.threads, max(1, args.repeat), progress=progress, formats=args.format)
    except LlamaNbError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

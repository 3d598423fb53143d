"""A/B: `llama-nb bench model` of two checkouts of llama_nb, alternating, in one run.

    python bench/ab.py --old /path/to/old/checkout [--new .] [--shape llama3.2-1b] [-r 5]

Each round runs one repetition of pp128 and tg128 for the old checkout, then for the new one, in
fresh processes (the same Python, PYTHONPATH pointing at each checkout; its Numba cache warmed by
a first untimed round), so both see the same spells of this host's memory bandwidth. Prints, per
shape, the mean tokens/s of each and the ratio new / old with its spread over the rounds, and the
plain-read bandwidth each round measured. Used to show a refactoring changed no speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path


def bench_once(checkout: Path, shape: str, n_prompt: int, n_gen: int, threads: int | None) -> dict:
    cmd = [sys.executable, "-m", "llama_nb", "bench", "model", "--shape", shape, "-p", str(n_prompt), "-n", str(n_gen),
           "-r", "1", "--json"]
    if threads:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ, PYTHONPATH=str(checkout))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=checkout, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"{checkout}: bench model failed: {proc.stderr.strip()[-400:]}")
    data = json.loads(proc.stdout)
    return {t["name"]: (t["avg_ts"], t["read_gbps"][0]) for t in data["tests"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True)
    parser.add_argument("--new", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--shape", action="append", help="default: llama3.2-1b and llama3.1-8b-4layers")
    parser.add_argument("-r", "--rounds", type=int, default=5)
    parser.add_argument("-p", "--n-prompt", type=int, default=128)
    parser.add_argument("-n", "--n-gen", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    shapes = args.shape or ["llama3.2-1b", "llama3.1-8b-4layers"]
    for shape in shapes:
        for checkout in (args.old, args.new):  # warm each checkout's kernel cache; not timed
            bench_once(checkout, shape, 8, 4, args.threads)
        rows: dict[str, dict[str, list[float]]] = {}
        for r in range(args.rounds):
            for label, checkout in (("old", args.old), ("new", args.new)):
                for test, (ts, read) in bench_once(checkout, shape, args.n_prompt, args.n_gen, args.threads).items():
                    rows.setdefault(test, {}).setdefault(label, []).append(ts)
                    rows[test].setdefault(f"read_{label}", []).append(read)
            print(f"{shape} round {r + 1}: " + ", ".join(
                f"{t} old {v['old'][-1]:.2f} new {v['new'][-1]:.2f} (read {v['read_old'][-1]:.0f}/{v['read_new'][-1]:.0f} GB/s)"
                for t, v in rows.items()), flush=True)
        for test, v in rows.items():
            ratios = [n / o for n, o in zip(v["new"], v["old"])]
            spread = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
            print(f"{shape} {test}: old {statistics.mean(v['old']):.2f} tok/s, new {statistics.mean(v['new']):.2f} tok/s, "
                  f"new/old {statistics.mean(ratios):.3f} ± {spread:.3f} (per round: {', '.join(f'{x:.2f}' for x in ratios)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does the default thread count ever decode slower than one thread? With and without a competing
process on one core, in one run, alternating.

    python bench/threads.py [--shape llama3.2-1b] [--demo] [-n 64] [-r 5]

For each model (the built-in demo model and/or a random model of a real shape), one Transformer
decodes n tokens in turns at the default (no --threads: all cores less those another process
keeps busy, ops/cores.py), at a fixed count of all cores (--threads N) and at 1 thread (a model's
thread count applies per pass: llama_nb/model/transformer.py), first on the machine as it is, then
with a busy-loop process pinned to the last core (what "another process holds a core" means).
Prints tokens/s of each and the ratios to 1 thread per condition; the README's claim is that the
default's ratio never falls below 1 (ops/jit.py: PARALLEL_MIN_BYTES keeps small work serial;
ops/cores.py gives a busy core up).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time

import numba


@contextlib.contextmanager
def competitor(active: bool):
    """A process spinning on the last core while active."""
    if not active:
        yield
        return
    core = max(os.sched_getaffinity(0))
    spin = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{core}}})\nwhile True: pass"])
    time.sleep(0.3)
    try:
        yield
    finally:
        spin.kill()
        spin.wait()


def decode_rate(model, n: int) -> float:
    from llama_nb.model.bench import decode

    t0 = time.perf_counter()
    decode(model, 1, n)
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    from llama_nb.demo import demo_model_dir
    from llama_nb.io.pth_write import ensure_shape_model
    from llama_nb.model.bench import load_transformer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", action="append", default=[], help="e.g. llama3.2-1b (repeatable)")
    parser.add_argument("--demo", action="store_true", help="the built-in demo model (default when no --shape)")
    parser.add_argument("-n", "--n-gen", type=int, default=64)
    parser.add_argument("-r", "--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    models = ([("demo", demo_model_dir())] if args.demo or not args.shape else []) + [
        (s, ensure_shape_model(s)) for s in args.shape]
    default = numba.config.NUMBA_NUM_THREADS
    print(f"default threads: {default}; cores: {os.cpu_count()}; load average now: {os.getloadavg()[0]:.2f}")
    for name, folder in models:
        model = load_transformer(folder, ctx=args.n_gen + 1, max_batch=8)
        model.warmup()
        runs = {"default": (default, True), f"{default} threads": (default, False), "1 thread": (1, False)}
        for busy in (False, True):
            rates: dict[str, list[float]] = {run: [] for run in runs}
            with competitor(busy):
                for _ in range(args.rounds):
                    for run, (threads, auto) in runs.items():
                        model.threads, model.auto_threads = threads, auto
                        rates[run].append(decode_rate(model, args.n_gen))
            line = [f"{name:<18} {'competing process on one core' if busy else 'machine as it is':<30}"]
            for run in runs:
                ratios = [a / b for a, b in zip(rates[run], rates["1 thread"])]
                line.append(f"{run} {statistics.mean(rates[run]):7.1f} tok/s" + (
                    "" if run == "1 thread" else f" ({statistics.mean(ratios):.2f}x, min {min(ratios):.2f})"))
            print("   ".join(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fuzz the model-folder readers for as long as you like: every case loads or is refused cleanly.

    python bench/fuzz.py --cases 20000 --seed 7          # 2 worker processes, 30 s per case
    python bench/fuzz.py --seed 7 --case 1234            # replay one case here, verbosely
    python bench/fuzz.py --seed 7 --case 1234 --keep /tmp/case1234   # and keep its folder
    python bench/fuzz.py --format hf --cases 5000        # a Hugging Face folder (safetensors, config.json, ...)
    python bench/fuzz.py --format gguf --cases 20000     # a GGUF file (tests/fuzz_gguf.py's mutations)

The mutations and the contract are tests/fuzzing.py's (tests/test_fuzz.py runs 300 of them in CI).
Cases run in worker subprocesses fed one case at a time, so a case that kills its interpreter
(a segfault, an abort, the OOM killer) is reported as "crash" with the signal, and a case with no
answer within --timeout is killed and reported as "hang"; the worker is replaced and the run
goes on. Exit status 1 if any case was a bug, a crash or a hang.
"""

from __future__ import annotations

import argparse
import collections
import json
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WARMUP_SECONDS = 600
sys.path.insert(0, str(ROOT))  # `tests` is a package at the repository root

from tests import fuzzing  # noqa: E402


def worker(base_dir: Path, seed: int, workdir: Path, fmt: str) -> None:
    """Read case numbers from stdin, answer one JSON line per case on stdout."""
    base = {name: (base_dir / name).read_bytes() for name in fuzzing.FORMATS[fmt][1]}
    fuzzing.warm_up(base_dir)  # compile the kernels now: that time is not any case's
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        case = int(line)
        try:
            result = fuzzing.run_format_case(fmt, base, seed, case, workdir)
            answer = {"case": case, "outcome": result.outcome, "mutations": result.mutations,
                      "detail": result.detail[:300], "seconds": round(result.seconds, 4)}
        except fuzzing.FuzzFailure as exc:
            answer = {"case": case, "outcome": "bug", "detail": str(exc)}
        print(json.dumps(answer), flush=True)


class Slot:
    """One worker subprocess and the thread that reads its answers."""

    def __init__(self, base_dir: Path, seed: int, workdir: Path, fmt: str):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", "--base", str(base_dir), "--seed", str(seed), "--workdir", str(workdir),
             "--format", fmt],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
        )
        self.answers: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        try:  # the warm-up compiles every kernel (or loads Numba's cache): minutes at worst
            ready = self.answers.get(timeout=WARMUP_SECONDS)
        except queue.Empty:
            ready = None
        if not ready:
            self.proc.kill()
            raise RuntimeError("a fuzz worker failed to load the valid base model")

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.answers.put(json.loads(line))
        self.answers.put(None)  # the worker is gone

    def ask(self, case: int, timeout: float) -> dict:
        try:
            self.proc.stdin.write(f"{case}\n")
            self.proc.stdin.flush()
            answer = self.answers.get(timeout=timeout)
        except BrokenPipeError:
            answer = None
        except queue.Empty:
            self.proc.kill()
            self.proc.wait()
            return {"case": case, "outcome": "hang", "detail": f"no answer in {timeout} s"}
        if answer is None:
            code = self.proc.wait()
            return {"case": case, "outcome": "crash", "detail": f"worker exited with {code}"}
        return answer

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.alive():
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def fuzz(cases: range, seed: int, workers: int, timeout: float, fmt: str = "meta") -> collections.Counter:
    work = queue.Queue()
    for case in cases:
        work.put(case)
    results: list[dict] = []
    lock = threading.Lock()
    tmp = Path(tempfile.mkdtemp(prefix="llama_nb_fuzz_"))
    base_dir = fuzzing.FORMATS[fmt][0](tmp / "base")
    started = time.perf_counter()

    def run_slot(k: int) -> None:
        try:
            slot = Slot(base_dir, seed, tmp / f"w{k}", fmt)
        except RuntimeError as exc:
            print(f"worker {k}: {exc}", flush=True)
            return
        while True:
            try:
                case = work.get_nowait()
            except queue.Empty:
                break
            answer = slot.ask(case, timeout)
            with lock:
                results.append(answer)
                done = len(results)
                if answer["outcome"] not in ("loaded", "refused"):
                    print(f"case {case}: {answer['outcome'].upper()}: {answer['detail']}", flush=True)
                if done % 500 == 0:
                    print(f"{done}/{len(cases)} cases, {time.perf_counter() - started:.0f} s", flush=True)
            if not slot.alive():
                try:
                    slot = Slot(base_dir, seed, tmp / f"w{k}", fmt)
                except RuntimeError as exc:
                    print(f"worker {k}: {exc}", flush=True)
                    return
        slot.close()

    threads = [threading.Thread(target=run_slot, args=(k,)) for k in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.perf_counter() - started
    counts = collections.Counter(r["outcome"] for r in results)
    kinds = collections.Counter((what.split(":")[0], r["outcome"]) for r in results for what in r.get("mutations", []))
    print(f"\n{len(results)} cases (seed {seed}) in {elapsed:.1f} s = {len(results) / elapsed:.0f} cases/s, "
          f"{workers} workers")
    for outcome in ("loaded", "refused", "bug", "crash", "hang"):
        print(f"  {outcome:8s} {counts[outcome]}")
    print("by mutation: " + ", ".join(f"{k} {o} {n}" for (k, o), n in sorted(kinds.items())))
    if len(results) < len(cases):
        print(f"  not run  {len(cases) - len(results)} (no worker left)")
        counts["not run"] = len(cases) - len(results)
    failures = sorted(r["case"] for r in results if r["outcome"] not in ("loaded", "refused"))
    if failures:
        print(f"replay: python bench/fuzz.py --seed {seed} --case {failures[0]}   (failed: {failures[:20]})")
    return counts


def replay(seed: int, case: int, keep: Path | None, fmt: str = "meta") -> int:
    tmp = Path(tempfile.mkdtemp(prefix="llama_nb_fuzz_"))
    write, names = fuzzing.FORMATS[fmt]
    write(tmp / "base")
    base = {name: (tmp / "base" / name).read_bytes() for name in names}
    workdir = keep.parent if keep else tmp
    try:
        with fuzzing.time_limit(120):
            result = fuzzing.run_format_case(fmt, base, seed, case, workdir)
    except fuzzing.FuzzFailure as exc:
        print(f"BUG: {exc}")
        return 1
    finally:
        if keep and fmt != "gguf":  # run_case removes a passing case's folder: write it again where asked
            files, _ = fuzzing.mutate(base, random.Random(f"{seed}:{case}"), keep / fuzzing.MARKER)
            keep.mkdir(parents=True, exist_ok=True)
            fuzzing.write_folder(keep, files)
            print(f"folder kept in {keep}")
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"case {case}: {'; '.join(result.mutations)}\n{result.outcome}: {result.detail} ({result.seconds:.3f} s)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=1000, help="number of cases")
    parser.add_argument("--start", type=int, default=0, help="first case number")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--workers", type=int, default=2, help="worker subprocesses")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before a case counts as a hang")
    parser.add_argument("--case", type=int, help="replay this one case in this process")
    parser.add_argument("--keep", type=Path, help="with --case: write the mutated folder here")
    parser.add_argument("--format", choices=sorted(fuzzing.FORMATS), default="meta",
                        help="the base: Meta's folder (.pth), Hugging Face's (safetensors) or a GGUF file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.base, args.seed, args.workdir, args.format)
        return 0
    if args.case is not None:
        return replay(args.seed, args.case, args.keep, args.format)
    counts = fuzz(range(args.start, args.start + args.cases), args.seed, args.workers, args.timeout, args.format)
    return 1 if counts["bug"] + counts["crash"] + counts["hang"] + counts["not run"] else 0


if __name__ == "__main__":
    sys.exit(main())

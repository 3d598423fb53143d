"""`llama-nb serve` under load: aggregate decode tokens/s with 1 and with N concurrent streams, and the
time to the first token, measured by real HTTP clients.

    python bench/serve.py                                   # the demo model and the Llama 3.2 1B shape
    python bench/serve.py --shape llama3.2-1b -n 64 -r 3 --threads 2 --streams 1,4
    python bench/serve.py --model DIR --ranks 2             # a model-parallel folder, mpirun -n 2 llama-nb serve

For each model, one `llama-nb serve --parallel max(streams)` subprocess on 127.0.0.1; then rounds,
alternating the stream counts (the host's memory bandwidth moves from one minute to the next, so
the configurations are compared within the same spells). In a round with k streams, k client
threads each POST a streamed /v1/completions at once (httpx; a prompt of P fresh random token ids,
so no prefix reuse; n tokens, greedy, ignore_eos so random weights do not stop early) and record
when the request went out, when the first text arrived and when the last did, and the usage.
    TTFT          first text - request sent (includes waiting for the other prompts' chunks)
    decode tok/s  aggregate: sum over streams of (tokens - 1) / (last text of any stream - first
                  text of the last stream to start): the span in which all k streams decode
    overall tok/s sum of tokens / (last text of any stream - first request sent): prefill included
    ratio         decode tok/s with k streams / with 1 (the target: >= 3 for 4 streams on the 1B)
On a tiny model (the demo) a step is mostly Python, and the engine thread and the HTTP thread
share the GIL: text then reaches the clients in bursts and the decode span is noisy; overall
tok/s is the steadier number there.
After the warm-up, the CPU each of the server's processes uses in IDLE_SECONDS with no request
(with --ranks: every rank; rank 0 serves, the others wait for its next pass) is printed: ~0%.
The 1B shape is `llama-nb bench model --shape`'s random model (written once, 2.5 GB) with Meta's
Llama 3 tokenizer (the llama-models test dependency), linked into a temporary folder: the
server needs a tokenizer, the benchmark sends token ids.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
URL = re.compile(r"at (http://127\.0\.0\.1:\d+)/v1")
MARK = "LLAMA_NB_BENCH_SERVER"  # set in the server's environment: how its ranks are found in /proc
IDLE_SECONDS = 3.0


def model_folder(name: str, tmp: Path) -> Path:
    if name == "demo":
        from llama_nb.demo import demo_model_dir

        return demo_model_dir()
    import llama_models.llama3

    from llama_nb.io.pth_write import ensure_shape_model

    shape = ensure_shape_model(name)
    folder = tmp / name
    folder.mkdir()
    for f in ("consolidated.00.pth", "params.json"):
        (folder / f).symlink_to(shape / f)
    (folder / "tokenizer.model").symlink_to(Path(llama_models.llama3.__file__).parent / "tokenizer.model")
    return folder


def start_server(folder: Path, parallel: int, threads: int | None, ctx: int,
                 ranks: int = 1) -> tuple[subprocess.Popen, str]:
    launcher = [str(Path(sys.executable).parent / "mpirun"), "-n", str(ranks)] if ranks > 1 else []
    argv = launcher + [sys.executable, "-m", "llama_nb", "serve", "--model", str(folder), "--port", "0", "--parallel",
                       str(parallel), "--ctx", str(ctx)] + (["--threads", str(threads)] if threads else [])
    proc = subprocess.Popen(argv, cwd=ROOT, text=True, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT), MARK: str(os.getpid())})
    for line in proc.stderr:
        m = URL.search(line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, m.group(1)
    raise SystemExit(f"the server did not start ({folder})")


def server_ranks() -> dict[int, int]:
    """rank -> pid of this benchmark's server processes (rank 0 alone without mpirun)."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # not a process, or gone
            continue
        if f"{MARK}={os.getpid()}".encode() in environ and b"llama_nb" in (entry / "cmdline").read_bytes():
            rank = [v.split(b"=")[1] for v in environ if v.startswith(b"PMI_RANK=")]
            found[int(rank[0]) if rank else 0] = int(entry.name)
    return found


def idle_cpu(seconds: float = IDLE_SECONDS) -> dict[int, float]:
    """rank -> the share of one core each server process used in `seconds` without requests."""
    def cpu(pid: int) -> float:  # utime + stime (fields 14 and 15 of /proc/PID/stat), in seconds
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    pids = server_ranks()
    before, t0 = {r: cpu(pid) for r, pid in pids.items()}, time.perf_counter()
    time.sleep(seconds)
    return {r: (cpu(pid) - before[r]) / (time.perf_counter() - t0) for r, pid in sorted(pids.items())}


def one_stream(base: str, prompt: list[int], n: int, out: dict) -> None:
    body = {"prompt": prompt, "max_tokens": n, "temperature": 0, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    out["sent"] = time.perf_counter()
    with httpx.Client(timeout=600) as http, http.stream("POST", base + "/v1/completions", json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["text"]:
                out.setdefault("first", time.perf_counter())
                out["last"] = time.perf_counter()
            if chunk.get("usage"):
                out["tokens"] = chunk["usage"]["completion_tokens"]


def round_of(base: str, k: int, n: int, prompt_len: int, vocab: int, rng) -> dict:
    results = [{} for _ in range(k)]
    threads = [threading.Thread(target=one_stream, args=(base, rng.integers(0, vocab, prompt_len).tolist(), n, r))
               for r in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    span = max(r["last"] for r in results) - max(r["first"] for r in results)
    wall = max(r["last"] for r in results) - min(r["sent"] for r in results)
    return {"decode_tps": sum(r["tokens"] - 1 for r in results) / span if span > 0 else float("nan"),
            "overall_tps": sum(r["tokens"] for r in results) / wall,
            "ttft": statistics.mean(r["first"] - r["sent"] for r in results),
            "tokens": [r["tokens"] for r in results]}


def bench(name: str, folder: Path, streams: list[int], n: int, prompt_len: int, rounds: int, threads: int | None,
          ranks: int = 1) -> None:
    vocab = min(json.loads((folder / "params.json").read_text())["vocab_size"], 4096)  # ordinary tokens in every model here
    proc, base = start_server(folder, max(streams), threads, ctx=prompt_len + n + 8, ranks=ranks)
    rng = np.random.default_rng(0)
    try:
        round_of(base, max(streams), 4, prompt_len, vocab, rng)  # warm-up: first passes, pages of the weights
        time.sleep(0.5)  # the last pass's clients are served; the other ranks settle into their idle wait
        idle = idle_cpu()
        runs: dict[int, list[dict]] = {k: [] for k in streams}
        for _ in range(rounds):
            for k in streams:
                runs[k].append(round_of(base, k, n, prompt_len, vocab, rng))
    finally:
        proc.send_signal(15)  # SIGTERM: mpirun passes it on without a note of its own
        proc.wait(timeout=60)
    one = statistics.mean(r["decode_tps"] for r in runs[streams[0]])
    print(f"\n{name}: prompt {prompt_len} tokens, {n} generated per stream, {rounds} rounds, threads {threads or 'all'}"
          + (f", {ranks} ranks (mpirun)" if ranks > 1 else ""))
    print(f"idle CPU over {IDLE_SECONDS:.0f} s with no request: "
          + ", ".join(f"rank {r} {share:.1%}" for r, share in idle.items()))
    overall_one = statistics.mean(r["overall_tps"] for r in runs[streams[0]])
    print(f"{'streams':>8} {'decode tok/s':>14} {'sd':>7} {'x of ' + str(streams[0]):>8} {'overall tok/s':>14} "
          f"{'x of ' + str(streams[0]):>8} {'TTFT ms':>9}")
    for k in streams:
        tps = [r["decode_tps"] for r in runs[k]]
        overall = statistics.mean(r["overall_tps"] for r in runs[k])
        sd = statistics.stdev(tps) if len(tps) > 1 else 0.0
        ttft = statistics.mean(r["ttft"] for r in runs[k]) * 1e3
        print(f"{k:>8} {statistics.mean(tps):>14.2f} {sd:>7.2f} {statistics.mean(tps) / one:>8.2f} {overall:>14.2f} "
              f"{overall / overall_one:>8.2f} {ttft:>9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", action="append", default=[], help="a `bench model --shape` name (repeatable)")
    parser.add_argument("--demo", action="store_true", help="the built-in demo model (default with no --shape)")
    parser.add_argument("--streams", default="1,4", help="concurrent stream counts, the first is the baseline")
    parser.add_argument("-n", type=int, default=64, help="tokens generated per stream")
    parser.add_argument("-p", type=int, default=32, help="prompt tokens per stream")
    parser.add_argument("-r", type=int, default=3, help="rounds")
    parser.add_argument("--threads", type=int, default=None, help="the server's --threads (default: all cores)")
    parser.add_argument("--model", action="append", default=[], type=Path, help="a model folder (repeatable)")
    parser.add_argument("--ranks", type=int, default=1, help="serve under mpirun -n RANKS (--model: a folder of "
                        "RANKS shards or a multiple)")
    args = parser.parse_args()
    streams = [int(s) for s in args.streams.split(",")]
    names = (["demo"] if args.demo or not (args.shape or args.model) else []) + args.shape
    if not (args.shape or args.model or args.demo):
        names.append("llama3.2-1b")
    with tempfile.TemporaryDirectory() as tmp:
        folders = [(name, model_folder(name, Path(tmp))) for name in names] + [(str(m), m) for m in args.model]
        for name, folder in folders:
            bench(name, folder, streams, args.n, args.p, args.r, args.threads, args.ranks)


if __name__ == "__main__":
    main()

"""The host's bandwidth spells, and who keeps up in which: the plain read, llama_nb's decode matvec and
both engines' bf16 decode, sampled together for minutes, at 1 and 2 threads.

    PYTHONPATH=.:/work/benchenv/lib/python3.11/site-packages python bench/spells.py --minutes 5
    python bench/spells.py --shape llama3.2-1b --minutes 3 --threads 1,2 --tokens 8

Issue 12 asks why llama_nb's bf16 decode falls behind llama.cpp on some days. Its memory is not
one speed: it flips between spells of about 35-45 and 55-70 GB/s, seconds to minutes long. So
every sample here measures, within a second or two, at one thread count:
    plain   the plain-read probe (ops/benchmark.py: a Numba sum of 512 MB, best of 3)
    matvec  llama_nb's decode product alone (the registered linear op, 1 token, bf16 weights of
            4096 x 14336, the 8B's w1), rotating through copies of 512 MB in all, so every call
            reads its weights from memory; best of 5
    nb      llama_nb decoding `--tokens` tokens of the shape's random model (bench/compare.py's
            engine): GB/s = weight bytes read per token x tokens/s
    cpp     llama.cpp decoding as many from the same weights as a bf16 GGUF (compare.py's file)
The two engines alternate which goes first. Each line prints the four rates and the ratios;
at the end, medians per thread count and spell (a sample is "fast" when its plain read is above
the median of all samples at that thread count, else "slow").
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import GGUF_NAME, LlamaCpp, LlamaNb, PlainRead, write_gguf  # noqa: E402

from llama_nb.io.pth_write import ensure_shape_model  # noqa: E402

MATVEC_SHAPE = (14336, 4096)  # N x K: the 8B's w1
COLD_BYTES = 512 << 20  # the matvec's copies in all: far beyond the L3 cache


class Matvec:
    """The registered bf16 linear op at T = 1 over rotating copies of one random weight."""

    def __init__(self):
        from llama_nb.formats import Weight, get_format
        from llama_nb.ops.opset import OpSet

        rng = np.random.default_rng(0)
        n, k = MATVEC_SHAPE
        bits = (rng.standard_normal((n, k), np.float32).view(np.uint32) >> 16).astype(np.uint16)
        copies = max(2, COLD_BYTES // bits.nbytes)
        self.weights = [Weight(get_format("bf16"), (n, k), bits.copy()) for _ in range(copies)]
        self.ops = OpSet.from_spec(None)
        self.x = rng.standard_normal((1, k), np.float32)
        self.out = np.zeros((1, n), np.float32)
        self.xq = np.zeros(4 * k, np.uint8)
        self.turn = 0

    def gbps(self, threads: int) -> float:
        from llama_nb.ops.jit import threads as using_threads

        best = float("inf")
        with using_threads(threads):
            for _ in range(6):
                w = self.weights[self.turn % len(self.weights)]
                self.turn += 1
                t0 = time.perf_counter()
                self.ops.linear(self.out, self.x, w, self.xq)
                best = min(best, time.perf_counter() - t0)
        return self.weights[0].nbytes / best / 1e9


def weight_bytes_per_token(model) -> int:
    """Bytes of weights one decode step reads: every matrix (Weights.matrices) and an embedding row."""
    w = model.weights
    return sum(m.nbytes for m in w.matrices()) + w.tok_embeddings.nbytes // model.args.vocab_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llama3.2-1b")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--tokens", type=int, default=8, help="decode tokens per engine per sample")
    args = parser.parse_args(argv)
    thread_counts = [int(t) for t in args.threads.split(",")]

    folder = ensure_shape_model(args.shape)
    gguf_path = folder / GGUF_NAME
    if not gguf_path.is_file():
        write_gguf(folder, gguf_path)
    ctx = 2048
    engines = {t: (LlamaNb(folder, ctx, t), LlamaCpp(gguf_path, ctx, t)) for t in thread_counts}
    probes = {t: PlainRead(t) for t in thread_counts}
    matvec = Matvec()
    per_token = weight_bytes_per_token(engines[thread_counts[0]][0].model)
    print(f"{args.shape}: {per_token / 1e9:.2f} GB of weights per decode token; matvec {MATVEC_SHAPE[0]}x{MATVEC_SHAPE[1]} bf16")

    positions = {t: 0 for t in thread_counts}
    samples: list[dict] = []
    end = time.monotonic() + 60 * args.minutes
    while time.monotonic() < end:
        for t in thread_counts:
            nb, cpp = engines[t]
            pos = positions[t]
            if pos + args.tokens + 1 >= ctx:
                pos = 0
            if pos == 0:  # a fresh sequence: one token of prompt, untimed
                nb.prefill(np.array([1], np.int64))
                cpp.prefill(np.array([1], np.int64))
                pos = 1
            row = {"t": t, "at": time.strftime("%H:%M:%S"), "plain": probes[t].gbps(), "matvec": matvec.gbps(t)}
            order = (nb, cpp) if len(samples) % 2 == 0 else (cpp, nb)
            for engine in order:
                time.sleep(0.005)  # the other engine's workers go idle
                t0 = time.perf_counter()
                engine.decode(7, args.tokens, pos)
                row[engine.name] = per_token * args.tokens / (time.perf_counter() - t0) / 1e9
            positions[t] = pos + args.tokens
            row["plain"] = (row["plain"] + probes[t].gbps()) / 2  # around the sample
            samples.append(row)
            print(f"{row['at']} threads {t}: plain {row['plain']:5.1f}  matvec {row['matvec']:5.1f}  "
                  f"llama_nb {row['llama_nb']:5.1f}  llama.cpp {row['llama.cpp']:5.1f} GB/s   "
                  f"nb/cpp {row['llama_nb'] / row['llama.cpp']:.3f}  matvec/plain {row['matvec'] / row['plain']:.2f}  "
                  f"nb/plain {row['llama_nb'] / row['plain']:.2f}  cpp/plain {row['llama.cpp'] / row['plain']:.2f}", flush=True)

    print("\nmedians per thread count and spell (fast: plain read above the thread count's median):")
    for t in thread_counts:
        mine = [s for s in samples if s["t"] == t]
        cut = statistics.median(s["plain"] for s in mine)
        for spell, rows in (("slow", [s for s in mine if s["plain"] <= cut]), ("fast", [s for s in mine if s["plain"] > cut])):
            if not rows:
                continue
            med = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
            ratio = statistics.median(r["llama_nb"] / r["llama.cpp"] for r in rows)
            print(f"  threads {t} {spell} ({len(rows)} samples, plain {med('plain'):.1f} GB/s): matvec {med('matvec'):.1f}, "
                  f"llama_nb {med('llama_nb'):.1f}, llama.cpp {med('llama.cpp'):.1f} GB/s; llama_nb / llama.cpp {ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

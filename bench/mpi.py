"""2 MPI ranks x 1 thread against 1 process x 2 threads: decode of the 8B-width shape cut in 2.

    python bench/mpi.py [--shape llama3.1-8b-4layers] [-n 32] [-r 3] [--ranks 2]

The random model of `--shape` (llama-nb bench model --shape writes it once) is cut into `--ranks`
shards in Meta's model-parallel layout (io/shards.py: rows of wq, wk, wv, w1, w3, output and
tok_embeddings; columns of wo and w2; norms copied), once, next to it. Then, alternating round by
round (the host's bandwidth drifts), `llama-nb bench model -p 0 -n N -r R --json` runs on
  A: mpirun -n RANKS, 1 thread per rank, over the shards
  B: one process, RANKS threads, over the single file
and prints tokens/s of each, the ratio A / B per round (target >= 0.85) and the collective share
of each decode step on the ranks (all-reduces and the logits' all-gather, rank 0's clock).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).parent


def cut(folder: Path, out: Path, n: int) -> Path:
    """folder's single-file checkpoint as n model-parallel shards in `out` (once)."""
    from llama_nb.io.checkpoint import load_model_files
    from llama_nb.io.pth_write import save_pth
    from llama_nb.io.shards import split_dim
    from llama_nb.model.parallel import part_of

    if (out / f"consolidated.{n - 1:02d}.pth").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    files = load_model_files(folder, require_tokenizer=False)
    args, tensors = files.args, files.checkpoint.tensors
    for rank in range(n):
        part, hd = part_of(args, rank, n), args.head_dim
        kv_lo = rank * args.n_kv_heads // n  # its query heads' first kv head (repeated when n > n_kv_heads)

        def piece(name: str, t: np.ndarray) -> np.ndarray:
            dim = split_dim(name)
            if dim is None:
                return t
            if name.endswith(("wk.weight", "wv.weight")):
                return t[kv_lo * hd : (kv_lo + part.n_kv_heads) * hd]
            step = t.shape[dim] // n
            return np.ascontiguousarray(t[rank * step : (rank + 1) * step] if dim == 0 else t[:, rank * step : (rank + 1) * step])

        save_pth(out / f"consolidated.{rank:02d}.pth", ((k, piece(k, t)) for k, t in tensors.items()))
    (out / "params.json").write_bytes((folder / "params.json").read_bytes())
    return out


def bench(cmd: list[str], env: dict) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llama3.1-8b-4layers")
    parser.add_argument("-n", type=int, default=32, help="decode tokens per run")
    parser.add_argument("-r", type=int, default=3, help="repetitions per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ranks", type=int, default=2)
    a = parser.parse_args()
    from llama_nb.io.pth_write import ensure_shape_model

    single = ensure_shape_model(a.shape)
    sharded = cut(single, single.parent / f"{a.shape}-mp{a.ranks}", a.ranks)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    common = ["-m", "llama_nb", "bench", "model", "-p", "0", "-n", str(a.n), "-r", str(a.r), "--json"]
    ranks_cmd = [str(BIN / "mpirun"), "-n", str(a.ranks), sys.executable, *common, "--model", str(sharded), "-t", "1"]
    one_cmd = [sys.executable, *common, "--model", str(single), "-t", str(a.ranks)]
    ratios = []
    for round_ in range(a.rounds):
        runs = [("ranks", ranks_cmd), ("one", one_cmd)][:: 1 if round_ % 2 == 0 else -1]
        got = {name: bench(cmd, env) for name, cmd in runs}
        ts = {name: got[name]["tests"][-1]["avg_ts"] for name in got}
        share = got["ranks"]["collective_seconds_per_token"] * ts["ranks"]
        ratios.append(ts["ranks"] / ts["one"])
        print(f"round {round_ + 1}: {a.ranks} ranks x 1 thread {ts['ranks']:.2f} tok/s "
              f"(weights {got['ranks']['weights_bytes'] / 1e9:.2f} GB per rank, collectives "
              f"{got['ranks']['collective_seconds_per_token'] * 1e3:.2f} ms = {share:.1%} of each step); "
              f"1 process x {a.ranks} threads {ts['one']:.2f} tok/s; ratio {ratios[-1]:.3f}", flush=True)
    print(f"ratio ranks / one process: median {statistics.median(ratios):.3f} (target >= 0.85)")


if __name__ == "__main__":
    main()

"""The roofline figure of docs/14-performance.md: the arithmetic intensity (flops per byte moved)
of each op of Llama 3.1 8B, computed from the op declarations (llama_nb/ops/specs.py: each op's
`flops` and bytes, the numbers `llama-nb bench ops` divides by), under the two ceilings of a
2-core machine: its memory bandwidth and its bf16 arithmetic. The measured points are recorded
numbers (README.md, "Performance", 2026-11-27), not timed here.

    python docs/figures/roofline.py [OUT_DIR]     writes roofline.svg

`traffic(op, dims)` counts an op's bytes and flops for any dims without allocating its arguments
(the 8B's output matrix alone is 1 GB): the declarations' byte counts read only the arguments'
`nbytes` and `itemsize`, so stand-ins that have just those are enough. docs/figures/decode_timeline.py
uses it too.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed
matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: a small file
matplotlib.rcParams["svg.hashsalt"] = "llama_nb"  # fixed element ids: the same figure gives the same file
import matplotlib.pyplot as plt  # noqa: E402

import llama_nb.ops  # noqa: E402,F401  (registers every op)
from llama_nb.formats import get_format  # noqa: E402
from llama_nb.ops import registry  # noqa: E402
from llama_nb.ops.signature import PARAM, WEIGHT, evaluate  # noqa: E402

# Recorded on a 2-core AMD EPYC VM (AVX-512, AVX512_BF16), 2 threads, 2026-11-27 (README.md,
# "Performance": `llama-nb bench ops` and `llama-nb bench model`); not measured by this script.
RECORDED_DATE = "2026-11-27"
READ_GBPS = 44.3  # plain read of 512 MB (the bench's probe), the same run as the points below
BF16_PEAK_GFLOPS = 940.0  # the vdpbf16ps dot product's peak on 2 cores, as the README gives it
# (label, op, dims, GB/s or None, GFLOP/s or None): what the kernels reached in that run
RECORDED = [
    ("decode wq, 1x4096x4096", "linear", dict(T=1, K=4096, N=4096), 44.3, None),
    ("decode w1, 1x4096x14336", "linear", dict(T=1, K=4096, N=14336), 46.0, None),
    ("decode w2, 1x14336x4096", "linear", dict(T=1, K=14336, N=4096), 47.5, None),
    ("decode attention, f32 cache, 4K positions", "attention",
     dict(T=1, H=32, KVH=8, Dh=128, S=4096, start_pos=4095), 48.5, None),
]
PREFILL_RECORDED = (550.0, 685.0)  # GFLOP/s of the prefill matmul on 128-token shapes


class _Sized:
    """An argument as the byte counts of OpSpec.traffic see it: its size, and its element's."""

    def __init__(self, nbytes: int, itemsize: int):
        self.nbytes, self.itemsize = nbytes, itemsize


def traffic(op: str, dims: dict, fmt: str = "bf16") -> tuple[int, float]:
    """(bytes moved at least once, flops) of one call of `op` on arguments of these dims, weights
    in `fmt`: OpSpec.traffic, as `llama-nb bench ops` counts them, with nothing allocated."""
    spec = registry.spec(op)
    full = spec.full_dims(dims)
    args = []
    for arg in spec.args:
        if arg.role == PARAM:
            args.append(full.get(arg.name, 0))
            continue
        shape = tuple(evaluate(d, full) for d in arg.dims)
        if arg.role == WEIGHT:
            weight_format = get_format(fmt)
            data = weight_format.data_shape(*shape)
            args.append(_Sized(math.prod(data) * weight_format.dtype.itemsize, weight_format.dtype.itemsize))
        else:
            args.append(_Sized(math.prod(shape) * arg.dtype.itemsize, arg.dtype.itemsize))
    return spec.traffic(dims, args)


def intensity(op: str, dims: dict, fmt: str = "bf16") -> float:
    nbytes, flops = traffic(op, dims, fmt)
    return flops / nbytes


# The ops of Llama 3.1 8B that do arithmetic (the others declare 0 flops: embedding, rmsnorm, rope,
# silu, softmax, argmax move bytes only), decode (T = 1) and a prefill chunk of 256 tokens.
POINTS = [
    ("linear, decode (any of wq..w2, output)", "linear", dict(T=1, K=4096, N=14336), "o"),
    ("linear, prefill 128 tokens", "linear", dict(T=128, K=4096, N=14336), "s"),
    ("linear, prefill 256 tokens", "linear", dict(T=256, K=4096, N=14336), "s"),
    ("attention, bf16 cache, decode", "attention_bf16kv", dict(T=1, H=32, KVH=8, Dh=128, S=4096, start_pos=4095), "^"),
    ("attention, bf16 cache, prefill 256 at 0", "attention_bf16kv", dict(T=256, H=32, KVH=8, Dh=128, S=256, start_pos=0), "v"),
]


def main(out_dir: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 5))
    x = [0.1, 1000.0]
    ridge = BF16_PEAK_GFLOPS / READ_GBPS
    ax.loglog([x[0], ridge, x[1]], [READ_GBPS * x[0], BF16_PEAK_GFLOPS, BF16_PEAK_GFLOPS], color="black", lw=2)
    ax.text(0.3, 3.0, f"memory bound:\n{READ_GBPS} GB/s x intensity", fontsize=8)
    ax.axvline(ridge, color="grey", lw=0.8, ls=":")
    ax.text(ridge * 1.08, 1.3, f"ridge: {ridge:.0f} flop/B", fontsize=8, color="grey")
    ax.text(ridge * 1.3, BF16_PEAK_GFLOPS * 1.12, f"bf16 dot product: ~{BF16_PEAK_GFLOPS:.0f} GFLOP/s", fontsize=8)
    for label, op, dims, marker in POINTS:
        ai = intensity(op, dims)
        ax.loglog([ai], [min(BF16_PEAK_GFLOPS, READ_GBPS * ai)], marker, ms=9, mfc="none", mew=1.5,
                  label=f"{label}: {ai:.2f} flop/B")
    for label, op, dims, gbps, _ in RECORDED:
        ai = intensity(op, dims, "bf16")
        ax.loglog([ai], [gbps * ai], "x", color="#cc0000", ms=7)
    prefill_ai = intensity("linear", dict(T=128, K=4096, N=14336))
    ax.plot([prefill_ai, prefill_ai], PREFILL_RECORDED, color="#cc0000", lw=3)
    ax.plot([], [], "x", color="#cc0000", label=f"measured, recorded {RECORDED_DATE} (README)")
    ax.text(0.12, 600, "0 flops declared (memory only):\nembedding, rmsnorm, rope,\nsilu, softmax, argmax",
            fontsize=8, va="top", color="#555555")
    ax.set_xlim(*x)
    ax.set_ylim(1, 3000)
    ax.set_xlabel("arithmetic intensity: flops / bytes moved (Llama 3.1 8B shapes, from ops/specs.py)")
    ax.set_ylabel("GFLOP/s")
    ax.set_title(f"Roofline of a 2-core machine (recorded {RECORDED_DATE}) and the 8B's ops")
    ax.legend(fontsize=7.5, loc="lower right")
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    out = out_dir / "roofline.svg"
    fig.savefig(out, metadata={"Date": None})  # no timestamp: the same figure gives the same file
    return out


if __name__ == "__main__":
    print(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent))

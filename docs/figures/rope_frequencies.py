"""The figure of docs/06-rope.md: RoPE's rotation frequencies, plain and with Llama 3.1's and
3.2's scaling (factor 8 and 32), as llama_nb computes them (llama_nb/ops/rope_tables.py).

    python docs/figures/rope_frequencies.py [OUT_DIR]     writes rope_frequencies.svg
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed
matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: a small file
matplotlib.rcParams["svg.hashsalt"] = "llama_nb"  # fixed element ids: the same figure gives the same file
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from llama_nb.io.params import RopeScaling  # noqa: E402
from llama_nb.ops.rope_tables import rope_frequencies  # noqa: E402


def main(out_dir: Path) -> Path:
    head_dim, theta = 128, 500000.0
    pairs = np.arange(head_dim // 2)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for label, scaling, style in [("no scaling (Llama 3)", None, "-"),
                                  ("factor 8 (Llama 3.1)", RopeScaling(), "--"),
                                  ("factor 32 (Llama 3.2 1B/3B)", RopeScaling(factor=32.0), ":")]:
        wavelength = 2 * np.pi / rope_frequencies(head_dim, theta, scaling)
        ax.semilogy(pairs, wavelength, style, label=label, linewidth=2)
    for tokens, text in [(8192 / 4, "8192 / high_freq_factor"), (8192, "original context 8192")]:
        ax.axhline(tokens, color="grey", linewidth=0.8)
        ax.text(1, tokens * 1.15, text, color="grey", fontsize=8)
    ax.set_xlabel("pair i of the head vector (head_dim 128)")
    ax.set_ylabel("wavelength 2\u03c0 / freq_i, in tokens")
    ax.set_title("RoPE wavelengths, theta = 500000")
    ax.legend()
    fig.tight_layout()
    out = out_dir / "rope_frequencies.svg"
    fig.savefig(out, metadata={"Date": None})  # no timestamp: the same figure gives the same file
    return out


if __name__ == "__main__":
    print(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent))

"""The figure of docs/12-model.md: one forward pass of llama_nb's Transformer (model/transformer.py),
op by op, each with the RunState buffer it writes (model/state.py) and that buffer's shape, for the
demo model and for Llama 3.1 8B (the sizes computed from their ModelArgs, not typed in).

    python docs/figures/model_graph.py [OUT_DIR]     writes model_graph.svg
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed
matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: a small file
matplotlib.rcParams["svg.hashsalt"] = "llama_nb"  # fixed element ids: the same figure gives the same file
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

from llama_nb.demo import demo_model_dir  # noqa: E402
from llama_nb.io.params import ModelArgs  # noqa: E402
from llama_nb.io.pth_write import SHAPES  # noqa: E402

# (label, op colour key, written buffer, its dims as names of `sizes`); None dims: in place
STEPS = [
    ("embedding(tok_embeddings)", "table", "x", ("T", "D")),
    ("rmsnorm(attention_norm)", "norm", "xb", ("T", "D")),
    ("linear wq | wk | wv", "linear", "q; k, v", ("T", "H*Dh", "|", "T", "KVH*Dh")),
    ("rope(q), rope(k)", "rope", "q, k", None),
    ("attention  (appends k, v to the cache)", "attention", "att", ("T", "H*Dh")),
    ("linear wo", "linear", "xb2", ("T", "D")),
    ("x += xb2", "add", "x", None),
    ("rmsnorm(ffn_norm)", "norm", "xb", ("T", "D")),
    ("linear w1 | w3", "linear", "hb, hb2", ("T", "F")),
    ("silu(hb) * hb2", "silu", "hb3", ("T", "F")),
    ("linear w2", "linear", "xb2", ("T", "D")),
    ("x += xb2", "add", "x", None),
    ("rmsnorm(norm), last row", "norm", "last", ("1", "D")),
    ("linear output", "linear", "logits", ("1", "V")),
    ("sample (argmax, or softmax and a draw)", "table", "next token", ()),
]
LAYER = range(1, 12)  # the steps repeated in every layer
COLOURS = {"table": "#e8e8e8", "norm": "#cfe2f3", "linear": "#f9cb9c", "rope": "#d9ead3",
           "attention": "#ead1dc", "add": "#ffffff", "silu": "#fff2cc"}


def sizes(args: ModelArgs) -> dict[str, int]:
    return {"D": args.dim, "H*Dh": args.n_heads * args.head_dim, "KVH*Dh": args.n_kv_heads * args.head_dim,
            "F": args.hidden_dim, "V": args.vocab_size, "1": 1}


def shape_text(dims, size: dict[str, int] | None) -> str:
    """"[T, 4,096]" (or the names, "[T, D]", when size is None); "|" separates two buffers."""
    parts, current = [], []
    for d in list(dims) + ["|"]:
        if d == "|":
            parts.append("[" + ", ".join(d2 if size is None or d2 == "T" else f"{size[d2]:,}" for d2 in current) + "]")
            current = []
        else:
            current.append(d)
    return "; ".join(parts)


def main(out_dir: Path) -> Path:
    demo, big = sizes(ModelArgs.from_file(demo_model_dir() / "params.json")), sizes(SHAPES["llama3.1-8b"][0])
    n = len(STEPS) + 1
    fig, ax = plt.subplots(figsize=(11, 10))
    ax.set_xlim(0, 11.2)
    ax.set_ylim(-0.3, n + 0.3)
    ax.axis("off")
    y_of = {i: n - 1 - i for i in range(-1, len(STEPS))}
    ax.text(2.5, y_of[-1], "token ids  int64[T]", ha="center", va="center", fontsize=10, family="monospace")
    columns = {"buffer": 4.7, "demo": 7.45, "8B": 9.3}
    for head, col in (("buffer f32[...]", columns["buffer"]), ("demo", columns["demo"]), ("Llama 3.1 8B", columns["8B"])):
        ax.text(col, n - 0.35, head, ha="left", fontsize=9, weight="bold")
    mono = dict(va="center", fontsize=8.5, family="monospace")
    for i, (label, kind, buffer, dims) in enumerate(STEPS):
        y = y_of[i]
        ax.add_patch(FancyBboxPatch((0.6, y - 0.3), 3.8, 0.6, boxstyle="round,pad=0.02", fc=COLOURS[kind], ec="#555555"))
        ax.text(2.5, y, label, ha="center", **mono)
        ax.annotate("", (2.5, y + 0.31), (2.5, y + 0.69), arrowprops=dict(arrowstyle="->", color="#555555"))
        if dims is None:
            ax.text(columns["buffer"], y, f"{buffer}  (in place)", color="#777777", **mono)
        elif not dims:
            ax.text(columns["buffer"], y, buffer, **mono)
        else:
            ax.text(columns["buffer"], y, f"{buffer} {shape_text(dims, None)}", **mono)
            ax.text(columns["demo"], y, shape_text(dims, demo), **mono)
            ax.text(columns["8B"], y, shape_text(dims, big), **mono)
    top, bottom = y_of[LAYER[0]] + 0.5, y_of[LAYER[-1]] - 0.45
    ax.add_patch(FancyBboxPatch((0.15, bottom), 10.95, top - bottom, boxstyle="round,pad=0.02", fc="none",
                                ec="#999999", ls="--"))
    ax.text(11.0, bottom + 0.1, "every layer: x 6 (demo), x 32 (8B)", fontsize=8.5, ha="right", color="#555555")
    for start, add in ((1, 6), (7, 11)):  # the residual stream around each sub-block
        y0, y1 = y_of[start] + 0.5, y_of[add]
        ax.plot([0.42, 0.42], [y0, y1], color="#3d85c6", lw=1.5)
        ax.plot([0.42, 2.5], [y0, y0], color="#3d85c6", lw=1.5)
        ax.annotate("", (0.6, y1), (0.42, y1), arrowprops=dict(arrowstyle="->", color="#3d85c6", lw=1.5))
        ax.text(0.3, (y0 + y1) / 2, "residual x", rotation=90, fontsize=8, color="#3d85c6", va="center", ha="right")
    ax.text(columns["buffer"], y_of[4] - 0.42, "appends to cache_k, cache_v  uint16 (bf16)[slots, layers, KVH, ctx, Dh]",
            fontsize=7.5, family="monospace", color="#a64d79", va="center")
    ax.set_title("One forward pass of T tokens (prefill: T up to 256 a pass; decode: T = 1)", fontsize=11)
    fig.tight_layout()
    out = out_dir / "model_graph.svg"
    fig.savefig(out, metadata={"Date": None})  # no timestamp: the same figure gives the same file
    return out


if __name__ == "__main__":
    print(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent))

"""The decode-timeline figure of docs/14-performance.md: one decode step, op call by op call.

Top row, measured when the script runs: the demo model's step after the prompt "And God said"
(position 4), each op call's wall time from a perf_counter pair around it, the fastest of 20
steps; the gaps are Python between the calls. Bottom rows, computed (no timing): Llama 3.1 8B's
step at positions 16 and 32,768, each call's bytes (the op declarations, via roofline.traffic)
divided by a plain-read bandwidth, i.e. the time of a step that streams every byte at the memory's
speed: what the kernels approach (chapter 7, `llama-nb bench ops`).

    python docs/figures/decode_timeline.py [OUT_DIR]     writes decode_timeline.svg
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed
matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: a small file
matplotlib.rcParams["svg.hashsalt"] = "llama_nb"  # fixed element ids: the same figure gives the same file
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from roofline import READ_GBPS, traffic  # noqa: E402

import llama_nb  # noqa: E402
from llama_nb.io.pth_write import SHAPES  # noqa: E402

COLOURS = {"embedding": "#999999", "rmsnorm": "#6fa8dc", "linear": "#e69138", "rope": "#93c47d",
           "attention": "#c27ba0", "silu": "#ffd966", "argmax": "#444444"}


def measured_demo_step(steps: int = 20) -> list[tuple[str, float, float]]:
    """(op, start, end) seconds from the step's start, of the fastest of `steps` decode steps."""
    llm = llama_nb.load_model(ctx=64, threads=1)  # the demo; one thread: its ops are serial anyway
    llm.compile()
    model, calls = llm.model, []

    def timed(name, fn):
        def call(*args):
            t0 = time.perf_counter()
            result = fn(*args)
            calls.append((name, t0, time.perf_counter()))
            return result
        return call

    for name in ("embedding", "rmsnorm", "linear", "rope", "silu", "argmax"):
        setattr(model.ops, name, timed(name, getattr(model.ops, name)))
    model.attend = timed("attention", model.attend)  # the cache type's attention op, bound at build
    ids = llm.tokenizer.encode("And God said", bos=True, eos=False)
    token = int(model.ops.argmax(model.forward(ids, 0)))
    best = None
    for _ in range(steps):
        calls.clear()
        t0 = time.perf_counter()
        token_next = int(model.ops.argmax(model.forward([token], len(ids))))  # position 4 each time
        step = [(name, a - t0, b - t0) for name, a, b in calls]
        if best is None or step[-1][2] < best[-1][2]:
            best = step
    assert token_next >= 0
    return best


def computed_8b_step(position: int) -> list[tuple[str, float, float]]:
    """(op, start, end) seconds of the 8B's decode step at `position` if every op moved its
    declared bytes at READ_GBPS, one after the other."""
    args = SHAPES["llama3.1-8b"][0]
    D, H, KVH, Dh, F, V = args.dim, args.n_heads, args.n_kv_heads, args.head_dim, args.hidden_dim, args.vocab_size
    S = position + 1
    layer = [("rmsnorm", dict(T=1, D=D)), ("linear", dict(T=1, K=D, N=H * Dh)), ("linear", dict(T=1, K=D, N=KVH * Dh)),
             ("linear", dict(T=1, K=D, N=KVH * Dh)), ("rope", dict(T=1, H=H, Dh=Dh, P=S, start_pos=position)),
             ("rope", dict(T=1, H=KVH, Dh=Dh, P=S, start_pos=position)),
             ("attention_bf16kv", dict(T=1, H=H, KVH=KVH, Dh=Dh, S=S, start_pos=position)),
             ("linear", dict(T=1, K=H * Dh, N=D)), ("rmsnorm", dict(T=1, D=D)), ("linear", dict(T=1, K=D, N=F)),
             ("linear", dict(T=1, K=D, N=F)), ("silu", dict(T=1, F=F)), ("linear", dict(T=1, K=F, N=D))]
    sequence = ([("embedding", dict(T=1, V=V, D=D))] + layer * args.n_layers +
                [("rmsnorm", dict(T=1, D=D)), ("linear", dict(T=1, K=D, N=V)), ("argmax", dict(N=V))])
    out, t = [], 0.0
    for op, dims in sequence:
        seconds = traffic(op, dims)[0] / (READ_GBPS * 1e9)
        out.append(("attention" if op.startswith("attention") else op, t, t + seconds))
        t += seconds
    return out


def visible_spans(step: list[tuple[str, float, float]], name: str, finest: float = 1e-3) -> list[tuple[float, float]]:
    """(start, width) as fractions of the step, of `name`'s calls: calls of the same op closer
    than `finest` of the step merged, narrower ones left out (under a pixel: they would only make
    the file large; the shares in the titles count every call)."""
    total, spans = step[-1][2], []
    for op, a, b in step:
        if op != name:
            continue
        if spans and a / total - (spans[-1][0] + spans[-1][1]) < finest:
            spans[-1] = (spans[-1][0], b / total - spans[-1][0])
        else:
            spans.append((a / total, (b - a) / total))
    return [span for span in spans if span[1] >= finest]


def shares(step: list[tuple[str, float, float]]) -> dict[str, float]:
    total = step[-1][2]
    result: dict[str, float] = {}
    for name, a, b in step:
        result[name] = result.get(name, 0.0) + (b - a) / total
    return result


def main(out_dir: Path) -> Path:
    rows = [("demo, position 4\nmeasured now, 1 thread", measured_demo_step(), 1e6, "us"),
            ("Llama 3.1 8B, position 16\nbytes / 44.3 GB/s", computed_8b_step(16), 1e3, "ms"),
            ("Llama 3.1 8B, position 32,768\nbytes / 44.3 GB/s", computed_8b_step(32768), 1e3, "ms")]
    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 4.8))
    for ax, (label, step, scale, unit) in zip(axes, rows):
        total = step[-1][2]
        for name, colour in COLOURS.items():
            ax.broken_barh(visible_spans(step, name), (-0.4, 0.8), facecolors=colour, lw=0)
        share = shares(step)
        listed = ", ".join(f"{name} {share[name]:.2%}" for name in sorted(share, key=share.get, reverse=True)[:3])
        between = 1.0 - sum(share.values())  # measured: Python between the op calls; computed: 0
        ax.set_title(f"{label.splitlines()[0]}: {total * scale:,.1f} {unit} a token; {listed}"
                     + (f"; Python between the calls {between:.1%}" if between > 1e-9 else ""), fontsize=8.5, loc="left")
        ax.set_yticks([0], [label.splitlines()[1]], fontsize=8)
        ax.set_ylim(-0.5, 0.5)
        ax.set_xlim(0, 1)
        ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.tick_params(axis="x", labelsize=8)
    axes[-1].set_xlabel("share of one decode step, in call order (embedding, 32 or 6 layers, norm, output, argmax)")
    handles = [matplotlib.patches.Patch(color=c, label=n) for n, c in COLOURS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=len(COLOURS), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    out = out_dir / "decode_timeline.svg"
    fig.savefig(out, metadata={"Date": None})  # no timestamp (the top row still changes from run to run)
    return out


if __name__ == "__main__":
    print(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent))

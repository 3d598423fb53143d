"""The batching figure of docs/15-serve.md: what BatchGenerator (model/batch.py) puts in each step.

Drives a real BatchGenerator on the demo model: 2 KV-cache slots, 3 prompts (the third begins
with the first one's "And God said"), prefill chunks of 4 tokens, 4 new tokens each, greedy. The
model's forward_batch is wrapped to record, at every step, each slot's owner and the positions its
cache holds, and the rows of the pass: (slot, tokens, start_pos). Each figure row is one step;
each strip one slot's cache, one cell per position. Nothing is timed: the schedule depends only on
the prompts' lengths, the chunk size and max_new_tokens, so the figure is the same on any machine.

    python docs/figures/batch_steps.py [OUT_DIR]     writes batch_steps.svg
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed
matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: a small file
matplotlib.rcParams["svg.hashsalt"] = "llama_nb"  # fixed element ids: the same figure gives the same file
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

import llama_nb  # noqa: E402
from llama_nb.model.batch import BatchGenerator  # noqa: E402

PROMPTS = ["And God said", "In the beginning God created the heaven and the earth.", "And God said, Let there be light"]
NAMES = "ABC"
COLOURS = ["#4c72b0", "#dd8452", "#55a868"]
SLOTS, CHUNK, NEW_TOKENS, POSITIONS = 2, 4, 4, 16


@dataclass
class Step:
    """One BatchGenerator step as its forward_batch saw it."""

    owners: list[int | None]  # the sequence id owning each slot
    reused: list[int]  # each owner's prefix taken from the slot's cache (stats.start_pos)
    filled: list[int]  # positions each slot's cache held before the pass
    rows: list[tuple[int, int, int, bool]]  # (slot, tokens, start_pos, a prompt's chunk?) of each row of the pass
    waiting: list[int]  # sequences waiting for a slot


def recorded_steps() -> list[Step]:
    llm = llama_nb.load_model(ctx=32, slots=SLOTS, threads=1)  # the demo model
    batch = BatchGenerator(llm.model, llm.tokenizer, prefill_chunk=CHUNK)
    for text in PROMPTS:
        batch.submit(llm.tokenizer.encode(text, bos=True, eos=False), NEW_TOKENS)
    steps, forward = [], llm.model.forward_batch

    def recording(rows):
        owners = [None if o is None else o.id for o in batch.owner]
        steps.append(Step(owners, [0 if o is None else o.stats.start_pos for o in batch.owner],
                          [len(c) for c in batch.cached], [(slot, len(t), pos, batch.owner[slot].prefilling) for slot, t, pos in rows],
                          [s.id for s in batch.waiting]))
        return forward(rows)

    llm.model.forward_batch = recording
    while batch.busy:
        batch.step()
    return steps


def describe(step: Step) -> str:
    parts = []
    for slot, n, pos, prefill in step.rows:
        name = NAMES[step.owners[slot]]
        span = f"{pos}-{pos + n - 1}" if n > 1 else f"{pos}"
        parts.append(f"{name} prefills {span}" if prefill else f"{name} decodes at {pos}")
    total = sum(n for _, n, _, _ in step.rows)
    text = f"{total} row{'s' if total > 1 else ''}: " + ", ".join(parts)
    return text + ("; " + ", ".join(NAMES[w] for w in step.waiting) + " waits" if step.waiting else "")


def main(out_dir: Path) -> Path:
    steps = recorded_steps()
    gap = 2  # cells between the two slots' strips
    fig, ax = plt.subplots(figsize=(13, 0.42 * len(steps) + 1.6))
    for row, step in enumerate(steps):
        y = -row
        ax.text(-0.6, y + 0.4, f"step {row + 1}", ha="right", va="center", fontsize=9)
        in_pass = {slot: (pos, pos + n) for slot, n, pos, _ in step.rows}
        for slot in range(SLOTS):
            x0, owner = slot * (POSITIONS + gap), step.owners[slot]
            lo, hi = in_pass.get(slot, (step.filled[slot], step.filled[slot]))
            for p in range(POSITIONS):
                colour, alpha, hatch = "white", 1.0, None
                if lo <= p < hi:
                    colour = COLOURS[owner]
                elif p < step.filled[slot]:
                    colour, alpha = ("#bbbbbb", 0.6) if owner is None else (COLOURS[owner], 0.3)
                    hatch = "////" if owner is not None and p < step.reused[slot] else None
                ax.add_patch(Rectangle((x0 + p, y), 0.92, 0.8, facecolor=colour, alpha=alpha, hatch=hatch,
                                       edgecolor="#888888", linewidth=0.4))
            if owner is not None:
                ax.text(x0 + POSITIONS + 0.2, y + 0.4, NAMES[owner], va="center", fontsize=9, color=COLOURS[owner],
                        fontweight="bold")
        ax.text(SLOTS * (POSITIONS + gap) + 0.2, y + 0.4, describe(step), va="center", fontsize=9)
    for slot in range(SLOTS):
        x0 = slot * (POSITIONS + gap)
        ax.text(x0 + POSITIONS / 2, 1.25, f"KV-cache slot {slot}: positions 0-{POSITIONS - 1}", ha="center", fontsize=10)
        for p in range(0, POSITIONS, 4):
            ax.text(x0 + p + 0.46, 0.95, str(p), ha="center", fontsize=7, color="#555555")
    legend = [Patch(facecolor="#777777", edgecolor="#888888", label="dark: the rows of this step's forward_batch")]
    legend += [Patch(facecolor=c, alpha=0.3, edgecolor="#888888", label=f"{n}: in the cache" if i == 0 else n)
               for i, (n, c) in enumerate(zip(NAMES, COLOURS))]
    legend += [Patch(facecolor=COLOURS[2], alpha=0.3, hatch="////", edgecolor="#888888",
                     label="C's prefix, reused from A's cache"),
               Patch(facecolor="#bbbbbb", alpha=0.6, edgecolor="#888888", label="a free slot's cache, kept for reuse")]
    ax.legend(handles=legend, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=6, fontsize=8, frameon=False)
    ax.set_xlim(-3.2, SLOTS * (POSITIONS + gap) + 22)
    ax.set_ylim(-len(steps) + 0.6, 1.7)
    ax.axis("off")
    ax.set_title("   ".join(f"{n}: {t!r}" for n, t in zip(NAMES, PROMPTS)) + f"\n{NEW_TOKENS} new tokens each, "
                 f"prefill chunks of {CHUNK} tokens, {SLOTS} slots (the demo model, greedy)", fontsize=10)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "batch_steps.svg"
    fig.savefig(out, metadata={"Date": None})  # no timestamp: the same schedule gives the same file
    return out


if __name__ == "__main__":
    print(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent))

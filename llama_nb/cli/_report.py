"""Pure render functions for generation: data in, Rich renderables or plain strings out.

Nothing here reads the clock or touches the model, so every view can be tested on plain data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.table import Table

from llama_nb.model.generate import GenerationStats


@dataclass
class RunReport:
    """Everything `run` and `menu` show about one generation."""

    model: str
    impl: str  # the full spec, e.g. "argmax=numba,...,softmax=numba"
    impl_short: str  # "defaults" or "defaults + linear[bf16]=reference"
    precision: str  # "bf16" or "float32" (llama_nb/model/transformer.py)
    threads: int
    load_seconds: float
    compile_seconds: float
    prompt_ids: list[int]
    generated_ids: list[int] = field(default_factory=list)
    text: str = ""
    stats: GenerationStats = field(default_factory=GenerationStats)
    notes: list[str] = field(default_factory=list)
    message: Any = None  # a chat answer as a Message (llama_nb/io/chat.py): its tool calls; in the JSON

    @classmethod
    def for_model(cls, llm, prompt_ids: list[int]) -> "RunReport":
        """An empty report for one generation of a loaded `Llama`."""
        return cls(model=str(llm.folder), impl=llm.ops.describe(), impl_short=llm.ops.describe_short(),
                   precision=llm.model.precision, threads=llm.model.threads, load_seconds=llm.load_seconds,
                   compile_seconds=llm.compile_seconds or 0.0, prompt_ids=list(prompt_ids))

    def timings(self) -> dict:
        s = self.stats
        return {
            "load_seconds": round(self.load_seconds, 4),
            "compile_seconds": round(self.compile_seconds, 4),
            "prefill_seconds": round(s.prefill_seconds, 4),
            "prefill_tokens_per_second": round(s.prefill_tokens_per_second, 3),
            "decode_seconds": round(s.decode_seconds, 4),
            "decode_tokens_per_second": round(s.decode_tokens_per_second, 3),
            "sampling_seconds": round(s.sampling_seconds, 4),
            "op_seconds": {op: round(t, 5) for op, t in sorted(s.op_seconds.items())},
        }

    def as_json(self) -> dict:
        chat = {}
        if self.message is not None:  # a chat answer: its content and tool calls, as io/chat.py's to_json writes them
            from llama_nb.io.chat import to_json

            chat = {"message": to_json(self.message)}
        return {
            "model": self.model,
            "impl": self.impl,
            "precision": self.precision,
            "threads": self.threads,
            "prompt_ids": self.prompt_ids,
            "generated_ids": self.generated_ids,
            "text": self.text,
            "stop_reason": self.stats.stop_reason,
            "notes": self.notes,
            "timings": self.timings(),
            **chat,
        }


def layer_table(layer_seconds: np.ndarray) -> Table:
    """Attention and feed-forward milliseconds per layer, mean of the decode passes; long models
    fold into side-by-side columns."""
    n = len(layer_seconds)
    per_column = 16
    columns = max(1, -(-n // per_column))
    table = Table(box=None, pad_edge=False, show_edge=False)
    for _ in range(columns):
        table.add_column("layer", justify="right", style="dim")
        table.add_column("attn", justify="right")
        table.add_column("ffn", justify="right")
    rows = min(n, per_column)
    for r in range(rows):
        cells: list[str] = []
        for c in range(columns):
            i = c * per_column + r
            if i < n:
                attn, ffn = layer_seconds[i] * 1e3
                cells += [str(i), f"{attn:.2f}", f"{ffn:.2f}"]
            else:
                cells += ["", "", ""]
        table.add_row(*cells)
    return table


def status_line(n_generated: int, max_tokens: int, elapsed: float, decode_tps: float) -> str:
    """The one line under the streaming text: tokens so far and decode speed."""
    speed = f"{decode_tps:.1f} tok/s" if decode_tps else "... tok/s"
    return f"[{n_generated}/{max_tokens} tokens  {speed}  {elapsed:.1f} s  Ctrl-C stops]"


def summary_line(report: RunReport) -> str:
    """The one line after the answer: what was done, how fast, and why it stopped."""
    s = report.stats
    reused = f" (+{s.start_pos} from the cache)" if s.start_pos else ""
    return (f"{s.generated_tokens} tokens at {s.decode_tokens_per_second:.1f} tok/s, prompt {s.prompt_tokens} tokens"
            f"{reused} at {s.prefill_tokens_per_second:.1f} tok/s; stopped by {describe_stop(s)}")


def mean_layer_seconds(stats: GenerationStats) -> np.ndarray | None:
    """float64[n_layers, 2]: attention and feed-forward seconds per layer, averaged over the decode
    passes (one token's numbers jump; the mean does not)."""
    if stats.layer_seconds is None or not stats.decode_passes:
        return None
    return stats.layer_seconds / stats.decode_passes


def summary_table(report: RunReport) -> Table:
    """The end-of-run summary: load, compile, prefill and decode speed, and why it stopped."""
    s = report.stats
    table = Table(title="summary", title_justify="left", show_header=False, box=None)
    table.add_column(style="dim")
    table.add_column(style="bold")
    table.add_row("model", report.model)
    table.add_row("kernels", f"{report.impl_short}, precision {report.precision}")
    table.add_row("threads", str(report.threads))
    table.add_row("load", f"{report.load_seconds:.3f} s")
    table.add_row("JIT compile / cache load", f"{report.compile_seconds:.3f} s")
    table.add_row("prompt", f"{s.prompt_tokens} tokens in {s.prefill_seconds:.3f} s = {s.prefill_tokens_per_second:.2f} tok/s")
    table.add_row("decode", f"{s.generated_tokens} tokens, {s.decode_passes} passes in {s.decode_seconds:.3f} s = {s.decode_tokens_per_second:.2f} tok/s")
    table.add_row("stopped by", describe_stop(s))
    return table


def describe_stop(stats: GenerationStats) -> str:
    return {
        "stop_token": f"stop token {stats.stop_token}",
        "max_tokens": "reaching --max-tokens",
        "context": "reaching the context length (--ctx)",
        "interrupted": "Ctrl-C",
    }.get(stats.stop_reason, stats.stop_reason or "nothing yet")


def op_table(op_seconds: dict[str, float], op_calls: dict[str, int] | None = None, choice: dict[str, str] | None = None) -> Table:
    """Per-op time breakdown, largest first, with the share of the total."""
    total = sum(op_seconds.values()) or 1.0
    table = Table(title="time per op", title_justify="left", box=None)
    table.add_column("op")
    table.add_column("impl", style="dim")
    table.add_column("calls", justify="right")
    table.add_column("ms", justify="right")
    table.add_column("share", justify="right")
    for op, seconds in sorted(op_seconds.items(), key=lambda kv: -kv[1]):
        if not seconds:
            continue
        calls = str((op_calls or {}).get(op, ""))
        table.add_row(op, (choice or {}).get(op, ""), calls, f"{seconds * 1e3:.1f}", f"{seconds / total:.0%}")
    return table


def plain_summary(report: RunReport) -> str:
    """The summary as plain lines (non-terminal output), one fact per line."""
    s = report.stats
    lines = [
        f"load: {report.load_seconds:.3f} s, compile: {report.compile_seconds:.3f} s, threads: {report.threads}, "
        f"precision: {report.precision}",
        f"prefill: {s.prompt_tokens} tokens, {s.prefill_tokens_per_second:.2f} tok/s",
        f"decode: {s.generated_tokens} tokens, {s.decode_tokens_per_second:.2f} tok/s",
        f"stopped by: {describe_stop(s)}",
    ]
    ops = ", ".join(f"{op} {t * 1e3:.1f} ms" for op, t in sorted(s.op_seconds.items(), key=lambda kv: -kv[1]) if t)
    if ops:
        lines.append(f"ops: {ops}")
    return "\n".join(lines)

"""Pure render functions: plain data in, Rich renderables out. No I/O, no model loading.

Commands call the library, then pass what it returned to these; tests can render them to text.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from rich.table import Table

_LAYER = re.compile(r"layers\.(\d+)\.(.+)")


def tensors_table(tensors: Iterable[dict[str, Any]], *, all_tensors: bool = False, title: str = "tensors") -> Table:
    """One row per tensor: name, dtype, shape, element count (`describe(...)["tensors"]`).

    Unless `all_tensors`, layers 1..N-1 collapse into one row when every one of them has layer 0's
    tensors, dtypes and shapes (an 8B has 291 tensors, 288 of them in 32 identical layers).
    """
    tensors = list(tensors)
    table = Table(title=title, title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("dtype")
    table.add_column("shape", no_wrap=True)
    table.add_column("elements", justify="right")
    collapsed = None if all_tensors else _collapsible_layers(tensors)
    summary_done = False
    for t in tensors:
        m = _LAYER.fullmatch(t["name"])
        if collapsed and m and int(m.group(1)) != 0:
            if not summary_done:
                first, last, n_elements, dtype = collapsed
                table.add_row(f"layers.{first}..{last}.*", dtype, "as layers.0", f"{n_elements:,}", style="dim")
                summary_done = True
            continue
        table.add_row(t["name"], t["dtype"], _shape(t["shape"]), f"{t['elements']:,}")
    return table


def _collapsible_layers(tensors: list[dict[str, Any]]) -> tuple[int, int, int, str] | None:
    """(first, last, elements, dtype) of layers 1..N-1 if all repeat layer 0 exactly, in order."""
    layers: dict[int, list[tuple[str, str, tuple]]] = {}
    order: list[int] = []
    for t in tensors:
        m = _LAYER.fullmatch(t["name"])
        if m:
            i = int(m.group(1))
            if i not in layers:
                layers[i] = []
                order.append(i)
            layers[i].append((m.group(2), t["dtype"], tuple(t["shape"])))
    if len(order) < 3 or order != list(range(len(order))):
        return None  # nothing worth collapsing, or layers out of order: show everything
    if any(layers[i] != layers[0] for i in order[1:]):
        return None
    n_elements = sum(
        t["elements"] for t in tensors if (m := _LAYER.fullmatch(t["name"])) and int(m.group(1)) != 0
    )
    dtypes = {dtype for _, dtype, _ in layers[0]}
    return 1, order[-1], n_elements, dtypes.pop() if len(dtypes) == 1 else "as layers.0"


def _shape(shape: list[int]) -> str:
    return "[" + ", ".join(str(n) for n in shape) + "]"


def model_summary_table(desc: dict[str, Any], title: str = "hyperparameters") -> Table:
    """params.json values, then derived sizes and totals (`llama_nb.io.checkpoint.describe`)."""
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in desc["params"].items():
        if key != "rope_scaling":  # shown below, with where its numbers came from
            table.add_row(key, _value(value))
    table.add_section()
    table.add_row("head_dim", f"{desc['head_dim']}  (dim / n_heads)")
    scaling = desc.get("rope_scaling")
    table.add_row("RoPE scaling", "none" if scaling is None else
                  f"factor {scaling['factor']:g}, low/high freq factor {scaling['low_freq_factor']:g}/"
                  f"{scaling['high_freq_factor']:g}, original context {scaling['original_max_position_embeddings']}"
                  f"  ({scaling['source']})")
    table.add_row("FFN hidden size", f"{desc['ffn_hidden_dim']}  (from dim, multiple_of, ffn_dim_multiplier)")
    table.add_row("output", "tied to tok_embeddings" if desc["tied_output"] else "output.weight")
    table.add_section()
    table.add_row("tensors", f"{desc['n_tensors']:,}")
    table.add_row("total elements", f"{desc['n_elements']:,}")
    table.add_row("size", f"{desc['size_gb']:.2f} GB  ({desc['size_bytes']:,} bytes)")
    table.add_row("checkpoint", desc["checkpoint"])
    table.add_row("tokenizer", desc["tokenizer"] or "missing")
    return table


def _value(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def gguf_metadata_table(gguf: dict[str, Any], title: str = "GGUF metadata") -> Table:
    """A GGUF file's version, tensor types and metadata keys (`describe(...)["gguf"]`). Keys and
    values come from the file: shown as plain text (no Rich markup), non-printables escaped."""
    from rich.text import Text

    from llama_nb.errors import one_line

    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    table.add_row("GGUF version", str(gguf["version"]))
    table.add_row("tensor types", ", ".join(f"{name} x {n}" for name, n in gguf["tensor_types"].items()))
    table.add_section()
    for key, value in gguf["metadata"].items():
        table.add_row(Text(one_line(key, 80)), Text(one_line(_value(value), 200)))
    return table

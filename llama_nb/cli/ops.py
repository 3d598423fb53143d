"""`llama-nb ops`: every declared op, its slots (weight format / activation type), the
implementations of each, the default, and where each came from; weight formats; plugin notes."""

from __future__ import annotations

import typer


def ops(
    show_doc: bool = typer.Option(False, "--doc", help="Also print each op's signature, math and the weight formats."),
) -> None:
    """List every op and weight format, their implementations, the defaults, and where each came from."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from llama_nb.formats import formats
    from llama_nb.ops import registry
    from llama_nb.ops.opset import DEFAULT_PRECISION

    title = (f"llama_nb ops (slot: op[weight format/activation type]; --precision picks the activation type, "
             f"default {DEFAULT_PRECISION})")
    table = Table(title=escape(title), title_justify="left")
    table.add_column("op", style="bold")
    table.add_column("implementation")
    table.add_column("default", justify="center")
    table.add_column("from", style="dim")
    table.add_column("note", style="yellow")
    last = None
    for slot, name, is_default, source, note in registry.table_rows():
        table.add_row(escape(slot) if slot != last else "", name, "*" if is_default else "", source, note)
        last = slot
    console = Console()
    if not console.is_terminal:  # piped: never cut a plugin's name to fit 80 columns
        console = Console(width=max(console.width, 160))
    console.print(table)
    for name, reason in registry.plugin_failures.items():
        console.print(f"plugin {name} failed to load and is skipped: {reason}", style="yellow", markup=False)
    if show_doc:
        console.print("\n[bold]weight formats[/]")
        for fmt in formats.values():
            console.print(f"  {fmt.name:<6} {fmt.bytes_per_weight():g} bytes per weight   {fmt.doc}", markup=False,
                          soft_wrap=True)
        for op, spec in sorted(registry.ops.items()):
            console.print(f"\n[bold]{op}[/]")
            console.print(spec.doc, markup=False, soft_wrap=True)

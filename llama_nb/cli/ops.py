"""`llama-nb ops`: every declared op, its implementations, the default, and where each came from."""

from __future__ import annotations

import typer


def ops(
    show_doc: bool = typer.Option(False, "--doc", help="Also print each op's math and argument contract."),
) -> None:
    """List every op, its implementations, the default, and where each came from."""
    from rich.console import Console
    from rich.table import Table

    from llama_nb.ops import registry

    table = Table(title="llama_nb ops", title_justify="left")
    table.add_column("op", style="bold")
    table.add_column("implementation")
    table.add_column("default", justify="center")
    table.add_column("from", style="dim")
    last_op = None
    for op, name, is_default, source in registry.table_rows():
        table.add_row(op if op != last_op else "", name, "*" if is_default else "", source)
        last_op = op
    console = Console()
    console.print(table)
    for name, reason in registry.plugin_failures.items():
        console.print(f"plugin {name} failed to load: {reason}", style="yellow", markup=False)
    if show_doc:
        for op, spec in sorted(registry.ops.items()):
            console.print(f"\n[bold]{op}[/]")
            console.print(spec.doc, markup=False)

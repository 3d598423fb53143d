"""The journey's quotes of the source, kept equal to the source.

A chapter quotes code by naming it in a comment just above a fenced block:

    <!-- quote: llama_nb/io/params.py ModelArgs.hidden_dim -->
    ```python
    ...the source of that symbol, exactly...
    ```

SYMBOL is a dotted path inside the module: a function, a class, a method (Class.method), a
module-level assignment (NAME = ...), or a top-level call statement whose innermost first
argument is the string SYMBOL (an op's declaration, `defop(OpSpec("rmsnorm", ...))`, is quoted as
`llama_nb/ops/specs.py rmsnorm`); taken with its decorators. `python tools/docs.py --write` rewrites every quoted block from the source;
`python tools/docs.py` (what tests/test_docs.py runs) lists the blocks that differ and exits 1,
so a quote can never drift from the code it shows.

The other fenced blocks: ```sh blocks are commands a reader types and ```python blocks are code
a reader runs, in order, one chapter a session; tests/test_docs.py runs both on the demo model.
A block preceded by `<!-- not run: REASON -->` is shown only (e.g. it needs Meta's weights).
"""

from __future__ import annotations

import ast
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
QUOTE = re.compile(r"<!-- quote: (?P<path>\S+) (?P<symbol>[\w.]+) -->\n```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)
BLOCK = re.compile(r"(?P<marker><!-- (?P<kind>[\w ]+)(?::[^>]*)? -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)


@dataclass(frozen=True)
class Block:
    """A fenced block of a chapter: its language, text, and whether the reader is meant to run it."""

    chapter: Path
    lang: str
    body: str
    run: bool


def source_of(path: str, symbol: str) -> str:
    """The source text of `symbol` in the file `path` (relative to the repository), dedented."""
    file = ROOT / path
    tree = ast.parse(file.read_text())
    node: ast.AST = tree
    for part in symbol.split("."):
        node = _child(node, part, f"{path} {symbol}")
    lines = file.read_text().splitlines()
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return textwrap.dedent("\n".join(lines[first - 1 : node.end_lineno])) + "\n"


def _child(node: ast.AST, name: str, where: str) -> ast.AST:
    for child in getattr(node, "body", []):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and child.name == name:
            return child
        targets = child.targets if isinstance(child, ast.Assign) else [child.target] if isinstance(child, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return child
        if isinstance(child, ast.Expr) and _first_string(child.value) == name:
            return child
    raise LookupError(f"{where}: no {name!r} there (the quoted code was renamed or removed)")


def _first_string(node: ast.AST) -> str | None:
    """The string a call statement names first: "rmsnorm" in defop(OpSpec("rmsnorm", ...))."""
    while isinstance(node, ast.Call) and node.args:
        node = node.args[0]
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
    return None


def chapters() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def stale_quotes(text: str) -> list[tuple[str, str, str]]:
    """(path, symbol, what the source says now) of each quote in `text` that differs from the source."""
    return [(m["path"], m["symbol"], want) for m in QUOTE.finditer(text)
            if m["body"] != (want := source_of(m["path"], m["symbol"]))]


def refresh(text: str) -> str:
    """`text` with every quoted block replaced by the current source."""
    return QUOTE.sub(lambda m: f"<!-- quote: {m['path']} {m['symbol']} -->\n```{m['lang']}\n"
                     f"{source_of(m['path'], m['symbol'])}```", text)


def blocks(chapter: Path) -> list[Block]:
    """The fenced blocks of a chapter, in order (quotes are never run: they are the library's code)."""
    return [Block(chapter, m["lang"], m["body"], m["kind"] is None)
            for m in BLOCK.finditer(chapter.read_text())]


def main(argv: list[str]) -> int:
    write = "--write" in argv
    bad = 0
    for chapter in chapters():
        text = chapter.read_text()
        if write:
            new = refresh(text)
            if new != text:
                chapter.write_text(new)
                print(f"{chapter.relative_to(ROOT)}: quotes refreshed")
            continue
        for path, symbol, _ in stale_quotes(text):
            print(f"{chapter.relative_to(ROOT)}: the quote of {path} {symbol} differs from the source "
                  f"(python tools/docs.py --write)")
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""`llama-nb tokenize TEXT`: the token ids of a text and the piece each one stands for.

Needs only DIR/tokenizer.model (or a Hugging Face folder's tokenizer.json). The table shows each piece readably: spaces as ␣, newlines as ↵,
tabs as →, other control characters escaped, and a token that is not valid UTF-8 on its own (part
of an emoji or CJK character) as the repr of its bytes, e.g. b'\\xf0\\x9f'. `--json` prints
{"ids": [...], "pieces": [...]} where a piece is the token's exact text, or that bytes repr.
"""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer

from llama_nb.cli._options import JsonOpt, ModelOpt, resolve_model_dir
from llama_nb.errors import LlamaNbError

TextArg = Annotated[str, typer.Argument(help="The text to tokenize.", show_default=False)]
BosOpt = Annotated[bool, typer.Option("--bos", help="Prepend <|begin_of_text|>, as a prompt would.")]
AllowSpecialOpt = Annotated[
    bool,
    typer.Option("--allow-special", help="Encode special-token text such as <|eot_id|> as the special token "
                 "(by default it is plain text, as in Meta's Tokenizer.encode)."),
]

_VISIBLE = {" ": "␣", "\n": "↵", "\r": "␍", "\t": "→"}


def piece_text(token: bytes) -> str:
    """A token's exact text, or the repr of its bytes when they are not valid UTF-8 alone."""
    try:
        return token.decode("utf-8")
    except UnicodeDecodeError:
        return repr(token)


def visible(text: str) -> str:
    """Whitespace made visible and other control characters escaped, for a table cell."""
    out = []
    for ch in text:
        if ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif not ch.isprintable():
            out.append(ascii(ch)[1:-1])  # '\x0b', '\u2028', ...
        else:
            out.append(ch)
    return "".join(out)


def tokenize(
    text: TextArg,
    model: ModelOpt = None,
    json_out: JsonOpt = False,
    bos: BosOpt = False,
    allow_special: AllowSpecialOpt = False,
) -> None:
    """Show the token ids of TEXT and the piece of text each one stands for."""
    from llama_nb.io.checkpoint import load_tokenizer

    try:
        tokenizer = load_tokenizer(resolve_model_dir(model))
    except LlamaNbError as exc:
        if os.environ.get("LLAMA_NB_DEBUG") == "1":
            raise
        from llama_nb.cli import report_error

        report_error(exc)
        raise typer.Exit(1) from None

    ids = tokenizer.encode(text, bos=bos, eos=False, allowed_special="all" if allow_special else frozenset())
    pieces = [piece_text(tokenizer.token_bytes(i)) for i in ids]
    if json_out:
        typer.echo(json.dumps({"ids": ids, "pieces": pieces}, ensure_ascii=False))
        return

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    special_ids = set(tokenizer.special_tokens.values())
    table = Table(title=f"{len(ids)} tokens", title_justify="left")
    table.add_column("#", justify="right", style="dim")
    table.add_column("id", justify="right")
    table.add_column("piece")
    for index, (token_id, piece) in enumerate(zip(ids, pieces)):
        style = "bold magenta" if token_id in special_ids else ""
        # Text, not str: a piece like "[bold]" must not be read as Rich markup
        table.add_row(str(index), str(token_id), Text(visible(piece)), style=style)
    Console(highlight=False).print(table)

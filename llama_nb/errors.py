"""The one exception family llama_nb raises on bad input.

Every error a user can cause (a missing file, a corrupt checkpoint, a typo in `--impl`) is a
`LlamaNbError` whose message is one line naming the file or option and the problem. The CLI prints
that line and exits 1; anything else escaping is a bug in llama_nb.
"""

import reprlib
from typing import Any


class LlamaNbError(Exception):
    """Base class: a problem with the user's input, told in one line."""


class UnknownOpError(LlamaNbError, KeyError):
    """An op name that was never declared with `defop` (usually a typo)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class UnknownImplError(LlamaNbError, KeyError):
    """An implementation name that is not registered for the op asked for."""

    def __str__(self) -> str:
        return str(self.args[0])


class CheckpointError(LlamaNbError):
    """A checkpoint, params.json or tokenizer.model that cannot be read safely."""


class ContextLimitError(LlamaNbError):
    """More tokens than the KV cache was sized for."""


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 50, 50


def shown(value: Any, *, quote: bool = True) -> str:
    """A value read from a file (a tensor name, a zip entry name, a token), fit for a one-line message.

    At most 60 characters, quoted, and escaped by repr: a newline, a terminal escape sequence
    ("\\x1b[2J"), a bidi override or any other non-printable character appears as its escape, so
    a name in a file can neither forge a second line nor recolour the terminal. Never recurses
    deeply (hostile values nest). Every message that quotes something from a file uses this.
    With quote=False, a short printable str is shown as it is ("archive/data.pkl", "os.system").
    """
    if not quote and isinstance(value, str) and len(value) <= 60 and value.isprintable():
        return value
    text = _REPR.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def one_line(text: str, limit: int = 200) -> str:
    """An exception's text (which may quote bytes from a file) as at most `limit` printable
    characters: runs of whitespace become one space, other non-printables their escapes."""
    text = " ".join(text.split())[: 4 * limit]
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)[:limit]

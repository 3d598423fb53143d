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


def short_repr(value: Any) -> str:
    """A repr of at most 60 characters that never recurses deeply (hostile values nest)."""
    text = _REPR.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

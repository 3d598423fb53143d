"""JSON from a model folder (params.json, config.json, tokenizer.json, a safetensors header), parsed with care.

`parse_json(raw, path, what)` turns the bytes of one JSON document into Python values, or raises
one CheckpointError line naming the file. What it guards against, beyond syntax errors:

    not UTF-8                    "not UTF-8 text (byte N)"
    nesting 100k levels deep     json's recursion limit: a RecursionError, not a crash
    an integer of 5000 digits    int() past 4300 digits is a ValueError (Python's int-to-str limit);
                                 no size in these files has more than MAX_INT_DIGITS
    a repeated key               {"vocab_size": 8, "vocab_size": 128256}: json keeps the last one
                                 without a word, so two readers of the same file (ours and
                                 transformers, or safetensors' Rust parser) could see different
                                 models; refused here, naming the key
NaN and Infinity (not JSON, but json.dumps writes them) parse as floats: the readers check that
numbers are finite where it matters, and name the key.

`read_json(path, limit, what)` reads a regular file of at most `limit` bytes first (io/files.py:
no FIFO, no /dev/zero, no file that grows while read).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llama_nb.errors import CheckpointError, shown
from llama_nb.io.files import read_regular_file

MAX_INT_DIGITS = 20  # 2**64 has 20 digits


class _Refused(Exception):
    """Raised from inside json's hooks; parse_json adds the file name."""


def _int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(f"an integer of {len(digits)} digits; sizes here have at most {MAX_INT_DIGITS} digits")
    return int(digits)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _Refused(f"key {shown(key)} appears twice in one object (which one counts is ambiguous)")
    return obj


def parse_json(raw: bytes, path: str | Path, what: str) -> Any:
    """The JSON document `raw` (the bytes of `path`, a `what` such as "params.json")."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: not UTF-8 text (byte {exc.start}); expected {what}") from None
    try:
        return json.loads(text, parse_int=_int, object_pairs_hook=_object)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise CheckpointError(f"{path}: not valid JSON: nested too deeply") from None
    except _Refused as exc:
        raise CheckpointError(f"{path}: {exc}; expected {what}") from None


def read_json(path: str | Path, limit: int, what: str, missing: str = "no such file") -> Any:
    """parse_json of the regular file `path`, refused past `limit` bytes."""
    return parse_json(read_regular_file(path, limit, what, missing=missing), path, what)

"""tokenizer.model: Meta's Llama 3 vocabulary file, one `base64(token bytes) rank` per line.

    IQ== 0          the token b"!" has rank (and id) 0 ... the 256 single bytes among them
    ...
    IGFudGlx 127999 ranks 0..n-1 once each (n = 128,000 for Llama 3.x)

`load_ranks` reads it into {token bytes: rank} with every problem a CheckpointError naming the
file and line (Meta's `load_bpe_file` logs and skips a line it cannot parse: a silently shorter
vocabulary would shift every id), and with every size bounded before it is parsed.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterable
from pathlib import Path

from llama_nb.errors import CheckpointError, shown
from llama_nb.io.files import read_regular_file

NUM_RESERVED_SPECIAL_TOKENS = 256  # Meta's: the special tokens after the ranks
MAX_MODEL_BYTES = 32 << 20  # Meta's tokenizer.model: 2.2 MB for 128,000 tokens
MAX_BASE_TOKENS = 1 << 20  # 8x Llama 3's 128,000
_MAX_RANK_DIGITS = 9
_MAX_BLANK_LINES = 1000  # Meta's file has none; tolerated, but they count against the line bound
_LINE = re.compile(rb"[^\r\n]*(?:\r\n?|\n)?")  # one line of bytes.splitlines() (with its end), lazily


def load_ranks(path: Path, max_tokens: int | None = None) -> dict[bytes, int]:
    """Read `base64 rank` lines; every problem is a CheckpointError naming file and line.

    The file is read only if it is a regular file of at most MAX_MODEL_BYTES, and reading stops
    at the first token past `max_tokens` (params.json's vocab_size less the 256 special tokens,
    when the caller knows it) or MAX_BASE_TOKENS, and at the first line past that limit plus
    _MAX_BLANK_LINES: a ten-million-line file is refused at the limit, not parsed first.
    """
    path = Path(path)
    data = read_regular_file(path, MAX_MODEL_BYTES, "a tokenizer.model", missing="tokenizer file not found")
    limit = MAX_BASE_TOKENS if max_tokens is None else min(max_tokens, MAX_BASE_TOKENS)

    max_lines = limit + _MAX_BLANK_LINES
    if data.count(b"\n") + data.count(b"\r") < max_lines:  # at most that many lines: split at C speed
        lines: Iterable[bytes] = data.splitlines()
    else:  # maybe millions: find them one at a time, and stop at the limit (4x slower per line)
        lines = (match.group() for match in _LINE.finditer(data))

    a2b = binascii.a2b_base64
    ranks: dict[bytes, int] = {}
    line_of_rank: dict[int, int] = {}
    for line_no, line in enumerate(lines, start=1):
        if line_no > max_lines:  # blank lines count too: 10M of them are not free
            raise CheckpointError(f"{path}:{line_no}: more than {max_lines} lines for at most {limit} tokens")
        fields = line.split()
        if not fields:
            continue  # blank lines carry nothing, Meta skips them too
        where = f"{path}:{line_no}"
        if len(ranks) >= limit:
            raise CheckpointError(f"{where}: more than {limit} tokens; " + (
                f"params.json's vocab_size allows {max_tokens} besides the {NUM_RESERVED_SPECIAL_TOKENS} special ones"
                if limit == max_tokens else "no Llama tokenizer is that large"))
        if len(fields) != 2:
            raise CheckpointError(f"{where}: expected 'base64token rank', got {len(fields)} fields: {_show(line)}")
        b64, rank_text = fields
        try:
            token = a2b(b64, strict_mode=True)
        except (binascii.Error, ValueError):
            raise CheckpointError(f"{where}: token is not valid base64: {_show(b64)}") from None
        if not token:
            raise CheckpointError(f"{where}: empty token")
        if not rank_text.isdigit():  # ASCII digits only: int() would also take '+1', '1_0', ' 1'
            raise CheckpointError(f"{where}: rank is not a non-negative integer: {_show(rank_text)}")
        if len(rank_text) > _MAX_RANK_DIGITS:  # int() refuses more than 4300 digits; no rank has 10
            raise CheckpointError(f"{where}: rank of {len(rank_text)} digits: {_show(rank_text)}")
        rank = int(rank_text)
        if rank >= limit:  # ranks end up 0..n-1 with n <= limit; bounded here, they cannot collide in line_of_rank
            raise CheckpointError(f"{where}: rank {rank} is beyond the {limit} tokens a tokenizer.model may hold here")
        if rank in line_of_rank:
            raise CheckpointError(f"{where}: duplicate rank {rank} (first on line {line_of_rank[rank]})")
        if token in ranks:
            raise CheckpointError(f"{where}: duplicate token {shown(token)} (first with rank {ranks[token]})")
        line_of_rank[rank] = line_no
        ranks[token] = rank
    if not ranks:
        raise CheckpointError(f"{path}: no tokens in tokenizer file")
    n = len(ranks)
    if max(line_of_rank) != n - 1:  # n distinct non-negative ranks: 0..n-1 iff the largest is n-1
        rank = max(line_of_rank)
        raise CheckpointError(
            f"{path}:{line_of_rank[rank]}: rank {rank} but only {n} tokens: ranks must be 0..{n - 1}"
        )
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise CheckpointError(f"{path}: not a byte-level BPE vocabulary: no token for byte 0x{missing[0]:02x}")
    return ranks


def _show(raw: bytes) -> str:
    return shown(raw.rstrip(b"\r\n").decode("utf-8", errors="replace"))

"""The Llama 3 tokenizer, without tiktoken: byte-level BPE by rank over Meta's split pattern.

tokenizer.model   text, one `base64(token bytes) rank` per line, ranks 0..n-1 (n = 128,000 for
                  Llama 3.x); a token's rank is also its id, and a lower rank merges first.

encode(s) = [bos] + concat over pieces p of bpe(utf8(p)) + [eos], where the pieces come from
  1. Meta's chunking: 400k-char slices, each cut wherever a run of whitespace (or of
     non-whitespace) passes 25k chars. tiktoken needs it; we replicate it because the cuts change
     the output (a piece never spans a cut).
  2. allowed special tokens (`<|eot_id|>` ...) found in the text become their id; the text around
     them is split by `pat_str` (the `regex` package: \\p{L}, \\p{N} and a lookahead), with
     letters and numbers as tiktoken's Rust regex knows them (Unicode 16: see _NEWER_LETTERS).
  3. bpe(b): if b is itself a token, that token; else start from single bytes and repeatedly merge
     the adjacent pair whose concatenation has the lowest rank (the leftmost among equals) until
     no adjacent pair is a token. This is tiktoken's `byte_pair_merge`.

Special tokens get ids after the base vocabulary, n + i, in Meta's order (so 128000..128255 for
Llama 3, 4096..4351 for a 4,096-token vocabulary). Like Meta's `Tokenizer.encode`, text that
spells a special token is encoded as plain text unless it is in `allowed_special`.

Decoding concatenates token bytes and decodes UTF-8 with errors="replace" (tiktoken's behaviour);
`StreamDecoder` does the same incrementally, holding back an incomplete UTF-8 tail.

Unlike Meta's `load_bpe_file`, which logs and skips lines it cannot parse, a bad line here is a
`CheckpointError` naming the file and line: a silently shorter vocabulary would shift every id.
"""

from __future__ import annotations

import codecs
import functools
import heapq
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import AbstractSet, Literal

import regex

from llama_nb.errors import CheckpointError, LlamaNbError
from llama_nb.io.tokenizer_model import NUM_RESERVED_SPECIAL_TOKENS, load_ranks

# Meta's llama_models/llama3/tokenizer.py, verbatim.
PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NAMED_SPECIAL_TOKENS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",  # end of message: the model expects a tool result next
    "<|eot_id|>",  # end of turn
    "<|python_tag|>",
    "<|image|>",
)
SPECIAL_TOKENS = NAMED_SPECIAL_TOKENS + tuple(
    f"<|reserved_special_token_{2 + i}|>" for i in range(NUM_RESERVED_SPECIAL_TOKENS - len(NAMED_SPECIAL_TOKENS))
)

# tiktoken 0.14 splits with Rust's regex crate (Unicode 16 tables); `regex` 2025+ knows Unicode 17,
# which made these code points letters (L) or numbers (N). To tiktoken they are neither, so to us
# too. tests/test_tokenizer.py compares every class with tiktoken's over all code points, so a
# `regex` or tiktoken upgrade that moves the boundary fails loudly. A text holding one of these
# is split with a pattern that subtracts them (2x slower than the plain pattern; such text is rare).
_NEWER_LETTERS = (
    "0558 058B-058C 088F 0C5C 0CDC 208F 209D-209F A7CE-A7CF A7D2 A7D4 A7DD A7E2 A7F1 AB6C-AB6D "
    "107BB-107BF 10940-10959 10EC5-10EC7 10ED9-10EEE 11B0A 11DB0-11DDB 11DF1 16EA0-16EB8 "
    "16EBB-16ED3 16FF2-16FF3 187F8-187FF 18CD6-18CDA 18D09-18D20 18D80-18DF2 18E00-19191 "
    "191A0-191D2 1B123-1B128 1B168 1D6A6 1DF1F-1DF24 1DF2B-1DF81 1DF90-1DF96 1DFCD-1DFFF "
    "1E6C0-1E6DE 1E6E0-1E6E2 1E6E4-1E6E5 1E6E7-1E6ED 1E6F0-1E6F4 1E6FE-1E6FF 2B73A-2B73F 2B81E "
    "2CEA2-2CEAD 323B0-33479 3D000-3FC3F"
)
_NEWER_NUMBERS = "11DE0-11DE9 1246F 12475-1247F 12550-12686 16FF4-16FF6"


def _ranges(spec: str) -> list[tuple[int, int]]:
    return [(int(a, 16), int(b or a, 16)) for a, _, b in (item.partition("-") for item in spec.split())]


def _class_body(ranges: list[tuple[int, int]]) -> str:
    return "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)


_XL, _XN = _class_body(_ranges(_NEWER_LETTERS)), _class_body(_ranges(_NEWER_NUMBERS))
LETTER = f"[^\\P{{L}}{_XL}]"  # \p{L} minus the newer letters
NUMBER = f"[^\\P{{N}}{_XN}]"
OTHER_NOT_NEWLINE = rf"(?:[^\r\n\p{{L}}\p{{N}}]|[{_XL}{_XN}])"  # [^\r\n\p{L}\p{N}] plus the newer ones
OTHER_NOT_SPACE = rf"(?:[^\s\p{{L}}\p{{N}}]|[{_XL}{_XN}])"
PAT_STR_PINNED = (
    rf"(?i:'s|'t|'re|'ve|'m|'ll|'d)|{OTHER_NOT_NEWLINE}?{LETTER}+|{NUMBER}{{1,3}}"
    rf"| ?{OTHER_NOT_SPACE}+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_NEWER_CHARS = frozenset(chr(c) for a, b in _ranges(_NEWER_LETTERS + " " + _NEWER_NUMBERS) for c in range(a, b + 1))

# Meta's limits (tiktoken panics beyond them); the cuts they cause are part of the output.
MAX_ENCODE_CHARS = 400_000
MAX_NO_WHITESPACES_CHARS = 25_000


_CACHE_MAX_ENTRIES = 200_000  # piece -> ids; cleared when full (cheap, and hits recover fast)
_CACHE_MAX_PIECE_CHARS = 64  # longer pieces rarely repeat; don't let them fill memory
_HEAP_MIN_BYTES = 256  # below this, the O(n^2) list merge (C-speed min) beats a heap
_NO_RANK = 1 << 62


@functools.cache
def _runs_pattern() -> regex.Pattern:
    """Runs of whitespace / non-whitespace as Meta counts them: by str.isspace(), which is not
    regex's \\s (U+001C..U+001F are isspace()), so the class is spelled out char by char."""
    space = "".join(f"\\U{c:08x}" for c in range(0x110000) if chr(c).isspace())
    return regex.compile(f"[{space}]+|[^{space}]+")


MAX_SPECIAL_SPAN = 1 << 20  # special ids lie within this many ids after the ranks (Llama 3: 256)
# The special tokens Tokenizer gives names to (bos_id, eot_id, ...): a Llama 3 tokenizer has them all.
REQUIRED_SPECIAL_TOKENS = ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|eom_id|>",
                           "<|python_tag|>", "<|finetune_right_pad_id|>")


class Tokenizer:
    """Meta's Llama 3 `Tokenizer` (same attributes, same ids), reading tokenizer.model itself."""

    pat_str = PAT_STR
    num_reserved_special_tokens = NUM_RESERVED_SPECIAL_TOKENS

    def __init__(self, model_path: str | Path, vocab_size: int | None = None):
        """`vocab_size`: params.json's, when known; a file with more tokens than it allows
        (vocab_size - 256 base tokens) is refused as soon as reading gets there."""
        self.model_path = Path(model_path)
        max_tokens = None if vocab_size is None else max(0, vocab_size - NUM_RESERVED_SPECIAL_TOKENS)
        ranks = load_ranks(self.model_path, max_tokens)
        n = len(ranks)
        self._build(ranks, {tok: n + i for i, tok in enumerate(SPECIAL_TOKENS)})

    @classmethod
    def from_ranks(cls, mergeable_ranks: dict[bytes, int], special_tokens: dict[str, int],
                   source: str | Path) -> "Tokenizer":
        """The same tokenizer from ranks and special tokens read from another file (a GGUF's
        tokenizer.ggml.* metadata, a Hugging Face tokenizer.json); `source` names that file in errors.

        mergeable_ranks: token bytes -> rank, ranks 0..n-1 once each, every single byte a token
        (byte-level BPE). special_tokens: text -> id, ids unused by the ranks; Meta's named ones
        (<|begin_of_text|>, <|eot_id|>, ...) must be among them.
        """
        if sorted(mergeable_ranks.values()) != list(range(len(mergeable_ranks))):
            raise CheckpointError(f"{source}: the BPE ranks are not 0..{len(mergeable_ranks) - 1}, each once")
        missing = [b for b in range(256) if bytes([b]) not in mergeable_ranks]
        if missing:
            raise CheckpointError(f"{source}: not a byte-level BPE vocabulary: no token for byte 0x{missing[0]:02x}")
        ids = list(special_tokens.values())
        if len(set(ids)) != len(ids) or min(ids, default=len(mergeable_ranks)) < len(mergeable_ranks):
            raise CheckpointError(f"{source}: special token ids repeat or overlap the {len(mergeable_ranks)} BPE ranks")
        if max(ids, default=0) >= len(mergeable_ranks) + MAX_SPECIAL_SPAN:  # the id table is as long as the largest id
            raise CheckpointError(f"{source}: special token id {max(ids)} is more than {MAX_SPECIAL_SPAN} past the "
                                  f"{len(mergeable_ranks)} BPE ranks")
        absent = [name for name in REQUIRED_SPECIAL_TOKENS if name not in special_tokens]
        if absent:
            raise CheckpointError(f"{source}: no special token {absent[0]} (not a Llama 3 tokenizer)")
        self = cls.__new__(cls)
        self.model_path = Path(source)
        self._build(dict(mergeable_ranks), dict(special_tokens))
        return self

    def _build(self, mergeable_ranks: dict[bytes, int], special_tokens: dict[str, int]) -> None:
        """Everything encode/decode need, from the ranks and the special tokens."""
        self.mergeable_ranks = mergeable_ranks
        self.num_base_tokens = len(mergeable_ranks)
        self.special_tokens: dict[str, int] = special_tokens
        self.n_words: int = max(special_tokens.values(), default=self.num_base_tokens - 1) + 1

        self.bos_id: int = self.special_tokens["<|begin_of_text|>"]
        self.eos_id: int = self.special_tokens["<|end_of_text|>"]
        self.eot_id: int = self.special_tokens["<|eot_id|>"]
        self.eom_id: int = self.special_tokens["<|eom_id|>"]
        self.python_tag_id: int = self.special_tokens["<|python_tag|>"]
        self.pad_id: int = self.special_tokens["<|finetune_right_pad_id|>"]
        self.stop_tokens = [self.eos_id, self.eom_id, self.eot_id]

        # id -> bytes; special tokens decode to their own text, as in tiktoken.
        by_id: list[bytes] = [b""] * self.n_words
        for token, rank in self.mergeable_ranks.items():
            by_id[rank] = token
        for text, i in self.special_tokens.items():
            by_id[i] = text.encode("utf-8")
        self._bytes_of = by_id
        self._split = regex.compile(PAT_STR).findall
        self._split_pinned = regex.compile(PAT_STR_PINNED).findall
        self._cache: dict[str, list[int]] = {}
        self._special_regex: dict[frozenset[str], regex.Pattern] = {}

    # ---- encoding -------------------------------------------------------------------------

    def encode(
        self,
        s: str,
        *,
        bos: bool,
        eos: bool,
        allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
        disallowed_special: Literal["all"] | Collection[str] = (),
    ) -> list[int]:
        """Token ids of `s`, equal to Meta's `Tokenizer.encode(s, bos=, eos=, ...)`.

        Special-token text is plain text unless named in `allowed_special` ("all" allows every
        one); text spelling a token in `disallowed_special` ("all": every one not allowed) raises
        LlamaNbError, as tiktoken raises ValueError. Meta's default is (): never raise.
        """
        if not isinstance(s, str):
            raise TypeError(f"encode() takes a str, got {type(s).__name__}")
        allowed = frozenset(self.special_tokens) if allowed_special == "all" else frozenset(allowed_special or ())
        if disallowed_special == "all":
            disallowed = frozenset(self.special_tokens) - allowed
        else:
            disallowed = frozenset(disallowed_special)
        ids: list[int] = [self.bos_id] if bos else []
        for chunk in self._meta_chunks(s):
            if disallowed:
                match = self._special_pattern(disallowed).search(chunk)
                if match:
                    raise LlamaNbError(f"text contains the special token {match.group()!r}, which is disallowed here")
            self._encode_chunk(chunk, allowed, ids)
        if eos:
            ids.append(self.eos_id)
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """BPE ids of `text` with no special tokens and no chunking (one tiktoken call)."""
        out: list[int] = []
        self._encode_ordinary_into(text, out)
        return out

    @staticmethod
    def _meta_chunks(s: str) -> Iterator[str]:
        """Meta's 400k-char slices, each cut so no whitespace/non-whitespace run passes 25k."""
        for start in range(0, len(s), MAX_ENCODE_CHARS):
            piece = s[start : start + MAX_ENCODE_CHARS]
            if len(piece) <= MAX_NO_WHITESPACES_CHARS:
                yield piece  # no run can be too long: skip the scan
                continue
            slice_start = 0
            for run in _runs_pattern().finditer(piece):
                cut = run.start() + MAX_NO_WHITESPACES_CHARS
                while cut < run.end():
                    yield piece[slice_start:cut]
                    slice_start = cut
                    cut += MAX_NO_WHITESPACES_CHARS
            yield piece[slice_start:]
        if not s:
            yield s

    def _special_pattern(self, tokens: frozenset[str]) -> regex.Pattern:
        pattern = self._special_regex.get(tokens)
        if pattern is None:
            pattern = regex.compile("|".join(regex.escape(t) for t in sorted(tokens)))
            self._special_regex[tokens] = pattern
        return pattern

    def _encode_chunk(self, text: str, allowed: frozenset[str], out: list[int]) -> None:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # tiktoken's fix-up for surrogates: pairs are joined, lone ones become U+FFFD.
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        if not allowed:
            self._encode_ordinary_into(text, out)
            return
        # No special token is a prefix of another, so the leftmost allowed match is what
        # tiktoken's scan (skipping disallowed matches) finds too.
        start = 0
        for match in self._special_pattern(allowed).finditer(text):
            self._encode_ordinary_into(text[start : match.start()], out)
            out.append(self.special_tokens[match.group()])
            start = match.end()
        self._encode_ordinary_into(text[start:], out)

    def _encode_ordinary_into(self, text: str, out: list[int]) -> None:
        cache = self._cache
        # isascii() is O(1) in CPython; the set test runs at ~100M chars/s
        pinned = not text.isascii() and not _NEWER_CHARS.isdisjoint(set(text))
        for piece in (self._split_pinned if pinned else self._split)(text):
            ids = cache.get(piece)
            if ids is None:
                ids = self._bpe(piece.encode("utf-8"))
                if len(piece) <= _CACHE_MAX_PIECE_CHARS:
                    if len(cache) >= _CACHE_MAX_ENTRIES:
                        cache.clear()
                    cache[piece] = ids
            out += ids

    def _bpe(self, piece: bytes) -> list[int]:
        """bpe(piece): merge the lowest-ranked adjacent pair, leftmost first, until none merges."""
        ranks = self.mergeable_ranks
        token = ranks.get(piece)
        if token is not None:
            return [token]
        if len(piece) >= _HEAP_MIN_BYTES:
            return [ranks[part] for part in _merge_with_heap(piece, ranks)]
        parts = [piece[i : i + 1] for i in range(len(piece))]
        get = ranks.get
        # pair_ranks[i] = rank of parts[i] + parts[i+1]
        pair_ranks = [get(a + b, _NO_RANK) for a, b in zip(parts, parts[1:])]
        while pair_ranks:
            best = min(pair_ranks)
            if best == _NO_RANK:
                break
            i = pair_ranks.index(best)  # leftmost of the lowest rank, like tiktoken
            parts[i] += parts.pop(i + 1)
            del pair_ranks[i]
            if i < len(pair_ranks):
                pair_ranks[i] = get(parts[i] + parts[i + 1], _NO_RANK)
            if i > 0:
                pair_ranks[i - 1] = get(parts[i - 1] + parts[i], _NO_RANK)
        return [ranks[part] for part in parts]

    # ---- decoding -------------------------------------------------------------------------

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (a special token's bytes are its text)."""
        if not 0 <= token_id < self.n_words:
            raise LlamaNbError(f"token id {token_id} is not in the vocabulary (0..{self.n_words - 1})")
        return self._bytes_of[token_id]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        ids = list(ids)
        if ids and (min(ids) < 0 or max(ids) >= self.n_words):
            bad = next(i for i in ids if not 0 <= i < self.n_words)
            raise LlamaNbError(f"token id {bad} is not in the vocabulary (0..{self.n_words - 1})")
        by_id = self._bytes_of
        return b"".join([by_id[i] for i in ids])

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; bytes that are not valid UTF-8 become U+FFFD (like tiktoken)."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


def _merge_with_heap(piece: bytes, ranks: dict[bytes, int]) -> list[bytes]:
    """The same merges as the list version in O(n log n), for long pieces (a 25k-char run of
    punctuation is one piece). Parts form a linked list keyed by start offset; the heap holds
    (rank, start) for every adjacent pair, and stale entries are skipped when popped."""
    n = len(piece)
    nxt = list(range(1, n + 1))  # nxt[start] = start of the following part (n: none)
    prv = list(range(-1, n - 1))
    alive = [True] * n
    heap = [(r, i) for i in range(n - 1) if (r := ranks.get(piece[i : i + 2])) is not None]
    heapq.heapify(heap)

    def pair_rank(i: int) -> int | None:
        j = nxt[i]
        return None if j >= n else ranks.get(piece[i : nxt[j]])

    while heap:
        rank, i = heapq.heappop(heap)
        if not alive[i] or pair_rank(i) != rank:
            continue  # the pair changed since this entry was pushed
        j = nxt[i]
        alive[j] = False
        nxt[i] = nxt[j]
        if nxt[j] < n:
            prv[nxt[j]] = i
        for start in (prv[i], i):
            if start >= 0 and (r := pair_rank(start)) is not None:
                heapq.heappush(heap, (r, start))
    parts, i = [], 0
    while i < n:
        parts.append(piece[i : nxt[i]])
        i = nxt[i]
    return parts


class StreamDecoder:
    """Text of a token stream as it grows: push(id) returns what is now complete.

    The concatenation of every push() and the final flush() equals tokenizer.decode(all ids): an
    incomplete UTF-8 sequence at the end is held back until the bytes that finish it (or prove it
    invalid) arrive, so a U+FFFD appears only where decode() would put one.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._utf8.decode(self.tokenizer.token_bytes(token_id), final=False)

    def flush(self) -> str:
        """What is left (an unfinished tail becomes one U+FFFD); the decoder is then reset."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text

"""The Llama 3 tokenizer as a GGUF file stores it (tokenizer.ggml.*), read and written.

llama.cpp's converter writes a Llama 3 vocabulary as Hugging Face's byte-level BPE:

    tokenizer.ggml.model        "gpt2" (byte-level BPE)
    tokenizer.ggml.pre          "llama-bpe" (Meta's split pattern; llama.cpp's name for it)
    tokenizer.ggml.tokens       string[vocab_size]: token i's bytes, each byte b spelled as the
                                character BYTE_TO_UNICODE[b] (GPT-2's bytes_to_unicode: printable
                                bytes as themselves, the other 68 as U+0100..U+0143); special
                                tokens as their text ("<|eot_id|>")
    tokenizer.ggml.token_type   int32[vocab_size]: 1 normal (a BPE rank), 3 control (special),
                                4 user-defined (special), 5 unused (padding, "[PAD4352]")
    tokenizer.ggml.merges       string[]: "left right" (both spelled as above), in priority order
    tokenizer.ggml.bos_token_id, eos_token_id, eot_token_id, eom_token_id, ...   uint32

Meta's tiktoken ranks are the token ids of the normal tokens (a lower rank merges first), which is
what llama_nb reads: ranks = {bytes(token i): i}. The merges say the same thing in Hugging Face's
spelling: a pair (l, r) whose concatenation is a token, ordered by the concatenation's rank;
`read_tokenizer` checks that the file's merges agree with the ids (each merge's two parts and
their concatenation are tokens, and the concatenations' ids never decrease along the list; a part
may have a higher id than the concatenation, as tiktoken allows), and `merges_of` writes every
such pair, sorted as Hugging Face's TikTokenConverter does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from llama_nb.errors import CheckpointError, shown
from llama_nb.io.tokenizer import Tokenizer

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5
TOKEN_TYPE_NAMES = {0: "undefined", 1: "normal", 2: "unknown", 3: "control", 4: "user-defined", 5: "unused", 6: "byte"}
PRE_TOKENIZERS = ("llama-bpe", "smaug-bpe")  # llama.cpp's names for Meta's Llama 3 split pattern


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> character map (openai/gpt-2 encoder.py, bytes_to_unicode)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


BYTE_TO_UNICODE = _bytes_to_unicode()
UNICODE_TO_BYTE = {c: b for b, c in BYTE_TO_UNICODE.items()}


def token_text(token: bytes) -> str:
    return "".join(BYTE_TO_UNICODE[b] for b in token)


def token_bytes(text: str, where: str) -> bytes:
    try:
        return bytes(UNICODE_TO_BYTE[c] for c in text)
    except KeyError as exc:
        raise CheckpointError(f"{where}: token {shown(text)} has the character {shown(exc.args[0])}, which is "
                              "no byte in GPT-2's byte-level spelling") from None


def read_tokenizer(metadata: Mapping[str, Any], path: Path) -> Tokenizer:
    """The Tokenizer a GGUF's tokenizer.ggml.* metadata describes (see the module docstring)."""
    model, pre = metadata.get("tokenizer.ggml.model"), metadata.get("tokenizer.ggml.pre", "default")
    if model != "gpt2":
        raise CheckpointError(f"{path}: tokenizer.ggml.model is {shown(model)}; llama_nb reads Llama 3's "
                              "byte-level BPE (\"gpt2\")")
    if pre not in PRE_TOKENIZERS:
        raise CheckpointError(f"{path}: tokenizer.ggml.pre is {shown(pre)}; llama_nb splits text with Meta's "
                              f"Llama 3 pattern only ({', '.join(PRE_TOKENIZERS)})")
    tokens = metadata.get("tokenizer.ggml.tokens")
    types = metadata.get("tokenizer.ggml.token_type")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise CheckpointError(f"{path}: tokenizer.ggml.tokens must be an array of strings")
    if not isinstance(types, np.ndarray) or types.ndim != 1 or types.dtype.kind not in "iu" or len(types) != len(tokens):
        raise CheckpointError(f"{path}: tokenizer.ggml.token_type must be an integer array, one per token "
                              f"({len(tokens)})")
    ranks: dict[bytes, int] = {}
    specials: dict[str, int] = {}
    for i, (text, kind) in enumerate(zip(tokens, types.tolist())):
        if kind == NORMAL:
            token = token_bytes(text, f"{path}: tokenizer.ggml.tokens[{i}]")
            if token in ranks:
                raise CheckpointError(f"{path}: tokenizer.ggml.tokens[{i}] repeats token {ranks[token]} ({shown(text)})")
            ranks[token] = i
        elif kind in (CONTROL, USER_DEFINED):
            specials[text] = i
        elif kind != UNUSED:
            raise CheckpointError(f"{path}: tokenizer.ggml.tokens[{i}] is of type {TOKEN_TYPE_NAMES.get(kind, kind)}; "
                                  "a Llama 3 vocabulary has normal, control, user-defined and unused tokens only")
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise CheckpointError(f"{path}: the normal tokens are not ids 0..{len(ranks) - 1}; Llama 3's BPE ranks are its first ids")
    _check_merges(metadata.get("tokenizer.ggml.merges"), ranks, path)
    tokenizer = Tokenizer.from_ranks(ranks, specials, path)
    stops = [int(metadata[f"tokenizer.ggml.{key}_token_id"]) for key in ("eos", "eot", "eom")
             if isinstance(metadata.get(f"tokenizer.ggml.{key}_token_id"), int)]
    bad = [i for i in stops if not 0 <= i < tokenizer.n_words]
    if bad:
        raise CheckpointError(f"{path}: stop token id {bad[0]} is outside the {tokenizer.n_words} tokens")
    tokenizer.stop_tokens = list(dict.fromkeys(tokenizer.stop_tokens + stops))
    return tokenizer


def _check_merges(merges: Any, ranks: dict[bytes, int], path: Path) -> None:
    """The merges agree with taking the normal tokens' ids as BPE ranks (see the module docstring)."""
    if merges is None:
        raise CheckpointError(f"{path}: no tokenizer.ggml.merges (llama.cpp needs them for byte-level BPE)")
    if not isinstance(merges, list) or not all(isinstance(m, str) for m in merges):
        raise CheckpointError(f"{path}: tokenizer.ggml.merges must be an array of strings")
    last = -1
    for i, merge in enumerate(merges):
        left, sep, right = merge.partition(" ")
        where = f"{path}: tokenizer.ggml.merges[{i}]"
        a, b = token_bytes(left, where), token_bytes(right, where)
        rank = ranks.get(a + b)
        if not sep or " " in right or a not in ranks or b not in ranks or rank is None:
            raise CheckpointError(f"{where} = {shown(merge)} is not two tokens whose concatenation is a token")
        if rank < last:
            raise CheckpointError(f"{where} = {shown(merge)} comes after a merge into a later token: the merges "
                                  "do not follow the token ids, so the ids are not this vocabulary's BPE ranks")
        last = rank


def merges_of(ranks: Mapping[bytes, int]) -> list[str]:
    """Every pair (l, r) of tokens whose concatenation is a token, as "l r", ordered by the
    concatenation's rank, then l's, then r's (Hugging Face's TikTokenConverter)."""
    pairs = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                pairs.append((rank, ranks[left], ranks[right], left, right))
    pairs.sort()
    return [f"{token_text(left)} {token_text(right)}" for *_, left, right in pairs]


def tokenizer_metadata(tokenizer: Tokenizer, vocab_size: int) -> dict[str, Any]:
    """The tokenizer.ggml.* keys for `tokenizer` in a model of `vocab_size` ids (ids past the
    tokenizer's are "[PAD{i}]", unused, as llama.cpp's converter writes them)."""
    tokens: list[str] = []
    types: list[int] = []
    by_id: dict[int, tuple[str, int]] = {rank: (token_text(token), NORMAL) for token, rank in tokenizer.mergeable_ranks.items()}
    by_id.update({i: (text, CONTROL) for text, i in tokenizer.special_tokens.items()})
    for i in range(vocab_size):
        text, kind = by_id.get(i, (f"[PAD{i}]", UNUSED))
        tokens.append(text)
        types.append(kind)
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "llama-bpe",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": np.array(types, np.int32),
        "tokenizer.ggml.merges": merges_of(tokenizer.mergeable_ranks),
        "tokenizer.ggml.bos_token_id": tokenizer.bos_id,
        "tokenizer.ggml.eos_token_id": tokenizer.eos_id,
        "tokenizer.ggml.eot_token_id": tokenizer.eot_id,
        "tokenizer.ggml.eom_token_id": tokenizer.eom_id,
        "tokenizer.ggml.padding_token_id": tokenizer.pad_id,
    }

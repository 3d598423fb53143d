"""The Llama 3 tokenizer from a Hugging Face folder: tokenizer.json (byte-level BPE) and generation_config.json.

tokenizer.json, as the `tokenizers` package writes it for Llama 3 (transformers' TikTokenConverter
made it from Meta's tokenizer.model):

    {"model": {"type": "BPE", "vocab": {"!": 0, ..., "ĠThe": 578, ...},     token string -> id
               "merges": ["Ġ t", "Ġ a", ...] or [["Ġ", "t"], ...],         in priority order
               "ignore_merges": true, ...},
     "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
         {"type": "Split", "pattern": {"Regex": <Meta's pat_str>}, "behavior": "Isolated", ...},
         {"type": "ByteLevel", "use_regex": false, ...}]},
     "added_tokens": [{"id": 128000, "content": "<|begin_of_text|>", "special": true, ...}, ...], ...}

Token strings spell bytes in GPT-2's `bytes_to_unicode` alphabet: the 188 printable Latin-1 bytes
stand for themselves, the other 68 (controls, space, 0x7f-0xa0, 0xad) for U+0100.. in byte order
(space is "Ġ", newline "Ċ"). `byte_decoder` undoes it.

Ranks come from the vocab's ids, not from the merges: llama_nb's tokenizer is tiktoken's, where
one number per token is both its id (what the embedding table is indexed by) and its merge
priority (the lowest-ranked adjacent pair merges first). Ranks derived from the merge order (as
tiktoken's GPT-2 conversion does) would give the same priorities but other ids. So a tokenizer.json
is accepted only where its merges say the same as its ids, which is what a conversion from
tiktoken (TikTokenConverter: every split l + r of every token whose halves are tokens, sorted by
the rank of l + r) produces:

    every merge "l r": l, r and l + r are tokens, and rank(l + r) never decreases along the list;
    the merges are distinct and there are as many as there are such splits: the merge set is all
    of them, so HF's BPE could merge exactly the pairs tiktoken's can, in the same order.

Anything else (a GPT-2-style vocabulary whose ids are not merge order, a subset of the merges, a
split pattern other than Meta's, a normalizer) would encode differently and is refused in one
line. Llama 3 files set "ignore_merges": true (a pre-token that is itself a token is emitted
whole, as tiktoken does); llama_nb always does that, which is what the model was trained with.

Special tokens are the `added_tokens` (all must be "special": a non-special added token would be
matched inside plain text, which llama_nb's encoder does not do); their ids follow the vocab's.
Stop tokens: generation_config.json's eos_token_id (an id or a list of ids), else Meta's
(<|end_of_text|>, <|eom_id|>, <|eot_id|>).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from llama_nb.errors import CheckpointError, shown
from llama_nb.io.jsonfile import read_json
from llama_nb.io.tokenizer import PAT_STR, Tokenizer
from llama_nb.io.tokenizer_model import MAX_BASE_TOKENS

TOKENIZER_JSON = "tokenizer.json"
GENERATION_CONFIG = "generation_config.json"
MAX_TOKENIZER_JSON_BYTES = 64 << 20  # Llama 3's tokenizer.json: 9 MB
MAX_GENERATION_CONFIG_BYTES = 1 << 20  # ~200 bytes


@functools.cache
def byte_decoder() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, inverted: the character that stands for each byte -> the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in chars]
    chars.update({b: chr(256 + i) for i, b in enumerate(others)})
    return {c: b for b, c in chars.items()}


@functools.cache
def _to_latin1() -> dict[int, str]:
    """A str.translate table: each character of the alphabet -> the character of its byte, and every
    other character below U+0100 (a raw space, a newline: not in the alphabet) -> U+FFFF, which
    like anything else outside the table then fails .encode("latin-1")."""
    table = {c: "\uffff" for c in range(256)}
    table.update({ord(c): chr(b) for c, b in byte_decoder().items()})
    return table


def token_bytes(text: str) -> bytes | None:
    """The bytes a vocab string stands for; None if it has a character outside the alphabet."""
    try:
        return text.translate(_to_latin1()).encode("latin-1")
    except UnicodeEncodeError:
        return None


def read_hf_tokenizer(path: str | Path, generation_config: str | Path | None = None) -> Tokenizer:
    """The Tokenizer of a tokenizer.json, with the stop tokens of generation_config.json if given
    and present; every problem is one CheckpointError naming the file."""
    path = Path(path)
    data = read_json(path, MAX_TOKENIZER_JSON_BYTES, "a Hugging Face tokenizer.json",
                     missing="no such file (a Hugging Face folder has tokenizer.json)")
    model = _field(data, "model", dict, path)
    if model.get("type") != "BPE":
        raise CheckpointError(f"{path}: model type {shown(model.get('type'))} is not BPE (Llama 3 is byte-level BPE)")
    if data.get("normalizer") is not None:
        raise CheckpointError(f"{path}: has a normalizer; Llama 3's tokenizer.json has none")
    _check_pre_tokenizer(data.get("pre_tokenizer"), path)
    vocab = _field(model, "vocab", dict, path)
    specials = _special_tokens(_field(data, "added_tokens", list, path), path)
    text_ranks = _ranks(vocab, specials, path)
    limit = MAX_BASE_TOKENS + len(specials)
    beyond = [(text, i) for text, i in specials.items() if not 0 <= i < limit]
    if beyond:  # the largest id sizes the id -> bytes table: 2**40 must not become its length
        raise CheckpointError(f"{path}: added token {shown(beyond[0][0])} has id {beyond[0][1]}, beyond any "
                              f"Llama vocabulary (ids below {limit})")
    _check_merges(_field(model, "merges", list, path), text_ranks, path)
    ranks: dict[bytes, int] = {}
    for text, rank in text_ranks.items():
        token = token_bytes(text)
        if not token:
            raise CheckpointError(f"{path}: vocab token {shown(text)} is empty or has a character outside the "
                                  f"byte-level alphabet (GPT-2's bytes_to_unicode)")
        ranks[token] = rank
    tokenizer = Tokenizer.from_ranks(ranks, specials, path)
    if generation_config is not None and Path(generation_config).exists():
        tokenizer.stop_tokens = stop_tokens(generation_config, tokenizer.n_words)
    return tokenizer


def stop_tokens(path: str | Path, n_words: int) -> list[int]:
    """generation_config.json's eos_token_id: one id or a list of them, each a token id."""
    path = Path(path)
    data = read_json(path, MAX_GENERATION_CONFIG_BYTES, "a Hugging Face generation_config.json")
    if not isinstance(data, dict) or "eos_token_id" not in data:
        raise CheckpointError(f"{path}: no eos_token_id (the tokens that end a reply)")
    ids = data["eos_token_id"]
    ids = [ids] if not isinstance(ids, list) else ids
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n_words for i in ids):
        raise CheckpointError(f"{path}: eos_token_id {shown(data['eos_token_id'])} must be a token id "
                              f"(0..{n_words - 1}) or a non-empty list of them")
    return list(dict.fromkeys(ids))


def _field(obj: Any, key: str, kind: type, path: Path) -> Any:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind):
        raise CheckpointError(f"{path}: {key!r} must be a JSON {'object' if kind is dict else 'array'}, "
                              f"got {shown(value)}")
    return value


def _check_pre_tokenizer(pre: Any, path: Path) -> None:
    """Meta's split pattern, then the byte-level mapping (no regex of its own, no prefix space)."""
    steps = pre.get("pretokenizers") if isinstance(pre, dict) and pre.get("type") == "Sequence" else [pre]
    ok = (isinstance(steps, list) and len(steps) == 2 and all(isinstance(s, dict) for s in steps)
          and steps[0].get("type") == "Split" and steps[0].get("pattern") == {"Regex": PAT_STR}
          and steps[0].get("behavior") == "Isolated" and not steps[0].get("invert")
          and steps[1].get("type") == "ByteLevel" and steps[1].get("use_regex") is False
          and not steps[1].get("add_prefix_space"))
    if not ok:
        raise CheckpointError(f"{path}: the pre_tokenizer is not Llama 3's (Split on Meta's pattern, then "
                              f"ByteLevel without its own regex); llama_nb would split text differently")


def _special_tokens(added: list, path: Path) -> dict[str, int]:
    specials: dict[str, int] = {}
    for entry in added:
        if not (isinstance(entry, dict) and isinstance(entry.get("content"), str)
                and isinstance(entry.get("id"), int) and not isinstance(entry.get("id"), bool)):
            raise CheckpointError(f"{path}: added_tokens entry {shown(entry)} is not {{id, content, ...}}")
        if entry.get("special") is not True:
            raise CheckpointError(f"{path}: added token {shown(entry['content'])} is not special; llama_nb "
                                  f"matches only special tokens in text")
        if entry["content"] in specials:
            raise CheckpointError(f"{path}: added token {shown(entry['content'])} appears twice")
        specials[entry["content"]] = entry["id"]
    return specials


def _ranks(vocab: dict, specials: dict[str, int], path: Path) -> dict[str, int]:
    """token string -> rank (= id) of every vocab entry that is not a special token."""
    if len(vocab) > MAX_BASE_TOKENS + len(specials):
        raise CheckpointError(f"{path}: {len(vocab)} tokens in the vocab; no Llama tokenizer is that large")
    ranks: dict[str, int] = {}
    for text, rank in vocab.items():
        if not isinstance(rank, int) or isinstance(rank, bool):
            raise CheckpointError(f"{path}: vocab id of {shown(text)} is {shown(rank)}, not an integer")
        if specials.get(text) != rank:  # some files list the special tokens in the vocab too
            ranks[text] = rank
    return ranks


def _check_merges(merges: list, ranks: dict[str, int], path: Path) -> None:
    """The merges are exactly the splits tiktoken's BPE can merge, in rank order (module docstring).
    On the token strings: one character per byte, so strings split and join as their bytes do."""
    seen: set[tuple[str, str]] = set()
    previous = -1
    get = ranks.get
    for k, merge in enumerate(merges):  # 280,147 for Llama 3: written for speed
        parts = merge.split(" ") if type(merge) is str else merge
        if type(parts) is not list or len(parts) != 2 or type(parts[0]) is not str or type(parts[1]) is not str:
            raise CheckpointError(f"{path}: merge {k} {shown(merge)} is not two tokens")
        left, right = parts
        rank = get(left + right)
        if rank is None or left not in ranks or right not in ranks:
            raise CheckpointError(f"{path}: merge {k} {shown(merge)} joins tokens not all in the vocab")
        if rank < previous:
            raise CheckpointError(f"{path}: merge {k} {shown(merge)} makes id {rank} after a merge that made id "
                                  f"{previous}: the merge order is not the id order, which llama_nb's "
                                  f"(tiktoken's) BPE needs")
        previous = rank
        seen.add((left, right))
    if len(seen) != len(merges):  # a repeat somewhere: find it (rare, so not tracked in the loop)
        first: dict[tuple[str, ...], int] = {}
        for k, merge in enumerate(merges):
            pair = tuple(merge.split(" ") if type(merge) is str else merge)
            if pair in first:
                raise CheckpointError(f"{path}: merge {k} {shown(merge)} appears twice (first as merge {first[pair]})")
            first[pair] = k
    splits = 0
    for t in ranks:
        for i in range(1, len(t)):
            if t[:i] in ranks and t[i:] in ranks:
                splits += 1
    if splits != len(merges):
        raise CheckpointError(f"{path}: {len(merges)} merges, but the vocab's tokens split into two tokens in "
                              f"{splits} ways: tiktoken's BPE would merge pairs this tokenizer.json does not")

"""Train a byte-level BPE vocabulary and write it as a Llama 3 `tokenizer.model`.

    python tools/train_bpe.py corpus.txt out/tokenizer.model --vocab 4096

The result is in Meta's format (one `base64(token bytes) rank` per line, ranks 0..n-1) and is read
by llama_nb's `Tokenizer` like Meta's own file; the 256 special tokens then take ids n..n+255.

Algorithm (the classic one, as in GPT-2/tiktoken's educational trainer):
  1. pre-tokenize with Meta's split pattern `PAT_STR` (imported from llama_nb.io.tokenizer, so
     the trainer and the encoder cut text identically) and count the pieces: a piece is never
     crossed by a merge, so the corpus is just {piece: count}.
  2. ranks 0..255 are the single bytes 0x00..0xff, in byte order.
  3. repeat until n tokens: the adjacent pair with the highest count over all pieces (weighted by
     the piece's count) becomes the next rank. Ties go to the smallest (left id, right id), so the
     result is deterministic.
Counting pairs over unique pieces, and updating the counts only for the pieces that hold the
merged pair, makes 3,840 merges over the King James Bible (~900k pieces, ~13k unique) take
seconds rather than hours. A heap with stale entries skipped on pop finds the best pair.

Encoding with the result (tiktoken's rule: merge the lowest-ranked pair first) reproduces the
training merges on every piece, because a pair's rank is its merge order.
"""

from __future__ import annotations

import argparse
import base64
import heapq
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import regex

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install
from llama_nb.io.tokenizer import PAT_STR  # noqa: E402  (Meta's split pattern, one definition)


def count_pieces(text: str) -> Counter[str]:
    """{piece: occurrences} of `text` cut by Meta's split pattern."""
    return Counter(regex.findall(PAT_STR, text))


def train_bpe(pieces: Counter[str], vocab_size: int) -> list[bytes]:
    """Token bytes in rank order: the 256 single bytes, then vocab_size - 256 merges."""
    if vocab_size < 256:
        raise ValueError(f"vocab_size must be >= 256 (the byte tokens), got {vocab_size}")
    vocab: list[bytes] = [bytes([b]) for b in range(256)]
    id_of: dict[bytes, int] = {tok: i for i, tok in enumerate(vocab)}
    words: list[list[int]] = [list(p.encode("utf-8")) for p in pieces]  # each piece as token ids
    freqs: list[int] = list(pieces.values())

    pair_count: defaultdict[tuple[int, int], int] = defaultdict(int)
    pair_words: defaultdict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> pieces holding it
    for w, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_count[pair] += freq
            pair_words[pair].add(w)
    heap = [(-c, pair) for pair, c in pair_count.items()]
    heapq.heapify(heap)

    while len(vocab) < vocab_size and heap:
        neg, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg or neg == 0:
            continue  # stale: the count changed since this entry was pushed
        a, b = pair
        token = vocab[a] + vocab[b]
        new_id = id_of.get(token)
        if new_id is None:
            new_id = id_of[token] = len(vocab)
            vocab.append(token)
        # else: another split of bytes already made a token (rare): merge into it, no new rank
        touched: set[tuple[int, int]] = set()
        for w in pair_words.pop(pair):
            word, freq = words[w], freqs[w]
            for old in zip(word, word[1:]):  # forget this piece's pairs, then recount after merging
                pair_count[old] -= freq
                touched.add(old)
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
                    merged.append(new_id)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            words[w] = merged
            for new in zip(merged, merged[1:]):
                pair_count[new] += freq
                pair_words[new].add(w)
                touched.add(new)
        del pair_count[pair]
        touched.discard(pair)
        for p in touched:
            c = pair_count[p]
            if c > 0:
                heapq.heappush(heap, (-c, p))
            else:  # keep the tables small; pair_words may list pieces that lost the pair: harmless
                del pair_count[p]
                pair_words.pop(p, None)
    return vocab


def write_tokenizer_model(vocab: list[bytes], path: Path) -> None:
    """Meta's tokenizer.model format: `base64(token) rank` per line, rank = position."""
    lines = [f"{base64.b64encode(tok).decode('ascii')} {rank}" for rank, tok in enumerate(vocab)]
    Path(path).write_text("\n".join(lines) + "\n", encoding="ascii")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("corpus", type=Path, help="UTF-8 text file")
    ap.add_argument("out", type=Path, help="tokenizer.model to write")
    ap.add_argument("--vocab", type=int, default=4096, help="number of mergeable ranks (default 4096)")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    pieces = count_pieces(args.corpus.read_text(encoding="utf-8"))
    vocab = train_bpe(pieces, args.vocab)
    write_tokenizer_model(vocab, args.out)
    print(f"{len(vocab)} ranks from {sum(pieces.values())} pieces ({len(pieces)} unique) "
          f"in {time.perf_counter() - start:.1f} s -> {args.out}")


if __name__ == "__main__":
    main()

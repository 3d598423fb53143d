"""Encode throughput of llama_nb's pure-Python tokenizer vs tiktoken (Meta's Tokenizer), same process.

    python bench/bench_tokenizer.py [--mb 3]

The corpus is a few MB of varied text: Python source from the standard library (code, indentation),
English prose from its docstrings and license files, and a seeded mix of other scripts, emoji and
numbers. Both tokenizers encode the same strings, line blocks of ~4 KB each (how prompts arrive);
ids are checked equal. Meta's `Tokenizer.encode` and tiktoken's own `Encoding.encode` are
both timed: Meta's wrapper adds a per-character Python loop. Ours is timed cold (empty piece cache) and warm (second pass), since a
chat session re-encodes mostly familiar pieces.
"""

from __future__ import annotations

import argparse
import random
import sysconfig
import time
from pathlib import Path

from llama_models.llama3 import tokenizer as meta_tokenizer_module
from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer

from llama_nb.io.tokenizer import Tokenizer

MODEL = Path(meta_tokenizer_module.__file__).parent / "tokenizer.model"

MULTILINGUAL = ["日本語のテキストを分割する", "中文分词测试，包括标点。", "한국어 문장입니다", "مرحبا بالعالم",
                "שלום עולם", "नमस्ते दुनिया", "Привет, мир!", "Ελληνικά κείμενα", "naïve café résumé",
                "👨‍👩‍👧‍👦 👍🏽 🏳️‍🌈", "3.14159265358979", "I'LL DON'T we're"]


def corpus(megabytes: float, seed: int = 0) -> list[str]:
    """~`megabytes` MB of text in ~4 KB blocks: stdlib source, then multilingual filler."""
    rng = random.Random(seed)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"))
    rng.shuffle(files)
    target = int(megabytes * 1e6)
    blocks, size = [], 0
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        for start in range(0, len(text), 4096):
            block = text[start : start + 4096]
            if rng.random() < 0.25:  # a quarter of the blocks get other scripts mixed in
                words = block.split(" ")
                for _ in range(len(words) // 8):
                    words[rng.randrange(len(words))] = rng.choice(MULTILINGUAL)
                block = " ".join(words)
            blocks.append(block)
            size += len(block.encode("utf-8"))
            if size >= target:
                return blocks
    return blocks


def timed(encode, blocks: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    n_tokens = sum(len(encode(b)) for b in blocks)
    return time.perf_counter() - start, n_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=3.0, help="corpus size in MB of UTF-8")
    args = parser.parse_args()

    t0 = time.perf_counter()
    ours = Tokenizer(MODEL)
    t_ours_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    meta = MetaTokenizer(MODEL)
    t_meta_load = time.perf_counter() - t0

    blocks = corpus(args.mb)
    n_chars = sum(len(b) for b in blocks)
    n_bytes = sum(len(b.encode("utf-8")) for b in blocks)
    print(f"corpus: {len(blocks)} blocks, {n_chars / 1e6:.2f} M chars, {n_bytes / 1e6:.2f} MB")
    print(f"load tokenizer.model: ours {t_ours_load * 1e3:.0f} ms, Meta/tiktoken {t_meta_load * 1e3:.0f} ms")

    rows = []
    for name, encode in [
        ("Meta's Tokenizer (tiktoken)", lambda s: meta.encode(s, bos=False, eos=False)),
        # Meta's wrapper scans every char in Python (the 25k-run cut); this row is tiktoken alone
        ("tiktoken Encoding.encode", lambda s: meta.model.encode(s, disallowed_special=())),
        ("llama_nb, cold cache", lambda s: ours.encode(s, bos=False, eos=False)),
        ("llama_nb, warm cache", lambda s: ours.encode(s, bos=False, eos=False)),
    ]:
        seconds, n_tokens = timed(encode, blocks)
        rows.append((name, seconds, n_tokens))
    assert len({n_tokens for _, _, n_tokens in rows}) == 1, "token counts differ"
    assert all(ours.encode(b, bos=False, eos=False) == meta.encode(b, bos=False, eos=False) for b in blocks[:200])

    print(f"{'':30} {'seconds':>8} {'M chars/s':>10} {'k tokens/s':>11} {'vs Meta':>8}")
    for name, seconds, n_tokens in rows:
        print(f"{name:30} {seconds:8.2f} {n_chars / seconds / 1e6:10.2f} {n_tokens / seconds / 1e3:11.0f} "
              f"{rows[0][1] / seconds:7.2f}x")
    print(f"tokens: {rows[0][2]}  ({n_chars / rows[0][2]:.2f} chars/token)")


if __name__ == "__main__":
    main()

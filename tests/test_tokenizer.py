"""The tokenizer against its oracle: Meta's llama_models Tokenizer (tiktoken) on the same file.

Inputs come from a seeded generator mixing the things BPE tokenizers get wrong: whitespace runs
and \\r\\n, long numbers, contractions in any case, scripts with combining marks, emoji ZWJ
sequences, astral code points, special-token text, and very long runs that Meta cuts.
"""

from __future__ import annotations

import random
import time
import unicodedata
from pathlib import Path

import pytest
from llama_models.llama3 import tokenizer as meta_tokenizer_module
from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer

from llama_nb.errors import CheckpointError, LlamaNbError
from llama_nb.io.tokenizer import (
    LETTER,
    MAX_NO_WHITESPACES_CHARS,
    NUMBER,
    OTHER_NOT_NEWLINE,
    OTHER_NOT_SPACE,
    SPECIAL_TOKENS,
    StreamDecoder,
    Tokenizer,
    _merge_with_heap,
    load_ranks,
)

MODEL = Path(meta_tokenizer_module.__file__).parent / "tokenizer.model"
SEED = 20261127


@pytest.fixture(scope="module")
def ours() -> Tokenizer:
    return Tokenizer(MODEL)


@pytest.fixture(scope="module")
def meta() -> MetaTokenizer:
    return MetaTokenizer(MODEL)


# ---- a seeded generator of awkward text ---------------------------------------------------

WHITESPACE = [" ", "  ", "\t", "\n", "\r\n", "\r", "\n\n", "\x0b", "\x0c", "\x85", "\xa0", "\u2003", "\u3000",
              "\x1c", "\u2028", " \n", "\t\t", "    "]
WORDS = ["the", "The", "THE", "hello", "world", "tokenizer", "Llama", "naïve", "Straße", "ﬁne", "İstanbul",
         "café", "x", "a", "résumé", "ΑΒΓ", "Привет", "мир", "ǅemal"]
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'Ve", "'M", "'LL", "'lL", "'D",
                "'ſ", "'K", "’s", "I'LL", "DON'T", "can't", "We'Re", "it's", "'", "''", "'x"]
SCRIPTS = ["日本語のテキスト", "中文分词测试", "한국어 문장", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया",
           "ไทย", "Ελληνικά", "e\u0301\u0302", "a\u0308\u0323", "\u0915\u094d\u0937", "ﷺ", "٣٤٥", "１２３", "Ⅻ",
           "½", "²³", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𝟘𝟙𝟚"]
EMOJI = ["😀", "👨‍👩‍👧‍👦", "👍🏽", "🏳️‍🌈", "❤️", "🇫🇷", "🧑🏿‍💻", "👩‍❤️‍💋‍👨", "🫠", "✈︎", "#️⃣"]
CODE = ["def f(x):\n    return x**2\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
        "    if x:\n        pass\r\n", "<div class=\"a\">&amp;</div>", "SELECT * FROM t WHERE id=42;",
        "x = [1, 2, 3]  # comment", "λx.x", "$ ls -la | grep '\\.py$'", "{\"key\": [null, true, 1e-9]}",
        "a+=b;;;", "!!!???...", "---\n***\n___", "http://example.com/path?q=1&r=2#frag"]
SPECIAL_TEXT = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|reserved_special_token_17|>", "<|image|>", "<|python_tag|>", "<|eot_id", "|>", "<|"]


def _number(rng: random.Random) -> str:
    return "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 40)))


def _random_scalar(rng: random.Random) -> str:
    while True:
        c = rng.choice([rng.randint(0, 0x7F), rng.randint(0x80, 0x7FF), rng.randint(0x800, 0xFFFF),
                        rng.randint(0x10000, 0x10FFFF)])
        if not 0xD800 <= c <= 0xDFFF:  # surrogates are not scalar values
            return chr(c)


def _fragment(rng: random.Random) -> str:
    kind = rng.randrange(10)
    if kind == 0:
        return "".join(rng.choice(WHITESPACE) for _ in range(rng.randint(1, 6)))
    if kind == 1:
        return _number(rng)
    if kind == 2:
        return rng.choice(CONTRACTIONS)
    if kind == 3:
        return rng.choice(SCRIPTS)
    if kind == 4:
        return rng.choice(EMOJI)
    if kind == 5:
        return rng.choice(CODE)
    if kind == 6:
        return rng.choice(SPECIAL_TEXT)
    if kind == 7:
        return "".join(_random_scalar(rng) for _ in range(rng.randint(1, 12)))
    if kind == 8:
        return "".join(chr(rng.randint(32, 126)) for _ in range(rng.randint(1, 30)))
    return rng.choice(WORDS)


def random_text(rng: random.Random) -> str:
    text = "".join(_fragment(rng) + rng.choice(["", "", " ", "\n"]) for _ in range(rng.randint(1, 12)))
    if rng.random() < 0.1:
        text = unicodedata.normalize(rng.choice(["NFD", "NFKC"]), text)
    return text


def random_texts(n: int, seed: int = SEED) -> list[str]:
    rng = random.Random(seed)
    return [random_text(rng) for _ in range(n)]


# ---- encode: equal to Meta's ---------------------------------------------------------------

ALL_SCALARS = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)


@pytest.mark.parametrize(
    "tiktoken_class,ours",
    [(r"\p{L}", LETTER), (r"\p{N}", NUMBER), (r"\s", r"\s"), (r"[^\r\n\p{L}\p{N}]", OTHER_NOT_NEWLINE),
     (r"[^\s\p{L}\p{N}]", OTHER_NOT_SPACE), (r"(?i:'s|'t|'m|'d)", r"(?i:'s|'t|'m|'d)")],
)
def test_character_classes_match_tiktoken_on_every_code_point(tiktoken_class, ours):
    """tiktoken's Rust regex and the `regex` package may know different Unicode versions; the
    classes in our split pattern must agree with tiktoken's on every scalar value."""
    import regex
    import tiktoken

    byte_ranks = {bytes([b]): b for b in range(256)}
    probe = tiktoken.Encoding("probe", pat_str=tiktoken_class, mergeable_ranks=byte_ranks, special_tokens={})
    text = "'".join(ALL_SCALARS) if "'" in tiktoken_class else ALL_SCALARS
    # with single-byte ranks the ids are the UTF-8 bytes of the matched characters, in order
    want = bytes(probe.encode_ordinary(text)).decode("utf-8")
    assert "".join(regex.findall(ours, text)) == want


def test_pinned_pattern_is_used_for_newer_code_points(ours, meta):
    for c in ["\U000323B0", "\U00012550", "\u0558", "\U0003D000"]:
        for text in [f"x{c}'s", f"1{c}2", f" {c}{c}!", f"{c}abc"]:
            assert ours.encode(text, bos=False, eos=False) == meta.encode(text, bos=False, eos=False), repr(text)


def test_meta_test_vectors(ours):
    # llama_models/llama3/tests/api/test_tokenizer.py
    assert ours.special_tokens["<|begin_of_text|>"] == 128000
    ids = [128000, 2028, 374, 264, 1296, 11914, 13, 128001]
    assert ours.encode("This is a test sentence.", bos=True, eos=True) == ids
    assert ours.decode(ids) == "<|begin_of_text|>This is a test sentence.<|end_of_text|>"


def test_attributes_match_meta(ours, meta):
    assert ours.special_tokens == meta.special_tokens
    assert ours.pat_str == meta.pat_str
    for name in ("n_words", "bos_id", "eos_id", "eot_id", "eom_id", "python_tag_id", "pad_id", "stop_tokens"):
        assert getattr(ours, name) == getattr(meta, name), name
    assert ours.mergeable_ranks == meta.model._mergeable_ranks


def test_random_texts_match_meta(ours, meta):
    texts = random_texts(2500)
    for i, text in enumerate(texts):
        bos, eos = bool(i & 1), bool(i & 2)
        want = meta.encode(text, bos=bos, eos=eos)
        got = ours.encode(text, bos=bos, eos=eos)
        assert got == want, f"text #{i}: {text!r}"


@pytest.mark.parametrize("allowed", ["all", {"<|eot_id|>", "<|start_header_id|>"}, set()])
def test_allowed_special_matches_meta(ours, meta, allowed):
    rng = random.Random(SEED + 1)
    for _ in range(200):
        text = "".join(rng.choice(SPECIAL_TEXT + WORDS + WHITESPACE) for _ in range(rng.randint(1, 10)))
        assert ours.encode(text, bos=False, eos=False, allowed_special=allowed) == meta.encode(
            text, bos=False, eos=False, allowed_special=allowed), repr(text)


def test_disallowed_special_raises(ours, meta):
    with pytest.raises(ValueError):
        meta.encode("a <|eot_id|>", bos=False, eos=False, disallowed_special="all")
    with pytest.raises(LlamaNbError, match="eot_id"):
        ours.encode("a <|eot_id|>", bos=False, eos=False, disallowed_special="all")
    # allowed wins over "all"; text with no special token never raises
    assert ours.encode("a <|eot_id|>", bos=False, eos=False, allowed_special="all",
                       disallowed_special="all")[-1] == ours.eot_id
    assert ours.encode("a b", bos=False, eos=False, disallowed_special="all") == ours.encode("a b", bos=False, eos=False)


@pytest.mark.parametrize("case", ["whitespace", "punctuation", "letters", "mixed_runs", "over_400k"])
def test_long_inputs_match_meta(ours, meta, case):
    """Meta cuts at 400k chars and at 25k-char runs; the cuts change the ids, so we replicate them."""
    rng = random.Random(SEED + 2)
    n = MAX_NO_WHITESPACES_CHARS
    if case == "whitespace":
        text = "a" + " " * (2 * n + 7) + "\n" * 3 + "\x1c" * (n + 1) + "b"
    elif case == "punctuation":  # one regex piece of 60k bytes: the heap merge path
        text = "x" + "".join(rng.choice("!?.,;:-") for _ in range(2 * n + 10))
    elif case == "letters":
        text = "".join(rng.choice("abcdeé") for _ in range(n + 3)) + " tail"
    elif case == "mixed_runs":
        text = ("w" * (n - 1) + " " * (n + 1)) * 2 + "<|eot_id|>" * 3
    else:
        text = "".join(random_texts(300, seed=SEED + 3)) * 1
        text = (text * (400_000 // len(text) + 2))[:400_005]
    assert ours.encode(text, bos=True, eos=True) == meta.encode(text, bos=True, eos=True)
    assert ours.encode(text, bos=False, eos=False, allowed_special="all") == meta.encode(
        text, bos=False, eos=False, allowed_special="all")


def test_bpe_of_single_pieces_matches_tiktoken(ours, meta):
    """Both merge paths (the list one for short pieces, the heap one for long) against tiktoken's
    byte_pair_encode on arbitrary bytes, including pieces the split pattern would never produce."""
    rng = random.Random(SEED + 9)
    texts = random_texts(300, seed=SEED + 10)
    for trial in range(400):
        if trial % 2:
            piece = rng.choice(texts).encode("utf-8")[: rng.randint(1, 600)]
        else:
            piece = bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))
        want = meta.model._encode_single_piece(piece)
        assert ours._bpe(piece) == want, piece
        heap_parts = _merge_with_heap(piece, ours.mergeable_ranks)
        assert [ours.mergeable_ranks[p] for p in heap_parts] == want, piece


def test_surrogates_handled_like_tiktoken(ours, meta):
    for text in ["a\ud83d\ude00b", "lone \ud800 high", "\udfff", "x\ud83d"]:
        assert ours.encode(text, bos=False, eos=False) == meta.encode(text, bos=False, eos=False), repr(text)


def test_empty_and_special_only(ours, meta):
    for text in ["", " ", "\n", "<|eot_id|>"]:
        for allowed in (set(), "all"):
            assert ours.encode(text, bos=True, eos=True, allowed_special=allowed) == meta.encode(
                text, bos=True, eos=True, allowed_special=allowed)


# ---- decode ---------------------------------------------------------------------------------

def test_decode_round_trips(ours):
    for text in random_texts(300, seed=SEED + 4):
        ids = ours.encode(text, bos=False, eos=False)
        assert ours.decode(ids) == text
        assert ours.decode_bytes(ids) == text.encode("utf-8")


def test_decode_matches_meta_on_random_ids(ours, meta):
    rng = random.Random(SEED + 5)
    for _ in range(300):
        ids = [rng.randrange(ours.n_words) for _ in range(rng.randint(0, 20))]
        assert ours.decode(ids) == meta.decode(ids)
        assert ours.decode_bytes(ids) == meta.model.decode_bytes(ids)
        assert [ours.token_bytes(i) for i in ids] == [meta.model.decode_single_token_bytes(i) for i in ids]


def test_decode_rejects_bad_ids(ours):
    for bad in ([ours.n_words], [-1], [1, 2, 10**9]):
        with pytest.raises(LlamaNbError, match="not in the vocabulary"):
            ours.decode(bad)
    with pytest.raises(LlamaNbError):
        ours.token_bytes(-1)


def _byte_token_ids(ours: Tokenizer, text: str) -> list[int]:
    """`text` as one token per UTF-8 byte, so multi-byte characters are split across tokens."""
    return [ours.mergeable_ranks[bytes([b])] for b in text.encode("utf-8")]


def test_stream_decoder_property(ours):
    rng = random.Random(SEED + 6)
    # single-byte tokens: lone UTF-8 lead and continuation bytes, and bytes never valid in UTF-8
    byte_ids = [ours.mergeable_ranks[bytes([b])] for b in range(256)]
    texts = random_texts(200, seed=SEED + 7)
    for trial in range(600):
        kind = trial % 4
        if kind == 0:  # real text, byte by byte: every emoji / CJK char split
            ids = _byte_token_ids(ours, rng.choice(texts))
        elif kind == 1:  # real text, mixed tokens and split bytes
            ids = []
            for piece in regex_pieces(rng.choice(texts)):
                ids += _byte_token_ids(ours, piece) if rng.random() < 0.5 else ours.encode(piece, bos=False, eos=False)
        elif kind == 2:  # random bytes: invalid and truncated sequences
            ids = [rng.choice(byte_ids) for _ in range(rng.randint(0, 16))]
        else:  # any token at all, specials included
            ids = [rng.randrange(ours.n_words) for _ in range(rng.randint(0, 16))]
        want = ours.decode(ids)
        stream = StreamDecoder(ours)
        outputs = [stream.push(i) for i in ids]
        tail = stream.flush()
        assert "".join(outputs) + tail == want, ids
        # no push ever shows a U+FFFD early: every prefix of the output is a prefix of decode()
        assert all(want.startswith("".join(outputs[: k + 1])) for k in range(len(outputs))), ids
        assert "\ufffd" not in "".join(outputs) or "\ufffd" in want


def test_stream_decoder_holds_back_partial_characters(ours):
    ids = _byte_token_ids(ours, "a😀")
    stream = StreamDecoder(ours)
    assert [stream.push(i) for i in ids] == ["a", "", "", "", "😀"]
    assert stream.flush() == ""
    stream.push(ids[1])  # the first byte of a 4-byte sequence, never finished
    assert stream.flush() == "\ufffd"
    assert stream.flush() == ""  # flush resets


def regex_pieces(text: str) -> list[str]:
    import regex

    return regex.findall(Tokenizer.pat_str, text)


# ---- tokenizer.model parsing ---------------------------------------------------------------

def test_load_is_fast():
    start = time.perf_counter()
    Tokenizer(MODEL)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.5, f"loading {MODEL.name} took {elapsed:.2f} s"  # ~0.12 s measured; slack for CI


def _write_model(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "tokenizer.model"
    path.write_text("\n".join(lines) + "\n")
    return path


def _byte_lines() -> list[str]:
    import base64

    return [f"{base64.b64encode(bytes([b])).decode()} {b}" for b in range(256)]


@pytest.mark.parametrize(
    "bad_line,message",
    [
        ("YWI= 256 extra", "3 fields"),
        ("YWI=", "1 fields"),
        ("YW!= 256", "not valid base64"),
        ("YWI 256", "not valid base64"),
        ("YWI= 25x", "not a non-negative integer"),
        ("YWI= -256", "not a non-negative integer"),
        ("YWI= 0", r"duplicate rank 0 \(first on line 1\)"),
        ("YQ== 256", "duplicate token"),
        ("YWI= 300", "ranks must be 0..256"),
    ],
)
def test_bad_model_lines_name_file_and_line(tmp_path, bad_line, message):
    lines = _byte_lines()
    lines.insert(200, bad_line)  # line 201 of the file
    path = _write_model(tmp_path, lines)
    with pytest.raises(CheckpointError, match=message) as info:
        load_ranks(path)
    text = str(info.value)
    assert "\n" not in text
    if "ranks must be" not in message:
        assert f"{path}:201:" in text
    else:
        assert str(path) in text


def test_missing_and_non_byte_level_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        Tokenizer(tmp_path / "nope.model")
    without_byte_7 = [line for i, line in enumerate(_byte_lines()) if i != 7]
    with pytest.raises(CheckpointError, match="byte 0x07"):
        load_ranks(_write_model(tmp_path, _renumbered(without_byte_7)))
    empty = tmp_path / "empty.model"
    empty.write_text("\n\n")
    with pytest.raises(CheckpointError, match="no tokens"):
        load_ranks(empty)


def _renumbered(lines: list[str]) -> list[str]:
    return [f"{line.split()[0]} {rank}" for rank, line in enumerate(lines)]


def test_small_vocabulary_puts_specials_after_base(tmp_path):
    import base64

    merged = [b"ab", b"abc", b" a"]
    lines = _byte_lines() + [f"{base64.b64encode(t).decode()} {256 + i}" for i, t in enumerate(merged)]
    small = Tokenizer(_write_model(tmp_path, lines))
    assert small.num_base_tokens == 259
    assert small.bos_id == 259 and small.eot_id == 259 + SPECIAL_TOKENS.index("<|eot_id|>")
    assert small.n_words == 259 + 256
    # "ab" (256) outranks " a" (258), so " abd" -> " ", "ab", "d"
    assert small.encode("abc abd", bos=True, eos=False) == [259, 257, ord(" "), 256, ord("d")]
    assert small.decode(small.encode("zabc ab", bos=False, eos=True)) == "zabc ab<|end_of_text|>"
    meta_small = MetaTokenizer(small.model_path)
    assert meta_small.special_tokens == small.special_tokens
    for text in random_texts(200, seed=SEED + 8):
        assert small.encode(text, bos=True, eos=True) == meta_small.encode(text, bos=True, eos=True)


def test_from_ranks_is_the_same_tokenizer():
    """Tokenizer.from_ranks (for GGUF and tokenizer.json vocabularies) builds what the file does."""
    from llama_nb.demo import demo_model_dir
    from llama_nb.errors import CheckpointError
    from llama_nb.io.tokenizer import Tokenizer

    tok = Tokenizer(demo_model_dir() / "tokenizer.model")
    same = Tokenizer.from_ranks(tok.mergeable_ranks, tok.special_tokens, "elsewhere.json")
    text = "Hello, world! <|eot_id|> 12345  \n\n tabs\there"
    for allowed in (frozenset(), "all"):
        assert same.encode(text, bos=True, eos=True, allowed_special=allowed) == \
            tok.encode(text, bos=True, eos=True, allowed_special=allowed)
    assert (same.n_words, same.eot_id, same.stop_tokens) == (tok.n_words, tok.eot_id, tok.stop_tokens)
    bad_ranks = dict(tok.mergeable_ranks)
    bad_ranks[b"\x00"] = 1  # a rank twice, rank 0 gone
    with pytest.raises(CheckpointError, match="elsewhere.json: the BPE ranks"):
        Tokenizer.from_ranks(bad_ranks, tok.special_tokens, "elsewhere.json")
    no_eot = {k: v for k, v in tok.special_tokens.items() if k != "<|eot_id|>"}
    with pytest.raises(CheckpointError, match="no special token <.eot_id.>"):
        Tokenizer.from_ranks(tok.mergeable_ranks, no_eot, "elsewhere.json")
    with pytest.raises(CheckpointError, match="overlap"):
        Tokenizer.from_ranks(tok.mergeable_ranks, dict(tok.special_tokens, extra=5), "elsewhere.json")
    with pytest.raises(CheckpointError, match="special token id 1099511627776 is more than"):  # not a 8 TB table
        Tokenizer.from_ranks(tok.mergeable_ranks, dict(tok.special_tokens, extra=2**40), "elsewhere.json")

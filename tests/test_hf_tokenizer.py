"""tokenizer.json (llama_nb.io.hf_tokenizer) against tiktoken, and its refusals.

The oracle file: a tokenizer.json written by the `tokenizers` package (transformers'
TikTokenConverter) from Meta's real Llama 3 tokenizer.model, read by llama_nb and compared with
Meta's tiktoken-based Tokenizer on tests/test_tokenizer.py's corpus. The refusals use a toy
tokenizer.json made the same way from tests/fuzzing.py's 320-token vocabulary.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer

from llama_nb.errors import CheckpointError
from llama_nb.io.hf_tokenizer import byte_decoder, read_hf_tokenizer, stop_tokens
from llama_nb.io.tokenizer import SPECIAL_TOKENS, Tokenizer
from tests import fuzzing, hfmodel
from tests.test_tokenizer import MODEL, SEED, SPECIAL_TEXT, WHITESPACE, WORDS, random_texts


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("hf_tokenizer")
    hfmodel.write_tokenizer_json(MODEL, folder / "llama3.json")
    (folder / "toy.model").write_bytes(fuzzing.tokenizer_model_text())
    hfmodel.write_tokenizer_json(folder / "toy.model", folder / "toy.json")
    return {"llama3": folder / "llama3.json", "toy": folder / "toy.json", "dir": folder}


@pytest.fixture(scope="module")
def ours(files) -> Tokenizer:
    return read_hf_tokenizer(files["llama3"])


@pytest.fixture(scope="module")
def meta() -> MetaTokenizer:
    return MetaTokenizer(MODEL)


def test_same_vocabulary_and_specials_as_tokenizer_model(ours):
    ref = Tokenizer(MODEL)
    assert ours.mergeable_ranks == ref.mergeable_ranks and ours.special_tokens == ref.special_tokens
    assert ours.stop_tokens == ref.stop_tokens and ours.n_words == 128256


def test_corpus_matches_tiktoken(ours, meta):
    for i, text in enumerate(random_texts(1500)):
        bos, eos = bool(i & 1), bool(i & 2)
        assert ours.encode(text, bos=bos, eos=eos) == meta.encode(text, bos=bos, eos=eos), f"text #{i}: {text!r}"
    rng = random.Random(SEED + 1)
    for _ in range(200):
        text = "".join(rng.choice(SPECIAL_TEXT + WORDS + WHITESPACE) for _ in range(rng.randint(1, 10)))
        assert ours.encode(text, bos=False, eos=False, allowed_special="all") == meta.encode(
            text, bos=False, eos=False, allowed_special="all"), repr(text)


def test_byte_decoder_is_gpt2s_bytes_to_unicode():
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    assert byte_decoder() == {c: b for b, c in bytes_to_unicode().items()}


def test_stop_tokens_from_generation_config(tmp_path):
    path = tmp_path / "generation_config.json"
    for eos, want in ((128009, [128009]), ([128001, 128008, 128009], [128001, 128008, 128009])):
        path.write_text(json.dumps({"bos_token_id": 128000, "eos_token_id": eos}))
        assert stop_tokens(path, 128256) == want
    for bad in ([], "128001", [128001, True], 128256, None):
        path.write_text(json.dumps({"eos_token_id": bad}))
        with pytest.raises(CheckpointError, match="generation_config.json: eos_token_id"):
            stop_tokens(path, 128256)


def edit(data: dict, change) -> dict:
    data = json.loads(json.dumps(data))
    change(data)
    return data


def _swap_merges(d):
    d["model"]["merges"][3], d["model"]["merges"][40] = d["model"]["merges"][40], d["model"]["merges"][3]


# change -> phrase of the one-line refusal
BROKEN = {
    "merge order": (_swap_merges, "the merge order is not the id order"),
    "merge dropped": (lambda d: d["model"]["merges"].pop(10), "tiktoken's BPE would merge pairs"),
    "merge twice": (lambda d: d["model"]["merges"].append(d["model"]["merges"][-1]),
                    "merge 73 ['w', 'it'] appears twice (first as merge 72)"),
    "merge unknown": (lambda d: d["model"]["merges"].append(["Ġ", "zzz"]), "joins tokens not all in the vocab"),
    "vocab outside alphabet": (lambda d: d["model"]["vocab"].update({" x": 320}), "outside the byte-level alphabet"),
    "vocab id repeated": (lambda d: d["model"]["vocab"].update({"ĠĠĠĠĠĠĠĠĠĠ": 5}), "ranks are not 0..320"),
    "pattern": (lambda d: d["pre_tokenizer"]["pretokenizers"][0]["pattern"].update({"Regex": r"\s+"}),
                "the pre_tokenizer is not Llama 3's"),
    "normalizer": (lambda d: d.update({"normalizer": {"type": "NFC"}}), "has a normalizer"),
    "not BPE": (lambda d: d["model"].update({"type": "WordPiece"}), "is not BPE"),
    "added not special": (lambda d: d["added_tokens"][5].update({"special": False}), "is not special"),
    "added missing": (lambda d: d["added_tokens"].pop(9), "no special token <|eot_id|>"),
    "added overlaps": (lambda d: d["added_tokens"][0].update({"id": 7}), "overlap the 320 BPE ranks"),
    "added id huge": (lambda d: d["added_tokens"][3].update({"id": 2**40}), "beyond any Llama vocabulary"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_tokenizer_json_is_refused_in_one_line(files, tmp_path, name):
    change, phrase = BROKEN[name]
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(edit(json.loads(files["toy"].read_text()), change)))
    with pytest.raises(CheckpointError) as info:
        read_hf_tokenizer(path)
    message = str(info.value)
    assert message.startswith(str(path)) and phrase in message and message.isprintable(), message


def test_repeated_vocab_key_is_refused(files, tmp_path):
    """JSON keeps the last of two equal keys; a vocab that says "a" twice is ambiguous, so refused."""
    text = files["toy"].read_text()
    path = tmp_path / "tokenizer.json"
    path.write_text(text.replace('"vocab":{', '"vocab":{"!":7,', 1) if '"vocab":{' in text
                    else text.replace('"vocab": {', '"vocab": {"!": 7, ', 1))
    with pytest.raises(CheckpointError, match=r"key '!' appears twice in one object"):
        read_hf_tokenizer(path)


def test_toy_tokenizer_json_reads_as_its_tokenizer_model(files):
    toy = read_hf_tokenizer(files["toy"])
    ref = Tokenizer(files["dir"] / "toy.model")
    assert toy.mergeable_ranks == ref.mergeable_ranks and toy.special_tokens == ref.special_tokens
    assert len(toy.special_tokens) == len(SPECIAL_TOKENS)

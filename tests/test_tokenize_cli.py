"""`llama-nb tokenize` through typer's CliRunner, on a folder holding only the real tokenizer.model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from llama_models.llama3 import tokenizer as meta_tokenizer_module
from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer
from typer.testing import CliRunner

from llama_nb.cli import app
from llama_nb.cli.tokenize import piece_text, visible

MODEL = Path(meta_tokenizer_module.__file__).parent / "tokenizer.model"
runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    (folder / "tokenizer.model").symlink_to(MODEL)
    return folder


@pytest.fixture(scope="module")
def meta() -> MetaTokenizer:
    return MetaTokenizer(MODEL)


def test_table(model_dir, meta):
    result = runner.invoke(app, ["tokenize", "Hello world", "--model", str(model_dir)])
    assert result.exit_code == 0, result.output
    ids = meta.encode("Hello world", bos=False, eos=False)
    assert f"{len(ids)} tokens" in result.output
    for token_id in ids:
        assert str(token_id) in result.output
    assert "Hello" in result.output and "␣world" in result.output


def test_json_matches_meta(model_dir, meta):
    text = "Hi <|eot_id|> 👍🏽 日本語\n\tx"
    for flags, want in [
        ([], meta.encode(text, bos=False, eos=False)),
        (["--bos"], meta.encode(text, bos=True, eos=False)),
        (["--allow-special"], meta.encode(text, bos=False, eos=False, allowed_special="all")),
    ]:
        result = runner.invoke(app, ["tokenize", text, "-m", str(model_dir), "--json", *flags])
        assert result.exit_code == 0, result.output
        out = json.loads(result.stdout)  # nothing but the one object
        assert set(out) == {"ids", "pieces"}
        assert out["ids"] == want
        assert out["pieces"] == [piece_text(meta.model.decode_single_token_bytes(i)) for i in want]
    assert "<|eot_id|>" in out["pieces"]


def test_pieces_are_readable():
    assert piece_text(b" world") == " world"
    assert piece_text(b"\xf0\x9f") == "b'\\xf0\\x9f'"
    assert visible(" a\n\tb\r\x0b") == "␣a↵→b␍\\x0b"


@pytest.mark.parametrize("what", ["missing folder", "folder without tokenizer.model", "bad tokenizer.model"])
def test_errors_are_one_line_and_exit_1(tmp_path, what):
    if what == "missing folder":
        folder, needle = tmp_path / "nope", "no such folder"
    elif what == "folder without tokenizer.model":
        folder, needle = tmp_path, "tokenizer.model"
    else:
        folder, needle = tmp_path, "tokenizer.model:2:"
        (tmp_path / "tokenizer.model").write_text("IQ== 0\nnot-base64!! 1\n")
    result = runner.invoke(app, ["tokenize", "x", "--model", str(folder)])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("error: ") and needle in lines[0] and str(folder) in lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""

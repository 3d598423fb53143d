"""`llama-nb info` on tiny model folders (typer's CliRunner), and the render functions behind it.

Oracle for the numbers shown: torch.load of the same consolidated.00.pth and the params.json written.
"""

import json
import re

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from llama_nb.cli import app
from llama_nb.cli._render import model_summary_table, tensors_table
from llama_nb.io.checkpoint import expected_shapes
from llama_nb.io.params import ModelArgs
from tests.test_params import LLAMA31_8B
from tests.tinymodel import write_tiny_model

runner = CliRunner(env={"COLUMNS": "200", "LLAMA_NB_DEBUG": None})


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("info") / "tiny", n_layers=3, seed=5)


def invoke(*args):
    return runner.invoke(app, ["info", *map(str, args)])


def test_info_shows_tensors_hyperparameters_and_totals(folder):
    result = invoke("--model", folder)
    assert result.exit_code == 0, result.output
    out = result.stdout
    ref = torch.load(folder / "consolidated.00.pth", weights_only=True)
    for name in ["tok_embeddings.weight", "layers.0.attention.wq.weight", "layers.0.feed_forward.w2.weight",
                 "layers.0.ffn_norm.weight", "norm.weight", "output.weight"]:
        row = next(line for line in out.splitlines() if f" {name} " in line)
        shape = "[" + ", ".join(map(str, ref[name].shape)) + "]"
        assert shape in row and "bfloat16" in row and f"{ref[name].numel():,}" in row, row
    assert "layers.1..2.*" in out and "layers.2.attention.wq.weight" not in out  # collapsed
    params = json.loads((folder / "params.json").read_text())
    for key, value in params.items():
        assert re.search(rf"│ {key}\s+│ {str(value).lower() if isinstance(value, bool) else value}\s", out), key
    total = sum(t.numel() for t in ref.values())
    assert f"{total:,}" in out and f"{total * 2 / 1e9:.2f} GB" in out
    assert re.search(r"head_dim\s+│ 16 ", out) and re.search(r"FFN hidden size\s+│ 192 ", out)


def test_info_all_lists_every_tensor(folder):
    result = invoke("--model", folder, "--all")
    assert result.exit_code == 0, result.output
    names = list(torch.load(folder / "consolidated.00.pth", weights_only=True))
    assert all(f" {name} " in result.stdout for name in names)
    assert "layers.1..2.*" not in result.stdout


def test_info_json_is_one_object(folder):
    result = invoke("--model", folder, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    ref = torch.load(folder / "consolidated.00.pth", weights_only=True)
    assert [(t["name"], t["shape"], t["elements"]) for t in data["tensors"]] == [
        (k, list(v.shape), v.numel()) for k, v in ref.items()
    ]
    assert data["params"] == dict(json.loads((folder / "params.json").read_text()), ffn_dim_multiplier=None)
    assert data["n_elements"] == sum(v.numel() for v in ref.values())
    assert (data["head_dim"], data["ffn_hidden_dim"], data["tied_output"]) == (16, 192, False)
    assert data["tokenizer"] == str(folder / "tokenizer.model")


def one_line_error(result, *fragments):
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # not a LlamaNbError escaping
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_missing_folder_is_one_line_exit_1(tmp_path):
    one_line_error(invoke("--model", tmp_path / "nope"), str(tmp_path / "nope"), "no such folder")


def test_broken_folder_is_one_line_exit_1(tmp_path):
    folder = write_tiny_model(tmp_path / "m", tokenizer=None, vocab_size=300)
    (folder / "params.json").write_text('{"dim": 64,')
    one_line_error(invoke("--model", folder), str(folder / "params.json"), "not valid JSON at line 1")


def test_no_model_and_no_default_folder_describes_the_demo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke()
    assert result.exit_code == 0, result.output
    assert "using the built-in demo model" in result.stderr
    assert "tok_embeddings.weight" in result.stdout and "4352" in result.stdout  # 4,096 BPE + 256 special


def test_tied_model_without_tokenizer(tmp_path):
    folder = write_tiny_model(tmp_path / "tied", tie_output=True, tokenizer=None, vocab_size=300)
    result = invoke("--model", folder)
    assert result.exit_code == 0, result.output
    assert "tied to tok_embeddings" in result.stdout and re.search(r"tokenizer\s+│ missing", result.stdout)
    assert " output.weight " not in result.stdout


def render(renderable) -> str:
    console = Console(width=200, record=True, file=open("/dev/null", "w"))
    console.print(renderable)
    return console.export_text()


def test_8b_table_is_readable():
    """The 8B's 291 tensors collapse to layer 0 plus one row for layers 1..31."""
    args = ModelArgs.from_dict(LLAMA31_8B)
    shapes = expected_shapes(args)
    tensors = [{"name": n, "dtype": "bfloat16", "shape": list(s), "elements": int(torch.Size(s).numel())}
               for n, s in shapes.items()]
    assert len(tensors) == 291
    text = render(tensors_table(tensors))
    rows = [line for line in text.splitlines() if line.startswith("│")]
    assert len(rows) == 1 + 9 + 1 + 2  # embeddings, layer 0, "layers 1..31", norm, output
    layer_elements = sum(t["elements"] for t in tensors if re.match(r"layers\.([1-9]|[12]\d|3[01])\.", t["name"]))
    assert re.search(rf"layers\.1\.\.31\.\*\s+│ bfloat16 │ as layers\.0\s+│\s+{layer_elements:,} │", text)
    assert "[14336, 4096]" in text and "[1024, 4096]" in text and "[128256, 4096]" in text
    assert sum(t["elements"] for t in tensors) == 8_030_261_248  # Llama 3.1 8B's published parameter count


def test_layers_that_differ_are_not_collapsed():
    tensors = [{"name": f"layers.{i}.w", "dtype": "bfloat16", "shape": [4, 4 + (i == 2)], "elements": 16}
               for i in range(4)]
    text = render(tensors_table(tensors))
    assert "layers.2.w" in text and "layers.1..3.*" not in text


def test_summary_table_lists_params_and_derived_sizes():
    args = ModelArgs.from_dict(LLAMA31_8B)
    desc = {"params": args.to_dict(), "head_dim": args.head_dim, "ffn_hidden_dim": args.hidden_dim,
            "tied_output": True, "n_tensors": 290, "n_elements": 10, "size_bytes": 20, "size_gb": 2e-8,
            "checkpoint": "x/consolidated.00.pth", "tokenizer": None}
    text = render(model_summary_table(desc))
    assert re.search(r"ffn_dim_multiplier\s+│ 1\.3 ", text) and re.search(r"use_scaled_rope\s+│ true ", text)
    assert re.search(r"head_dim\s+│ 128 ", text) and re.search(r"FFN hidden size\s+│ 14336 ", text)
    assert "tied to tok_embeddings" in text and re.search(r"tokenizer\s+│ missing", text)

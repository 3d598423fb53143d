"""`llama-nb bench model` on tiny model folders: llama-bench's tests and statistics, the bytes it
says a decode pass streams (checked against the tensors torch.load sees), the --shape cache, and
the one-line errors. Small -p/-n/-r keep it fast; the numbers themselves are not asserted."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import llama_nb
from llama_nb.cli import app
from llama_nb.cli.bench import parse_counts
from llama_nb.model.bench import decode, load_transformer
from llama_nb.errors import LlamaNbError
from llama_nb.formats import bf16_to_f32_np
from llama_nb.io import pth_write
from llama_nb.io.params import ModelArgs
from tests.tinymodel import write_tiny_model

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("bench"), dim=64, n_layers=2, n_heads=4, n_kv_heads=2, seed=3)


def test_bench_model_reports_prefill_and_decode(folder):
    result = invoke("bench", "model", "--model", folder, "-p", "4,8", "-n", 3, "-r", 2)
    assert result.exit_code == 0, result.output
    for text in ("pp4", "pp8", "tg3", "plain-read GB/s", "of read bw", "JIT compile", "peak RSS"):
        assert text in result.stdout, text


def test_bench_model_json(folder):
    result = invoke("bench", "model", "--model", folder, "-p", 5, "-n", "2,3", "-r", 3, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [(t["name"], t["n_prompt"], t["n_gen"]) for t in data["tests"]] == [("pp5", 5, 0), ("tg2", 0, 2), ("tg3", 0, 3)]
    for t in data["tests"]:
        assert len(t["samples_ts"]) == len(t["read_gbps"]) == 3 and min(t["samples_ts"]) > 0
        assert t["avg_ts"] == pytest.approx(statistics.mean(t["samples_ts"]))
        assert t["stddev_ts"] == pytest.approx(statistics.stdev(t["samples_ts"]))
        assert len(t["weights_gbps"]) == (3 if t["n_gen"] else 0)
    # bytes, from the tensors as torch sees them: a decode pass reads every tensor but the embedding
    # table; the norms are held (and read) as float32, widened from the file's bf16
    tensors = torch.load(folder / "consolidated.00.pth", weights_only=True)
    nbytes = {name: t.numel() * (4 if t.dim() == 1 else t.element_size()) for name, t in tensors.items()}
    assert data["weights_bytes"] == sum(nbytes.values())
    assert data["decode_bytes"] == sum(nbytes.values()) - nbytes["tok_embeddings.weight"]
    tg = data["tests"][1]
    assert tg["weights_gbps"] == pytest.approx([ts * data["decode_bytes"] / 1e9 for ts in tg["samples_ts"]])
    # KV cache: float32 keys and values for every layer, kv head and position of the longest test
    p = data["params"]
    assert data["kv_cache_bytes"] == 2 * 2 * p["n_layers"] * p["n_kv_heads"] * (p["dim"] // p["n_heads"]) * 5  # bf16
    assert data["peak_rss_bytes"] >= data["weights_bytes"]
    assert data["compile_seconds"] > 0 and data["warmup_seconds"] > 0


def test_bench_decode_loop_is_greedy_generation(folder):
    """tg's loop (and bench/compare.py's token check) feeds back argmax: the same tokens as generate()."""
    llm = llama_nb.load_model(folder, ctx=32)
    want = [e.token for e in llm.generate([128000, 791], 6)]
    model = load_transformer(folder, ctx=32)
    model.forward([128000], 0)
    assert decode(model, 791, 6, start_pos=1) == want


def test_bench_shape_writes_once_then_reuses(tmp_path, monkeypatch):
    args = ModelArgs(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=256, multiple_of=32)
    monkeypatch.setitem(pth_write.SHAPES, "tiny-test", (args, True))
    monkeypatch.setenv("LLAMA_NB_CACHE", str(tmp_path))
    first = invoke("bench", "model", "--shape", "tiny-test", "-p", 2, "-n", 0, "-r", 1)
    assert first.exit_code == 0, first.output
    assert "writing a random tiny-test model" in first.stderr
    pth = tmp_path / "shapes" / "tiny-test" / "consolidated.00.pth"
    mtime = pth.stat().st_mtime_ns
    second = invoke("bench", "model", "--shape", "tiny-test", "-p", 0, "-n", 2, "-r", 1, "--json")
    assert second.exit_code == 0, second.output
    assert "writing" not in second.stderr and pth.stat().st_mtime_ns == mtime
    data = json.loads(second.stdout)
    assert data["shape"] == "tiny-test" and data["params"] == args.to_dict()


def test_bench_shape_type_quantizes_once_then_reuses_the_gguf(tmp_path, monkeypatch):
    """--shape S --type q4_k_m: the bf16 random model, quantized once into llama_nb-q4_k_m.gguf
    beside it; gguf (llama.cpp's reader) sees llama.cpp's Q4_K_M types and values of the bf16
    weights; the file is benched and then reused, even with the bf16 checkpoint deleted."""
    import gguf

    args = ModelArgs(dim=256, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=512, multiple_of=256)
    monkeypatch.setitem(pth_write.SHAPES, "tiny-q", (args, False))
    monkeypatch.setenv("LLAMA_NB_CACHE", str(tmp_path))
    first = invoke("bench", "model", "--shape", "tiny-q", "--type", "q4_k_m", "-p", 2, "-n", 2, "-r", 1, "--json")
    assert first.exit_code == 0, first.output
    assert "writing a random tiny-q model" in first.stderr and "quantizing the random tiny-q model to q4_k_m" in first.stderr
    folder = tmp_path / "shapes" / "tiny-q"
    path = folder / "llama_nb-q4_k_m.gguf"
    data = json.loads(first.stdout)
    assert data["model"] == str(path) and data["shape"] == "tiny-q" and data["weights_bytes"] < path.stat().st_size
    bf16 = torch.load(folder / "consolidated.00.pth", weights_only=True)
    types = {}
    for t in gguf.GGUFReader(path).tensors:
        types[t.name] = t.tensor_type.name
        if len(t.shape) == 2:
            meta = {"token_embd.weight": "tok_embeddings.weight", "output.weight": "output.weight",
                    "blk.0.attn_q.weight": "layers.0.attention.wq.weight",
                    "blk.0.ffn_down.weight": "layers.0.feed_forward.w2.weight"}.get(t.name)
            if meta is not None:
                want = bf16[meta].float().numpy()
                got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(want.shape)
                assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99, t.name
    assert types["output.weight"] == "Q6_K" and types["blk.0.ffn_down.weight"] == "Q6_K"  # use_more_bits(0, 1)
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == "Q4_K"
    mtime = path.stat().st_mtime_ns
    (folder / "consolidated.00.pth").unlink()  # e.g. to free the disk: the GGUF alone is enough now
    second = invoke("bench", "model", "--shape", "tiny-q", "--type", "q4_k_m", "-p", 0, "-n", 2, "-r", 1)
    assert second.exit_code == 0, second.output
    assert "writing" not in second.stderr and "quantizing" not in second.stderr and path.stat().st_mtime_ns == mtime
    assert "tg2" in second.stdout and "beyond" in second.stdout
    for extra, message in ((["--type", "q4_k_m"], "goes with --shape"), (["--shape", "tiny-q", "--type", "q5_k"], "q8_0, q4_k_m")):
        refused = invoke("bench", "model", *extra, "-p", 2, "-n", 0)
        assert isinstance(refused.exception, LlamaNbError) and message in str(refused.exception), refused.output


def test_bench_shape_refuses_when_the_disk_is_too_small(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMA_NB_CACHE", str(tmp_path))
    monkeypatch.setattr(pth_write.shutil, "disk_usage", lambda p: type("U", (), {"free": 10**9})())
    with pytest.raises(LlamaNbError, match=r"needs 16\.1 GB .* only 1\.0 GB free"):
        pth_write.ensure_shape_model("llama3.1-8b")
    assert not (tmp_path / "shapes" / "llama3.1-8b" / "consolidated.00.pth").exists()


@pytest.mark.parametrize("args,message", [
    (["--shape", "llama9"], "unknown; known shapes: llama3.2-1b, llama3.1-8b, llama3.1-8b-4layers"),
    (["-p", "12x"], "expected comma-separated token counts"),
    (["-p", 0, "-n", 0], "nothing to run"),
])
def test_bench_model_errors_are_one_line(folder, args, message):
    result = invoke("bench", "model", "--model", folder, *args) if args[0] != "--shape" else invoke("bench", "model", *args)
    assert result.exit_code != 0
    assert isinstance(result.exception, LlamaNbError) and message in str(result.exception)
    assert "\n" not in str(result.exception)


def test_model_and_shape_together_are_refused(folder):
    result = invoke("bench", "model", "--model", folder, "--shape", "llama3.2-1b")
    assert isinstance(result.exception, LlamaNbError) and "give one of them" in str(result.exception)


def test_parse_counts_follows_llama_bench():
    assert parse_counts("128,512", "-p") == [128, 512]
    assert parse_counts("0", "-p") == [] and parse_counts("", "-n") == []
    assert parse_counts("64, 64,0,16", "-n") == [64, 16]
    with pytest.raises(LlamaNbError):
        parse_counts("-3", "-p")


def test_bench_model_decodes_at_context_depths(folder):
    result = invoke("bench", "model", "--model", folder, "-p", 0, "-n", 2, "-r", 1, "--at", "70,130", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["kv_cache"] == "bf16"
    assert [(t["name"], t["depth"]) for t in data["tests"]] == [("tg2", 0), ("tg2 @ d70", 70), ("tg2 @ d130", 130)]
    args = ModelArgs(**{k: v for k, v in data["params"].items() if k in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size")})
    for t in data["tests"]:  # the cache a decode pass reads (bf16: 2 bytes) at its middle position
        per_position = 2 * args.n_layers * 2 * args.n_kv_heads * args.head_dim
        assert t["kv_gbps"] == pytest.approx([ts * per_position * (t["depth"] + 1) / 1e9 for ts in t["samples_ts"]])
    table = invoke("bench", "model", "--model", folder, "-p", 0, "-n", 2, "-r", 1, "--at", 40, "--kv-cache", "f32")
    assert table.exit_code == 0, table.output
    assert "tg2 @ d40" in table.stdout and "KV GB/s" in table.stdout and "KV cache f32" in table.stdout
    refused = invoke("bench", "model", "--model", folder, "-p", 4, "-n", 0, "--at", 40)
    assert isinstance(refused.exception, LlamaNbError) and "needs -n" in str(refused.exception)


def test_fill_cache_writes_the_positions_asked_for(folder):
    model = load_transformer(folder, ctx=64)
    from llama_nb.model.bench import fill_cache

    fill_cache(model, 40)
    for cache in (model.state.cache_k, model.state.cache_v):
        assert cache.dtype == np.uint16
        values = bf16_to_f32_np(cache[:, :, :40])
        assert 0.5 < values.std() < 2 and np.isfinite(values).all()
        assert not cache[:, :, 40:].any()

"""GGUF files against code nobody here wrote: the `gguf` package (llama.cpp's Python library).

Files written by gguf.GGUFWriter with llama.cpp's names and metadata (tests/gguf_oracle.py) load
and give the logits of the Meta folder they came from, bit for bit (bf16 weights, float32 norms),
with the real Llama 3 tokenizer's ids; files written by our writer (`llama-nb quantize`) read
back with gguf.GGUFReader with the same tensors and metadata; RoPE scaling survives the trip
through llama.cpp's rope_freqs divisors.
"""

from __future__ import annotations

import errno
import shutil

import gguf
import numpy as np
import pytest

import llama_nb
from llama_nb.demo import demo_model_dir
from llama_nb.errors import CheckpointError, LlamaNbError
from llama_nb.io.checkpoint import load_model_files, load_tokenizer
from llama_nb.io.gguf import read_gguf
from llama_nb.io.gguf_model import ROPE_FREQS, gguf_name, rope_scaling_of
from llama_nb.io.params import ModelArgs, RopeScaling
from llama_nb.io.tokenizer import Tokenizer
from llama_nb.model.quantize import quantize_model, tensor_type, use_more_bits
from llama_nb.model.weights import stored_format, stored_weight
from tests.gguf_oracle import llama_cpp_rope_factors, oracle_names, write_oracle_gguf
from tests.tinymodel import write_tiny_model

CONFIGS = {  # write_tiny_model arguments: Meta's real tokenizer (128256 ids), or the demo model's (4352)
    "gqa-scaled-untied": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, use_scaled_rope=True, tie_output=False),
    "mqa-odd-ffn-tied": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=1, multiple_of=48, ffn_dim_multiplier=1.3,
                             rope_theta=10000.0, use_scaled_rope=True, tie_output=True, tokenizer=None,
                             vocab_size=4352),
}
TEXTS = ["The quick brown fox, 1234567 times!", "  héllo wörld 🦙\n\n\tdone<|eot_id|>", "<|begin_of_text|>x"]


def same_model(a: ModelArgs, b: ModelArgs) -> bool:
    """The same hyperparameters, the FFN width compared as a width (a GGUF carries no multiple_of)."""
    keys = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "norm_eps", "rope_theta", "use_scaled_rope",
            "rope_scaling", "hidden_dim")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request, tmp_path_factory):
    """(Meta folder, the GGUF gguf.GGUFWriter made of it)."""
    return _write_pair(tmp_path_factory.mktemp(request.param), CONFIGS[request.param])


def _write_pair(tmp, config):
    folder = write_tiny_model(tmp / "meta", seed=3, weight_std=None, **config)
    if not (folder / "tokenizer.model").exists():
        shutil.copyfile(demo_model_dir() / "tokenizer.model", folder / "tokenizer.model")
    return folder, write_oracle_gguf(folder, tmp / "model.gguf")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The demo-tokenizer config's pair (gguf.GGUFReader parses 280k merges for minutes, 5922 in a second)."""
    tmp = tmp_path_factory.mktemp("small")
    return _write_pair(tmp, CONFIGS["mqa-odd-ffn-tied"])


def test_oracle_gguf_gives_the_meta_models_logits_bit_for_bit(pair):
    folder, path = pair
    meta, ours = llama_nb.load_model(folder, ctx=64), llama_nb.load_model(path, ctx=64)
    assert same_model(ours.args, meta.args)
    ids = meta.tokenizer.encode(TEXTS[0], bos=True, eos=False)
    want, got = meta.forward(ids, 0), ours.forward(ids, 0)
    assert want.std() > 0.05 and np.array_equal(got, want)
    assert [e.token for e in ours.generate(ids, 8)] == [e.token for e in meta.generate(ids, 8)]


def test_oracle_gguf_tokenizer_gives_the_real_tokenizers_ids(pair):
    folder, path = pair
    real, ours = Tokenizer(folder / "tokenizer.model"), load_tokenizer(path)
    for text in TEXTS:
        for allowed in (frozenset(), "all"):
            assert ours.encode(text, bos=True, eos=True, allowed_special=allowed) == \
                real.encode(text, bos=True, eos=True, allowed_special=allowed)
    assert ours.n_words == real.n_words and ours.special_tokens == real.special_tokens
    assert set(ours.stop_tokens) == set(real.stop_tokens)  # eos_token_id = <|eot_id|>, already a stop


def test_gguf_names_are_llama_cpps(pair):
    folder, path = pair
    files = load_model_files(path)
    names = oracle_names(files.args.n_layers)
    assert all(gguf_name(meta) == names[meta] for meta in files.checkpoint.tensors)
    assert files.tied_output == ("output.weight" not in load_model_files(folder).checkpoint)


def test_our_file_reads_back_in_gguf_reader_with_the_same_tensors_and_metadata(small, tmp_path):
    folder, _ = small
    out = tmp_path / "ours.gguf"
    quantize_model(folder, "bf16", out)
    theirs, mine = gguf.GGUFReader(out), read_gguf(out)
    meta = load_model_files(folder).checkpoint
    assert [t.name for t in theirs.tensors] == list(mine.tensors)
    for t in theirs.tensors:
        info = mine.tensors[t.name]
        assert t.tensor_type.name == info.type_name and tuple(reversed(t.shape.tolist())) == info.shape
        assert t.data_offset == info.offset and bytes(np.asarray(t.data).reshape(-1).view(np.uint8)) == \
            bytes(np.asarray(mine.array(t.name)).reshape(-1).view(np.uint8))
        source = next((meta[m] for m in meta.tensors if gguf_name(m) == t.name), None)
        if t.name == ROPE_FREQS:
            args = load_model_files(folder).args
            np.testing.assert_allclose(t.data, llama_cpp_rope_factors(args.head_dim, args.rope_theta), rtol=1e-6)
        elif source.ndim == 2:  # bf16 bits as Meta stored them
            assert np.array_equal(np.asarray(t.data).view(np.uint16).reshape(source.shape), source)
        else:
            assert np.array_equal(t.data, (source.astype(np.uint32) << 16).view(np.float32))
    fields = {k: f for k, f in theirs.fields.items() if not k.startswith("GGUF.")}
    assert list(fields) == list(mine.metadata)
    for key, field in fields.items():
        value = field.contents()
        if isinstance(mine.metadata[key], np.ndarray):
            assert np.array_equal(np.asarray(value), mine.metadata[key]), key
        elif isinstance(mine.metadata[key], float):
            assert np.float32(value) == np.float32(mine.metadata[key]), key
        else:
            assert value == mine.metadata[key], key
    assert mine.metadata["general.architecture"] == "llama" and mine.metadata["tokenizer.ggml.pre"] == "llama-bpe"


def test_our_bf16_file_loads_bit_identical(small, tmp_path):
    folder, _ = small
    out = tmp_path / "ours.gguf"
    quantize_model(folder, "bf16", out)
    meta, ours = llama_nb.load_model(folder, ctx=32), llama_nb.load_model(out, ctx=32)
    ids = meta.tokenizer.encode(TEXTS[1], bos=True, eos=False)
    assert same_model(ours.args, meta.args) and np.array_equal(ours.forward(ids, 0), meta.forward(ids, 0))


@pytest.mark.parametrize("scaling", [
    dict(), dict(factor=32.0), dict(factor=16.0, high_freq_factor=2.0, old_context_len=4096),
    dict(factor=4.0, high_freq_factor=8.0, old_context_len=16384),
])
@pytest.mark.parametrize("head_dim,theta", [(128, 500000.0), (64, 500000.0), (32, 10000.0)])
def test_rope_freqs_from_llama_cpps_converter_give_back_the_scaling(tmp_path, scaling, head_dim, theta):
    factors = llama_cpp_rope_factors(head_dim, theta, **scaling)
    path = _rope_only_gguf(tmp_path / "r.gguf", factors)
    args = ModelArgs(dim=head_dim * 2, n_layers=1, n_heads=2, n_kv_heads=2, vocab_size=8, rope_theta=theta)
    got = rope_scaling_of(read_gguf(path), args)
    want = RopeScaling(factor=scaling.get("factor", 8.0), high_freq_factor=scaling.get("high_freq_factor", 4.0),
                       original_context=scaling.get("old_context_len", 8192))
    blended = ((factors > 1) & (factors < factors.max())).sum()
    if blended >= 2 or not scaling:  # fewer than 2 blended divisors leave the thresholds open: any fit is fine
        assert got == want
    assert np.allclose(llama_cpp_rope_factors(head_dim, theta, factor=got.factor, high_freq_factor=got.high_freq_factor,
                                              old_context_len=got.original_context), factors, rtol=1e-5)


def test_rope_freqs_that_are_no_llama3_scaling_are_refused(tmp_path):
    args = ModelArgs(dim=256, n_layers=1, n_heads=2, n_kv_heads=2, vocab_size=8)
    factors = llama_cpp_rope_factors(128, 500000.0)
    factors[3] = 2.5  # a fast frequency divided: no factor/context gives that
    with pytest.raises(CheckpointError, match=r"r\.gguf: rope_freqs\.weight: these divisors are not Llama 3\.1's"):
        rope_scaling_of(read_gguf(_rope_only_gguf(tmp_path / "r.gguf", factors)), args)
    assert rope_scaling_of(read_gguf(_rope_only_gguf(tmp_path / "one.gguf", np.ones(64, np.float32))), args) is None


def _rope_only_gguf(path, factors):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor(ROPE_FREQS, np.asarray(factors, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_q4_k_m_tensor_types_follow_llama_cpp():
    """llama.cpp's llama-quant.cpp for a 32-layer Llama: Q6_K attn_v/ffn_down in layers 0-3,
    6, 9, ..., 27 and 28-31, the output Q6_K, Q4_K elsewhere."""
    q6 = [i for i in range(32) if use_more_bits(i, 32)]
    assert q6 == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    shape = (4096, 4096)
    assert tensor_type("output.weight", (128256, 4096), 32, "q4_k_m", False) == "Q6_K"
    assert tensor_type("tok_embeddings.weight", (128256, 4096), 32, "q4_k_m", False) == "Q4_K"
    assert tensor_type("tok_embeddings.weight", (128256, 2048), 16, "q4_k_m", True) == "Q6_K"  # tied: the output's
    assert tensor_type("layers.6.attention.wv.weight", (1024, 4096), 32, "q4_k_m", False) == "Q6_K"
    assert tensor_type("layers.7.feed_forward.w2.weight", (4096, 14336), 32, "q4_k_m", False) == "Q4_K"
    assert tensor_type("layers.7.attention.wq.weight", shape, 32, "q4_k_m", False) == "Q4_K"
    assert tensor_type("layers.0.feed_forward.w2.weight", (256, 704), 6, "q4_k_m", False) == "Q8_0"  # 704 % 256
    assert tensor_type("layers.0.attention_norm.weight", (4096,), 32, "q4_k_m", False) == "F32"
    assert tensor_type("layers.0.attention.wq.weight", (64, 48), 2, "q8_0", False) == "F16"  # 48 % 32


def test_writing_leaves_nothing_behind_on_error_ctrl_c_or_a_full_disk(small, tmp_path, monkeypatch):
    folder, _ = small
    out = tmp_path / "x.gguf"

    def interrupt(plan):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        quantize_model(folder, "bf16", out, on_tensor=interrupt)
    assert list(tmp_path.iterdir()) == []

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("llama_nb.io.gguf_write.os.fsync", full)
    with pytest.raises(LlamaNbError, match=r"x\.gguf: the disk is full"):
        quantize_model(folder, "bf16", out)
    assert list(tmp_path.iterdir()) == []


def test_oracle_q8_0_gguf_loads_with_gguf_s_values_and_near_the_bf16_logits(small, tmp_path):
    folder, _ = small
    path = write_oracle_gguf(folder, tmp_path / "q8.gguf", qtype="Q8_0")  # blocks made by gguf.quants
    files = load_model_files(path)
    theirs = {t.name: t for t in gguf.GGUFReader(path).tensors}
    wq = theirs["blk.0.attn_q.weight"]
    ours = llama_nb.load_model(path, ctx=32)
    assert ours.model.weights.layers[0].attention.wq.format.name == "q8_0"
    assert np.array_equal(ours.model.weights.layers[0].attention.wq.dequantize(),
                          gguf.quants.dequantize(wq.data, wq.tensor_type))
    meta = llama_nb.load_model(folder, ctx=32)
    ids = meta.tokenizer.encode(TEXTS[0], bos=True, eos=False)
    want, got = meta.forward(ids, 0), ours.forward(ids, 0)
    assert files.checkpoint.dtypes["layers.0.attention.wq.weight"] == "q8_0"
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max() and not np.array_equal(got, want)


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A model whose rows are whole 256-weight super-blocks (Q4_K, Q6_K), with the demo tokenizer."""
    folder = write_tiny_model(tmp_path_factory.mktemp("wide") / "meta", dim=256, n_layers=2, n_heads=4, n_kv_heads=2,
                              multiple_of=256, tokenizer=None, vocab_size=4352, seed=5, weight_std=None)
    shutil.copyfile(demo_model_dir() / "tokenizer.model", folder / "tokenizer.model")
    return folder


@pytest.mark.parametrize("ftype", ["q8_0", "q4_k_m"])
def test_our_quantized_files_read_back_in_gguf_reader(wide, tmp_path, ftype):
    """llama.cpp's per-tensor types; gguf's dequantization of our blocks is our format's, bit for
    bit; Q8_0 blocks are gguf's own quantization of the bf16 values."""
    folder = wide
    out = tmp_path / f"{ftype}.gguf"
    quantize_model(folder, ftype, out)
    files, meta = load_model_files(out), load_model_files(folder)
    n_layers = files.args.n_layers
    by_gguf = {gguf_name(m): m for m in meta.checkpoint.tensors}
    for t in gguf.GGUFReader(out).tensors:
        if t.name == ROPE_FREQS:
            continue
        m = by_gguf[t.name]
        assert t.tensor_type.name == tensor_type(m, tuple(reversed(t.shape.tolist())), n_layers, ftype, files.tied_output)
        if len(t.shape) == 1:
            continue
        mine = stored_weight(files.checkpoint.tensors[m], stored_format(files.checkpoint.dtypes[m]))
        assert np.array_equal(mine.dequantize(), gguf.quants.dequantize(t.data, t.tensor_type)), t.name
        if t.tensor_type.name == "Q8_0":
            values = (meta.checkpoint.tensors[m].astype(np.uint32) << 16).view(np.float32)
            assert np.array_equal(np.asarray(t.data), gguf.quants.quantize(values, t.tensor_type)), t.name
    types = {t.tensor_type.name for t in gguf.GGUFReader(out).tensors}
    assert types == ({"Q8_0", "F32"} if ftype == "q8_0" else {"Q4_K", "Q6_K", "F32"}), types

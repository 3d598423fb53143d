"""load_pth and load_model_files against torch.load: same tensors bit for bit, zero-copy, clear refusals.

Oracle: torch.save writes every file here and torch.load reads it back; tiny model shapes are
checked against Meta's own Transformer (llama_models) state_dict.
"""

import collections
import io
import json
import zipfile

import numpy as np
import pytest
import torch
from tests.tinymodel import meta_transformer, tiny_params, tiny_state_dict, write_tiny_model

from llama_nb.errors import CheckpointError
from llama_nb.io.checkpoint import describe, expected_shapes, load_model_files
from llama_nb.io.params import ModelArgs
from llama_nb.io.pth import load_pth

NP_BITS = {torch.bfloat16: (torch.int16, np.uint16), torch.float16: (torch.int16, np.uint16),
           torch.float32: (torch.int32, np.uint32)}
DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


def flat_state_dict(obj, prefix=""):
    for key, value in obj.items():
        if isinstance(value, dict):
            yield from flat_state_dict(value, prefix + key + ".")
        elif isinstance(value, torch.Tensor):
            yield prefix + key, value


def assert_matches_torch(path):
    """Every tensor equals torch.load's bit for bit, in the same order, as a read-only memmap view."""
    ck = load_pth(path)
    want = dict(flat_state_dict(torch.load(path, weights_only=False)))  # our own files; FRAME needs it
    assert list(ck.keys()) == list(want)
    for name, t in want.items():
        got = ck[name]
        assert ck.dtypes[name] == DTYPE_NAMES[t.dtype], name
        assert got.shape == tuple(t.shape) and got.itemsize == t.element_size(), name
        assert got.strides == tuple(s * t.element_size() for s in t.stride()), name
        torch_bits, np_bits = NP_BITS[t.dtype]
        np.testing.assert_array_equal(got.view(np_bits), t.view(torch_bits).numpy().view(np_bits), err_msg=name)
        assert not got.flags.writeable, name
        if got.size:
            assert np.shares_memory(got, ck.mmap), f"{name} is a copy, not a view into the file map"
        base = got
        while base.base is not None and base is not ck.mmap:
            base = base.base
        assert base is ck.mmap or base is ck.mmap.base, name
    read = ck.read_tensors()  # the same tensors read into memory: equal bits, own writable memory
    assert list(read) == list(want)
    for name, got in ck.items():
        assert read[name].shape == got.shape and read[name].dtype == got.dtype, name
        np.testing.assert_array_equal(read[name].reshape(-1).view(np.uint8), np.ascontiguousarray(got).reshape(-1).view(np.uint8), err_msg=name)
        assert read[name].flags.c_contiguous and read[name].flags.writeable, name
        assert not np.shares_memory(read[name], ck.mmap), name
    return ck


def special_values(dtype):
    """Normals, subnormals, +-0, +-inf and NaN, so bit comparisons mean something."""
    finfo = torch.finfo(dtype)
    values = [0.0, -0.0, 1.0, -2.5, finfo.max, finfo.tiny, finfo.tiny / 4, float("inf"), float("-inf"), float("nan")]
    return torch.tensor(values, dtype=torch.float32).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_each_dtype_bit_exact(tmp_path, dtype):
    gen = torch.Generator().manual_seed(1)
    sd = collections.OrderedDict(
        matrix=torch.randn(7, 13, generator=gen).to(dtype),
        special=special_values(dtype),
        cube=torch.randn(2, 3, 5, generator=gen).to(dtype),
    )
    torch.save(sd, tmp_path / "w.pth")
    assert_matches_torch(tmp_path / "w.pth")


def test_scalars_empty_and_parameters(tmp_path):
    sd = {
        "scalar": torch.tensor(3.5, dtype=torch.float16),
        "scalar_bf16": torch.tensor(-1.25, dtype=torch.bfloat16),
        "empty": torch.zeros(0, dtype=torch.float32),
        "empty2d": torch.zeros(0, 5, dtype=torch.bfloat16),
        "param": torch.nn.Parameter(torch.ones(3, 2, dtype=torch.bfloat16)),
    }
    torch.save(sd, tmp_path / "w.pth")
    ck = assert_matches_torch(tmp_path / "w.pth")
    assert ck["scalar"].shape == () and float(ck["scalar"]) == 3.5
    assert ck["empty2d"].shape == (0, 5)


def test_views_sharing_one_storage(tmp_path):
    """Slices, transposes and column views of one storage: offsets and strides honoured, zero copy."""
    base = torch.arange(48, dtype=torch.float32).reshape(6, 8).to(torch.bfloat16)
    sd = {
        "base": base,
        "rows_from_2": base[2:],
        "column_1": base[:, 1],  # stride 8: non-contiguous, returned as a strided view
        "transposed": base.T,
        "block": base[1:4, 2:7],
        "flat_tail": base.reshape(-1)[40:],
        "same_again": base,  # the same tensor twice (tied weights)
    }
    torch.save(sd, tmp_path / "views.pth")
    ck = assert_matches_torch(tmp_path / "views.pth")
    assert not ck["column_1"].flags.c_contiguous and ck["column_1"].strides == (16,)
    assert ck["rows_from_2"].__array_interface__["data"][0] - ck["base"].__array_interface__["data"][0] == 2 * 8 * 2
    assert np.shares_memory(ck["base"], ck["block"]) and np.shares_memory(ck["base"], ck["same_again"])


def test_nested_dicts_flatten_to_dotted_names_and_keep_metadata(tmp_path):
    inner = collections.OrderedDict([("w", torch.ones(2, 2)), ("b", torch.zeros(2, dtype=torch.float16))])
    torch.save({"model": inner, "ema": {"model": {"w": torch.full((3,), 2.0)}}, "step": 7, "name": "x"},
               tmp_path / "nested.pth")
    ck = assert_matches_torch(tmp_path / "nested.pth")
    assert list(ck.keys()) == ["model.w", "model.b", "ema.model.w"]
    assert ck.metadata == {"step": 7, "name": "x"}


def test_archive_prefix_is_whatever_torch_wrote(tmp_path):
    """torch names the folder inside the zip after the file (or 'archive' for a stream)."""
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(4, dtype=torch.bfloat16)}, buffer)
    (tmp_path / "renamed.pth").write_bytes(buffer.getvalue())
    assert zipfile.ZipFile(tmp_path / "renamed.pth").namelist()[0] == "archive/data.pkl"
    assert_matches_torch(tmp_path / "renamed.pth")


def test_pickle_protocol_4(tmp_path):
    torch.save({"w": torch.randn(3, 4).to(torch.bfloat16)}, tmp_path / "p4.pth", pickle_protocol=4)
    assert_matches_torch(tmp_path / "p4.pth")


def test_other_dtypes_are_refused_by_name(tmp_path):
    torch.save({"ids": torch.arange(4)}, tmp_path / "int.pth")
    with pytest.raises(CheckpointError, match=r"refusing global torch\.LongStorage in .*int\.pth.*: unsupported tensor dtype") as info:
        load_pth(tmp_path / "int.pth")
    assert "int.pth" in str(info.value)


def test_missing_tensor_lookup(tmp_path):
    torch.save({"w": torch.ones(1)}, tmp_path / "w.pth")
    ck = load_pth(tmp_path / "w.pth")
    assert "w" in ck and "v" not in ck and len(ck) == 1
    with pytest.raises(CheckpointError, match=r"w\.pth: no tensor named 'v'"):
        ck["v"]
    with pytest.raises(KeyError):  # still a KeyError for dict-like callers
        ck["v"]


# --- file-level refusals --------------------------------------------------------------------------


def rewrite_zip(src, dst, *, compress=None, replace=None):
    """Copy a torch zip entry by entry, optionally compressing or replacing entries."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = (replace or {}).get(info.filename, zin.read(info.filename))
            zout.writestr(info.filename, data, compress_type=compress or zipfile.ZIP_STORED)


@pytest.fixture
def small_pth(tmp_path):
    torch.save({"w": torch.arange(32, dtype=torch.float32).to(torch.bfloat16)}, tmp_path / "small.pth")
    return tmp_path / "small.pth"


def test_rewritten_zip_still_loads(small_pth, tmp_path):
    """The rewriting helper itself produces loadable files (so the refusals below mean something)."""
    rewrite_zip(small_pth, tmp_path / "copy.pth")
    np.testing.assert_array_equal(load_pth(tmp_path / "copy.pth")["w"], load_pth(small_pth)["w"])


def test_compressed_entries_are_refused(small_pth, tmp_path):
    rewrite_zip(small_pth, tmp_path / "deflated.pth", compress=zipfile.ZIP_DEFLATED)
    with pytest.raises(CheckpointError, match="deflated.pth.*compressed"):
        load_pth(tmp_path / "deflated.pth")


def test_big_endian_is_refused(small_pth, tmp_path):
    rewrite_zip(small_pth, tmp_path / "big.pth", replace={"small/byteorder": b"big"})
    with pytest.raises(CheckpointError, match="big.pth: byteorder is 'big'"):
        load_pth(tmp_path / "big.pth")


def test_legacy_format_is_refused(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=r"old\.pth: legacy \(pre-1\.6, non-zip\) torch format"):
        load_pth(tmp_path / "old.pth")


@pytest.mark.parametrize(
    "content,match",
    [(b"", "not a torch.save zip"), (b"GGUF\x03\x00", "GGUF"), (b"hello world" * 10, "not a torch.save zip")],
)
def test_not_a_checkpoint(tmp_path, content, match):
    (tmp_path / "x.pth").write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_pth(tmp_path / "x.pth")


def test_truncated_and_missing_files(small_pth, tmp_path):
    data = small_pth.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pth"):
        load_pth(tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match="nothere.pth: no such file"):
        load_pth(tmp_path / "nothere.pth")


def test_file_cut_after_loading_is_a_clear_error_when_read(small_pth, tmp_path):
    cut = tmp_path / "cut_later.pth"
    cut.write_bytes(small_pth.read_bytes())
    ck = load_pth(cut)
    with open(cut, "r+b") as f:
        f.truncate(64)  # the views must not be touched now (SIGBUS); read_tensors does not use them
    with pytest.raises(CheckpointError, match="cut_later.pth: file ended while reading tensor data"):
        ck.read_tensors()


def test_interrupted_read_stops_without_reading_the_rest(tmp_path, monkeypatch):
    import llama_nb.io.pth as pth

    torch.save({"w": torch.zeros(1 << 18, dtype=torch.float32)}, tmp_path / "big.pth")  # 1 MB
    ck = load_pth(tmp_path / "big.pth")
    monkeypatch.setattr(pth, "READ_CHUNK", 4096)  # 256 chunks
    calls = []

    def interrupted(*args):
        calls.append(args)
        raise KeyboardInterrupt

    monkeypatch.setattr(pth, "_pread_exactly", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ck.read_tensors()
    assert len(calls) <= 2 * pth.READ_THREADS  # the chunks already running, not all 256


def test_zip_without_data_pkl(tmp_path):
    with zipfile.ZipFile(tmp_path / "z.pth", "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(CheckpointError, match=r"z\.pth: expected exactly one '<name>/data\.pkl'"):
        load_pth(tmp_path / "z.pth")


# --- tiny Llama models and model folders ----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model", n_layers=2)


@pytest.mark.parametrize(
    "params",
    [
        tiny_params(vocab_size=300),
        tiny_params(dim=96, n_heads=6, n_kv_heads=3, n_layers=1, vocab_size=50, multiple_of=64, ffn_dim_multiplier=1.3),
        tiny_params(dim=64, n_heads=4, n_kv_heads=4, n_layers=1, vocab_size=10, multiple_of=256, ffn_dim_multiplier=1.5),
    ],
    ids=["default", "ffn-multiplier", "mha"],
)
def test_tiny_and_expected_shapes_equal_metas_transformer(params):
    """tests/tinymodel.py and llama_nb's expected_shapes both agree with Meta's model.py."""
    meta = {k: tuple(v.shape) for k, v in meta_transformer(params).state_dict().items()}
    tiny = {k: tuple(v.shape) for k, v in tiny_state_dict(params).items()}
    assert list(tiny.items()) == list(meta.items())
    assert expected_shapes(ModelArgs.from_dict(params)) == meta
    assert ModelArgs.from_dict(params).hidden_dim == meta["layers.0.feed_forward.w1.weight"][0]


def test_tiny_checkpoint_matches_torch(tiny):
    ck = assert_matches_torch(tiny / "consolidated.00.pth")
    assert set(ck.dtypes.values()) == {"bfloat16"} and len(ck) == 1 + 2 * 9 + 2
    assert 0.019 < bf16_std(ck["tok_embeddings.weight"]) < 0.021  # realistic init scale, as tinymodel promises


def bf16_std(bits):
    return float((bits.view(np.uint16).astype(np.uint32) << 16).view(np.float32).std())


def test_tiny_weight_scales(tmp_path):
    """std 0.02 by default; 1/sqrt(fan_in) with weight_std=None; norms 1 +- 0.1; same seed, same bytes."""
    a = load_pth(write_tiny_model(tmp_path / "a", tokenizer=None, vocab_size=300) / "consolidated.00.pth")
    b = load_pth(write_tiny_model(tmp_path / "b", tokenizer=None, vocab_size=300, weight_std=None) / "consolidated.00.pth")
    again = load_pth(write_tiny_model(tmp_path / "c", tokenizer=None, vocab_size=300) / "consolidated.00.pth")
    assert abs(bf16_std(a["layers.0.feed_forward.w2.weight"]) - 0.02) < 0.002
    assert abs(bf16_std(b["layers.0.feed_forward.w2.weight"]) - 192**-0.5) < 0.005  # fan_in = hidden_dim
    assert abs(bf16_std(b["layers.0.attention.wq.weight"]) - 64**-0.5) < 0.01
    assert abs(bf16_std(a["norm.weight"]) - 0.1) < 0.03
    assert all(np.array_equal(a[k], again[k]) for k in a.keys())


def test_load_model_files_and_describe(tiny):
    files = load_model_files(tiny)
    assert files.args == ModelArgs.from_file(tiny / "params.json")
    assert files.tokenizer_path == tiny / "tokenizer.model" and not files.tied_output
    desc = describe(files)
    ref = torch.load(tiny / "consolidated.00.pth", weights_only=True)
    assert desc["n_elements"] == sum(t.numel() for t in ref.values())
    assert desc["size_bytes"] == sum(t.numel() * t.element_size() for t in ref.values())
    assert desc["size_gb"] == desc["size_bytes"] / 1e9
    assert [t["name"] for t in desc["tensors"]] == list(ref)
    assert all(t["shape"] == list(ref[t["name"]].shape) for t in desc["tensors"])
    assert (desc["head_dim"], desc["ffn_hidden_dim"]) == (16, 192)
    json.dumps(desc)  # JSON-ready


def test_tied_output_is_accepted(tmp_path):
    folder = write_tiny_model(tmp_path / "tied", tie_output=True, tokenizer=None, vocab_size=300)
    files = load_model_files(folder, require_tokenizer=False)
    assert files.tied_output and "output.weight" not in files.checkpoint and files.tokenizer_path is None


def save_variant(tmp_path, edit, params_edit=None, **kw):
    """A tiny folder whose state dict (or params.json) was edited before saving."""
    folder = tmp_path / "variant"
    folder.mkdir()
    params = tiny_params(vocab_size=300, **kw)
    sd = tiny_state_dict(params)
    edit(sd)
    torch.save(sd, folder / "consolidated.00.pth")
    (folder / "params.json").write_text(json.dumps(dict(params, **(params_edit or {}))))
    (folder / "tokenizer.model").write_text("not read here")
    return folder


@pytest.mark.parametrize(
    "edit,params_edit,match",
    [
        (lambda sd: sd.pop("layers.1.ffn_norm.weight"), None, r"missing 1 tensor\(s\) .*layers\.1\.ffn_norm\.weight"),
        (lambda sd: sd.update({"rope.freqs": torch.ones(8)}), None, r"1 unexpected tensor\(s\) .*rope\.freqs"),
        (lambda sd: None, {"n_layers": 3}, r"missing 9 tensor\(s\).*the file has 2 layers, params.json says n_layers=3"),
        (lambda sd: None, {"n_kv_heads": 4}, r"layers\.0\.attention\.wk\.weight has shape \[32, 64\] but .* implies \[64, 64\]"),
        (lambda sd: None, {"multiple_of": 128}, r"feed_forward\.w1\.weight has shape \[192, 64\] .* \[256, 64\]"),
        (lambda sd: sd.update({"norm.weight": sd["norm.weight"].to(torch.int8)}), None, r"unsupported tensor dtype int8"),
        (lambda sd: sd.update({"layers.0.attention.wo.weight": sd["layers.0.attention.wo.weight"].T}), None,
         "non-contiguous"),
    ],
    ids=["missing", "unexpected", "n_layers", "n_kv_heads", "ffn", "int8", "strided"],
)
def test_model_folder_mismatches(tmp_path, edit, params_edit, match):
    folder = save_variant(tmp_path, edit, params_edit)
    with pytest.raises(CheckpointError, match=match) as info:
        load_model_files(folder)
    assert "consolidated.00.pth" in str(info.value) and "\n" not in str(info.value)


def test_model_folder_missing_files(tmp_path):
    folder = write_tiny_model(tmp_path / "m", tokenizer=None, vocab_size=300)
    with pytest.raises(CheckpointError, match=r"m/tokenizer\.model: no such file"):
        load_model_files(folder)
    (folder / "params.json").unlink()
    with pytest.raises(CheckpointError, match=r"m/params\.json: no such file"):
        load_model_files(folder)
    (folder / "consolidated.00.pth").unlink()
    with pytest.raises(CheckpointError, match=r"m/consolidated\.00\.pth: no such file"):
        load_model_files(folder)
    with pytest.raises(CheckpointError, match=r"nowhere: no such folder"):
        load_model_files(tmp_path / "nowhere")


def test_other_formats_are_recognised(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model-00001-of-00004.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"hf/config\.json: architectures None.*not a Llama model"):
        load_model_files(hf)
    write_tiny_model(hf / "original", tokenizer=None, vocab_size=300)
    with pytest.raises(CheckpointError, match=r"use --model .*hf/original"):
        load_model_files(hf)

    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(CheckpointError, match=r"model\.gguf: file ends inside the version"):
        load_model_files(tmp_path / "model.gguf")
    gg = tmp_path / "gg"
    gg.mkdir()
    (gg / "llama-3.1-8b.Q4_K_M.gguf").write_bytes(b"GGUF")
    (gg / "llama-3.1-8b.Q8_0.gguf").write_bytes(b"GGUF")
    with pytest.raises(CheckpointError, match=r"gg: holds 2 GGUF files \(llama-3\.1-8b\.Q4_K_M\.gguf, "):
        load_model_files(gg)


def test_sharded_checkpoints_that_do_not_split_are_refused(tmp_path):
    """Model-parallel folders load (tests/test_mpi.py); 5 shards of a 4-head model cannot be."""
    folder = write_tiny_model(tmp_path / "70b", tokenizer=None, vocab_size=300)
    for i in (1, 2, 3, 4):
        (folder / f"consolidated.0{i}.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"70b: 5 shards, but .*params\.json: the model cannot be split across "
                                              r"5 ranks: n_heads=4, hidden_dim=192, n_kv_heads=2 are not divisible by 5"):
        load_model_files(folder, require_tokenizer=False)
    (folder / "consolidated.02.pth").unlink()
    with pytest.raises(CheckpointError, match=r"70b: a model-parallel checkpoint of 5 shards is missing consolidated\.02\.pth"):
        load_model_files(folder, require_tokenizer=False)
    (folder / "consolidated.2.pth").write_bytes(b"")  # shard 2 under another spelling
    with pytest.raises(CheckpointError, match=r"70b: consolidated\.2\.pth is not a shard name"):
        load_model_files(folder, require_tokenizer=False)

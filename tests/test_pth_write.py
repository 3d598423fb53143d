"""llama_nb.io.pth_write: torch-free torch.save, read back by torch.load (the oracle) and by load_pth.

Every file written here must satisfy both readers bit for bit: torch.load(weights_only=True)
(torch's own zip reader and restricted unpickler) and llama_nb.io.pth.load_pth. ZIP64 records,
needed only past 4 GiB, are exercised on small files by lowering the writer's threshold.
"""

from __future__ import annotations

import collections
import zipfile

import numpy as np
import pytest
import torch

from llama_nb.errors import LlamaNbError
from llama_nb.io import pth_write
from llama_nb.io.checkpoint import expected_shapes, load_model_files
from llama_nb.io.params import ModelArgs
from llama_nb.io.pth import load_pth
from llama_nb.io.pth_write import random_bf16, save_pth, write_random_model
from tests.tinymodel import write_tiny_model


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """torch tensor -> the array save_pth would take (bf16 as its uint16 bits)."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def sample_tensors(rng) -> dict[str, np.ndarray]:
    return {
        "bf16": rng.integers(0, 1 << 16, (3, 5), dtype=np.uint16),  # every bit pattern allowed, NaNs included
        "f16": rng.standard_normal((7,)).astype(np.float16),
        "f32": rng.standard_normal((2, 3, 4, 5)).astype(np.float32),
        "scalar": np.array(-2.5, np.float32),
        "bf16_scalar": np.array(0x3F80, np.uint16),
        "empty_rows": np.zeros((0, 4), np.float16),
        "empty_cols": np.zeros((3, 0), np.uint16),  # torch strides (1, 1): the size-0 dim counts as 1
        "strided": rng.standard_normal((4, 6)).astype(np.float32)[:, ::2],  # saved contiguous
        "big_endian": np.arange(5, dtype=">f4"),
        "wide": rng.integers(0, 1 << 16, (2, 70000), dtype=np.uint16),  # numel > 65535: BININT
    }


def assert_reads_back(path, tensors):
    by_torch = torch.load(path, weights_only=True)
    ours = load_pth(path)
    assert isinstance(by_torch, collections.OrderedDict)
    assert list(by_torch) == list(tensors) == list(ours.keys())  # order kept
    for name, want in tensors.items():
        for reader, got in (("torch", as_numpy(by_torch[name])), ("load_pth", ours[name])):
            assert got.shape == want.shape, (reader, name)
            assert got.dtype == want.dtype.newbyteorder("="), (reader, name)
            # compare bits, so NaN payloads count
            assert got.tobytes() == np.ascontiguousarray(want, want.dtype.newbyteorder("=")).tobytes(), (reader, name)


@pytest.mark.parametrize("zip64_limit", [0xFFFFFFFF, 1], ids=["zip32", "zip64"])
def test_both_readers_read_back_bit_for_bit(tmp_path, monkeypatch, zip64_limit):
    monkeypatch.setattr(pth_write, "_ZIP64_LIMIT", zip64_limit)
    tensors = sample_tensors(np.random.default_rng(0))
    path = tmp_path / "out.pth"
    save_pth(path, tensors)
    assert_reads_back(path, tensors)
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None  # every CRC right
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
        assert zf.read("out/byteorder") == b"little" and zf.read("out/version") == b"3\n"
        data = [i for i in zf.infolist() if "/data/" in i.filename]
    raw = path.read_bytes()
    for info in data:  # data offsets 64-byte aligned, as torch writes them (mmap-friendly)
        name_len, extra_len = np.frombuffer(raw[info.header_offset + 26 : info.header_offset + 30], "<u2")
        assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0


def test_empty_state_dict_and_generator_input(tmp_path):
    save_pth(tmp_path / "empty.pth", {})
    assert torch.load(tmp_path / "empty.pth", weights_only=True) == collections.OrderedDict()
    assert len(load_pth(tmp_path / "empty.pth")) == 0
    pairs = [("a", np.ones(3, np.float32)), ("b", np.zeros((2, 2), np.uint16))]
    save_pth(tmp_path / "gen.pth", iter(pairs))
    assert_reads_back(tmp_path / "gen.pth", dict(pairs))


def test_bad_input_is_one_line_llama_nb_error(tmp_path):
    with pytest.raises(LlamaNbError, match="int64"):
        save_pth(tmp_path / "x.pth", {"a": np.zeros(2, np.int64)})
    with pytest.raises(LlamaNbError, match="repeated"):
        save_pth(tmp_path / "x.pth", [("a", np.zeros(2, np.float32)), ("a", np.zeros(2, np.float32))])


def test_round_trip_of_torch_saved_tiny_model(tmp_path):
    folder = write_tiny_model(tmp_path / "tiny", tokenizer=None)
    original = torch.load(folder / "consolidated.00.pth", weights_only=True)
    tensors = {name: as_numpy(t) for name, t in original.items()}
    save_pth(tmp_path / "copy.pth", tensors)
    copy = torch.load(tmp_path / "copy.pth", weights_only=True)
    assert list(copy) == list(original)
    for name in original:
        assert copy[name].dtype == original[name].dtype == torch.bfloat16
        assert torch.equal(copy[name].view(torch.int16), original[name].view(torch.int16)), name
    assert_reads_back(tmp_path / "copy.pth", tensors)


def test_random_bf16_statistics_and_rounding():
    rng = np.random.default_rng(1)
    bits = random_bf16((300, 1000), rng, std=0.02, mean=1.0, chunk=4096)  # many chunks, a ragged last one
    values = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).float().numpy()
    assert abs(values.mean() - 1.0) < 1e-3 and abs(values.std() - 0.02) < 1e-3
    # the narrowing is torch's round-to-nearest-even: redraw the same float32s and convert with torch
    rng = np.random.default_rng(1)
    f32 = np.empty(4096, np.float32)
    rng.standard_normal(out=f32, dtype=np.float32)
    f32 = f32 * np.float32(0.02) + np.float32(1.0)
    want = torch.from_numpy(f32).bfloat16().view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(bits.reshape(-1)[:4096], want)


@pytest.mark.parametrize("tied", [False, True])
def test_write_random_model_loads_everywhere(tmp_path, tied):
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, multiple_of=32,
                     use_scaled_rope=True)
    folder = write_random_model(tmp_path / "m", args, seed=3, tied_output=tied)
    assert sorted(p.name for p in folder.iterdir()) == ["consolidated.00.pth", "params.json"]
    files = load_model_files(folder, require_tokenizer=False)  # validates names, shapes, bf16
    assert files.args == args and files.tied_output == tied
    by_torch = torch.load(folder / "consolidated.00.pth", weights_only=True)
    shapes = expected_shapes(args, tied_output=tied)
    assert list(by_torch) == list(shapes)
    for name, shape in shapes.items():
        t = by_torch[name]
        assert t.dtype == torch.bfloat16 and tuple(t.shape) == shape
        assert np.array_equal(as_numpy(t), files.checkpoint[name])
        mean = 1.0 if name.endswith("norm.weight") else 0.0
        assert abs(t.float().mean().item() - mean) < 0.01 and 0.01 < t.float().std().item() < 0.03, name
    again = write_random_model(tmp_path / "again", args, seed=3, tied_output=tied)
    assert (again / "consolidated.00.pth").read_bytes() == (folder / "consolidated.00.pth").read_bytes()


def test_write_random_model_copies_tokenizer(tmp_path):
    from tests.tinymodel import llama3_tokenizer_path

    args = ModelArgs(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=128256)
    folder = write_random_model(tmp_path / "m", args, seed=0, tokenizer_path=llama3_tokenizer_path())
    assert (folder / "tokenizer.model").read_bytes() == llama3_tokenizer_path().read_bytes()
    assert load_model_files(folder).tokenizer_path == folder / "tokenizer.model"

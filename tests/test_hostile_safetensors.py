"""Hostile safetensors files and Hugging Face folders (llama_nb.io.safetensors, .hf): each refused in one line.

In the style of tests/test_hostile_files.py (whose `one_line_error` and `within` these reuse): every
case is a CheckpointError naming the file, printable, within a deadline; nothing is read past a
header that does not check out. The valid files come from the safetensors package (the oracle
for what a view must hold) and tests/hfmodel.py's small HF folder.

    header length      0, 1, past the file, past MAX_HEADER_BYTES; a file of 3 bytes
    header JSON        not UTF-8, not JSON, 100k levels deep, a 5000-digit integer, not an object,
                       a tensor named twice (a repeated JSON key)
    entries            unknown dtype (by name), bad shapes, offsets past the data or not matching
                       shape * itemsize, overlapping tensors, misaligned data, extra keys,
                       __metadata__ that is not strings
    files              FIFO, /dev/zero, a file cut short after the check (read_tensors: an error,
                       never a SIGBUS)
    index.json         shard names with "../" or "/", a tensor in the wrong shard or in two,
                       a listed tensor missing from its shard, a shard that does not exist
    config.json        another architecture, head_dim != hidden/heads, gelu, biases, a repeated key
    tensors            a name a Llama does not have, a missing one (named as Hugging Face names it)
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from llama_nb.errors import CheckpointError
from llama_nb.io.checkpoint import load_model_files
from llama_nb.io.safetensors import MAX_HEADER_BYTES, load_safetensors
from tests import hfmodel
from tests.test_hostile_files import one_line_error

SHAPE = dict(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, rope="3.1", tied=False)


def st_bytes(header, data: bytes = b"", *, length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header so the data start 8-byte aligned
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def write(tmp_path: Path, header, data: bytes = b"", **kw) -> Path:
    path = tmp_path / "x.safetensors"
    path.write_bytes(st_bytes(header, data, **kw))
    return path


F32x4 = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}


def test_a_valid_file_is_mapped_zero_copy_and_equals_the_safetensors_package(tmp_path):
    from safetensors.numpy import load_file, save_file

    rng = np.random.default_rng(0)
    tensors = {"a": rng.standard_normal((3, 5)).astype(np.float32), "b": rng.standard_normal(7).astype(np.float16),
               "c": rng.integers(0, 65535, (4, 2), dtype=np.uint16)}
    path = tmp_path / "ok.safetensors"
    save_file({"a": tensors["a"], "b": tensors["b"]}, path, metadata={"format": "np"})
    ck = load_safetensors(path)
    ref = load_file(path)
    assert set(ck.keys()) == {"a", "b"} and ck.metadata == {"format": "np"}
    for name in ref:
        assert np.array_equal(ck[name], ref[name]) and ck[name].dtype == ref[name].dtype
        assert np.shares_memory(ck[name], ck.mmap) and not ck[name].flags.writeable
    assert ck.dtypes == {"a": "float32", "b": "float16"}
    from safetensors.torch import save_file as save_torch

    save_torch({"w": torch.randn(4, 6).bfloat16()}, tmp_path / "bf16.safetensors")
    w = load_safetensors(tmp_path / "bf16.safetensors")
    assert w.dtypes["w"] == "bfloat16" and w["w"].dtype == np.uint16
    back = torch.from_numpy(w["w"].astype(np.int16)).view(torch.bfloat16)
    from safetensors.torch import load_file as load_torch

    assert torch.equal(back, load_torch(tmp_path / "bf16.safetensors")["w"])


CASES = {
    "length 0": (lambda t: write(t, b"", length=0), "header length 0 is outside"),
    "length past file": (lambda t: write(t, {}, length=10**6), "header length 1000000 is outside"),
    "length huge": (lambda t: write(t, {}, length=2**63), "header length 9223372036854775808"),
    "3 bytes": (lambda t: write(t, b"")  # 8 zero-length bytes, then cut to 3
                .write_bytes(b"abc") and t / "x.safetensors", "too short"),
    "not utf-8": (lambda t: write(t, b"{\"\xff\": 1}"), "not UTF-8"),
    "not json": (lambda t: write(t, b"{\"a\": "), "not valid JSON"),
    "deep": (lambda t: write(t, b"[" * 100_000 + b"]" * 100_000), "nested too deeply"),
    "digits": (lambda t: write(t, b'{"a": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 0]}}'),
               "an integer of 5000 digits"),
    "not object": (lambda t: write(t, [1, 2]), "must be a JSON object"),
    "dtype": (lambda t: write(t, {"a": dict(F32x4, dtype="F8_E4M3")}, bytes(16)),
              "is 'F8_E4M3'; llama_nb reads BF16, F16, F32"),
    "dtype F64": (lambda t: write(t, {"a": dict(F32x4, dtype="F64")}, bytes(16)), "is 'F64'"),
    "shape negative": (lambda t: write(t, {"a": dict(F32x4, shape=[-2, -2])}, bytes(16)), "shape [-2, -2]"),
    "shape bool": (lambda t: write(t, {"a": dict(F32x4, shape=[True, 4])}, bytes(16)), "shape [True, 4]"),
    "shape ndim": (lambda t: write(t, {"a": dict(F32x4, shape=[1] * 65)}, bytes(4)), "at most"),
    "offsets past": (lambda t: write(t, {"a": dict(F32x4, data_offsets=[0, 16])}, bytes(8)),
                     "are not [begin, end] inside the 8-byte data section"),
    "offsets reversed": (lambda t: write(t, {"a": dict(F32x4, data_offsets=[16, 0])}, bytes(16)), "not [begin, end]"),
    "offsets size": (lambda t: write(t, {"a": dict(F32x4, data_offsets=[0, 12])}, bytes(16)),
                     "span 12 bytes but F32[2, 2] needs 16"),
    "offsets huge shape": (lambda t: write(t, {"a": dict(F32x4, shape=[2**40, 2**40])}, bytes(16)), "needs"),
    "overlap": (lambda t: write(t, {"a": F32x4, "b": dict(F32x4, data_offsets=[8, 24])}, bytes(24)), "overlap"),
    "misaligned": (lambda t: write(t, {"a": dict(F32x4, data_offsets=[2, 18])}, bytes(18)), "not aligned"),
    "extra key": (lambda t: write(t, {"a": dict(F32x4, extra=1)}, bytes(16)), "expected {dtype, shape, data_offsets}"),
    "metadata": (lambda t: write(t, {"__metadata__": {"k": 1}, "a": F32x4}, bytes(16)), "__metadata__ must be"),
    "duplicate": (lambda t: write(t, b'{"a": ' + json.dumps(F32x4).encode() + b', "a": '
                                  + json.dumps(dict(F32x4, data_offsets=[16, 32])).encode() + b"}", bytes(32)),
                  "key 'a' appears twice"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_safetensors_file_is_refused_in_one_line(tmp_path, name):
    make, phrase = CASES[name]
    path = make(tmp_path)
    one_line_error(load_safetensors, path, named=path, phrases=[phrase])


def test_header_bound_is_the_safetensors_packages():
    assert MAX_HEADER_BYTES == 100 * 2**20


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return hfmodel.write_small_hf_folder(tmp_path_factory.mktemp("hf") / "m", SHAPE, seed=3)


def copy(folder: Path, dst: Path) -> Path:
    shutil.copytree(folder, dst)
    return dst


def sharded(folder: Path, dst: Path, weight_map_edit=None) -> Path:
    """The folder's model.safetensors split into two shards + index (the split made with the
    safetensors package: its writer is the oracle of what a shard is)."""
    from safetensors.torch import load_file, save_file

    out = copy(folder, dst)
    (out / "model.safetensors").unlink()
    tensors = load_file(folder / "model.safetensors")
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2 :]}
    weight_map = {}
    for shard, part in halves.items():
        save_file({n: tensors[n] for n in part}, out / shard)
        weight_map.update({n: shard for n in part})
    if weight_map_edit:
        weight_map_edit(out, weight_map)
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return out


def test_sharded_folder_loads_like_the_single_file(folder, tmp_path):
    one, two = load_model_files(folder), load_model_files(sharded(folder, tmp_path / "s"))
    assert list(one.checkpoint.keys()) == list(two.checkpoint.keys())
    a, b = one.checkpoint.read_tensors(), two.checkpoint.read_tensors()
    assert all(np.array_equal(a[n], b[n]) for n in a)


def _move(name_part: str, to: str):
    def edit(out, weight_map):
        name = next(n for n in weight_map if name_part in n)
        weight_map[name] = to
    return edit


def _also_in_other_shard(out, weight_map):
    from safetensors.torch import load_file, save_file

    first = out / "model-00001-of-00002.safetensors"
    tensors = load_file(out / "model-00002-of-00002.safetensors")
    extra = next(iter(tensors))
    save_file({**load_file(first), extra: tensors[extra]}, first)


INDEX_CASES = {
    "../ shard": (_move("norm", "../model-00001-of-00002.safetensors"), "model.safetensors.index.json",
                  "not a .safetensors file name in this folder"),
    "/ shard": (_move("norm", "/etc/passwd.safetensors"), "model.safetensors.index.json",
                "not a .safetensors file name"),
    "wrong shard": (_move("model.norm", "model-00001-of-00002.safetensors"), "model-0000",
                    "which the index"),
    "two shards": (_also_in_other_shard, "model-00001-of-00002.safetensors", "which the index does not put there"),
    "missing shard": (_move("model.norm", "model-00003-of-00002.safetensors"), "model-00003-of-00002.safetensors",
                      "no such file"),
}


@pytest.mark.parametrize("name", list(INDEX_CASES))
def test_inconsistent_index_is_refused_in_one_line(folder, tmp_path, name):
    edit, named, phrase = INDEX_CASES[name]
    out = sharded(folder, tmp_path / "s", edit)
    msg = one_line_error(load_model_files, out, named=out, phrases=[phrase], seconds=10)
    assert named in msg, msg


def _config(edit):
    def make(out):
        config = json.loads((out / "config.json").read_text())
        edit(config)
        (out / "config.json").write_text(json.dumps(config))
    return make


def _save_tensors(edit):
    def make(out):
        from safetensors.torch import load_file, save_file

        tensors = load_file(out / "model.safetensors")
        edit(tensors)
        save_file(tensors, out / "model.safetensors")
    return make


FOLDER_CASES = {
    "mistral": (_config(lambda c: c.update(architectures=["MistralForCausalLM"], model_type="mistral")),
                "config.json", "not a Llama model"),
    "head_dim": (_config(lambda c: c.update(head_dim=16)), "config.json", "head_dim=16 but hidden_size"),
    "gelu": (_config(lambda c: c.update(hidden_act="gelu")), "config.json", "hidden_act is 'gelu'"),
    "bias": (_config(lambda c: c.update(attention_bias=True)), "config.json", "attention_bias is True"),
    "rope type": (_config(lambda c: c["rope_scaling"].update(rope_type="yarn")), "config.json",
                  'rope_scaling type "yarn" (string) is not supported'),
    "2**31 layers": (_config(lambda c: c.update(num_hidden_layers=2**31)), "model.safetensors",
                     "says num_hidden_layers=2147483648 but the file(s) hold only 12 tensors"),
    "no hidden_size": (_config(lambda c: c.pop("hidden_size")), "config.json", "missing required key 'hidden_size'"),
    "intermediate": (_config(lambda c: c.update(intermediate_size=100)), "model.safetensors",
                     "layers.0.feed_forward.w1.weight has shape [96, 32] but"),
    "repeated key": (lambda out: (out / "config.json").write_text(
        (out / "config.json").read_text().replace('"hidden_size": 32', '"hidden_size": 32, "hidden_size": 64')),
        "config.json", "key 'hidden_size' appears twice"),
    "unknown tensor": (_save_tensors(lambda t: t.update({"model.rotary_emb.inv_freq": torch.ones(4)})),
                       "model.safetensors", "'model.rotary_emb.inv_freq' is not part of a Llama 3.x model"),
    "missing tensor": (_save_tensors(lambda t: t.pop("model.layers.0.mlp.up_proj.weight")),
                       "model.safetensors",
                       "missing 1 tensor(s) that config.json implies: model.layers.0.mlp.up_proj.weight"),
    "extra layer": (_save_tensors(lambda t: t.update({"model.layers.1.input_layernorm.weight":
                                                      torch.ones(32).bfloat16()})),
                    "model.safetensors", "unexpected tensor(s) for the model config.json describes: model.layers.1."),
    "no lm_head": (_save_tensors(lambda t: t.pop("lm_head.weight")), "model.safetensors", "lm_head.weight"),
    "no tokenizer": (lambda out: (out / "tokenizer.json").unlink(), "tokenizer.json", "no such file"),
    "tokenizer fifo": (lambda out: (out / "tokenizer.json").unlink() or os.mkfifo(out / "tokenizer.json"),
                       "tokenizer.json", "a FIFO"),
    "weights fifo": (lambda out: (out / "model.safetensors").unlink() or os.mkfifo(out / "model.safetensors"),
                     "model.safetensors", "a FIFO"),
    "weights /dev/zero": (lambda out: (out / "model.safetensors").unlink()
                          or (out / "model.safetensors").symlink_to("/dev/zero"), "model.safetensors",
                          "a character device"),
    "config fifo": (lambda out: (out / "config.json").unlink() or os.mkfifo(out / "config.json"), "config.json",
                    "a FIFO"),
}


@pytest.mark.parametrize("name", list(FOLDER_CASES))
def test_hostile_hf_folder_is_refused_in_one_line(folder, tmp_path, name):
    make, named, phrase = FOLDER_CASES[name]
    out = copy(folder, tmp_path / "m")
    make(out)
    msg = one_line_error(load_model_files, out, named=out / named if named != "model-0000" else out,
                         phrases=[phrase], seconds=10)
    assert msg.startswith(str(out / named)), msg


def test_original_subfolder_is_named_when_the_hf_files_are_refused(folder, tmp_path):
    from tests.tinymodel import write_tiny_model

    out = copy(folder, tmp_path / "m")
    (out / "model.safetensors").write_bytes(b"garbage")
    write_tiny_model(out / "original", tokenizer=None, vocab_size=hfmodel.VOCAB)
    one_line_error(load_model_files, out, named=out, phrases=["Meta's files are in its original/ subfolder: use "
                                                            f"--model {out / 'original'}"], seconds=10)
    assert load_model_files(out / "original", require_tokenizer=False).args.dim == 64


def test_a_shard_cut_short_after_the_check_is_an_error_not_a_sigbus(folder, tmp_path):
    out = copy(folder, tmp_path / "m")
    files = load_model_files(out)
    with open(out / "model.safetensors", "r+b") as f:
        f.truncate(os.path.getsize(out / "model.safetensors") // 2)
    one_line_error(files.checkpoint.read_tensors, named=out / "model.safetensors", phrases=["file ended"])

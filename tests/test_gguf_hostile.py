"""Hostile and broken GGUF files: each is refused with one CheckpointError line naming the file.

Files are built byte by byte here (`gguf_bytes`, from the format's description, not from our
writer) so that every field can hold what an attacker puts there; model-level cases start from a
valid file of the fuzz base model and change one metadata value.
"""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from llama_nb.errors import CheckpointError
from llama_nb.io.checkpoint import load_model_files
from llama_nb.io.gguf import MAX_HEADER_BYTES, read_gguf
from llama_nb.io.gguf_write import write_gguf
from llama_nb.model.quantize import gguf_metadata, gguf_plans
from tests import fuzzing

U32, U64, F32, STR, ARR = 4, 10, 6, 8, 9


def s(text: bytes | str) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv(key, type_id: int, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", type_id) + payload


def tensor(name, ne, type_id: int, offset: int) -> bytes:
    return s(name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, type_id, offset)


def gguf_bytes(kvs=(), tensors=(), data=b"", *, n_kv=None, n_tensors=None, version=3, alignment=32) -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv) + b"".join(kvs) + b"".join(tensors)
    return head + bytes(-len(head) % alignment) + data


VALID = gguf_bytes([kv("general.architecture", STR, s("llama")), kv("a.list", ARR, struct.pack("<IQ", U32, 2) + bytes(8))],
                   [tensor("t", [8], 0, 0), tensor("u", [32, 2], 8, 32)], bytes(32) + bytes(68))

CASES = {  # name: (file bytes, phrase of the one error line)
    "empty": (b"", "not a GGUF file"),
    "wrong magic": (b"GGML" + VALID[4:], "not a GGUF file"),
    "version 1": (gguf_bytes(version=1), "GGUF version 1; llama_nb reads versions 2 and 3"),
    "2^63 tensors": (gguf_bytes(n_tensors=2**63), "claims 9223372036854775808 tensors"),
    "more keys than there are": (gguf_bytes(n_kv=5), "file ends inside metadata"),
    "key of 2^60 bytes": (gguf_bytes([s("x")[:0] + struct.pack("<Q", 2**60)]), "metadata key #0 is 1152921504606846976 bytes long"),
    "string value of 2^62 bytes": (gguf_bytes([kv("k", STR, struct.pack("<Q", 2**62))]), "file ends inside metadata 'k'"),
    "array of 2^40 uint32": (gguf_bytes([kv("k", ARR, struct.pack("<IQ", U32, 2**40))]), "claims 1099511627776 items"),
    "array of 2^40 strings": (gguf_bytes([kv("k", ARR, struct.pack("<IQ", STR, 2**40))]), "claims 1099511627776 items"),
    "arrays nested 5 deep": (gguf_bytes([kv("k", ARR, struct.pack("<IQ", ARR, 1) * 5 + struct.pack("<IQ", U32, 0))]),
                             "arrays nested more than 4 deep"),
    "value type 13": (gguf_bytes([kv("k", 13, b"")]), "metadata 'k' has value type 13, which GGUF does not define"),
    "array of type 99": (gguf_bytes([kv("k", ARR, struct.pack("<IQ", 99, 1))]), "array of value type 99"),
    "duplicate key": (gguf_bytes([kv("k", U32, bytes(4)), kv("k", U32, bytes(4))]), "metadata 'k' appears twice"),
    "key not UTF-8": (gguf_bytes([kv(b"\xff\xfe", U32, bytes(4))]), "metadata key #0 is not UTF-8"),
    "key with an escape code": (gguf_bytes([kv("k\x1b[2J", 13, b"")]), r"metadata 'k\x1b[2J' has value type 13"),
    "alignment 0": (gguf_bytes([kv("general.alignment", U32, struct.pack("<I", 0))]), "general.alignment must be a power of two"),
    "alignment 3": (gguf_bytes([kv("general.alignment", U32, struct.pack("<I", 3))]), "general.alignment must be a power of two"),
    "alignment a string": (gguf_bytes([kv("general.alignment", STR, s("32"))]), "general.alignment must be a power of two"),
    "tensor name of 100 bytes": (gguf_bytes(tensors=[tensor("x" * 100, [4], 0, 0)]), "the name of tensor #0 is 100 bytes long; at most 63"),
    "0 dimensions": (gguf_bytes(tensors=[tensor("t", [], 0, 0)]), "tensor 't' has 0 dimensions"),
    "5 dimensions": (gguf_bytes(tensors=[tensor("t", [1] * 5, 0, 0)]), "tensor 't' has 5 dimensions"),
    "a dimension of 0": (gguf_bytes(tensors=[tensor("t", [4, 0], 0, 0)]), "has dimensions [4, 0]"),
    "2^80 elements": (gguf_bytes(tensors=[tensor("t", [2**40, 2**40], 0, 0)]), "fewer than 2^62 elements"),
    "ggml type 99": (gguf_bytes(tensors=[tensor("t", [4], 99, 0)]), "tensor 't' has ggml type 99, which ggml does not define"),
    "rows not whole blocks": (gguf_bytes(tensors=[tensor("t", [33, 1], 8, 0)], data=bytes(64)), "rows of 33 are not a whole number of 32-weight blocks"),
    "misaligned offset": (gguf_bytes(tensors=[tensor("t", [4], 0, 4)], data=bytes(64)), "offset 4 is not a multiple of the alignment 32"),
    "data past the end": (gguf_bytes(tensors=[tensor("t", [64], 0, 0)], data=bytes(100)), "its 256 bytes at byte"),
    "offset 2^63": (gguf_bytes(tensors=[tensor("t", [4], 0, 2**63)], data=bytes(16)), "pass the end of the file"),
    "overlapping tensors": (gguf_bytes(tensors=[tensor("a", [16], 0, 0), tensor("b", [16], 0, 32)], data=bytes(96)),
                            "tensors 'a' and 'b' overlap"),
    "duplicate tensor": (gguf_bytes(tensors=[tensor("a", [4], 0, 0), tensor("a", [4], 0, 32)], data=bytes(64)),
                         "tensor 'a' appears twice"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_broken_header_is_one_line_naming_the_file(tmp_path, name):
    data, phrase = CASES[name]
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as info:
        read_gguf(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and phrase in message and message.isprintable(), message


def test_the_valid_hand_made_file_reads_and_every_cut_of_it_is_refused(tmp_path):
    path = tmp_path / "v.gguf"
    path.write_bytes(VALID)
    g = read_gguf(path)
    assert g.metadata["general.architecture"] == "llama" and list(g.metadata["a.list"]) == [0, 0]
    assert g.array("t").shape == (8,) and g.array("u").shape == (2, 34) and not g.array("u").flags.writeable
    for cut in range(len(VALID)):
        path.write_bytes(VALID[:cut])
        with pytest.raises(CheckpointError, match=rf"^{path}: "):
            read_gguf(path)


def test_fifo_dev_zero_and_a_giant_header_are_refused(tmp_path):
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match=r"pipe\.gguf: cannot read: a FIFO"):
        load_model_files(fifo)
    zero = tmp_path / "zero.gguf"
    zero.symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match=r"zero\.gguf: cannot read: a character device"):
        load_model_files(zero)
    giant = tmp_path / "giant.gguf"  # a sparse file whose first key claims most of it
    with open(giant, "wb") as f:
        f.write(gguf_bytes([kv("k", STR, struct.pack("<Q", MAX_HEADER_BYTES))]))
        f.truncate(MAX_HEADER_BYTES + 4096)
    with pytest.raises(CheckpointError, match=r"giant\.gguf: metadata and tensor entries pass 256 MiB"):
        read_gguf(giant)


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    """(metadata, plans) of the fuzz base model as a bf16 GGUF, to break one value at a time."""
    folder = fuzzing.write_base_model(tmp_path_factory.mktemp("base") / "m")
    files = load_model_files(folder)
    return gguf_metadata(files, "bf16"), gguf_plans(files, "bf16")


MODEL_CASES = {  # name: (metadata changes, plans filter, phrase)
    "architecture gpt2": ({"general.architecture": "gpt2"}, None, "general.architecture is 'gpt2'; llama_nb runs \"llama\""),
    "no block_count": ({"llama.block_count": None}, None, "no metadata key llama.block_count"),
    "head_count a string": ({"llama.attention.head_count": "4"}, None, "llama.attention.head_count must be a positive integer"),
    "block_count 2^32 - 1": ({"llama.block_count": 2**32 - 1}, None, "llama.block_count=4294967295 but the file holds only"),
    "heads that do not divide": ({"llama.attention.head_count_kv": 3}, None, "n_heads=4 is not a multiple of n_kv_heads=3"),
    "rope dimension": ({"llama.rope.dimension_count": 4}, None, "llama.rope.dimension_count=4 but dim / n_heads = 8"),
    "wider FFN": ({"llama.feed_forward_length": 128}, None, "has shape [96, 32] but the metadata implies [128, 32]"),
    "missing tensor": ({}, "blk.0.ffn_up.weight", "missing 1 tensor(s) that its metadata implies: blk.0.ffn_up.weight"),
    "SentencePiece tokenizer": ({"tokenizer.ggml.model": "llama"}, None, "tokenizer.ggml.model is 'llama'"),
    "another pre-tokenizer": ({"tokenizer.ggml.pre": "qwen2"}, None, "tokenizer.ggml.pre is 'qwen2'"),
    "byte tokens": ({"tokenizer.ggml.token_type": "byte"}, None, "is of type byte"),
    "a merge of no tokens": ({"tokenizer.ggml.merges": ["Ġ zzzz"]}, None, "is not two tokens whose concatenation is a token"),
    "merges out of order": ({"tokenizer.ggml.merges": "reversed"}, None, "comes after a merge into a later token"),
    "a token outside the byte spelling": ({"tokenizer.ggml.tokens": "cjk"}, None, "which is no byte in GPT-2's byte-level"),
    "stop token out of range": ({"tokenizer.ggml.eos_token_id": 10**6}, None, "stop token id 1000000 is outside"),
}


@pytest.mark.parametrize("name", sorted(MODEL_CASES))
def test_a_broken_llama_gguf_is_one_line_naming_the_file(valid, tmp_path, name):
    metadata, plans = valid
    changes, drop, phrase = MODEL_CASES[name]
    metadata = dict(metadata)
    for key, value in changes.items():
        if value is None:
            del metadata[key]
        elif value == "byte":
            metadata[key] = np.where(metadata[key] == 1, 6, metadata[key]).astype(np.int32)
        elif value == "reversed":
            metadata[key] = metadata[key][::-1]
        elif value == "cjk":
            metadata[key] = ["中"] + metadata[key][1:]
        else:
            metadata[key] = value
    path = tmp_path / "m.gguf"
    write_gguf(path, metadata, [p for p in plans if p.name != drop])
    with pytest.raises(CheckpointError) as info:
        load_model_files(path).load_tokenizer()
    message = str(info.value)
    assert message.startswith(f"{path}: ") and phrase in message and message.isprintable(), message


def test_a_type_llama_nb_does_not_read_is_refused_by_name(valid, tmp_path):
    from llama_nb.io.gguf_write import TensorPlan

    metadata, plans = valid
    q4_0 = [TensorPlan(p.name, "Q4_0", p.shape, lambda p=p: np.zeros(p.shape[0] * p.shape[1] // 32 * 18, np.uint8))
            if p.name == "blk.0.attn_q.weight" else p for p in plans]
    path = tmp_path / "q.gguf"
    write_gguf(path, metadata, q4_0)
    with pytest.raises(CheckpointError, match=r"q\.gguf: tensor 'blk\.0\.attn_q\.weight' is Q4_0; llama_nb reads F32, F16, BF16"):
        load_model_files(path)


def test_a_gguf_without_the_suffix_is_read_by_its_magic_and_other_files_are_not(valid, tmp_path):
    metadata, plans = valid
    blob = tmp_path / "sha256-0123abcd"  # how ollama names its GGUF blobs
    write_gguf(blob, metadata, plans)
    assert load_model_files(blob).args.n_layers == 1
    text = tmp_path / "notes"
    text.write_bytes(b"GGU")
    with pytest.raises(CheckpointError, match=r"notes: a file, not a folder"):
        load_model_files(text)

"""Memory of quantized GGUF files, at a small scale: `llama-nb quantize` holds one tensor at a time
(the checkpoint's pages leave the process after each tensor), and loading a Q4_K_M file keeps every
matrix and the embedding table as the file's blocks, never a dequantized copy (what issue 15's
"peak RSS <= file size + KV cache + 1 GB" of the full 8B rests on).

Oracles: the kernel's own account of the file map's resident pages (/proc/self/smaps, Linux) and
tracemalloc's count of every NumPy allocation; the GGUF's tensor types and sizes as the gguf package
(llama.cpp's reader) sees them.
"""

from __future__ import annotations

import tracemalloc

import gguf
import numpy as np
import pytest

from llama_nb.io.checkpoint import load_model_files
from llama_nb.model.bench import load_transformer
from llama_nb.model.load import memory_need
from llama_nb.model.quantize import gguf_plans, quantize_model
from tests.tinymodel import write_tiny_model

# Rows of whole 256-weight super-blocks; the smallest matrix (wk, 256 x 512) is 512 KB as float32,
# well above the slack the allocation bound allows, so a dequantized copy of any one is seen.
WIDE = dict(dim=512, n_layers=1, n_heads=4, n_kv_heads=2, multiple_of=256, tokenizer=None, vocab_size=4352, seed=7)
SLACK = 384 << 10  # bytes of bookkeeping allowed beyond the file's tensors and the model's buffers
FAULT_AROUND = 64 << 10  # Linux's fault_around_bytes: a read fault maps up to 16 cached pages at once


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("wide") / "meta", **WIDE)


@pytest.fixture(scope="module")
def q4_k_m(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf") / "q4_k_m.gguf"
    quantize_model(folder, "q4_k_m", out, require_tokenizer=False)
    return out


def resident_bytes_of(path) -> int:
    """Bytes of `path`'s pages resident in this process's maps of it (the kernel's Rss of each)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:  # a mapping's header line
                inside = len(fields) >= 6 and fields[5] == str(path)
            elif inside and fields[0] == "Rss:":
                total += int(fields[1]) * 1024
    return total


def test_quantize_holds_one_tensor_of_the_checkpoint_at_a_time(folder):
    files = load_model_files(folder, require_tokenizer=False)
    pth = files.checkpoint.path
    assert resident_bytes_of(pth) < 64 << 10  # headers and the pickle are read with pread, not the map
    largest = max(t.nbytes for t in files.checkpoint.tensors.values())
    for plan in gguf_plans(files, "q4_k_m"):
        plan.produce()
        # what the map still holds: the pages Linux maps around the last fault (fault-around, 64 KiB)
        # past the tensor's end, at most; never the tensors read so far (15 MB)
        assert resident_bytes_of(pth) <= FAULT_AROUND + 4096, plan.name
    assert largest > 16 * FAULT_AROUND  # so the bound above is far below any large tensor's pages


def test_loading_a_q4_k_m_file_keeps_its_blocks(q4_k_m):
    """Every matrix and the embedding table stay in the file's ggml type with the file's bytes,
    and the load allocates no more than those bytes and the model's own buffers."""
    reader = {t.name: t for t in gguf.GGUFReader(q4_k_m).tensors}
    load_transformer(q4_k_m, ctx=16, max_batch=4)  # imports and first-use caches, outside the count
    tracemalloc.start()
    try:
        model = load_transformer(q4_k_m, ctx=16, max_batch=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    w = model.weights
    named = {"token_embd.weight": w.tok_embeddings, "output.weight": w.output,
             **{f"blk.0.{n}.weight": m for n, m in zip(
                 ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_down", "ffn_up"), w.matrices())}}
    for name, weight in named.items():
        t = reader[name]
        assert weight.format.name == t.tensor_type.name.lower(), name  # q4_k, q6_k: not bf16 or f32
        assert weight.data.nbytes == t.n_bytes, name
    assert w.formats() == {"q4_k", "q6_k"}
    file_tensors = sum(int(t.n_bytes) for t in reader.values())
    need = memory_need(model.args, 16, 0, max_batch=4, kv_cache=model.kv_cache)
    assert peak <= file_tensors + need.kv_cache + need.buffers + SLACK, (peak, file_tensors)


def test_a_mapped_q4_k_m_file_is_used_in_place(q4_k_m):
    model = load_transformer(q4_k_m, ctx=16, max_batch=4, mmap=True)
    file_map = load_model_files(q4_k_m, require_tokenizer=False).checkpoint.mmap
    for weight in model.weights.matrices() + [model.weights.tok_embeddings]:
        base = weight.data
        while base.base is not None and not isinstance(base, np.memmap):
            base = base.base
        assert isinstance(base, np.memmap) and base.filename == file_map.filename

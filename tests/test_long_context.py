"""Long context: the KV cache's element type (bf16 at precision bf16, f32 at float32 or by
--kv-cache), what it costs at 131072 positions for the real shapes, scratch that does not grow with
--ctx, the memory check before anything is allocated, and the online-softmax kernels over many key
blocks inside a whole model."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import llama_nb
from llama_nb.errors import LlamaNbError
from llama_nb.formats import bf16_to_f32_np, f32_to_bf16_np
from llama_nb.io.pth_write import SHAPES
from llama_nb.model.load import memory_need
from llama_nb.model.state import RunState
from llama_nb.ops.specs import KEY_BLOCK, QUERY_TILE
from tests.tinymodel import write_tiny_model

CTX_128K = 131072


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    # Dh 16, GQA 4/2: the tiled prefill and the 4-head decode kernels
    return write_tiny_model(tmp_path_factory.mktemp("longctx"), dim=64, n_layers=2, n_heads=4, n_kv_heads=2, seed=5)


@pytest.mark.parametrize("shape,bf16_gb", [("llama3.1-8b", 17.18), ("llama3.2-1b", 4.29)])
def test_kv_cache_bytes_at_128k_for_the_real_shapes(shape, bf16_gb):
    args = SHAPES[shape][0]
    per_position = args.n_layers * 2 * args.n_kv_heads * args.head_dim  # K and V values per position
    bf16 = memory_need(args, CTX_128K, 0, kv_cache="bf16")
    f32 = memory_need(args, CTX_128K, 0, kv_cache="f32")
    assert bf16.kv_cache == 2 * per_position * CTX_128K and f32.kv_cache == 2 * bf16.kv_cache
    assert round(bf16.kv_cache / 1e9, 2) == bf16_gb
    # the KV cache and the RoPE tables are all that grows with --ctx (the buffers at 4096 are the
    # same as at 128K but for the tables): no op's scratch depends on it
    small = memory_need(args, 4096, 0, kv_cache="bf16")
    assert bf16.buffers - small.buffers == 2 * 4 * (args.head_dim // 2) * (CTX_128K - 4096)
    assert bf16.kv_per_position == 2 * per_position + 4 * args.head_dim


def test_the_cache_type_follows_the_precision_unless_chosen(folder):
    for precision, kv_cache, dtype, op in [("bf16", None, np.uint16, "attention_bf16kv"),
                                           ("float32", None, np.float32, "attention"),
                                           ("bf16", "f32", np.float32, "attention"),
                                           ("float32", "bf16", np.uint16, "attention_bf16kv")]:
        llm = llama_nb.load_model(folder, ctx=64, precision=precision, kv_cache=kv_cache)
        assert llm.model.state.cache_k.dtype == llm.model.state.cache_v.dtype == dtype
        assert llm.model.attention_op == op
        assert set(RunState.shapes(llm.args, 8, 64, llm.model.kv_cache)) == set(RunState.shapes(llm.args, 8, 64))
    with pytest.raises(LlamaNbError, match="--kv-cache must be one of f32, bf16"):
        llama_nb.load_model(folder, ctx=64, kv_cache="f16")


def test_bf16_cache_holds_the_rounded_keys_and_values(folder):
    # the same model with a float32 cache computes the same keys and values (precision bf16 both):
    # the bf16 cache holds exactly their bf16 rounding, position by position
    bf16, f32 = (llama_nb.load_model(folder, ctx=256, kv_cache=c) for c in ("bf16", "f32"))
    bf16.forward([7], 0)  # layer 0's keys depend on the token only: no attention before them
    f32.forward([7], 0)
    for name in ("cache_k", "cache_v"):
        got, want = getattr(bf16.model.state, name)[0, 0, :, :1], getattr(f32.model.state, name)[0, 0, :, :1]  # slot 0, layer 0
        np.testing.assert_array_equal(got, f32_to_bf16_np(want))
    assert np.all(bf16_to_f32_np(bf16.model.state.cache_k[:, :, :, 1:]) == 0)  # nothing past the position written


@pytest.mark.parametrize("kv_cache", ["bf16", "f32"])
def test_many_key_blocks_and_query_tiles_match_the_reference_attention(folder, kv_cache):
    # a prompt over 3 key blocks and 10 query tiles, then decode steps past it: the online softmax
    # across blocks, inside the model, against the NumPy reference of the same op
    n = 2 * KEY_BLOCK + QUERY_TILE * 2 + 5
    ids = [int(t) for t in np.random.default_rng(2).integers(0, 128000, size=n)]
    op = "attention_bf16kv" if kv_cache == "bf16" else "attention"
    # precision float32: no bf16 rounding of linear inputs, which float32 noise can flip
    ours, reference = (llama_nb.load_model(folder, ctx=512, precision="float32", kv_cache=kv_cache, impl=impl,
                                           max_batch=QUERY_TILE * 3 + 1) for impl in (None, f"{op}=reference"))
    np.testing.assert_allclose(ours.forward(ids, 0), reference.forward(ids, 0), atol=2e-5, rtol=0)
    for i, token in enumerate([5, 17, 300]):
        np.testing.assert_allclose(ours.forward([token], n + i), reference.forward([token], n + i), atol=2e-5, rtol=0)


def _run(folder, available: str, *extra):
    command = [sys.executable, "-m", "llama_nb", "run", "And then", "--model", str(folder), "-n", "2", "--quiet",
               "--ctx", str(CTX_128K), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, LLAMA_NB_MEM_AVAILABLE=available))


def test_ctx_131072_runs_when_weights_and_cache_fit_and_is_refused_before_allocating(folder):
    llm = llama_nb.load_model(folder, ctx=64)
    weights = llm.model.weights.nbytes
    bf16 = memory_need(llm.args, CTX_128K, weights, kv_cache="bf16")
    f32 = memory_need(llm.args, CTX_128K, weights, kv_cache="f32")
    room = str(bf16.total + (f32.total - bf16.total) // 2)  # the bf16 cache fits, the float32 one does not
    ran = _run(folder, room)
    assert ran.returncode == 0 and ran.stdout.strip(), ran.stderr
    refused = _run(folder, room, "--kv-cache", "f32")
    assert refused.returncode == 1 and refused.stdout == ""
    assert "Traceback" not in refused.stderr
    (line,) = [text for text in refused.stderr.splitlines() if "not enough memory" in text]  # one line
    assert "not enough memory" in line and "KV cache f32" in line and "at --ctx 131072" in line, line
    assert f"{f32.kv_cache / 1e9:.2f} GB of KV cache" in line and "use a smaller --ctx" in line, line


def test_decode_at_the_end_of_a_128k_context(folder):
    # the last position of a 131072-token cache (rows before it are zeros here: written directly,
    # as bench model --at does), through the bf16 cache's decode kernel: 2048 key blocks
    llm = llama_nb.load_model(folder, ctx=CTX_128K)
    logits = llm.forward([42], CTX_128K - 1)
    assert np.isfinite(logits).all()
    reference = llama_nb.load_model(folder, ctx=CTX_128K, impl="attention_bf16kv=reference")
    np.testing.assert_allclose(logits, reference.forward([42], CTX_128K - 1), atol=2e-5, rtol=0)

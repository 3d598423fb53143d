"""Hugging Face folders (llama_nb.io.hf) against transformers: tiny LlamaForCausalLM models of several shapes.

Each shape (tests/hfmodel.py: GQA with Llama 3.1 RoPE scaling, MQA without scaling and sharded,
tied embeddings with Llama 3.2's factor 32) is written twice from one set of random bf16 weights:
in Meta's format, and by transformers' save_pretrained after Hugging Face's own q/k permutation.
Checked:
  - llama_nb on the HF folder at --precision float32 gives logits within 1e-4 of transformers'
    LlamaForCausalLM (float32) on the same folder, and the same 32 greedy tokens;
  - llama_nb on the HF folder and on the Meta folder give bit-identical logits (bf16 precision
    too): the un-permutation and the renaming lose nothing;
  - only wq and wk are copies: every other tensor is a view of the safetensors map;
  - config.json's rope_scaling reaches the rope tables: HF's "llama3" inv_freq equals our
    frequencies for Llama 3.1 8B's and 3.2 1B's published configs;
  - info and tokenize work on an HF folder; stop tokens come from generation_config.json.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import llama_nb
from llama_nb.cli import app
from llama_nb.io.checkpoint import load_model_files, load_tokenizer
from llama_nb.io.hf import HFCheckpoint, unpermute
from llama_nb.io.hf_config import config_to_args, ffn_params
from llama_nb.io.params import ModelArgs
from llama_nb.io.tokenizer import Tokenizer
from llama_nb.ops.rope_tables import rope_frequencies
from tests import hfmodel

N_TOKENS = 32
PROMPT = "the cat sat on the mat"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """shape name -> (Meta folder, HF folder); mqa_30 saved in shards (index + several files)."""
    out = {}
    for k, (name, shape) in enumerate(hfmodel.SHAPES.items()):
        root = tmp_path_factory.mktemp(name)
        out[name] = hfmodel.write_pair(root, shape, seed=k, max_shard_size="40KB" if name == "mqa_30" else None)
    return out


def hf_greedy(model, ids: list[int], n: int) -> tuple[np.ndarray, list[int]]:
    """transformers' float32 logits of the prompt's last position, and n greedy tokens."""
    with torch.no_grad():
        first = model(torch.tensor([ids])).logits[0, -1].numpy()
        tokens, seq = [], list(ids)
        for _ in range(n):
            nxt = int(model(torch.tensor([seq])).logits[0, -1].argmax())
            tokens.append(nxt)
            seq.append(nxt)
    return first, tokens


@pytest.mark.parametrize("name", list(hfmodel.SHAPES))
def test_logits_and_greedy_tokens_match_transformers(pairs, name):
    _, hf = pairs[name]
    llm = llama_nb.load_model(hf, precision="float32", ctx=64)
    ids = llm.tokenizer.encode(PROMPT, bos=True, eos=False)
    want_logits, want_tokens = hf_greedy(hfmodel.hf_oracle(hf), ids, N_TOKENS)
    got = llm.forward(ids, 0)
    np.testing.assert_allclose(got, want_logits, rtol=0, atol=1e-4, err_msg=name)
    llm = llama_nb.load_model(hf, precision="float32", ctx=64)
    tokens = [event.token for event in llm.generate(ids, N_TOKENS, stop_tokens=[])]
    assert tokens == want_tokens, name
    assert len(set(tokens)) > 3, tokens  # not a degenerate repeat: the comparison means something


@pytest.mark.parametrize("precision", ["float32", "bf16"])
@pytest.mark.parametrize("name", list(hfmodel.SHAPES))
def test_hf_folder_and_meta_folder_give_identical_logits(pairs, name, precision):
    meta, hf = pairs[name]
    ids = [hfmodel.BOS, 5, 77, 300, 12, 9]
    a = llama_nb.load_model(meta, precision=precision, ctx=32).forward(ids, 0)
    b = llama_nb.load_model(hf, precision=precision, ctx=32, mmap=True).forward(ids, 0)
    assert np.array_equal(a, b), (name, precision, np.abs(a - b).max())


def test_only_wq_and_wk_are_copied(pairs):
    meta, hf = pairs["mqa_30"]
    files = load_model_files(hf)
    ck = files.checkpoint
    assert isinstance(ck, HFCheckpoint) and len(ck.shards) > 1 and ck.path.name == "model.safetensors.index.json"
    maps = [shard.mmap for shard in ck.shards]
    for name, tensor in ck.items():
        in_a_map = any(np.shares_memory(tensor, m) for m in maps)
        assert in_a_map != name.endswith(("wq.weight", "wk.weight")), name
    ref = torch.load(meta / "consolidated.00.pth", weights_only=True)
    read = ck.read_tensors()
    assert list(read) == list(ref)  # Meta's names, in Meta's order
    for name, tensor in read.items():
        assert np.array_equal(tensor, ref[name].view(torch.int16).numpy().view(np.uint16)), name
        assert not any(np.shares_memory(tensor, m) for m in maps), name


def test_hf_names_cover_exactly_metas_tensors():
    from llama_nb.io.checkpoint import expected_shapes
    from llama_nb.io.hf import hf_name, meta_name, meta_names

    args = config_to_args(LLAMA31_8B, "c").args
    for tied in (False, True):
        assert meta_names(args, tied) == list(expected_shapes(args, tied_output=tied))
    assert all(meta_name(hf_name(name)) == name for name in meta_names(args, False))


def test_unpermute_inverts_hugging_faces_permute():
    w = torch.arange(6 * 8 * 5, dtype=torch.float32).reshape(6 * 8, 5)  # 6 heads of head_dim 8
    assert np.array_equal(unpermute(hfmodel.hf_permute(w, 6).numpy(), 6), w.numpy())


# Published config.json of meta-llama/Llama-3.1-8B-Instruct and Llama-3.2-1B (the keys read).
LLAMA31_8B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
              "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
              "intermediate_size": 14336, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
              "max_position_embeddings": 131072, "rope_scaling": hfmodel.ROPE["3.1"],
              "tie_word_embeddings": False, "torch_dtype": "bfloat16", "hidden_act": "silu"}
LLAMA32_1B = {**LLAMA31_8B, "hidden_size": 2048, "num_hidden_layers": 16, "intermediate_size": 8192,
              "head_dim": 64, "rope_scaling": hfmodel.ROPE["3.2"], "tie_word_embeddings": True}


@pytest.mark.parametrize("config", [LLAMA31_8B, LLAMA32_1B], ids=["3.1-8B", "3.2-1B"])
def test_rope_frequencies_equal_transformers_llama3_inv_freq(config):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    args = config_to_args(config, "config.json").args
    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS["llama3"](LlamaConfig(**config), "cpu")
    ours = rope_frequencies(args.head_dim, args.rope_theta, args.rope_scaling)
    assert attention_factor == 1.0
    np.testing.assert_allclose(ours, inv_freq.numpy(), rtol=1e-6, atol=0)


def test_published_configs_give_metas_params():
    """The HF configs of 8B and 1B read as Meta's params.json of the same models."""
    a8, a1 = config_to_args(LLAMA31_8B, "c").args, config_to_args(LLAMA32_1B, "c").args
    assert (a8.dim, a8.n_layers, a8.n_heads, a8.n_kv_heads, a8.hidden_dim, a8.multiple_of, a8.ffn_dim_multiplier) \
        == (4096, 32, 32, 8, 14336, 1024, 1.3)
    assert (a1.hidden_dim, a1.multiple_of, a1.ffn_dim_multiplier, a1.rope_scaling.factor) == (8192, 256, 1.5, 32.0)
    assert config_to_args(LLAMA32_1B, "c").tied and not config_to_args(LLAMA31_8B, "c").tied
    # (dim, intermediate_size) of each published Llama 3.x -> its params.json's (multiple_of, ffn_dim_multiplier)
    published = {(2048, 8192): (256, 1.5), (3072, 8192): (256, 1.0), (4096, 14336): (1024, 1.3),
                 (8192, 28672): (4096, 1.3), (16384, 53248): (4096, 1.2)}
    assert {shape: ffn_params(*shape) for shape in published} == published
    assert ModelArgs(64, 1, 4, 4, 8, *ffn_params(64, 100)).hidden_dim == 100  # not a Meta width: still exact


def test_tokenizer_and_stop_tokens_from_the_hf_folder(pairs):
    meta, hf = pairs["gqa_31"]
    ours, ref = load_tokenizer(hf), Tokenizer(meta / "tokenizer.model")
    assert ours.mergeable_ranks == ref.mergeable_ranks and ours.special_tokens == ref.special_tokens
    assert json.loads((hf / "generation_config.json").read_text())["eos_token_id"] == ours.stop_tokens
    assert ours.stop_tokens == [hfmodel.EOS, hfmodel.EOM, hfmodel.EOT]


def test_info_and_tokenize_on_an_hf_folder(pairs):
    _, hf = pairs["tied_32"]
    runner = CliRunner(env={"COLUMNS": "200", "LLAMA_NB_DEBUG": None})
    result = runner.invoke(app, ["info", "--model", str(hf), "--json"])
    assert result.exit_code == 0, result.output
    desc = json.loads(result.stdout)
    assert desc["checkpoint"].endswith("model.safetensors") and desc["tied_output"] is True
    assert desc["params"]["dim"] == 96 and desc["ffn_hidden_dim"] == 256 and desc["rope_scaling"]["factor"] == 32.0
    assert desc["rope_scaling"]["source"].endswith("config.json")
    result = runner.invoke(app, ["tokenize", "the cat", "--model", str(hf)])
    assert result.exit_code == 0, result.output
    assert "tokens" in result.output


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_f16_and_f32_safetensors_load_through_the_weight_formats(pairs, tmp_path, dtype):
    """The same folder with every tensor stored as F16 / F32: stored as is (no conversion to bf16),
    and still within 1e-4 of transformers on that folder."""
    import shutil

    from safetensors.torch import load_file, save_file

    _, hf = pairs["gqa_31"]
    copy = tmp_path / dtype
    shutil.copytree(hf, copy)
    tensors = load_file(hf / "model.safetensors")
    save_file({k: v.to(getattr(torch, dtype)) for k, v in tensors.items()}, copy / "model.safetensors",
              metadata={"format": "pt"})
    assert set(load_model_files(copy).checkpoint.dtypes.values()) == {dtype}
    llm = llama_nb.load_model(copy, precision="float32", ctx=32)
    ids = llm.tokenizer.encode(PROMPT, bos=True, eos=False)
    want, _ = hf_greedy(hfmodel.hf_oracle(copy), ids, 0)
    np.testing.assert_allclose(llm.forward(ids, 0), want, rtol=0, atol=1e-4)

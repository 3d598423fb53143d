"""Tiny Llama models in Hugging Face's format, written by transformers, beside the same weights in Meta's (test-only).

    meta, hf = write_pair(tmp_path, SHAPES["gqa_31"], seed=1)     # two folders, one model

The Meta folder is written first (tests/tinymodel.py's state dict, torch.save, params.json, and
tests/fuzzing.py's 320-token byte-level tokenizer.model, so vocab_size is 576 with the specials).
The HF folder is made from it the way Hugging Face's convert_llama_weights_to_hf.py does: tensors
renamed, q and k rows permuted with that script's `permute` (restated below: the script is not
shipped with transformers 5), loaded into transformers' LlamaForCausalLM of the matching
LlamaConfig and written by `save_pretrained` (one model.safetensors, or shards + index with
max_shard_size); tokenizer.json by the `tokenizers` package (transformers' TikTokenConverter of the
same tokenizer.model); generation_config.json by transformers, with Llama 3's stop tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llama_nb.io.tokenizer import PAT_STR, SPECIAL_TOKENS
from tests import fuzzing
from tests.tinymodel import ffn_hidden_dim, tiny_params, tiny_state_dict

VOCAB = fuzzing.BASE_PARAMS["vocab_size"]  # 320 BPE tokens + 256 specials
BOS, EOS, EOM, EOT = (320 + SPECIAL_TOKENS.index(t) for t in
                      ("<|begin_of_text|>", "<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"))
ROPE = {  # Hugging Face's rope_scaling of Llama 3.1 and of Llama 3.2 1B/3B
    "3.1": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192},
    "3.2": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192},
}
SHAPES = {
    "gqa_31": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, rope="3.1", tied=False),
    "mqa_30": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=1, rope=None, tied=False, rope_theta=10000.0),
    "tied_32": dict(dim=96, n_layers=2, n_heads=6, n_kv_heads=2, rope="3.2", tied=True),
}


def hf_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """convert_llama_weights_to_hf.py's permute: Meta's interleaved RoPE pairs -> rotate_half's halves."""
    dim1, dim2 = w.shape
    return w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)


def meta_params(shape: dict) -> dict:
    params = tiny_params(dim=shape["dim"], n_layers=shape["n_layers"], n_heads=shape["n_heads"],
                         n_kv_heads=shape["n_kv_heads"], vocab_size=VOCAB, multiple_of=32,
                         rope_theta=shape.get("rope_theta", 500000.0), use_scaled_rope=shape["rope"] is not None)
    if shape["rope"] is not None:
        params["rope_scaling"] = ROPE[shape["rope"]]
    return params


def hf_config(shape: dict):
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=shape["dim"], num_hidden_layers=shape["n_layers"], num_attention_heads=shape["n_heads"],
        num_key_value_heads=shape["n_kv_heads"], vocab_size=VOCAB, max_position_embeddings=131072,
        intermediate_size=ffn_hidden_dim(shape["dim"], 32, None), rms_norm_eps=1e-5,
        rope_theta=shape.get("rope_theta", 500000.0), rope_scaling=ROPE.get(shape["rope"]),
        tie_word_embeddings=shape["tied"], bos_token_id=BOS, eos_token_id=[EOS, EOM, EOT],
    )


def write_tokenizer_json(tokenizer_model: Path, out: Path) -> None:
    from transformers.convert_slow_tokenizer import TikTokenConverter

    converted = TikTokenConverter(vocab_file=str(tokenizer_model), pattern=PAT_STR,
                                  extra_special_tokens=list(SPECIAL_TOKENS)).converted()
    converted.save(str(out))


def hf_state_dict(sd: dict, shape: dict) -> dict[str, torch.Tensor]:
    """Meta's state dict under Hugging Face's names, q and k permuted (convert_llama_weights_to_hf.py)."""
    hf_sd = {"model.embed_tokens.weight": sd["tok_embeddings.weight"], "model.norm.weight": sd["norm.weight"]}
    if not shape["tied"]:
        hf_sd["lm_head.weight"] = sd["output.weight"]
    for i in range(shape["n_layers"]):
        m, h = f"layers.{i}.", f"model.layers.{i}."
        hf_sd[h + "self_attn.q_proj.weight"] = hf_permute(sd[m + "attention.wq.weight"], shape["n_heads"])
        hf_sd[h + "self_attn.k_proj.weight"] = hf_permute(sd[m + "attention.wk.weight"], shape["n_kv_heads"])
        hf_sd[h + "self_attn.v_proj.weight"] = sd[m + "attention.wv.weight"]
        hf_sd[h + "self_attn.o_proj.weight"] = sd[m + "attention.wo.weight"]
        hf_sd[h + "mlp.gate_proj.weight"] = sd[m + "feed_forward.w1.weight"]
        hf_sd[h + "mlp.down_proj.weight"] = sd[m + "feed_forward.w2.weight"]
        hf_sd[h + "mlp.up_proj.weight"] = sd[m + "feed_forward.w3.weight"]
        hf_sd[h + "input_layernorm.weight"] = sd[m + "attention_norm.weight"]
        hf_sd[h + "post_attention_layernorm.weight"] = sd[m + "ffn_norm.weight"]
    return hf_sd


def write_pair(root: Path, shape: dict, *, seed: int = 0, max_shard_size: str | None = None) -> tuple[Path, Path]:
    """(Meta folder, Hugging Face folder) holding the same random bf16 weights."""
    from transformers import LlamaForCausalLM

    meta, hf = root / "meta", root / "hf"
    meta.mkdir(parents=True)
    params = meta_params(shape)
    sd = tiny_state_dict(params, tie_output=shape["tied"], seed=seed, weight_std=None)
    torch.save(sd, meta / "consolidated.00.pth")
    (meta / "params.json").write_text(json.dumps(params))
    (meta / "tokenizer.model").write_bytes(fuzzing.tokenizer_model_text())

    hf_sd = hf_state_dict(sd, shape)
    model = LlamaForCausalLM(hf_config(shape)).to(torch.bfloat16)
    missing, unexpected = model.load_state_dict(hf_sd, strict=False)
    assert not unexpected and set(missing) <= ({"lm_head.weight"} if shape["tied"] else set()), (missing, unexpected)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(hf, **kwargs)
    write_tokenizer_json(meta / "tokenizer.model", hf / "tokenizer.json")
    return meta, hf


def hf_oracle(folder: Path):
    """transformers' own LlamaForCausalLM of a saved folder, in float32 (its RoPE buffers computed
    fresh: a model cast to bf16 and back would carry bf16-rounded inv_freq)."""
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def write_small_hf_folder(folder: Path, shape: dict, *, seed: int = 0) -> Path:
    """An HF folder without transformers' model classes (faster: the fuzzer's base): model.safetensors
    by the safetensors package, config.json and generation_config.json with transformers 4's keys
    (rope_theta + rope_scaling, torch_dtype: what meta-llama's repositories hold), tokenizer.json."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    params = meta_params(shape)
    sd = tiny_state_dict(params, tie_output=shape["tied"], seed=seed, weight_std=None)
    save_file({k: v.contiguous() for k, v in hf_state_dict(sd, shape).items()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": shape["dim"],
              "num_hidden_layers": shape["n_layers"], "num_attention_heads": shape["n_heads"],
              "num_key_value_heads": shape["n_kv_heads"], "vocab_size": VOCAB,
              "intermediate_size": ffn_hidden_dim(shape["dim"], 32, None), "rms_norm_eps": 1e-5,
              "rope_theta": shape.get("rope_theta", 500000.0), "rope_scaling": ROPE.get(shape["rope"]),
              "tie_word_embeddings": shape["tied"], "torch_dtype": "bfloat16", "hidden_act": "silu",
              "max_position_embeddings": 131072, "bos_token_id": BOS, "eos_token_id": [EOS, EOM, EOT]}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": BOS, "eos_token_id": [EOS, EOM, EOT]}))
    (folder / "toy.model").write_bytes(fuzzing.tokenizer_model_text())
    write_tokenizer_json(folder / "toy.model", folder / "tokenizer.json")
    (folder / "toy.model").unlink()
    return folder

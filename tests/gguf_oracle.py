"""GGUF files written by code nobody here wrote (test-only): the `gguf` package's GGUFWriter
(llama.cpp's own Python library) with llama.cpp's tensor names and metadata keys, and the
tokenizer as Hugging Face's TikTokenConverter spells Meta's tiktoken ranks.

    path = write_oracle_gguf(meta_folder, tmp_path / "m.gguf")              # bf16, as stored
    path = write_oracle_gguf(meta_folder, tmp_path / "q.gguf", qtype="Q8_0") # matrices quantized by gguf

Names come from gguf's own tables (gguf.TENSOR_NAMES, MODEL_TENSOR), the RoPE divisors from
llama.cpp's converter's formula (conversion/llama.py, generate_extra_tensors), copied below; the
q/k rows are written as Meta stores them, which is the order llama.cpp's converter produces (it
un-permutes Hugging Face's rows: LlamaModel.permute).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import gguf
import numpy as np
import torch


def _name(kind: "gguf.MODEL_TENSOR", bid: int | None = None) -> str:
    return gguf.TENSOR_NAMES[kind].format(bid=bid) + ".weight"


def oracle_names(n_layers: int) -> dict[str, str]:
    """Meta name -> llama.cpp's GGUF name, from gguf's tables."""
    T = gguf.MODEL_TENSOR
    names = {"tok_embeddings.weight": _name(T.TOKEN_EMBD), "norm.weight": _name(T.OUTPUT_NORM),
             "output.weight": _name(T.OUTPUT)}
    per_layer = {"attention.wq": T.ATTN_Q, "attention.wk": T.ATTN_K, "attention.wv": T.ATTN_V,
                 "attention.wo": T.ATTN_OUT, "feed_forward.w1": T.FFN_GATE, "feed_forward.w2": T.FFN_DOWN,
                 "feed_forward.w3": T.FFN_UP, "attention_norm": T.ATTN_NORM, "ffn_norm": T.FFN_NORM}
    for i in range(n_layers):
        for meta, kind in per_layer.items():
            names[f"layers.{i}.{meta}.weight"] = _name(kind, i)
    return names


def llama_cpp_rope_factors(head_dim: int, base: float, factor: float = 8.0, low_freq_factor: float = 1.0,
                           high_freq_factor: float = 4.0, old_context_len: int = 8192) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf (LlamaModel.generate_extra_tensors), verbatim in substance."""
    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    rope_factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            rope_factors.append(1)
        elif wavelen > low_freq_wavelen:
            rope_factors.append(factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            rope_factors.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(rope_factors, dtype=torch.float32).numpy()


def hf_vocab(tokenizer_model: Path, n_special: int = 256):
    """(tokens by id, merges) as Hugging Face's TikTokenConverter makes them from tiktoken ranks."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab, merges = TikTokenConverter(vocab_file=str(tokenizer_model)).extract_vocab_merges_from_model(str(tokenizer_model))
    tokens = sorted(vocab, key=vocab.get)
    return tokens, [f"{a} {b}" for a, b in merges]


def write_oracle_gguf(folder: Path, out: Path, *, qtype: str | None = None, rope_scaling: dict | None = None,
                      metadata_hook=None) -> Path:
    """A GGUF of the Meta folder `folder` (consolidated.00.pth, params.json, tokenizer.model)
    written by gguf.GGUFWriter; `qtype` quantizes the 2-d weights with gguf.quants ("Q8_0")."""
    from llama_nb.io.tokenizer import SPECIAL_TOKENS  # Meta's names and order (tests/test_tokenizer.py checks them)

    params = json.loads((folder / "params.json").read_text())
    state = torch.load(folder / "consolidated.00.pth", map_location="cpu", weights_only=True)
    dim, n_heads, n_layers = params["dim"], params["n_heads"], params["n_layers"]
    head_dim = dim // n_heads
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("test model")
    w.add_context_length(8192)
    w.add_embedding_length(dim)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(int(state["layers.0.feed_forward.w1.weight"].shape[0]))
    w.add_head_count(n_heads)
    w.add_head_count_kv(params.get("n_kv_heads") or n_heads)
    w.add_rope_freq_base(params.get("rope_theta", 500000.0))
    w.add_layer_norm_rms_eps(params.get("norm_eps", 1e-5))
    w.add_vocab_size(params["vocab_size"])
    w.add_rope_dimension_count(head_dim)
    w.add_file_type(1 if qtype is None else {"Q8_0": 7}[qtype])
    if (folder / "tokenizer.model").exists():
        tokens, merges = hf_vocab(folder / "tokenizer.model")
        n_base = len(tokens)
        tokens += list(SPECIAL_TOKENS)
        types = [gguf.TokenType.NORMAL] * n_base + [gguf.TokenType.CONTROL] * len(SPECIAL_TOKENS)
        for i in range(len(tokens), params["vocab_size"]):
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("llama-bpe")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(n_base)
        w.add_eos_token_id(n_base + 9)  # <|eot_id|>, as an Instruct model's GGUF says
    if metadata_hook:
        metadata_hook(w)
    if params.get("use_scaled_rope"):
        w.add_tensor(_name(gguf.MODEL_TENSOR.ROPE_FREQS),
                     llama_cpp_rope_factors(head_dim, params.get("rope_theta", 500000.0), **(rope_scaling or {})))
    for meta, name in oracle_names(n_layers).items():
        if meta not in state:
            continue
        t = state[meta]
        if t.ndim == 1:
            w.add_tensor(name, t.float().numpy())
        elif qtype is None:
            bits = t.view(torch.int16).numpy().view(np.uint16)
            w.add_tensor(name, bits, raw_shape=bits.shape, raw_dtype=gguf.GGMLQuantizationType.BF16)
        elif t.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]][0]:
            w.add_tensor(name, t.float().numpy().astype(np.float16))  # llama.cpp's fallback for such rows
        else:
            kind = gguf.GGMLQuantizationType[qtype]
            w.add_tensor(name, gguf.quants.quantize(t.float().numpy(), kind), raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out

"""llama.cpp's own converter (convert_hf_to_gguf.py) on a tiny Hugging Face Llama 3.1: its GGUF
loads in llama_nb with the logits of the Meta folder the Hugging Face model was made from.

    python bench/gguf_convert_hf.py --llama-cpp DIR   # DIR: llama.cpp's source, e.g. the vendor/llama.cpp
                                                      # of the llama-cpp-python sdist (pip download
                                                      # --no-binary :all: --no-deps llama-cpp-python)

Steps (test-only libraries: torch, transformers, llama_models):
  1. a tiny random Meta folder (tests/tinymodel.py: dim 64, 2 layers, GQA 4/2, Llama 3.1 RoPE
     scaling, Meta's real tokenizer);
  2. the same weights as a Hugging Face LlamaForCausalLM, q/k rows permuted to Hugging Face's
     rotate-half order as transformers' convert_llama_weights_to_hf does, with a tokenizer.json from
     transformers' TikTokenConverter (BOS prepended, as Meta's tokenizer.json does); save_pretrained;
  3. convert_hf_to_gguf.py --outtype bf16 (which un-permutes q/k and writes rope_freqs);
  4. llama_nb loads the GGUF: same hyperparameters and RoPE scaling, same token ids, and logits
     bit-identical to the Meta folder's (bf16 weights both).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.tinymodel import ffn_hidden_dim, write_tiny_model  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog, and then <|eot_id|> 🦙 naïve café 12345"


def hf_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """transformers' convert_llama_weights_to_hf.permute: Meta's interleaved pairs -> rotate-half."""
    dim1, dim2 = w.shape
    return w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)


def write_hf(meta: Path, out: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from llama_nb.io.tokenizer import SPECIAL_TOKENS

    p = json.loads((meta / "params.json").read_text())
    sd = torch.load(meta / "consolidated.00.pth", weights_only=True)
    hidden = ffn_hidden_dim(p["dim"], p["multiple_of"], p.get("ffn_dim_multiplier"))
    config = LlamaConfig(hidden_size=p["dim"], intermediate_size=hidden, num_hidden_layers=p["n_layers"],
                         num_attention_heads=p["n_heads"], num_key_value_heads=p["n_kv_heads"],
                         vocab_size=p["vocab_size"], rms_norm_eps=p["norm_eps"], max_position_embeddings=131072,
                         rope_theta=p["rope_theta"], tie_word_embeddings=False, bos_token_id=128000,
                         eos_token_id=128001, torch_dtype="bfloat16",
                         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    hf = {"model.embed_tokens.weight": sd["tok_embeddings.weight"], "model.norm.weight": sd["norm.weight"],
          "lm_head.weight": sd["output.weight"]}
    names = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj", "attention.wv": "self_attn.v_proj",
             "attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj",
             "feed_forward.w3": "mlp.up_proj", "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    for i in range(p["n_layers"]):
        for m, h in names.items():
            w = sd[f"layers.{i}.{m}.weight"]
            if m == "attention.wq":
                w = hf_permute(w, p["n_heads"])
            elif m == "attention.wk":
                w = hf_permute(w, p["n_kv_heads"])
            hf[f"model.layers.{i}.{h}.weight"] = w
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    missing, unexpected = model.load_state_dict(hf, strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    model.save_pretrained(out)
    converted = TikTokenConverter(vocab_file=str(meta / "tokenizer.model"), extra_special_tokens=list(SPECIAL_TOKENS)).converted()
    tok = PreTrainedTokenizerFast(tokenizer_object=converted, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
    from tokenizers import processors

    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", 128000)])
    tok.save_pretrained(out)


def main(argv=None) -> int:
    import llama_nb
    from llama_nb.io.tokenizer import Tokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-cpp", type=Path, required=True, help="llama.cpp's source folder")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="llama_nb_convert_"))
    meta = write_tiny_model(out / "meta", seed=7, weight_std=None, use_scaled_rope=True)
    write_hf(meta, out / "hf")
    gguf_path = out / "converted-bf16.gguf"
    env = dict(os.environ)
    if importlib.util.find_spec("sentencepiece") is None:
        # The converter imports sentencepiece before it looks for a tokenizer.model (there is none: it
        # then reads tokenizer.json); a stand-in module lets it get that far without the package.
        (out / "stub").mkdir(exist_ok=True)
        (out / "stub" / "sentencepiece.py").write_text("class SentencePieceProcessor:\n    pass\n")
        env["PYTHONPATH"] = os.pathsep.join([str(out / "stub"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(args.llama_cpp / "convert_hf_to_gguf.py"), str(out / "hf"),
                           "--outtype", "bf16", "--outfile", str(gguf_path)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        return 1
    ours, theirs = llama_nb.load_model(meta, ctx=64), llama_nb.load_model(gguf_path, ctx=64)
    real = Tokenizer(meta / "tokenizer.model")
    ids = real.encode(TEXT, bos=True, eos=False, allowed_special="all")
    same_ids = theirs.tokenizer.encode(TEXT, bos=True, eos=False, allowed_special="all") == ids
    a, b = ours.forward(ids, 0), theirs.forward(ids, 0)
    keys = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "norm_eps", "rope_theta", "rope_scaling", "hidden_dim")
    same_args = all(getattr(ours.args, k) == getattr(theirs.args, k) for k in keys)
    print(f"convert_hf_to_gguf.py -> {gguf_path.name}: hyperparameters {'same' if same_args else 'DIFFER'} "
          f"(RoPE scaling {theirs.args.rope_scaling}), token ids {'identical' if same_ids else 'DIFFER'}, "
          f"logits {'bit-identical' if np.array_equal(a, b) else f'max diff {np.abs(a - b).max():.3g}'} "
          f"to the Meta folder's")
    return 0 if same_args and same_ids and np.array_equal(a, b) else 1


if __name__ == "__main__":
    sys.exit(main())

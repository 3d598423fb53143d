"""RoPE scaling per model against Hugging Face's `rope_type: llama3` (transformers.modeling_rope_utils),
and a model of the Llama 3.2 1B's widths running at positions past 8K with factor 32.

Meta's params.json says only "use_scaled_rope": true; llama_nb infers the factor from the shape
(io/params.py: 32 for the 3.2 1B/3B widths, else Meta's 8). Hugging Face's config.json of each
model states it. So each case pairs Meta's params.json of a model with Hugging Face's config.json
values of the same model, and the frequencies must agree bit for bit.
"""

import os

import numpy as np
import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from llama_nb.io.checkpoint import load_model_files
from llama_nb.io.params import ModelArgs
from llama_nb.model.load import build_transformer
from llama_nb.ops.opset import OpSet
from llama_nb.ops.rope_tables import rope_frequencies, rope_tables
from tests.tinymodel import write_tiny_model

# Meta's params.json of each model (llama_models' sku_list arch_args) and the RoPE keys of
# Hugging Face's config.json of the same model (meta-llama/Llama-3.1-8B, Llama-3.2-1B, Llama-3.2-3B).
META_PARAMS = {
    "3.1-8B": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=128256, multiple_of=1024,
                   ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500000.0, use_scaled_rope=True),
    "3.2-1B": dict(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, vocab_size=128256, multiple_of=256,
                   ffn_dim_multiplier=1.5, norm_eps=1e-5, rope_theta=500000.0, use_scaled_rope=True),
    "3.2-3B": dict(dim=3072, n_layers=28, n_heads=24, n_kv_heads=8, vocab_size=128256, multiple_of=256,
                   ffn_dim_multiplier=1.0, norm_eps=1e-5, rope_theta=500000.0, use_scaled_rope=True),
}
HF_ROPE = {
    "3.1-8B": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "3.2-1B": {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "3.2-3B": {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192, "rope_type": "llama3"},
}
POSITIONS = [0, 1, 2047, 8191, 8192, 32768, 131071]


def hf_config(name: str) -> LlamaConfig:
    p = META_PARAMS[name]
    return LlamaConfig(hidden_size=p["dim"], num_attention_heads=p["n_heads"], num_key_value_heads=p["n_kv_heads"],
                       num_hidden_layers=p["n_layers"], vocab_size=p["vocab_size"], max_position_embeddings=131072,
                       rope_parameters={**HF_ROPE[name], "rope_theta": p["rope_theta"]})


@pytest.mark.parametrize("name", sorted(META_PARAMS))
def test_frequencies_equal_hugging_faces_bit_for_bit(name):
    args = ModelArgs.from_dict(META_PARAMS[name])
    assert args.rope_scaling.factor == HF_ROPE[name]["factor"]  # inferred from the shape alone
    hf_inv_freq, attention_factor = ROPE_INIT_FUNCTIONS["llama3"](hf_config(name), "cpu")
    assert attention_factor == 1.0
    ours = rope_frequencies(args.head_dim, args.rope_theta, args.rope_scaling)
    assert ours.dtype == np.float32 and ours.shape == tuple(hf_inv_freq.shape)
    np.testing.assert_array_equal(ours, hf_inv_freq.numpy())


@pytest.mark.parametrize("name", sorted(META_PARAMS))
def test_tables_match_hugging_faces_rotary_embedding(name):
    """HF's cos/sin (LlamaRotaryEmbedding.forward: cat(freqs, freqs), torch's float32 cos/sin) at
    positions on both sides of 8K and at the 128K end. Ours are the float32 angle's cos/sin rounded
    from float64, within an ulp of torch's float32 ones (as against Meta's, tests/test_rope_meta.py)."""
    args = ModelArgs.from_dict(META_PARAMS[name])
    cos, sin = rope_tables(args.head_dim, POSITIONS[-1] + 1, args.rope_theta, args.rope_scaling)
    half = args.head_dim // 2
    with torch.no_grad():
        hf_cos, hf_sin = LlamaRotaryEmbedding(hf_config(name))(torch.zeros(1, len(POSITIONS), args.head_dim),
                                                               torch.tensor([POSITIONS]))
    for hf, ours in ((hf_cos[0].numpy(), cos[POSITIONS]), (hf_sin[0].numpy(), sin[POSITIONS])):
        np.testing.assert_array_equal(hf[:, :half], hf[:, half:])  # rotate_half's layout: each angle twice
        np.testing.assert_allclose(ours, hf[:, :half], rtol=0, atol=2e-6)


# -- a model of the 3.2 1B's widths, past 8K --------------------------------------------------

START = 9000  # the second pass's first position, past Llama 3's original 8192
CTX = START + 4


@pytest.fixture(scope="module")
def llama32_widths(tmp_path_factory):
    """Three folders of one random model with the 3.2 1B's dim and heads (head_dim 64), one layer, a
    narrow FFN and a small vocab: params.json silent on the factor, explicitly 32, explicitly 8."""
    base = write_tiny_model(tmp_path_factory.mktemp("w1b"), dim=2048, n_layers=1, n_heads=32, n_kv_heads=8,
                            ffn_dim_multiplier=0.05, multiple_of=64, vocab_size=256, tokenizer=None,
                            weight_std=None)
    import json

    params = json.loads((base / "params.json").read_text())
    folders = {"silent": base}
    for factor in (32, 8):
        folder = base.parent / f"factor{factor}"
        folder.mkdir()
        os.link(base / "consolidated.00.pth", folder / "consolidated.00.pth")
        (folder / "params.json").write_text(json.dumps({**params, "rope_scaling": {"rope_type": "llama3", "factor": factor}}))
        folders[factor] = folder
    return folders


def logits_past_8k(folder) -> np.ndarray:
    """Tokens at positions 0-1, then 4 tokens at START..START+3: their queries meet the keys of
    positions 0 and 1 at distances around 9000, where factor 8 and 32 rotate differently. The
    positions between were never run: their cache entries are zeros (score 0, value 0 in every run)."""
    files = load_model_files(folder, require_tokenizer=False)
    model = build_transformer(files, OpSet.from_spec(None, precision="float32", timed=False), ctx=CTX, max_batch=4,
                              mmap=True)
    model.forward([11, 200], 0)
    return model.forward([3, 77, 150, 42], START).copy(), files.args.rope_scaling.factor


def test_llama32_widths_use_factor_32_past_8k(llama32_widths):
    silent, silent_factor = logits_past_8k(llama32_widths["silent"])
    explicit32, _ = logits_past_8k(llama32_widths[32])
    explicit8, factor8 = logits_past_8k(llama32_widths[8])
    assert (silent_factor, factor8) == (32.0, 8.0)
    np.testing.assert_array_equal(silent, explicit32)  # the same tables, the same numbers
    # Factor 8 moves the logits by far more than float32 rounding (~1e-6 of their size) would; not
    # by more still because the 8998 zero keys between take most of each softmax's weight.
    assert np.abs(silent - explicit8).max() > 1e-3 * np.abs(silent).max()

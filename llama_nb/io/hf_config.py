"""config.json of a Hugging Face Llama folder -> ModelArgs (Meta's hyperparameters), validated.

meta-llama/Llama-3.1-8B-Instruct's config.json (the keys read here):

    {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
     "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
     "num_key_value_heads": 8, "vocab_size": 128256, "intermediate_size": 14336,
     "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
     "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
     "tie_word_embeddings": false, "torch_dtype": "bfloat16", "hidden_act": "silu", ...}

transformers 5 writes the RoPE numbers as one "rope_parameters" object instead (rope_theta inside
it, "rope_type": "default" for no scaling, "dtype" for "torch_dtype"); both spellings are read.

    Hugging Face             params.json / ModelArgs
    hidden_size              dim
    num_hidden_layers        n_layers
    num_attention_heads      n_heads
    num_key_value_heads      n_kv_heads (absent or null: n_heads)
    vocab_size               vocab_size
    intermediate_size        the FFN width itself; ModelArgs derives it from multiple_of and
                             ffn_dim_multiplier (Meta's formula, io/params.py), so `ffn_params`
                             finds values that reproduce it: Meta's own pair for that shape when
                             one does (8B: 1024, 1.3), else multiple_of = intermediate_size
    rms_norm_eps             norm_eps
    rope_theta               rope_theta
    rope_scaling             use_scaled_rope + RopeScaling ("llama3" only), through ModelArgs.from_dict
    tie_word_embeddings      no lm_head: the output is the embedding table (Meta: no output.weight)

Refused in one line: another architecture or model_type (Mistral, Qwen, ...), a hidden_act other
than silu, attention or MLP biases, a head_dim other than hidden_size / num_attention_heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_nb.errors import CheckpointError, shown
from llama_nb.io.jsonfile import read_json
from llama_nb.io.params import ModelArgs, _check_type

CONFIG_NAME = "config.json"
MAX_CONFIG_BYTES = 1 << 20  # ~1 KB
ARCHITECTURE = "LlamaForCausalLM"
# (multiple_of, ffn_dim_multiplier) of Meta's Llama 3.x params.json files: 1B, 3B, 70B, 8B, 405B, args.py's
# default. The first that gives a shape's width is taken, and in this order each published shape
# gets its own pair back (1B's 8192 also comes from (4096, 1.3); 70B's 28672 from (1024, 1.3)).
META_FFN_PARAMS = ((256, 1.5), (256, 1.0), (4096, 1.3), (1024, 1.3), (4096, 1.2), (256, None))


@dataclass(frozen=True)
class HFConfig:
    args: ModelArgs
    tied: bool  # tie_word_embeddings
    dtype: str | None  # torch_dtype, as written (the tensors' own dtypes are what is used)


def ffn_params(dim: int, intermediate_size: int) -> tuple[int, float | None]:
    """(multiple_of, ffn_dim_multiplier) for which Meta's formula gives `intermediate_size`."""
    for multiple_of, multiplier in META_FFN_PARAMS:
        if ModelArgs(dim, 1, 1, 1, 1, multiple_of, multiplier).hidden_dim == intermediate_size:
            return multiple_of, multiplier
    # multiple_of = I rounds any width in [1, I] up to I; int(2 * 4 * dim / 3) may exceed I
    base = int(2 * (4 * dim) / 3)
    return intermediate_size, None if base <= intermediate_size else intermediate_size / base


def read_config(path: str | Path) -> HFConfig:
    """Read and check config.json; every failure is a one-line CheckpointError naming it."""
    path = Path(path)
    config = read_json(path, MAX_CONFIG_BYTES, "a Hugging Face config.json")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {shown(config)}")
    return config_to_args(config, str(path))


def config_to_args(config: dict[str, Any], source: str) -> HFConfig:
    """ModelArgs of a parsed config.json (the table in the module docstring)."""
    architectures, model_type = config.get("architectures"), config.get("model_type", "llama")
    if architectures != [ARCHITECTURE] or model_type != "llama":
        raise CheckpointError(f"{source}: architectures {shown(architectures)}, model_type {shown(model_type)}: "
                              f"not a Llama model; llama_nb reads {ARCHITECTURE} (model_type \"llama\")")
    for key, allowed in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if config.get(key, allowed) != allowed:
            raise CheckpointError(f"{source}: {key} is {shown(config[key])}; Llama 3.x has {shown(allowed)}")

    def get(key: str, kind: str, default: Any = None) -> Any:
        if config.get(key) is None:
            if default is None:
                raise CheckpointError(f"{source}: missing required key {key!r}")
            return default
        return _check_type(source, key, config[key], kind)

    dim, n_heads = get("hidden_size", "size"), get("num_attention_heads", "size")
    head_dim = config.get("head_dim")
    if head_dim is not None and (dim % n_heads or head_dim != dim // n_heads):
        raise CheckpointError(f"{source}: head_dim={shown(head_dim)} but hidden_size / num_attention_heads = "
                              f"{dim} / {n_heads}; llama_nb needs head_dim = hidden_size / num_attention_heads")
    intermediate = get("intermediate_size", "size")
    multiple_of, multiplier = ffn_params(dim, intermediate)
    rope_theta, scaling = _rope(config, source)
    tied = config.get("tie_word_embeddings", False)
    if not isinstance(tied, bool):
        raise CheckpointError(f"{source}: tie_word_embeddings must be true or false, got {shown(tied)}")
    dtype = config.get("torch_dtype", config.get("dtype"))
    if dtype is not None and not isinstance(dtype, str):
        raise CheckpointError(f"{source}: torch_dtype must be a string, got {shown(dtype)}")
    params = {
        "dim": dim, "n_layers": get("num_hidden_layers", "size"), "n_heads": n_heads,
        "n_kv_heads": get("num_key_value_heads", "size", n_heads), "vocab_size": get("vocab_size", "size"),
        "multiple_of": multiple_of, "ffn_dim_multiplier": multiplier,
        "norm_eps": get("rms_norm_eps", "positive", 1e-6),  # LlamaConfig's default
        "rope_theta": rope_theta, "use_scaled_rope": scaling is not None, "rope_scaling": scaling,
    }
    args = ModelArgs.from_dict(params, source=source)
    if args.hidden_dim != intermediate:  # ffn_params cannot reach it (intermediate_size 1 at dim >= 2)
        raise CheckpointError(f"{source}: intermediate_size={intermediate} is not a width Meta's FeedForward "
                              f"formula gives for hidden_size={dim}")
    return HFConfig(args=args, tied=tied, dtype=dtype)


def _rope(config: dict[str, Any], source: str) -> tuple[Any, dict | None]:
    """(rope_theta, the "llama3" scaling object or None), from either spelling."""
    rope = config.get("rope_parameters")
    if rope is not None:  # transformers 5
        if not isinstance(rope, dict):
            raise CheckpointError(f"{source}: 'rope_parameters' must be an object, got {shown(rope)}")
        theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    else:
        rope, theta = config.get("rope_scaling"), config.get("rope_theta", 10000.0)  # LlamaConfig's default
    if isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) == "default":
        rope = None
    return theta, rope

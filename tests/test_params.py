"""params.json: Meta's published files parse to the published sizes; every bad file is one clear error.

Oracles: the params.json contents Meta publishes, the FFN widths in Meta's model cards (14336 for
3.1 8B, 8192 for 3.2 1B), and Meta's own llama_models ModelArgs for defaults.
"""

import dataclasses
import json

import pytest
from llama_models.llama3.args import ModelArgs as MetaArgs

from llama_nb.errors import CheckpointError
from llama_nb.io.params import ModelArgs, RopeScaling

# Verbatim from Meta's downloads (key order included).
LLAMA31_8B = {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256,
              "multiple_of": 1024, "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0,
              "use_scaled_rope": True}
LLAMA32_1B = {"dim": 2048, "n_layers": 16, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256,
              "ffn_dim_multiplier": 1.5, "multiple_of": 256, "norm_eps": 1e-05, "rope_theta": 500000.0,
              "use_scaled_rope": True}
REQUIRED = {"dim": 64, "n_layers": 2, "n_heads": 4, "vocab_size": 300}


def write(tmp_path, data, name="params.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.mark.parametrize(
    "params,head_dim,hidden,n_rep",
    [(LLAMA31_8B, 128, 14336, 4), (LLAMA32_1B, 64, 8192, 4)],
    ids=["llama3.1-8b", "llama3.2-1b"],
)
def test_published_params(tmp_path, params, head_dim, hidden, n_rep):
    args = ModelArgs.from_file(write(tmp_path, params))
    assert (args.head_dim, args.hidden_dim, args.n_rep) == (head_dim, hidden, n_rep)
    assert args.to_dict() == {k: params[k] for k in args.to_dict()}
    assert isinstance(args.rope_theta, float) and args.use_scaled_rope is True


def test_defaults_are_metas(tmp_path):
    """Optional keys default exactly as Meta's args.py does (n_kv_heads follows n_heads)."""
    ours = ModelArgs.from_dict(REQUIRED)
    meta = MetaArgs(**REQUIRED)
    for f in dataclasses.fields(ModelArgs):
        if f.name != "rope_scaling":  # Meta's args have no such field: its model.py hard-codes the constants
            assert getattr(ours, f.name) == getattr(meta, f.name), f.name


def test_unknown_keys_are_ignored_and_nulls_allowed_where_meta_allows(tmp_path):
    data = dict(LLAMA31_8B, vision_chunk_size=-1, quantization_args={"scheme": None}, n_kv_heads=None,
                ffn_dim_multiplier=None)
    args = ModelArgs.from_file(write(tmp_path, data))
    assert args.n_kv_heads == 32 and args.ffn_dim_multiplier is None
    assert args.hidden_dim == 11264  # int(2 * 16384 / 3) = 10922 rounded up to a multiple of 1024


def test_integral_numbers_become_floats(tmp_path):
    args = ModelArgs.from_dict(dict(REQUIRED, rope_theta=10000, norm_eps=1, ffn_dim_multiplier=2))
    assert (args.rope_theta, args.norm_eps, args.ffn_dim_multiplier) == (10000.0, 1.0, 2.0)
    assert all(isinstance(v, float) for v in (args.rope_theta, args.norm_eps, args.ffn_dim_multiplier))


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ModelArgs.from_dict(REQUIRED).dim = 8


# (change to the 8B's params, the key the message must name)
INVALID = [
    ({"dim": None}, "dim"),
    ({"dim": True}, "dim"),  # bool is an int in Python: must not become dim=1
    ({"dim": "4096"}, "dim"),
    ({"dim": 4096.0}, "dim"),
    ({"dim": 0}, "dim"),
    ({"n_layers": -32}, "n_layers"),
    ({"n_heads": [32]}, "n_heads"),
    ({"n_kv_heads": False}, "n_kv_heads"),
    ({"n_kv_heads": 0}, "n_kv_heads"),
    ({"vocab_size": -1}, "vocab_size"),  # Meta's args.py default: "not set"
    ({"multiple_of": 0}, "multiple_of"),
    ({"multiple_of": None}, "multiple_of"),
    ({"ffn_dim_multiplier": "1.3"}, "ffn_dim_multiplier"),
    ({"ffn_dim_multiplier": True}, "ffn_dim_multiplier"),
    ({"ffn_dim_multiplier": 0}, "ffn_dim_multiplier"),
    ({"norm_eps": 0}, "norm_eps"),
    ({"norm_eps": "1e-5"}, "norm_eps"),
    ({"norm_eps": float("nan")}, "norm_eps"),  # json.dumps writes NaN, json.loads reads it back
    ({"rope_theta": -500000.0}, "rope_theta"),
    ({"rope_theta": float("inf")}, "rope_theta"),
    ({"use_scaled_rope": 1}, "use_scaled_rope"),
    ({"use_scaled_rope": "true"}, "use_scaled_rope"),
    ({"n_kv_heads": 5}, "n_kv_heads"),  # 32 heads do not split into 5 groups
    ({"n_kv_heads": 64}, "n_kv_heads"),  # more kv heads than heads
    ({"n_heads": 24, "n_kv_heads": 8}, "n_heads"),  # 4096 % 24 != 0
    ({"dim": 96, "n_heads": 32, "n_kv_heads": 8}, "n_heads"),  # head_dim 3: RoPE needs pairs
]


@pytest.mark.parametrize("change,key", INVALID, ids=[f"{k}={v}" for c, k in INVALID for v in [c[k]]])
def test_invalid_value_names_file_and_key(tmp_path, change, key):
    path = write(tmp_path, dict(LLAMA31_8B, **change))
    with pytest.raises(CheckpointError) as info:
        ModelArgs.from_file(path)
    msg = str(info.value)
    assert str(path) in msg and key in msg and "\n" not in msg


@pytest.mark.parametrize("key", ["dim", "n_layers", "n_heads", "vocab_size"])
def test_missing_required_key(tmp_path, key):
    path = write(tmp_path, {k: v for k, v in LLAMA31_8B.items() if k != key})
    with pytest.raises(CheckpointError, match=rf"{path}: missing required key '{key}'"):
        ModelArgs.from_file(path)


@pytest.mark.parametrize(
    "text,where",
    [
        ('{"dim": 4096,\n "n_layers": 32,,\n}', "line 2 column 17"),
        ("{dim: 4096}", "line 1 column 2"),
        ('{"dim": 4096', "line 1 column 13"),
        ("", "line 1 column 1"),
    ],
)
def test_not_json_names_line_and_column(tmp_path, text, where):
    path = write(tmp_path, text)
    with pytest.raises(CheckpointError) as info:
        ModelArgs.from_file(path)
    assert str(path) in str(info.value) and where in str(info.value)


@pytest.mark.parametrize("data", [[LLAMA31_8B], "4096", "null"])
def test_top_level_must_be_an_object(tmp_path, data):
    path = write(tmp_path, data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(CheckpointError, match="expected a JSON object") as info:
        ModelArgs.from_file(path)
    assert str(path) in str(info.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match="params.json: no such file"):
        ModelArgs.from_file(tmp_path / "params.json")
    path = tmp_path / "params.json"
    path.write_bytes(b'{"dim": \xff\xfe}')
    with pytest.raises(CheckpointError, match="not UTF-8"):
        ModelArgs.from_file(path)
    with pytest.raises(CheckpointError, match="cannot read"):
        ModelArgs.from_file(tmp_path)  # a folder


def test_from_dict_source_names_the_origin():
    with pytest.raises(CheckpointError, match=r"^my/params\.json: key 'dim'"):
        ModelArgs.from_dict(dict(REQUIRED, dim="x"), source="my/params.json")


def test_rope_scaling_follows_the_shape_when_the_file_is_silent(tmp_path):
    """Meta's params.json says only use_scaled_rope; 3.2 1B/3B were trained with factor 32 (their
    Hugging Face config.json), every other Llama 3.1+ with Meta's model.py constants (factor 8)."""
    llama32_3b = dict(LLAMA32_1B, dim=3072, n_layers=28, n_heads=24)
    for params, factor in [(LLAMA31_8B, 8.0), (LLAMA32_1B, 32.0), (llama32_3b, 32.0)]:
        args = ModelArgs.from_file(write(tmp_path, params))
        assert args.rope_scaling == RopeScaling(factor=factor), params
        assert args.to_dict() == {k: params[k] for k in args.to_dict()}  # nothing inferred is written back
        assert "rope_scaling" not in args.to_dict()
    assert ModelArgs.from_dict(dict(LLAMA31_8B, use_scaled_rope=False)).rope_scaling is None
    assert "3.2 1B" in ModelArgs.from_dict(LLAMA32_1B).rope_scaling.source


def test_explicit_rope_scaling_wins_and_round_trips(tmp_path):
    hf_style = {"rope_type": "llama3", "factor": 16.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0,
                "original_max_position_embeddings": 4096}
    args = ModelArgs.from_file(write(tmp_path, dict(LLAMA32_1B, rope_scaling=hf_style)))
    assert args.rope_scaling == RopeScaling(16.0, 2.0, 8.0, 4096)
    assert args.to_dict()["rope_scaling"] == hf_style  # not the shape's default: written back
    assert ModelArgs.from_dict(args.to_dict()) == args
    # The shape's own default, spelled out, is not repeated.
    same = ModelArgs.from_dict(dict(LLAMA32_1B, rope_scaling={"factor": 32}))
    assert same == ModelArgs.from_dict(LLAMA32_1B) and "rope_scaling" not in same.to_dict()


@pytest.mark.parametrize("scaling,word", [
    ({"factor": 0.5}, "rope_scaling.factor"),
    ({"factor": "8"}, "rope_scaling.factor"),
    ({"low_freq_factor": 4.0, "high_freq_factor": 4.0}, "high_freq_factor"),
    ({"original_max_position_embeddings": 0}, "original_max_position_embeddings"),
    ({"rope_type": "yarn"}, "yarn"),
    ([8], "rope_scaling"),
])
def test_bad_rope_scaling_is_one_line(tmp_path, scaling, word):
    path = write(tmp_path, dict(LLAMA31_8B, rope_scaling=scaling))
    with pytest.raises(CheckpointError) as info:
        ModelArgs.from_file(path)
    assert str(path) in str(info.value) and word in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="use_scaled_rope is false"):
        ModelArgs.from_dict(dict(LLAMA31_8B, use_scaled_rope=False, rope_scaling={"factor": 8}))

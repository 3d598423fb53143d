"""params.json: the hyperparameters of a Llama 3.x checkpoint, validated before any tensor is read.

Meta ships one params.json per model folder, e.g. Llama 3.1 8B:

    {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256,
     "multiple_of": 1024, "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05,
     "rope_theta": 500000.0, "use_scaled_rope": true}

Defaults for optional keys are those of Meta's `llama_models/llama3/args.py` (n_kv_heads =
n_heads, multiple_of 256, ffn_dim_multiplier None, norm_eps 1e-5, rope_theta 500000,
use_scaled_rope False). Meta's defaults for dim/n_layers/n_heads are the 8B's and vocab_size's is
-1 (unusable), so those four are required here: a params.json without them is not a Llama file.
Unknown keys are ignored, as Meta's loader ignores them (real files carry a few, e.g. for vision).

RoPE scaling (Llama 3.1 and later, "use_scaled_rope": true) has four constants that Meta's
params.json does not carry: Meta's model.py hard-codes factor 8, low_freq_factor 1,
high_freq_factor 4 and an original context of 8192, but Llama 3.2 1B and 3B were trained with
factor 32 (their Hugging Face config.json says so). So `RopeScaling` is explicit where the file
says it (a "rope_scaling" object, as Hugging Face writes it) and otherwise follows
`default_rope_scaling`: 32 for the published 3.2 1B/3B widths, Meta's 8 for every other.

Derived sizes, as Meta's model.py computes them:
    head_dim   = dim // n_heads                          128 for 8B, 64 for 3.2 1B
    hidden_dim = FeedForward's SwiGLU width:
        h = int(2 * (4 * dim) / 3)
        h = int(ffn_dim_multiplier * h)                  when ffn_dim_multiplier is set
        h = multiple_of * ceil(h / multiple_of)          14336 for 8B, 8192 for 3.2 1B
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from llama_nb.errors import CheckpointError
from llama_nb.io.jsonfile import read_json

MAX_PARAMS_BYTES = 1 << 20  # Meta's params.json is ~250 bytes
# Ranges outside which the forward pass computes garbage without a word (see from_dict).
ROPE_THETA_RANGE = (1.0, 1e12)  # Meta: 500000 (Llama 3), 10000 (Llama 2)
NORM_EPS_RANGE = (1e-12, 1.0)  # Meta: 1e-5; in float32, 1e-12 still keeps 0 / sqrt(0 + eps) finite

_MISSING = object()
ROPE_FACTOR_RANGE = (1.0, 1024.0)  # Meta: 8 (3.1), 32 (3.2 1B/3B); below 1 it would shorten wavelengths

# (dim, n_heads, n_kv_heads) of Meta's Llama 3.2 1B and 3B, trained with RoPE factor 32 (Hugging
# Face's config.json of meta-llama/Llama-3.2-1B and -3B: "rope_scaling": {"factor": 32.0, ...}). No other
# Meta model has these widths (llama_models' sku_list). n_layers is left out on purpose: the models
# derived from them keep the factor but not always the depth (Llama Guard 3 1B INT4 is the 1B pruned
# to 12 layers), and a shallow model of the 1B's widths is how the tests check the factor.
LLAMA32_SMALL_SHAPES = {(2048, 32, 8): "Llama 3.2 1B", (3072, 24, 8): "Llama 3.2 3B"}


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1's RoPE frequency scaling: Meta's apply_scaling, Hugging Face's rope_type "llama3".

    With wavelength w_i = 2 pi / freq_i, low = original_context / low_freq_factor and
    high = original_context / high_freq_factor:
        w_i < high          freq_i unchanged                    (the fast rotations)
        w_i > low           freq_i / factor                     (the slow ones, stretched)
        in between          (1 - s) freq_i / factor + s freq_i,
                            s = (original_context / w_i - low_freq_factor) / (high_freq_factor - low_freq_factor)
    `source` says where the numbers came from (for `llama-nb info`); it is not part of equality.
    """

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_context: int = 8192  # Hugging Face: original_max_position_embeddings
    source: str = field(default="Meta's model.py constants", compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Hugging Face's spelling of the same numbers (what from_dict reads back)."""
        return {"rope_type": "llama3", "factor": self.factor, "low_freq_factor": self.low_freq_factor,
                "high_freq_factor": self.high_freq_factor,
                "original_max_position_embeddings": self.original_context}

    @classmethod
    def from_dict(cls, d: Any, source: str) -> "RopeScaling":
        """A "rope_scaling" object (params.json or Hugging Face's config.json), validated."""
        if not isinstance(d, Mapping):
            raise CheckpointError(f"{source}: 'rope_scaling' must be an object, got {_show(d)}")
        kind = d.get("rope_type", d.get("type", "llama3"))
        if kind != "llama3":
            raise CheckpointError(f"{source}: rope_scaling type {_show(kind)} is not supported "
                                  f"(Llama 3.x uses \"llama3\")")

        def get(key: str, kind: str, default: Any) -> Any:
            return _check_type(source, f"rope_scaling.{key}", d[key], kind) if key in d else default

        scaling = cls(factor=get("factor", "positive", 8.0), low_freq_factor=get("low_freq_factor", "positive", 1.0),
                      high_freq_factor=get("high_freq_factor", "positive", 4.0),
                      original_context=get("original_max_position_embeddings", "size", 8192),
                      source=source)
        _check_range(source, "rope_scaling.factor", scaling.factor, ROPE_FACTOR_RANGE,
                     "the slow RoPE frequencies are divided by it")
        if not scaling.high_freq_factor > scaling.low_freq_factor:
            raise CheckpointError(
                f"{source}: rope_scaling.high_freq_factor={scaling.high_freq_factor:g} must exceed "
                f"low_freq_factor={scaling.low_freq_factor:g} (the blend divides by their difference)")
        return scaling


def default_rope_scaling(dim: int, n_heads: int, n_kv_heads: int) -> RopeScaling:
    """The scaling of a model whose file says only "use_scaled_rope": factor 32 for the Llama 3.2
    1B/3B widths (as trained), Meta's constants (factor 8) for every other shape."""
    name = LLAMA32_SMALL_SHAPES.get((dim, n_heads, n_kv_heads))
    if name is not None:
        return RopeScaling(factor=32.0, source=f"{name} widths (factor 32 as trained; Meta's model.py says 8)")
    return RopeScaling()


@dataclass(frozen=True)
class ModelArgs:
    """The hyperparameters a Llama 3.x forward pass needs; invariants checked by `from_dict`."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    use_scaled_rope: bool = False
    # Set when use_scaled_rope is (given, or default_rope_scaling's); None otherwise.
    rope_scaling: RopeScaling | None = None

    def __post_init__(self) -> None:
        if self.use_scaled_rope and self.rope_scaling is None:
            object.__setattr__(self, "rope_scaling", default_rope_scaling(
                self.dim, self.n_heads, self.n_kv_heads))
        elif not self.use_scaled_rope and self.rope_scaling is not None:
            raise ValueError("ModelArgs: rope_scaling given but use_scaled_rope is False")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def n_rep(self) -> int:
        """Query heads per key/value head (grouped-query attention)."""
        return self.n_heads // self.n_kv_heads

    @property
    def hidden_dim(self) -> int:
        """The feed-forward width, exactly as Meta's FeedForward.__init__ derives it."""
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    def to_dict(self) -> dict[str, Any]:
        """The params.json keys, in Meta's order (for `info --json` and round trips), and
        "rope_scaling" only where it is not what from_dict would infer from the rest."""
        d = {name: getattr(self, name) for name in _FIELDS}
        if self.rope_scaling is not None and self.rope_scaling != replace(self, rope_scaling=None).rope_scaling:
            d["rope_scaling"] = self.rope_scaling.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "params.json") -> "ModelArgs":
        """Validate a parsed params.json; `source` (the file) starts every error message."""
        if not isinstance(d, Mapping):
            raise CheckpointError(f"{source}: expected a JSON object of hyperparameters, got {_show(d)}")

        def get(key: str, kind: str, default: Any = _MISSING) -> Any:
            if key not in d:
                if default is _MISSING:
                    raise CheckpointError(f"{source}: missing required key {key!r}")
                return default
            if d[key] is None and default is None:  # null where Meta's args.py allows None
                return None
            return _check_type(source, key, d[key], kind)

        dim = get("dim", "size")
        n_layers = get("n_layers", "size")
        n_heads = get("n_heads", "size")
        n_kv_heads = get("n_kv_heads", "size", None)
        # Meta writes "n_kv_heads": null nowhere, but args.py treats None as "same as n_heads".
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        use_scaled_rope = get("use_scaled_rope", "bool", False)
        rope_scaling = None
        if d.get("rope_scaling") is not None:
            if not use_scaled_rope:
                raise CheckpointError(f"{source}: 'rope_scaling' is given but use_scaled_rope is false")
            rope_scaling = RopeScaling.from_dict(d["rope_scaling"], source)
        args = cls(
            dim=dim,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            vocab_size=get("vocab_size", "size"),
            multiple_of=get("multiple_of", "size", 256),
            ffn_dim_multiplier=get("ffn_dim_multiplier", "positive", None),
            norm_eps=get("norm_eps", "positive", 1e-5),
            rope_theta=get("rope_theta", "positive", 500000.0),
            use_scaled_rope=use_scaled_rope,
            rope_scaling=rope_scaling,
        )
        # The same invariants Meta's args.py asserts, plus even head_dim: RoPE rotates pairs.
        if args.n_heads % args.n_kv_heads != 0:
            raise CheckpointError(
                f"{source}: n_heads={args.n_heads} is not a multiple of n_kv_heads={args.n_kv_heads}"
            )
        if args.dim % args.n_heads != 0:
            raise CheckpointError(f"{source}: dim={args.dim} is not a multiple of n_heads={args.n_heads}")
        if args.head_dim % 2 != 0:
            raise CheckpointError(
                f"{source}: dim / n_heads = {args.dim} / {args.n_heads} = {args.head_dim} is odd; "
                f"RoPE needs an even head_dim (dim, n_heads)"
            )
        try:  # int(1e308 * h) is inf: OverflowError, not a size
            hidden_dim = args.hidden_dim
        except OverflowError:
            raise CheckpointError(
                f"{source}: ffn_dim_multiplier={args.ffn_dim_multiplier} makes the FFN hidden size "
                f"infinite (dim={args.dim}, multiple_of={args.multiple_of})"
            ) from None
        if hidden_dim < 1:  # ffn_dim_multiplier=1e-30: int(1e-30 * h) = 0, an FFN of width 0
            raise CheckpointError(
                f"{source}: ffn_dim_multiplier={args.ffn_dim_multiplier} makes the FFN hidden size 0 "
                f"(dim={args.dim}, multiple_of={args.multiple_of})"
            )
        _check_range(source, "rope_theta", args.rope_theta, ROPE_THETA_RANGE,
                     "below 1 the RoPE frequencies 1 / theta^(2i/head_dim) exceed 1, and tiny ones divide by zero")
        _check_range(source, "norm_eps", args.norm_eps, NORM_EPS_RANGE,
                     "RMSNorm divides by sqrt(mean(x^2) + norm_eps) in float32")
        return args

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelArgs":
        """Read and validate params.json; every failure is a one-line CheckpointError naming it."""
        path = Path(path)
        data = read_json(path, MAX_PARAMS_BYTES, "params.json",
                         missing="no such file (Meta's model folders include params.json)")
        return cls.from_dict(data, source=str(path))


_FIELDS = (
    "dim",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "vocab_size",
    "multiple_of",
    "ffn_dim_multiplier",
    "norm_eps",
    "rope_theta",
    "use_scaled_rope",
)


def _check_type(source: str, key: str, value: Any, kind: str) -> Any:
    """One value from params.json, checked and normalised (ints stay int, numbers become float).

    bool is a subclass of int in Python, so `true` would pass a plain isinstance(int) check and
    become dim=1: it is excluded explicitly.
    """
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise CheckpointError(f"{source}: key {key!r} must be true or false, got {_show(value)}")
    if kind == "size":
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        raise CheckpointError(f"{source}: key {key!r} must be a positive integer, got {_show(value)}")
    # kind == "positive": a finite number > 0
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    raise CheckpointError(f"{source}: key {key!r} must be a positive number, got {_show(value)}")


def _check_range(source: str, key: str, value: float, bounds: tuple[float, float], why: str) -> None:
    low, high = bounds
    if not low <= value <= high:
        raise CheckpointError(f"{source}: {key}={value:g} is outside [{low:g}, {high:g}] ({why})")


def _show(value: Any) -> str:
    """A short description of a JSON value for error messages: its JSON text and its type."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null",
            list: "array", dict: "object"}.get(type(value), type(value).__name__)
    return f"{text} ({kind})"

"""A Llama 3.x GGUF file (llama.cpp's converter and quantizer) as llama_nb's ModelFiles.

Hyperparameters (general.architecture "llama"; keys as llama.cpp's gguf-py writes them):

    llama.embedding_length                 dim
    llama.block_count                      n_layers
    llama.attention.head_count             n_heads
    llama.attention.head_count_kv          n_kv_heads (default n_heads)
    llama.feed_forward_length              the FFN width: carried as multiple_of (see _ffn_args)
    llama.rope.freq_base                   rope_theta (default 10000, llama.cpp's)
    llama.attention.layer_norm_rms_epsilon norm_eps
    llama.vocab_size                       vocab_size (default: token_embd's rows)
    llama.rope.dimension_count             must be dim / n_heads when present

Llama 3.1's RoPE scaling is no key but the tensor `rope_freqs.weight`, float32[head_dim / 2]: the
divisor of each frequency (llama.cpp computes theta_i / rope_freqs[i]), 1 for the fast ones,
`factor` for the slow ones, a blend between. `rope_scaling_of` recovers the RopeScaling whose
divisors these are and checks that recomputing them gives the tensor (or refuses the file).

Tensors, GGUF name -> Meta name (the rows of attn_q/attn_k are in Meta's interleaved RoPE order:
llama.cpp's converter un-permutes Hugging Face's q/k rows back, `LlamaModel.permute`):

    token_embd.weight          tok_embeddings.weight      output_norm.weight  norm.weight
    output.weight              output.weight (absent: tied to token_embd, Llama 3.2 1B/3B)
    blk.N.attn_norm.weight     layers.N.attention_norm.weight
    blk.N.attn_q / attn_k / attn_v / attn_output.weight   layers.N.attention.wq / wk / wv / wo.weight
    blk.N.ffn_norm.weight      layers.N.ffn_norm.weight
    blk.N.ffn_gate / ffn_down / ffn_up.weight             layers.N.feed_forward.w1 / w2 / w3.weight

Each becomes a view in a `Checkpoint` (llama_nb.io.pth) under its Meta name, so the model loader
reads GGUF and .pth alike: dtype "float32" / "float16" / "bfloat16" for F32 / F16 / BF16 (as a
.pth names them), and the llama_nb format name ("q8_0", "q4_k", "q6_k") for block formats, whose
view is the raw blocks uint8[rows, row_bytes].
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from llama_nb.errors import CheckpointError, shown
import llama_nb.quant  # noqa: F401 - registers q8_0, q4_k, q6_k (the block formats a GGUF stores)
from llama_nb.formats import formats
from llama_nb.io.files import open_regular_file
from llama_nb.io.gguf import MAGIC, READ_TYPES, GGUFFile, read_gguf
from llama_nb.io.gguf_tokenizer import read_tokenizer
from llama_nb.io.params import ModelArgs, RopeScaling
from llama_nb.io.pth import Checkpoint

ROPE_FREQS = "rope_freqs.weight"
_GLOBAL_NAMES = {"token_embd.weight": "tok_embeddings.weight", "output_norm.weight": "norm.weight",
                 "output.weight": "output.weight"}
_LAYER_NAMES = {"attn_norm": "attention_norm", "attn_q": "attention.wq", "attn_k": "attention.wk",
                "attn_v": "attention.wv", "attn_output": "attention.wo", "ffn_norm": "ffn_norm",
                "ffn_gate": "feed_forward.w1", "ffn_down": "feed_forward.w2", "ffn_up": "feed_forward.w3"}
_META_TO_GGUF_LAYER = {meta: gguf for gguf, meta in _LAYER_NAMES.items()}
_BLOCK = re.compile(r"blk\.(\d{1,6})\.([a-z_]+)\.weight")
_PLAIN_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
ROPE_RTOL = 1e-5  # the converter computes the divisors in float32 and Python floats


def meta_name(name: str) -> str | None:
    """The Meta name of a GGUF tensor name, or None for a name outside a Llama model."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    m = _BLOCK.fullmatch(name)
    if m and m.group(2) in _LAYER_NAMES and str(int(m.group(1))) == m.group(1):
        return f"layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.weight"
    return None


def gguf_name(meta: str) -> str:
    """The GGUF name of a Meta tensor name (the inverse of meta_name)."""
    for gguf, name in _GLOBAL_NAMES.items():
        if name == meta:
            return gguf
    _, layer, rest = meta.split(".", 2)
    return f"blk.{layer}.{_META_TO_GGUF_LAYER[rest.removesuffix('.weight')]}.weight"


def is_gguf(path: Path) -> bool:
    """A .gguf path that is no folder, or a regular file that starts with GGUF's magic (ollama's
    blobs are named sha256-...)."""
    if path.suffix == ".gguf":
        return not path.is_dir()
    if not path.is_file() or path.suffix in (".pth", ".json", ".model"):
        return False
    try:
        with open_regular_file(path, "a GGUF file") as f:
            return f.read(4) == MAGIC
    except (CheckpointError, OSError):
        return False


def gguf_in(path: Path) -> Path | None:
    """The GGUF file `path` names: itself (a .gguf file, or any file starting with b"GGUF"), or the one .gguf file in a folder that
    holds no Meta checkpoint; None when it names no GGUF. Several GGUFs in a folder: refused."""
    if is_gguf(path):
        return path
    if not path.is_dir() or (path / "consolidated.00.pth").exists():
        return None
    found = sorted(path.glob("*.gguf"))
    if len(found) > 1:
        names = ", ".join(shown(p.name, quote=False) for p in found[:3])
        raise CheckpointError(f"{path}: holds {len(found)} GGUF files ({names}{', ...' if len(found) > 3 else ''}); "
                              "pass one of them with --model FILE.gguf")
    return found[0] if found else None


def load_gguf_files(path: Path, expected_shapes: Callable[..., dict[str, tuple[int, ...]]], *,
                    require_tokenizer: bool = True) -> dict[str, Any]:
    """Read and cross-check a GGUF model: the fields of its llama_nb.io.checkpoint.ModelFiles (which
    passes its `expected_shapes`: the tensors Meta's model has); a one-line CheckpointError on any problem."""
    gguf = read_gguf(path)
    args = model_args(gguf)
    tensors, dtypes = {}, {}
    for name, info in gguf.tensors.items():
        meta = meta_name(name)
        if meta is None:
            if name == ROPE_FREQS:
                continue
            raise CheckpointError(f"{path}: unexpected tensor {shown(name)} for a Llama 3.x model")
        if info.type_name not in READ_TYPES or READ_TYPES[info.type_name] not in formats:
            readable = [t for t, fmt in READ_TYPES.items() if fmt in formats]
            raise CheckpointError(f"{path}: tensor {shown(name)} is {info.type_name}; llama_nb reads "
                                  f"{', '.join(readable)}")
        tensors[meta] = gguf.array(name)
        dtypes[meta] = _PLAIN_DTYPES.get(info.type_name, READ_TYPES[info.type_name])
    _check_shapes(gguf, args, tensors, expected_shapes)
    checkpoint = Checkpoint(path=path, tensors=tensors, dtypes=dtypes, mmap=gguf.mmap)
    if require_tokenizer or "tokenizer.ggml.model" in gguf.metadata:
        read_tokenizer_fn = lambda: read_tokenizer(gguf.metadata, path)  # noqa: E731
    else:
        read_tokenizer_fn = None
    return dict(folder=path, args=args, checkpoint=checkpoint, tokenizer_path=path if read_tokenizer_fn else None,
                read_tokenizer=read_tokenizer_fn, gguf=gguf)


def load_gguf_tokenizer(path: Path):
    """The tokenizer of a GGUF file, without mapping its tensors' pages (`llama-nb tokenize`)."""
    return read_tokenizer(read_gguf(path).metadata, path)


def _check_shapes(gguf: GGUFFile, args: ModelArgs, tensors: dict[str, np.ndarray], expected_shapes) -> None:
    """Exactly the tensors `args` implies, each of the implied logical shape."""
    if 9 * args.n_layers > len(tensors):  # before listing 9 names per layer: block_count may be 2^32 - 1
        raise CheckpointError(f"{gguf.path}: llama.block_count={args.n_layers} but the file holds only "
                              f"{len(tensors)} model tensors")
    expected = expected_shapes(args, tied_output="output.weight" not in tensors)
    missing = [gguf_name(n) for n in expected if n not in tensors]
    if missing:
        raise CheckpointError(f"{gguf.path}: missing {len(missing)} tensor(s) that its metadata implies: "
                              f"{', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}")
    extra = [gguf_name(n) for n in tensors if n not in expected]
    if extra:
        raise CheckpointError(f"{gguf.path}: {len(extra)} tensor(s) beyond llama.block_count={args.n_layers}: "
                              f"{', '.join(shown(n, quote=False) for n in extra[:4])}")
    for meta, shape in expected.items():
        info = gguf.tensors[gguf_name(meta)]
        if info.shape != shape:
            raise CheckpointError(f"{gguf.path}: tensor {info.name} has shape {list(info.shape)} but the metadata "
                                  f"implies {list(shape)}")
        if len(shape) == 1 and info.type_name not in _PLAIN_DTYPES:
            raise CheckpointError(f"{gguf.path}: tensor {info.name} is {info.type_name}; norms must be F32, F16 or BF16")


def _key(gguf: GGUFFile, key: str, kind: str, default: Any = None) -> Any:
    """A hyperparameter key: an unsigned integer > 0 ("size") or a finite number > 0 ("positive")."""
    if key not in gguf.metadata:
        if default is None:
            raise CheckpointError(f"{gguf.path}: no metadata key {key} (a Llama GGUF has it)")
        return default
    value, type_name = gguf.metadata[key], gguf.value_types[key]
    ok = (type_name.startswith(("uint", "int")) and value > 0) if kind == "size" else (
        type_name.startswith(("float", "uint", "int")) and math.isfinite(value) and value > 0)
    if not ok:
        raise CheckpointError(f"{gguf.path}: metadata {key} must be a positive {'integer' if kind == 'size' else 'number'}, "
                              f"got {shown(value)} ({type_name})")
    if type_name == "float32":  # 1e-05, not 9.99999974e-06: the shortest decimal of the same float32
        return float(str(np.float32(value)))
    return value


def model_args(gguf: GGUFFile) -> ModelArgs:
    """ModelArgs from a GGUF's llama.* keys and rope_freqs tensor, validated as params.json is."""
    arch = gguf.metadata.get("general.architecture")
    if arch != "llama":
        raise CheckpointError(f"{gguf.path}: general.architecture is {shown(arch)}; llama_nb runs \"llama\" (Llama 3.x)")
    dim = _key(gguf, "llama.embedding_length", "size")
    n_heads = _key(gguf, "llama.attention.head_count", "size")
    embd = gguf.tensors.get("token_embd.weight")
    vocab_default = embd.shape[0] if embd is not None and len(embd.shape) == 2 else None
    ffn = _key(gguf, "llama.feed_forward_length", "size")
    params = {
        "dim": dim, "n_layers": _key(gguf, "llama.block_count", "size"), "n_heads": n_heads,
        "n_kv_heads": _key(gguf, "llama.attention.head_count_kv", "size", n_heads),
        "vocab_size": _key(gguf, "llama.vocab_size", "size", vocab_default),
        "norm_eps": _key(gguf, "llama.attention.layer_norm_rms_epsilon", "positive", 1e-5),
        "rope_theta": float(_key(gguf, "llama.rope.freq_base", "positive", 10000.0)),
        **_ffn_args(dim, ffn),
    }
    if ROPE_FREQS in gguf.tensors:
        params["use_scaled_rope"] = True
    args = ModelArgs.from_dict(params, source=str(gguf.path))
    if args.hidden_dim != ffn:
        raise CheckpointError(f"{gguf.path}: llama.feed_forward_length={ffn} cannot be expressed as Meta's FFN width")
    rope_dim = gguf.metadata.get("llama.rope.dimension_count", args.head_dim)
    if rope_dim != args.head_dim:
        raise CheckpointError(f"{gguf.path}: llama.rope.dimension_count={shown(rope_dim)} but dim / n_heads = "
                              f"{args.head_dim}; llama_nb rotates whole heads")
    if ROPE_FREQS in gguf.tensors:
        scaling = rope_scaling_of(gguf, args)
        args = ModelArgs(**{**{k: getattr(args, k) for k in params}, "use_scaled_rope": scaling is not None,
                            "rope_scaling": scaling})
    return args


def _ffn_args(dim: int, ffn: int) -> dict[str, Any]:
    """multiple_of / ffn_dim_multiplier for which Meta's formula gives exactly `ffn`: with
    h = int(8 dim / 3), multiple_of = ffn rounds any h <= ffn up to ffn; a narrower FFN takes a
    multiplier of (ffn + 0.5) / h (int() then lands on ffn) and multiple_of 1."""
    h = int(2 * (4 * dim) / 3)
    if 0 < h <= ffn:
        return {"multiple_of": ffn}
    return {"multiple_of": 1, "ffn_dim_multiplier": (ffn + 0.5) / max(h, 1)}


def rope_divisors(head_dim: int, theta: float, scaling: RopeScaling) -> np.ndarray:
    """float64[head_dim / 2]: what llama.cpp's converter writes as rope_freqs for `scaling`."""
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / freqs
    low_wavelen = scaling.original_context / scaling.low_freq_factor
    high_wavelen = scaling.original_context / scaling.high_freq_factor
    smooth = (scaling.original_context / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    blend = 1 / ((1 - smooth) / scaling.factor + smooth)
    return np.where(wavelen < high_wavelen, 1.0, np.where(wavelen > low_wavelen, scaling.factor, blend))


def rope_scaling_of(gguf: GGUFFile, args: ModelArgs) -> RopeScaling | None:
    """The RopeScaling whose divisors are the file's rope_freqs (None when they are all 1): Meta's
    constants with the largest divisor as factor, else solved from the divisors (_scaling_candidates);
    accepted only when recomputing every divisor gives the tensor back."""
    info = gguf.tensors[ROPE_FREQS]
    where = f"{gguf.path}: {ROPE_FREQS}"
    if info.type_name != "F32" or info.shape != (args.head_dim // 2,):
        raise CheckpointError(f"{where} must be F32[{args.head_dim // 2}] (head_dim / 2), got "
                              f"{info.type_name}{list(info.shape)}")
    with np.errstate(invalid="ignore"):  # a signalling NaN in the file: refused just below
        divisors = np.array(gguf.array(ROPE_FREQS), np.float64)
    if not np.all(np.isfinite(divisors)) or divisors.min() < 1 - ROPE_RTOL:
        raise CheckpointError(f"{where}: divisors must be finite and at least 1, got {divisors.min():g}..{divisors.max():g}")
    if np.allclose(divisors, 1.0, rtol=ROPE_RTOL, atol=0):
        return None
    for candidate in _scaling_candidates(divisors, args):
        scaling = RopeScaling.from_dict(candidate, source=where)
        expected = rope_divisors(args.head_dim, args.rope_theta, scaling)
        if np.allclose(expected, divisors, rtol=ROPE_RTOL, atol=0):
            return scaling
    raise CheckpointError(f"{where}: these divisors are not Llama 3.1's RoPE scaling for any factor and context "
                          f"(range {divisors.min():g}..{divisors.max():g})")


def _scaling_candidates(divisors: np.ndarray, args: ModelArgs) -> list[dict[str, Any]]:
    """rope_scaling objects (Hugging Face's keys) that may give `divisors`, the likeliest first.

    factor is the largest divisor. The blended divisors d (1 < d < factor) give
    s = (1/d - 1/factor) / (1 - 1/factor) = (context / wavelen - low) / (high - low); only the
    ratios of context, low and high matter, so low = 1: two or more blended divisors fit high and
    context; with one, any context between its wavelength and the next (high follows); with none,
    any thresholds between the fast and the slow wavelengths do."""
    factor = float(divisors.max())
    candidates: list[dict[str, Any]] = [{"factor": factor}]
    wavelen = 2 * math.pi * args.rope_theta ** (np.arange(0, args.head_dim, 2, dtype=np.float64) / args.head_dim)
    blended = (divisors > 1 + ROPE_RTOL) & (divisors < factor * (1 - ROPE_RTOL))
    s = (1 / divisors[blended] - 1 / factor) / (1 - 1 / factor)  # 1/d = (1 - s)/factor + s
    w = wavelen[blended]
    if len(s) >= 2:  # s = context / (high - low) / wavelen - low / (high - low), low = 1: fit both
        a, minus_b = np.polyfit(1 / w, s, 1)
        if minus_b < 0 < a:
            high, context = 1 - 1 / minus_b, -a / minus_b
            candidates += [{"factor": factor, "high_freq_factor": round(float(high), digits),
                            "original_max_position_embeddings": int(rounded)}
                           for digits in (2, 4, 6) for rounded in (round(context / 1024) * 1024, round(context))
                           if rounded >= 1]  # the simplest numbers first: 8, not 7.999999
    elif len(s) == 1:  # one: a context (= the low threshold) between it and the next slower wavelength
        k = int(np.flatnonzero(blended)[0])
        slower = wavelen[k + 1] if k + 1 < len(wavelen) else 2 * w[0]
        contexts = [8192, round(slower / 1024) * 1024] + [math.ceil(w[0] * (1 + t)) for t in (0.3, 0.1, 1e-2, 1e-3)]
        for context in contexts:  # high's threshold context / high stays above the next faster wavelength
            if w[0] < context < slower:
                candidates.append({"factor": factor, "original_max_position_embeddings": max(1, round(context)),
                                   "high_freq_factor": float(1 + (round(context) / w[0] - 1) / s[0])})
    else:  # none: any thresholds between the fast wavelengths and the slow ones (context 8192)
        fast, slow = wavelen[divisors <= 1 + ROPE_RTOL], wavelen[divisors >= factor * (1 - ROPE_RTOL)]
        high_wavelen = fast.max() * (1 + 1e-6) if len(fast) else wavelen.min() / 2
        low_wavelen = slow.min() * (1 - 1e-6) if len(slow) else wavelen.max() * 2
        if high_wavelen < low_wavelen:
            candidates += [{"factor": factor, "low_freq_factor": 8192 / low_wavelen,
                            "high_freq_factor": 8192 / high_wavelen}]
    return candidates


def gguf_description(gguf: GGUFFile) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """For `llama-nb info`: one row per tensor (GGUF name, ggml type, logical shape), and the
    file's metadata (long arrays, the tokenizer's, summarised as their type and length)."""
    tensors = [{"name": t.name, "dtype": t.type_name, "shape": list(t.shape), "elements": math.prod(t.shape)}
               for t in gguf.tensors.values()]
    metadata = {}
    for key, value in gguf.metadata.items():
        if isinstance(value, (list, np.ndarray)):
            value = f"{gguf.value_types[key]} of {len(value)}" if len(value) > 8 else [
                v.item() if isinstance(v, np.generic) else v for v in value]
        elif isinstance(value, str) and len(value) > 200:
            value = value[:200] + f"... ({len(value)} characters)"
        elif gguf.value_types[key] == "float32":  # 1e-05, not 9.99999974e-06
            value = float(str(np.float32(value)))
        metadata[key] = value
    types: dict[str, int] = {}
    for t in gguf.tensors.values():
        types[t.type_name] = types.get(t.type_name, 0) + 1
    return tensors, {"gguf": {"version": gguf.version, "tensor_types": types, "metadata": metadata}}

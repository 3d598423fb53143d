"""`quantize_model`: any model llama_nb loads -> a GGUF file of type bf16, q8_0 or q4_k_m.

Per-tensor types follow llama.cpp's llama-quant.cpp (`llama_tensor_get_type` for a Llama model):

    type      2-d weights   output (and the embedding when tied)   norms, rope_freqs
    bf16      BF16          BF16                                   F32
    q8_0      Q8_0          Q8_0                                   F32
    q4_k_m    Q4_K          Q6_K                                   F32
              except attn_v and ffn_down of layer i: Q6_K where use_more_bits(i, n_layers):
                  i < n/8  or  i >= 7n/8  or  (i - n/8) % 3 == 2

A row length K that is not a whole number of blocks falls back as llama.cpp's
tensor_type_fallback does: Q6_K -> Q8_0, and K % 32 != 0 -> F16. llama.cpp sends Q4_K to Q5_0,
which llama_nb does not read; it goes to Q8_0 here (the demo model's ffn_down, K = 704, is one).

Values: each tensor is read in the format it is stored in and converted by llama_nb's formats
(llama_nb.formats: dequantize to float32, then the target's quantize); a bf16 tensor written as
BF16 keeps its bits. The metadata is what llama.cpp's converter writes for a Llama 3.x model
(general.*, llama.*, tokenizer.ggml.* with merges, a Llama 3 chat template), and rope_freqs for
Llama 3.1's RoPE scaling, so llama.cpp loads the file. A model without a tokenizer (the random
models of bench's shape cache) may be written without the tokenizer.* keys (require_tokenizer
False): llama_nb loads such a file for token ids only (`bench model`), llama.cpp refuses it.

Memory: one tensor at a time. Each plan reads its source tensor when the writer asks for its bytes,
converts it in slabs of rows (formats.repack), and then drops the source's pages from this
process's map of the checkpoint (MADV_DONTNEED: they stay in the page cache, but are no longer
resident here), so the peak resident memory is about one tensor's source, converted bytes and
float32 slab -- not the model, which a map read end to end would leave resident (16 GB for the 8B).

`ensure_shape_gguf(shape, type)` is the GGUF of one of bench's random models of a real shape
(llama_nb.io.pth_write.SHAPES), quantized once from the shape's bf16 folder into the same cache
folder as llama_nb-<type>.gguf (`llama-nb bench model --shape llama3.1-8b --type q4_k_m`).
"""

from __future__ import annotations

import mmap
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from llama_nb.errors import LlamaNbError
from llama_nb.formats import Weight, get_format, repack
from llama_nb.io.checkpoint import ModelFiles, load_model_files
from llama_nb.io.gguf import GGML_TYPE_IDS, GGML_TYPES, READ_TYPES
from llama_nb.io.gguf_model import ROPE_FREQS, gguf_name, rope_divisors
from llama_nb.io.gguf_tokenizer import tokenizer_metadata
from llama_nb.io.gguf_write import TensorPlan, write_gguf
from llama_nb.io.pth_write import check_shape, ensure_shape_model, shape_folder
from llama_nb.model.weights import stored_format, stored_weight

# --type -> llama.cpp's llama_ftype (general.file_type): LLAMA_FTYPE_MOSTLY_BF16, _Q8_0, _Q4_K_M
FILE_TYPES = {"bf16": 32, "q8_0": 7, "q4_k_m": 15}
_DEFAULT_TYPE = {"bf16": "BF16", "q8_0": "Q8_0", "q4_k_m": "Q4_K"}
_FALLBACK = {"Q4_K": "Q8_0", "Q6_K": "Q8_0"}  # llama.cpp: Q4_K -> Q5_0 (not read here), Q6_K -> Q8_0
# Meta's chat format (llama_nb.io.chat.ChatFormat) as a Jinja template, for llama.cpp's chat mode.
CHAT_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's choice of the layers whose attn_v and ffn_down get Q6_K in Q4_K_M."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def tensor_type(meta: str, shape: tuple[int, ...], n_layers: int, ftype: str, tied_output: bool) -> str:
    """The ggml type llama.cpp's quantizer gives Meta tensor `meta` of `shape` for `ftype`."""
    if len(shape) == 1:
        return "F32"
    wanted = _DEFAULT_TYPE[ftype]
    if ftype == "q4_k_m":
        layer = int(meta.split(".")[1]) if meta.startswith("layers.") else -1
        if meta == "output.weight" or (tied_output and meta == "tok_embeddings.weight"):
            wanted = "Q6_K"
        elif meta.endswith(("attention.wv.weight", "feed_forward.w2.weight")) and use_more_bits(layer, n_layers):
            wanted = "Q6_K"
    block = GGML_TYPES[GGML_TYPE_IDS[wanted]][1]
    if shape[-1] % block:
        wanted = _FALLBACK.get(wanted, wanted)
        if shape[-1] % GGML_TYPES[GGML_TYPE_IDS[wanted]][1]:
            wanted = "F16"
    return wanted


def gguf_metadata(files: ModelFiles, ftype: str) -> dict[str, Any]:
    """What llama.cpp's converter and quantizer write for a Llama 3.x model (see the module docstring)."""
    args = files.args
    source = files.gguf.metadata if files.gguf is not None else {}
    metadata: dict[str, Any] = {
        "general.architecture": "llama",
        "general.name": source.get("general.name", files.folder.name),
        "general.file_type": FILE_TYPES[ftype],
        "llama.context_length": int(source.get("llama.context_length", 131072 if args.use_scaled_rope else 8192)),
        "llama.embedding_length": args.dim,
        "llama.block_count": args.n_layers,
        "llama.feed_forward_length": args.hidden_dim,
        "llama.attention.head_count": args.n_heads,
        "llama.attention.head_count_kv": args.n_kv_heads,
        "llama.rope.freq_base": float(args.rope_theta),
        "llama.attention.layer_norm_rms_epsilon": float(args.norm_eps),
        "llama.vocab_size": args.vocab_size,
        "llama.rope.dimension_count": args.head_dim,
    }
    if ftype != "bf16":
        metadata["general.quantization_version"] = 2  # GGML_QNT_VERSION
    if files.tokenizer_path is not None or files.read_tokenizer is not None:
        metadata.update(tokenizer_metadata(files.load_tokenizer(), args.vocab_size))
        metadata["tokenizer.chat_template"] = source.get("tokenizer.chat_template", CHAT_TEMPLATE)
    return metadata


def _converted(weight: Weight, type_name: str, source: np.ndarray, mapping: Any) -> Callable[[], np.ndarray]:
    """A function producing `weight`'s bytes in ggml type `type_name`, through llama_nb's formats;
    afterwards the pages of `source` (the tensor as stored) leave this process (_release)."""
    target = get_format(READ_TYPES[type_name])

    def produce() -> np.ndarray:
        try:  # a tensor kept as stored (bf16 -> BF16) is copied, so the writer does not read the map
            return repack(weight, target).data if weight.format is not target else np.array(weight.data)
        finally:
            _release(source, mapping)

    return produce


def _release(view: np.ndarray, mapping: Any) -> None:
    """Drop the pages under `view` from this process when `view` lies in `mapping`, a read-only
    np.memmap of the checkpoint (MADV_DONTNEED on a file map: the next read faults them in again
    from the page cache or the disk, with the same bytes). Anything else (a tensor read into
    memory, a platform without madvise) is left as it is."""
    file_map = getattr(mapping, "_mmap", None)  # np.memmap's mmap.mmap (offset 0: our readers map whole files)
    if file_map is None or not hasattr(mmap, "MADV_DONTNEED") or getattr(mapping, "offset", 0) != 0 or not view.nbytes:
        return
    start = view.ctypes.data - mapping.ctypes.data
    if start < 0 or start + view.nbytes > mapping.nbytes:
        return
    first = start - start % mmap.PAGESIZE
    file_map.madvise(mmap.MADV_DONTNEED, first, start + view.nbytes - first)


def gguf_plans(files: ModelFiles, ftype: str) -> list[TensorPlan]:
    """Every tensor of the GGUF: rope_freqs (Llama 3.1+), then the model's in its file's order
    (Meta's: token_embd, the blocks, output_norm, output)."""
    if ftype not in FILE_TYPES:
        raise LlamaNbError(f"--type {ftype!r}: llama_nb writes {', '.join(FILE_TYPES)}")
    args, ck = files.args, files.checkpoint
    plans = []
    if args.rope_scaling is not None:
        divisors = rope_divisors(args.head_dim, args.rope_theta, args.rope_scaling).astype(np.float32)
        plans.append(TensorPlan(ROPE_FREQS, "F32", divisors.shape, lambda: divisors))
    for meta, array in ck.tensors.items():
        fmt = stored_format(ck.dtypes[meta])
        if array.ndim == 1:
            vector = stored_weight(array.reshape(1, -1), fmt)
            plans.append(TensorPlan(gguf_name(meta), "F32", (vector.shape[1],), lambda v=vector: v.dequantize()[0]))
            continue
        weight = stored_weight(array, fmt)
        type_name = tensor_type(meta, weight.shape, args.n_layers, ftype, files.tied_output)
        plans.append(TensorPlan(gguf_name(meta), type_name, weight.shape,
                                _converted(weight, type_name, array, getattr(ck, "mmap", None))))
    return plans


def quantize_model(path: str | Path, ftype: str, out: str | Path,
                   on_start: Callable[[list[TensorPlan]], None] | None = None,
                   on_tensor: Callable[[TensorPlan], None] | None = None, *, require_tokenizer: bool = True) -> int:
    """Write the model at `path` (a Meta folder, a GGUF, ...) as a GGUF file of `ftype` to `out`;
    return the file's size. `on_start(plans)` and `on_tensor(plan)` report progress.
    require_tokenizer False: a model without one is written without the tokenizer.* keys."""
    files = load_model_files(Path(path), require_tokenizer=require_tokenizer)
    plans = gguf_plans(files, ftype)
    metadata = gguf_metadata(files, ftype)
    if on_start is not None:
        on_start(plans)
    return write_gguf(out, metadata, plans, on_tensor=on_tensor)


def shape_gguf_path(shape: str, ftype: str) -> Path:
    """Where ensure_shape_gguf keeps the random model `shape` in `ftype`: beside its bf16 folder's
    files, named apart from the model-<type>.gguf that bench/compare.py has llama.cpp make."""
    return shape_folder(shape) / f"llama_nb-{ftype}.gguf"


def ensure_shape_gguf(shape: str, ftype: str, on_write=None, on_start=None, on_tensor=None) -> Path:
    """The GGUF file of the random model `shape` (pth_write.SHAPES) in `ftype`, made once: the bf16
    folder (ensure_shape_model: written if missing; `on_write(folder, nbytes)` before that), then
    quantize_model into shape_gguf_path (`on_start`, `on_tensor`: its progress). Reused afterwards,
    even when the bf16 folder has since been deleted to free the disk. LlamaNbError (one line) for
    an unknown shape or type, or when the disk has not room for the file."""
    check_shape(shape)
    if ftype not in FILE_TYPES:
        raise LlamaNbError(f"--type {ftype!r}: a shape is quantized to {', '.join(FILE_TYPES)}")
    out = shape_gguf_path(shape, ftype)
    if out.is_file():
        return out
    folder = ensure_shape_model(shape, on_write=on_write)
    files = load_model_files(folder, require_tokenizer=False)
    nbytes = sum(plan.nbytes for plan in gguf_plans(files, ftype))
    free = shutil.disk_usage(folder).free
    if free < nbytes * 1.05:
        raise LlamaNbError(f"--shape {shape} --type {ftype}: needs {nbytes / 1e9:.1f} GB in {folder}, only "
                           f"{free / 1e9:.1f} GB free (set LLAMA_NB_CACHE to a bigger disk)")
    quantize_model(folder, ftype, out, on_start=on_start, on_tensor=on_tensor, require_tokenizer=False)
    return out

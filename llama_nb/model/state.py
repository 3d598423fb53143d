"""RunState: every buffer a forward pass uses, in one place, allocated once.

Activations for `max_batch` tokens, the KV cache (its layout is the attention op's, one block per
sequence slot and layer, float32 or bf16: KV_CACHES), and the scratch each op declares
(ops/specs.py). `RunState.shapes` says what will be allocated, so model/load.py's memory check adds
it up before anything large exists. With tensor parallelism (model/parallel.py) the sizes are one
rank's part.
"""

from __future__ import annotations

import numpy as np

from llama_nb.errors import LlamaNbError
from llama_nb.memory import ARRAY_PAGE_OFFSET, SCRATCH_PAGE_OFFSET, zeros_at
from llama_nb.io.params import ModelArgs
from llama_nb.model.parallel import Part, part_of
from llama_nb.ops import registry

# --kv-cache: the element type of the KV cache, and the attention op that reads it
KV_CACHES = {"f32": (np.dtype(np.float32), "attention"), "bf16": (np.dtype(np.uint16), "attention_bf16kv")}


def kv_cache_type(kv_cache: str | None, precision: str) -> str:
    """The KV cache type: `kv_cache` ("f32" or "bf16") if given, else the precision's: bf16 -> bf16,
    float32 -> f32 (Meta's float32 model keeps its cache in float32)."""
    if kv_cache is None:
        return "bf16" if precision == "bf16" else "f32"
    if kv_cache not in KV_CACHES:
        raise LlamaNbError(f"--kv-cache must be one of {', '.join(KV_CACHES)}; got {kv_cache!r}")
    return kv_cache


class RunState:
    """Every buffer a forward pass uses, allocated once: activations for up to `max_batch` tokens
    per pass, the KV cache, and each op's declared scratch. `shapes()` says what it will allocate
    (model/load.py's memory check adds it up before anything large exists)."""

    @staticmethod
    def shapes(args: ModelArgs, max_batch: int, ctx: int, slots: int = 1, part: Part | None = None,
               kv_cache: str = "f32") -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """`slots`: sequences the KV cache holds (forward_batch); `part`: the share of one rank of
        several (model/parallel.py): its heads, FFN columns and vocab slice, None: the whole model;
        `kv_cache`: the cache's element type (KV_CACHES)."""
        part = part if part is not None else part_of(args, 0, 1)
        D, H, KVH, Dh, F = args.dim, part.n_heads, part.n_kv_heads, args.head_dim, part.hidden_dim
        T, f32 = max_batch, np.dtype(np.float32)
        cache_dtype, attention_op = KV_CACHES[kv_cache]
        shapes = {
            "x": ((T, D), f32),  # residual stream
            "xb": ((T, D), f32),  # normed input of a sub-block
            "xb2": ((T, D), f32),  # output of a sub-block, added to x
            "q": ((T, H * Dh), f32),  # queries, viewed as [T, H, Dh]
            "k": ((T, KVH * Dh), f32),  # new keys, viewed as [T, KVH, Dh]
            "v": ((T, KVH * Dh), f32),  # new values
            "att": ((T, H * Dh), f32),  # attention output, before wo
            "hb": ((T, F), f32),  # w1 x
            "hb2": ((T, F), f32),  # w3 x
            "hb3": ((T, F), f32),  # silu(w1 x) * w3 x (its own buffer: see ops/silu.py)
            "last": ((slots, D), f32),  # final norm of each sequence's last position
            "logits": ((slots, args.vocab_size), f32),
            # KV cache, one [KVH, ctx, Dh] block per sequence slot and layer (the attention op's
            # layout), float32 or bf16
            "cache_k": ((slots, args.n_layers, KVH, ctx, Dh), cache_dtype),
            "cache_v": ((slots, args.n_layers, KVH, ctx, Dh), cache_dtype),
        }
        if part.size > 1:  # this rank's logits, all-gathered into "logits"
            shapes["logits_part"] = ((slots, part.vocab_size), f32)
        dims = {"T": T, "K": max(D, H * Dh, F), "N": max(D, F, part.vocab_size), "H": H, "KVH": KVH, "Dh": Dh, "S": ctx}
        for prefix, op in (("linear", "linear"), ("attention", attention_op)):  # either cache: "attention.*"
            for name, (shape, dtype) in registry.spec(op).scratch_shapes(dims).items():
                shapes[f"{prefix}.{name}"] = (shape, dtype)
        return shapes

    def __init__(self, args: ModelArgs, max_batch: int, ctx: int, slots: int = 1, part: Part | None = None,
                 kv_cache: str = "f32"):
        self.max_batch, self.slots, self.kv_cache = max_batch, slots, kv_cache
        for name, (shape, dtype) in self.shapes(args, max_batch, ctx, slots, part, kv_cache).items():
            # "op.name": an op's scratch, half a page from the weights and the other buffers (memory.py)
            offset = SCRATCH_PAGE_OFFSET if "." in name else ARRAY_PAGE_OFFSET
            setattr(self, name.replace(".", "_"), zeros_at(shape, dtype, offset))

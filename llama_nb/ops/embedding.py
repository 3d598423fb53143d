"""embedding: out[t, :] = float32(table[tokens[t], :])

out     float32[T, D]
table   uint16[V, D]   tok_embeddings.weight, bf16 bits
tokens  int[T]         ids in [0, V); checked by the op's declared check, not here
Parallel over tokens (output rows); each row is one vectorised widening loop.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from llama_nb.ops._jit import njit_parallel
from llama_nb.ops.bf16 import bf16_to_f32
from llama_nb.ops.registry import register


@njit_parallel
def _embedding(out, table, tokens):
    for t in prange(tokens.shape[0]):
        src, dst = table[tokens[t]], out[t]
        for d in range(src.shape[0]):
            dst[d] = bf16_to_f32(src[d])


@register("embedding", "numba", default=True)
def embedding(out: np.ndarray, table: np.ndarray, tokens: np.ndarray) -> None:
    """out[t, :] = float32(table[tokens[t], :])."""
    _embedding(out, table, tokens)

"""embedding and dequantize: rows of a weight widened to float32.

    embedding   out[t, :] = dequantize(table)[tokens[t], :]   out float32[T, D], table Weight[V, D],
                                                              tokens int64[T] in [0, V) (checked by
                                                              the op's declared check, not here)
    dequantize  out = dequantize(w)                           out float32[N, K], w Weight[N, K]

One kernel source serves the plain formats bf16, f16 and f32 (ops/bf16.widen picks the conversion
by the array's dtype when Numba compiles it). Parallel over output rows; each row is one
vectorised widening loop.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from llama_nb.formats import Weight
from llama_nb.ops.bf16 import PLAIN_FORMATS, widen
from llama_nb.ops.jit import njit_parallel, twins
from llama_nb.ops.registry import register


@twins
def _embedding(out, table, tokens):
    for t in prange(tokens.shape[0]):
        src, dst = table[tokens[t]], out[t]
        for d in range(src.shape[0]):
            dst[d] = widen(src[d])


@njit_parallel
def _dequantize(out, data):
    for n in prange(data.shape[0]):
        src, dst = data[n], out[n]
        for k in range(src.shape[0]):
            dst[k] = widen(src[k])


def embedding(out: np.ndarray, table: Weight, tokens: np.ndarray) -> None:
    """out[t, :] = float32(table[tokens[t], :])."""
    _embedding.pick(2 * out.nbytes)(out, table.data, tokens)


def dequantize(out: np.ndarray, w: Weight) -> None:
    """out[n, :] = float32(w[n, :])."""
    _dequantize(out, w.data)


for _fmt in PLAIN_FORMATS:
    register("embedding", "numba", format=_fmt)(embedding)
    register("dequantize", "numba", format=_fmt)(dequantize)

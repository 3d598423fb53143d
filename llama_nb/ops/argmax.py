"""argmax: the index of the largest element of x, the first one on ties, as a Python int.

x  float32[N]   (N >= 1), typically the 128256 logits of the last token

NaN: like np.argmax, a NaN counts as larger than everything, so the index of the FIRST NaN is
returned. Logits with a NaN mean the forward pass is broken; returning a NaN's index (rather than
quietly skipping it, as nanargmax would) keeps that visible and matches the NumPy reference.

Parallel over chunks of x: each chunk finds its own first maximum (or first NaN), then the chunk
winners are compared in order, so ties still resolve to the lowest index.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from llama_nb.ops._jit import njit_parallel
from llama_nb.ops.registry import register

_CHUNK = 16384  # elements per parallel task; 128256 logits -> 8 tasks


@njit_parallel
def _argmax(x):
    n = x.shape[0]
    n_chunks = (n + _CHUNK - 1) // _CHUNK
    winners = np.empty(n_chunks, np.int64)
    for c in prange(n_chunks):
        lo = c * _CHUNK
        chunk = x[lo : min(lo + _CHUNK, n)]
        best_i, best = 0, chunk[0]
        if best == best:  # a NaN first element already wins
            for i in range(1, chunk.shape[0]):
                v = chunk[i]
                if v != v:  # first NaN wins
                    best_i = i
                    break
                if v > best:  # strict: ties keep the earlier index
                    best_i, best = i, v
        winners[c] = lo + best_i
    best_i = winners[0]
    best = x[best_i]
    for c in range(1, n_chunks):
        if best != best:
            break
        i = winners[c]
        if x[i] != x[i] or x[i] > best:
            best_i, best = i, x[i]
    return best_i


@register("argmax", "numba", default=True)
def argmax(x: np.ndarray) -> int:
    """Index of the first maximum of x (of the first NaN, if x has one)."""
    return int(_argmax(x))

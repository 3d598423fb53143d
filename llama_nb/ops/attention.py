"""attention: causal grouped-query attention of T new tokens over the KV cache.

For token t at position p = start_pos + t and query head h, with kv head g = h // (H // KVH):
    s[j]       = (q[t,h,:] . k_cache[g,j,:]) / sqrt(Dh)     for j = 0 .. p   (causal: no j > p)
    out[t,h,:] = sum_j softmax(s)[j] * v_cache[g,j,:]
out        float32[T, H, Dh]
q          float32[T, H, Dh]     queries after rope
k_cache    float32[KVH, S, Dh]   keys after rope; rows 0 .. start_pos+T-1 filled
v_cache    float32[KVH, S, Dh]
start_pos  int                   >= 0; T > 1 with start_pos > 0 is a chunked prefill
Parallel over (token, head) pairs: T*H independent tasks, enough for both decode (T = 1, H = 32)
and prefill. The H // KVH query heads of a group read the same k_cache[g] / v_cache[g] rows in
place; nothing is copied per head (Meta's repeat_kv is a broadcast, not a copy, here).

Softmax in two passes over a per-task float32 scores buffer of p + 1 entries: scores and their
max, then exp and sum (float64 sum, rounded once), then the weighted sum of value rows. An online
(one-pass) softmax would save the buffer but rescales the Dh-long accumulator on every new max.

Is it a bottleneck in prefill? Measured at Llama 3.2 1B width (H 32, KVH 8, Dh 64, D 2048,
F 8192), prefill from position 0, 1 thread, against the seven matmuls of the same layer (numba):
    T = 128: attention 2.8 ms vs matmuls 179 ms (1.5%)
    T = 256: 18.7 ms vs 319 ms (5.9%)
    T = 512: 85 ms vs 666 ms (12.8%)
It grows as T^2 against the matmuls' T and runs at only ~14-25 GFLOP/s, so long prompts (> 1K
tokens) will want a tiled kernel (the H/KVH heads of a group sharing each key load, keys
transposed per block so the scores need no horizontal sums); for pp128-512 it is not the
bottleneck. Tried: the vectorised exp of ops/fastexp.py for the softmax (no change measured:
the q.k dot products and value sums dominate, not the exp).
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from llama_nb.ops._jit import njit_parallel_dot
from llama_nb.ops.registry import register


@njit_parallel_dot
def _attention(out, q, k_cache, v_cache, start_pos):
    n_tokens, n_heads, head_dim = q.shape
    group = n_heads // k_cache.shape[0]
    sqrt_dim = np.float32(math.sqrt(head_dim))  # Meta divides the scores by sqrt(head_dim)
    for th in prange(n_tokens * n_heads):
        t, h = th // n_heads, th % n_heads
        keys, values = k_cache[h // group], v_cache[h // group]
        qv = q[t, h]
        n_ctx = start_pos + t + 1  # causal: positions 0 .. p
        scores = np.empty(n_ctx, np.float32)
        top = -np.inf
        for j in range(n_ctx):
            kj = keys[j]
            dot = np.float32(0.0)
            for d in range(head_dim):
                dot += qv[d] * kj[d]
            s = dot / sqrt_dim
            scores[j] = s
            top = max(top, s)
        total = 0.0  # float64
        for j in range(n_ctx):
            e = np.exp(scores[j] - top)
            scores[j] = e
            total += e
        inv_total = np.float32(1.0 / total)
        acc = np.zeros(head_dim, np.float32)  # q[t, h] is fully read; out may even alias q
        for j in range(n_ctx):
            weight, vj = scores[j] * inv_total, values[j]
            for d in range(head_dim):
                acc[d] += weight * vj[d]
        dst = out[t, h]
        for d in range(head_dim):
            dst[d] = acc[d]


@register("attention", "numba", default=True)
def attention(out: np.ndarray, q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, start_pos: int) -> None:
    """Causal GQA of q[T, H, Dh] at positions start_pos.. over k_cache/v_cache[KVH, S, Dh]."""
    _attention(out, q, k_cache, v_cache, int(start_pos))

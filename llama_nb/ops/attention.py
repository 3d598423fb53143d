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
F 8192), prefill from position 0, 2 threads, against the seven matmuls of the same layer (numba):
    T = 128: attention 1.1 ms vs matmuls 38 ms (3%)
    T = 256: 5.4 ms vs 75 ms (7%)
    T = 512: 21 ms vs 152 ms (14%)
It grows as T^2 against the matmuls' T, so prompts beyond ~1K tokens will want a tiled kernel
(the H/KVH heads of a group sharing each key load; keys transposed per block so the scores need
no sums across lanes); for pp128-512 it is not the bottleneck.
Measured changes (one process, alternating, best of 5; T=128 / T=512 prefill at 1B width, 2 threads):
- scores four keys at a time on explicit vectors (_scores_16), the value sum in register
  accumulators (_weighted_rows_64): 2.0 -> 1.25 ms and 31 -> 21 ms (1 thread: 2.8 -> 1.7, 44 -> 28);
  decode at a 4K context about the same (1.19 -> 1.10 ms).
- the vectorised exp of ops/fastexp.py for the softmax, as calls to softmax.py's passes: slower
  (1.16 -> 1.42 ms, 21 -> 26 ms), not kept.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from llama_nb.ops._jit import njit_inline, njit_parallel_dot
from llama_nb.ops.registry import register
from llama_nb.ops.simd import f32x16_fma, f32x16_load, f32x16_splat, f32x16_store, f32x16_sum, f32x16_zero


@njit_inline
def _scores_16(scores, q, keys, n, divisor):
    """scores[j] = (q . keys[j]) / divisor for j < n; returns their max. q.size a multiple of 16.

    Four keys at a time, each dot product in its own 16-lane accumulator (four independent FMA
    chains instead of one), then summed across lanes.
    """
    top = np.float32(-np.inf)
    j = 0
    while j + 3 < n:
        k0, k1, k2, k3 = keys[j], keys[j + 1], keys[j + 2], keys[j + 3]
        a0 = a1 = a2 = a3 = f32x16_zero()
        for c in range(0, q.size, 16):
            qc = f32x16_load(q, c)
            a0 = f32x16_fma(a0, qc, f32x16_load(k0, c))
            a1 = f32x16_fma(a1, qc, f32x16_load(k1, c))
            a2 = f32x16_fma(a2, qc, f32x16_load(k2, c))
            a3 = f32x16_fma(a3, qc, f32x16_load(k3, c))
        s0, s1 = f32x16_sum(a0) / divisor, f32x16_sum(a1) / divisor
        s2, s3 = f32x16_sum(a2) / divisor, f32x16_sum(a3) / divisor
        scores[j], scores[j + 1], scores[j + 2], scores[j + 3] = s0, s1, s2, s3
        top = max(top, max(max(s0, s1), max(s2, s3)))
        j += 4
    while j < n:
        kj = keys[j]
        a0 = f32x16_zero()
        for c in range(0, q.size, 16):
            a0 = f32x16_fma(a0, f32x16_load(q, c), f32x16_load(kj, c))
        s0 = f32x16_sum(a0) / divisor
        scores[j] = s0
        top = max(top, s0)
        j += 1
    return top


@njit_inline
def _weighted_rows_64(dst, weights, scale, rows, n):
    """dst[:] = sum_j (weights[j] * scale) * rows[j, :] for j < n; dst.size a multiple of 64.

    64 columns at a time in four 16-lane accumulators held in registers over the whole j loop
    (the plain loop kept its accumulator in memory: a store and a reload per row).
    """
    for c in range(0, dst.size, 64):
        a0 = a1 = a2 = a3 = f32x16_zero()
        for j in range(n):
            w, row = f32x16_splat(weights[j] * scale), rows[j]
            a0 = f32x16_fma(a0, w, f32x16_load(row, c))
            a1 = f32x16_fma(a1, w, f32x16_load(row, c + 16))
            a2 = f32x16_fma(a2, w, f32x16_load(row, c + 32))
            a3 = f32x16_fma(a3, w, f32x16_load(row, c + 48))
        f32x16_store(dst, c, a0)
        f32x16_store(dst, c + 16, a1)
        f32x16_store(dst, c + 32, a2)
        f32x16_store(dst, c + 48, a3)


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
        if head_dim % 16 == 0:
            top = _scores_16(scores, qv, keys, n_ctx, sqrt_dim)
        else:
            top = np.float32(-np.inf)
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
        dst = out[t, h]  # q[t, h] is fully read by now: out may even alias q
        if head_dim % 64 == 0:
            _weighted_rows_64(dst, scores, inv_total, values, n_ctx)
        else:
            acc = np.zeros(head_dim, np.float32)
            for j in range(n_ctx):
                weight, vj = scores[j] * inv_total, values[j]
                for d in range(head_dim):
                    acc[d] += weight * vj[d]
            for d in range(head_dim):
                dst[d] = acc[d]


@register("attention", "numba", default=True)
def attention(out: np.ndarray, q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, start_pos: int) -> None:
    """Causal GQA of q[T, H, Dh] at positions start_pos.. over k_cache/v_cache[KVH, S, Dh]."""
    _attention(out, q, k_cache, v_cache, int(start_pos))

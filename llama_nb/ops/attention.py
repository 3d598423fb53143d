"""attention: causal grouped-query attention of T new tokens over the KV cache it appends to.

First the new keys and values go into the cache rows start_pos .. start_pos+T-1 (the cache layout
[KVH, S, Dh] is this op's: each head's positions contiguous, so attention streams them in order
and every query head of a group reads the same rows). Then, for token t at position
p = start_pos + t and query head h, with kv head g = h // (H // KVH):
    s[j]       = (q[t,h,:] . k_cache[g,j,:]) / sqrt(Dh)     for j = 0 .. p   (causal: no j > p)
    out[t,h,:] = sum_j softmax(s)[j] * v_cache[g,j,:]
out         float32[T, H, Dh]
q           float32[T, H, Dh]     queries after rope
k, v        float32[T, KVH, Dh]   the new keys (after rope) and values
k_cache     float32[KVH, S, Dh]   keys after rope; rows 0 .. start_pos-1 filled by earlier calls
v_cache     float32[KVH, S, Dh]
start_pos   int                   >= 0; T > 1 with start_pos > 0 is a chunked prefill
key_blocks  float32[KVH, ceil(S/16), Dh, 16]   scratch: the keys re-laid for the prefill kernel
rows        float32[threads, 2, 4, >= 16 ceil(S/16)]  scratch: per thread 4 rows of scores and 4
                                  of probabilities (numba.get_thread_id() picks the thread's own)
The H // KVH query heads of a group read the same k_cache[g] / v_cache[g] rows in place; nothing
is copied per head (Meta's repeat_kv is a broadcast, not a copy, here).

Softmax in two passes over a per-thread float32 scores row of p + 1 entries: scores and their
max, then exp and sum (float64 sum, rounded once), then the weighted sum of value rows. An online
(one-pass) softmax would save the buffer but rescales the Dh-long accumulator on every new max.

Three kernels:
- head_dim not a multiple of 16 (no Llama; odd test shapes): _attention, plain loops, parallel
  over (token, head) pairs.
- decode (T = 1): _attention_decode, tasks (kv group, up to 4 of its heads), each key and value
  row loaded once for the 4 heads and the four value sums sharing each load (_weigh_values_4).
  Only KVH tasks (8 for Llama 3) but the decode cache read drops 4x: 8B heads at a 4K context
  0.93 -> 0.51 ms per layer, at 1K 0.14 -> 0.085 ms (2 threads, median of 15).
- prefill (T > 1, head_dim % 16 == 0): _attention_tiled. Each group's keys are first transposed
  (into the key_blocks scratch) in blocks of 16 positions, kt[g, b, d, i] = k_cache[g, 16 b + i, d], so one 16-lane vector
  holds dimension d of 16 keys: a query's scores against 16 keys are head_dim FMAs of a
  broadcast q[d] with kt[g, b, d], no sums across lanes. Tasks are (kv group, token, up to 4
  heads of the group): the heads of a group read the same keys and values and see the same
  causal range, so each loaded key block and value row feeds 4 queries. The softmax passes are
  softmax.py's (vectorised exp into a separate buffer, float64 sum). The transposition costs one
  pass over the cache per call (KVH / (T H) of the arithmetic: 1/8 at T = 2 for Llama 3).
Measured at Llama 3.2 1B width (H 32, KVH 8, Dh 64), prefill from position 0, 2 threads, one
process, alternating, best of 7: T = 128 1.33 -> 0.59 ms, T = 512 22.7 -> 6.8 ms per layer; 8B
heads (Dh 128) T = 128: 2.31 -> 0.91 ms. Whole model, Llama 3.2 1B pp512: attention was 372 ms of
2210 (17%), the seven matmuls 1808.
(Before these two, the (token, head) kernel did every shape, its scores four keys at a time on
explicit vectors: T = 512 took 21 ms per layer.)
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from llama_nb.ops.jit import njit_inline, njit_parallel, njit_serial, twins, twins_dot
from llama_nb.ops.registry import register
from llama_nb.ops.simd import f32x16_fma, f32x16_load, f32x16_splat, f32x16_store, f32x16_sum, f32x16_zero
from llama_nb.ops.softmax import exp_shifted, row_max, sum64


@njit_serial
def _append(k_cache, v_cache, k, v, start_pos):
    """k_cache[g, start_pos + t, :] = k[t, g, :], and the same for v."""
    for t in range(k.shape[0]):
        for g in range(k.shape[1]):
            for d in range(k.shape[2]):  # element by element: a slice copy may take a temporary
                k_cache[g, start_pos + t, d] = k[t, g, d]
                v_cache[g, start_pos + t, d] = v[t, g, d]


@twins_dot
def _attention(out, q, k_cache, v_cache, start_pos, rows):
    n_tokens, n_heads, head_dim = q.shape
    group = n_heads // k_cache.shape[0]
    sqrt_dim = np.float32(math.sqrt(head_dim))  # Meta divides the scores by sqrt(head_dim)
    for th in prange(n_tokens * n_heads):
        t, h = th // n_heads, th % n_heads
        keys, values = k_cache[h // group], v_cache[h // group]
        qv = q[t, h]
        n_ctx = start_pos + t + 1  # causal: positions 0 .. p
        mine = rows[numba.get_thread_id(), 0]  # this thread's rows of scratch
        scores = mine[0, :n_ctx]
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
        acc = mine[1, :head_dim]
        acc[:] = 0.0
        for j in range(n_ctx):
            weight, vj = scores[j] * inv_total, values[j]
            for d in range(head_dim):
                acc[d] += weight * vj[d]
        for d in range(head_dim):
            dst[d] = acc[d]


@njit_parallel
def _transpose_keys(kt, k_cache, n_keys):
    """kt[g, b, d, i] = k_cache[g, 16 b + i, d] for the first n_keys positions (zeros past them, to
    the end of the last block)."""
    n_kv, _, head_dim = k_cache.shape
    n_blocks = (n_keys + 15) // 16
    for gb in prange(n_kv * n_blocks):
        g, b = gb // n_blocks, gb % n_blocks
        block = kt[g, b]
        filled = min(16, n_keys - b * 16)
        for i in range(16):
            if i < filled:
                key = k_cache[g, b * 16 + i]
                for d in range(head_dim):
                    block[d, i] = key[d]
            else:
                for d in range(head_dim):
                    block[d, i] = 0.0


@njit_parallel
def _attention_tiled(out, q, k_cache, v_cache, start_pos, kt, rows):
    n_tokens, n_heads, head_dim = q.shape
    n_kv = k_cache.shape[0]
    group = n_heads // n_kv
    _transpose_keys(kt, k_cache, start_pos + n_tokens)
    sqrt_dim = np.float32(math.sqrt(head_dim))  # Meta divides the scores by sqrt(head_dim)
    chunks = (group + 3) // 4  # up to 4 heads of a group per task
    for task in prange(n_kv * n_tokens * chunks):
        g, rest = task // (n_tokens * chunks), task % (n_tokens * chunks)
        t, h0 = rest // chunks, g * group + (rest % chunks) * 4
        heads = min(4, (g + 1) * group - h0)
        n_ctx = start_pos + t + 1  # causal: positions 0 .. p, the same for every head here
        n_blocks = (n_ctx + 15) // 16
        # Rows 1..3 of a task with fewer heads repeat its last head: computed, never stored.
        last = heads - 1
        q0, q1, q2, q3 = q[t, h0], q[t, h0 + min(1, last)], q[t, h0 + min(2, last)], q[t, h0 + min(3, last)]
        scores, probs = rows[numba.get_thread_id(), 0], rows[numba.get_thread_id(), 1]  # this thread's rows
        for b in range(n_blocks):
            keys = kt[g, b]
            a0 = a1 = a2 = a3 = f32x16_zero()
            for d in range(head_dim):
                kd = f32x16_load(keys[d], 0)
                a0 = f32x16_fma(a0, f32x16_splat(q0[d]), kd)
                a1 = f32x16_fma(a1, f32x16_splat(q1[d]), kd)
                a2 = f32x16_fma(a2, f32x16_splat(q2[d]), kd)
                a3 = f32x16_fma(a3, f32x16_splat(q3[d]), kd)
            f32x16_store(scores[0], b * 16, a0)
            f32x16_store(scores[1], b * 16, a1)
            f32x16_store(scores[2], b * 16, a2)
            f32x16_store(scores[3], b * 16, a3)
        for i in range(heads):
            row = scores[i, :n_ctx]
            for j in range(n_ctx):
                row[j] = row[j] / sqrt_dim
        _weigh_values_4(out[t], h0, heads, scores, probs, v_cache[g], n_ctx)  # q[t, h0..] read: out may alias q


@twins
def _attention_decode(out, q, k_cache, v_cache, start_pos, rows):
    """T = 1: tasks (kv group, up to 4 of its heads); each key and value row is loaded once for the
    4 heads (the per-(token, head) kernel streams a group's cache once per head)."""
    n_heads, head_dim = q.shape[1], q.shape[2]
    n_kv = k_cache.shape[0]
    group = n_heads // n_kv
    sqrt_dim = np.float32(math.sqrt(head_dim))
    chunks = (group + 3) // 4
    n_ctx = start_pos + 1
    for task in prange(n_kv * chunks):
        g = task // chunks
        h0 = g * group + (task % chunks) * 4
        heads = min(4, (g + 1) * group - h0)
        last = heads - 1  # rows past it repeat the last head: computed, never stored
        q0, q1, q2, q3 = q[0, h0], q[0, h0 + min(1, last)], q[0, h0 + min(2, last)], q[0, h0 + min(3, last)]
        keys, values = k_cache[g], v_cache[g]
        scores, probs = rows[numba.get_thread_id(), 0], rows[numba.get_thread_id(), 1]  # this thread's rows
        for j in range(n_ctx):
            key = keys[j]
            a0 = a1 = a2 = a3 = f32x16_zero()
            for c in range(0, head_dim, 16):
                kc = f32x16_load(key, c)
                a0 = f32x16_fma(a0, f32x16_load(q0, c), kc)
                a1 = f32x16_fma(a1, f32x16_load(q1, c), kc)
                a2 = f32x16_fma(a2, f32x16_load(q2, c), kc)
                a3 = f32x16_fma(a3, f32x16_load(q3, c), kc)
            scores[0, j] = f32x16_sum(a0) / sqrt_dim
            scores[1, j] = f32x16_sum(a1) / sqrt_dim
            scores[2, j] = f32x16_sum(a2) / sqrt_dim
            scores[3, j] = f32x16_sum(a3) / sqrt_dim
        _weigh_values_4(out[0], h0, heads, scores, probs, values, n_ctx)


@njit_inline
def _softmax_scale(probs, scores, n_ctx):
    """probs[:n_ctx] = exp(scores - max); returns 1 / their sum (float64 sum, rounded once)."""
    exp_shifted(probs[:n_ctx], scores[:n_ctx], row_max(scores[:n_ctx]))
    return np.float32(1.0 / sum64(probs[:n_ctx]))


@njit_inline
def _weigh_values_4(out_t, h0, heads, scores, probs, values, n_ctx):
    """out_t[h0 + i, :] = softmax(scores[i, :n_ctx]) @ values[:n_ctx] for i < heads (<= 4): the four
    heads' value sums share each loaded value row. probs: 4 rows of scratch."""
    head_dim = values.shape[1]
    last = heads - 1
    c0 = _softmax_scale(probs[0], scores[0], n_ctx)  # rows past `last` repeat it: never stored
    c1 = _softmax_scale(probs[1], scores[1], n_ctx) if last >= 1 else c0
    c2 = _softmax_scale(probs[2], scores[2], n_ctx) if last >= 2 else c1
    c3 = _softmax_scale(probs[3], scores[3], n_ctx) if last >= 3 else c2
    p0, p1, p2, p3 = probs[0], probs[min(1, last)], probs[min(2, last)], probs[min(3, last)]
    for col in range(0, head_dim, 16):
        a0 = a1 = a2 = a3 = f32x16_zero()
        for j in range(n_ctx):
            v = f32x16_load(values[j], col)
            a0 = f32x16_fma(a0, f32x16_splat(p0[j] * c0), v)
            a1 = f32x16_fma(a1, f32x16_splat(p1[j] * c1), v)
            a2 = f32x16_fma(a2, f32x16_splat(p2[j] * c2), v)
            a3 = f32x16_fma(a3, f32x16_splat(p3[j] * c3), v)
        f32x16_store(out_t[h0], col, a0)
        if heads > 1:
            f32x16_store(out_t[h0 + 1], col, a1)
        if heads > 2:
            f32x16_store(out_t[h0 + 2], col, a2)
        if heads > 3:
            f32x16_store(out_t[h0 + 3], col, a3)


@register("attention", "numba", switches={"T": (1,)})
def attention(out: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray,
              start_pos: int, key_blocks: np.ndarray, rows: np.ndarray) -> None:
    """Append k, v at start_pos; causal GQA of q[T, H, Dh] over k_cache/v_cache[KVH, S, Dh]."""
    start_pos = int(start_pos)
    _append(k_cache, v_cache, k, v, start_pos)
    cache_read = 2 * k_cache.shape[0] * (start_pos + q.shape[0]) * q.shape[2] * 4  # both caches' filled rows
    if q.shape[2] % 16:
        _attention.pick(cache_read)(out, q, k_cache, v_cache, start_pos, rows)
    elif q.shape[0] == 1:
        _attention_decode.pick(cache_read)(out, q, k_cache, v_cache, start_pos, rows)
    else:
        _attention_tiled(out, q, k_cache, v_cache, start_pos, key_blocks, rows)

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
k_cache     [KVH, S, Dh]          keys after rope; rows 0 .. start_pos-1 filled by earlier calls:
v_cache                           float32 (op "attention") or bf16 bits in uint16 (op
                                  "attention_bf16kv": k, v rounded to nearest even when appended,
                                  widened exactly, `<< 16`, when read)
start_pos   int                   >= 0; T > 1 with start_pos > 0 is a chunked prefill
key_tile    float32[threads, KEY_BLOCK/16, Dh, 16]   scratch: one key block re-laid (prefill)
rows        float32[threads, 2, 4, KEY_BLOCK]        scratch: 4 rows of scores and 4 of probabilities
running     float32[threads, QUERY_TILE, 2, 4]       scratch: running max and sum per (token, head)
numba.get_thread_id() picks each thread's own scratch. No scratch grows with the context S.
The H // KVH query heads of a group read the same k_cache[g] / v_cache[g] rows in place; nothing
is copied per head (Meta's repeat_kv is a broadcast, not a copy, here). One kernel source serves
both cache types: simd.load16_f32 and bf16.widen read float32 as it is and widen bf16 bits.

Online softmax over key blocks of KEY_BLOCK positions (flash attention), with the output kept
normalised: after block b, with m_b the running max and l_b = sum_{j in blocks <= b} exp(s_j - m_b),
    out_b = out_{b-1} * (l_{b-1} exp(m_{b-1} - m_b) / l_b) + sum_{j in block b} (exp(s_j - m_b) / l_b) v_j
so the last block leaves the softmax-weighted sum itself, and out[t, h] is the accumulator (no
Dh-long scratch). Within a block: the block's scores, their max, exp (softmax.py's vectorised
passes) and a float64 sum, rounded once. A context of one block (<= KEY_BLOCK positions) is the
plain two-pass softmax, exactly as before this scheme (the pinned logits did not move).

Four kernels:
- head_dim not a multiple of 16 (no Llama; odd test shapes): _attention, plain loops, parallel
  over (token, head) pairs.
- decode (T = 1): _attention_decode, tasks (kv group, up to 4 of its heads): each key and value
  row is loaded once for the 4 heads (GQA: Llama 3's groups are 4 heads, so the cache is streamed
  exactly once) and the four value sums share each load. KVH tasks (8 for Llama 3) over the cores.
  Its weighted sum is attention_bf16.py's (passes that read each value row whole, the same sums
  per column as passes of 16 columns: the pinned logits did not move), 1.08-1.16x faster at 16K
  positions, 1 thread.
- decode over a bf16 cache: attention_bf16.py's attention_decode_bf16 (decode_kernel), the same
  tasks with the arithmetic per key cut to what a cache read at the memory's bandwidth leaves
  room for (its module docstring). Its sums differ from _attention_decode's in the last bits, which is why the
  float32 cache (Meta's numerics, pinned bit for bit) keeps that one.
- prefill (T > 1, head_dim % 16 == 0): _attention_tiled, tasks (kv group, QUERY_TILE tokens, up
  to 4 heads of the group). Each key block is first transposed into the thread's key_tile,
  kt[b, d, i] = k_cache[g, b0 + 16 b + i, d], so one 16-lane vector holds dimension d of 16 keys:
  a query's scores against 16 keys are head_dim FMAs of a broadcast q[d] with kt[b, d], no sums
  across lanes; the transposition is shared by the tile's QUERY_TILE x 4 queries.
(Before the online softmax, the prefill kernel transposed the whole cache into a scratch of
[KVH, S/16, Dh, 16] and every kernel kept score rows of S entries per thread: 32 MB of scratch
for the 8B at 131072 positions, growing with --ctx.)
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from llama_nb.ops.attention_bf16 import _weigh_values_64, decode_kernel
from llama_nb.ops.bf16 import f32_to_bf16, widen
from llama_nb.ops.jit import njit_inline, njit_parallel, njit_serial, twins, twins_dot
from llama_nb.ops.registry import register
from llama_nb.ops.simd import f32x16_fma, f32x16_load, f32x16_splat, f32x16_store, f32x16_sum, f32x16_zero, load16_f32
from llama_nb.ops.softmax import exp_shifted, row_max, sum64
from llama_nb.ops.specs import KEY_BLOCK, QUERY_TILE


@njit_serial
def _append_f32(cache, rows, start_pos):
    """cache[g, start_pos + t, :] = rows[t, g, :] (float32 cache)."""
    for t in range(rows.shape[0]):
        for g in range(rows.shape[1]):
            for d in range(rows.shape[2]):  # element by element: a slice copy may take a temporary
                cache[g, start_pos + t, d] = rows[t, g, d]


@njit_serial
def _append_bf16(cache, rows, start_pos):
    """cache[g, start_pos + t, :] = bf16(rows[t, g, :]), round to nearest even (uint16 cache)."""
    for t in range(rows.shape[0]):
        for g in range(rows.shape[1]):
            for d in range(rows.shape[2]):
                cache[g, start_pos + t, d] = f32_to_bf16(rows[t, g, d])


@njit_inline
def _fold_scores(probs, scores, n, running, i, first):
    """The online-softmax step of head i for a block of n scores: probs[:n] = exp(scores - m) / l,
    the weights of the block's value rows, with running[:, i] = (m, l) updated; returns keep, the
    factor of the output so far (see the module docstring)."""
    m = row_max(scores[:n])
    if not first:
        m = max(m, running[0, i])
    exp_shifted(probs[:n], scores[:n], m)
    total = sum64(probs[:n])  # float64
    keep = np.float32(0.0)
    if not first:
        carried = float(running[1, i]) * math.exp(float(running[0, i]) - float(m))
        total += carried
        keep = np.float32(carried / total)
    running[0, i] = m
    running[1, i] = np.float32(total)
    scale = np.float32(1.0 / total)
    for j in range(n):  # once per block, not once per 16 columns of the value sum
        probs[j] *= scale
    return keep


@njit_inline
def _fold_heads(probs, scores, n, running, last, first):
    """_fold_scores of heads 0 .. last (<= 3): their weights in probs[i, :n]; returns the 4 keep
    factors, those of the heads past `last` repeating its own (their rows repeat it)."""
    k0 = _fold_scores(probs[0], scores[0], n, running, 0, first)
    k1 = _fold_scores(probs[1], scores[1], n, running, 1, first) if last >= 1 else k0
    k2 = _fold_scores(probs[2], scores[2], n, running, 2, first) if last >= 2 else k1
    k3 = _fold_scores(probs[3], scores[3], n, running, 3, first) if last >= 3 else k2
    return k0, k1, k2, k3


@njit_inline
def _fold_block_4(out_t, h0, heads, scores, probs, running, values, b0, n, first):
    """Fold keys b0 .. b0+n-1 (their scores, already / sqrt(Dh), in scores[i, :n]) into out_t[h0 + i]
    for i < heads (<= 4): the four heads' value sums share each loaded value row (the weights
    exp(s - m) * float32(1 / l) are the products the two-pass softmax used: the same bits)."""
    head_dim = values.shape[1]
    last = heads - 1
    k0, k1, k2, k3 = _fold_heads(probs, scores, n, running, last, first)
    p0, p1, p2, p3 = probs[0], probs[min(1, last)], probs[min(2, last)], probs[min(3, last)]
    o0, o1, o2, o3 = out_t[h0], out_t[h0 + min(1, last)], out_t[h0 + min(2, last)], out_t[h0 + min(3, last)]
    for col in range(0, head_dim, 16):
        a0 = a1 = a2 = a3 = f32x16_zero()
        if not first:  # out_t holds the output so far (garbage before the first block: never read)
            a0 = f32x16_fma(a0, f32x16_load(o0, col), f32x16_splat(k0))
            a1 = f32x16_fma(a1, f32x16_load(o1, col), f32x16_splat(k1))
            a2 = f32x16_fma(a2, f32x16_load(o2, col), f32x16_splat(k2))
            a3 = f32x16_fma(a3, f32x16_load(o3, col), f32x16_splat(k3))
        for j in range(n):
            v = load16_f32(values[b0 + j], col)
            a0 = f32x16_fma(a0, f32x16_splat(p0[j]), v)
            a1 = f32x16_fma(a1, f32x16_splat(p1[j]), v)
            a2 = f32x16_fma(a2, f32x16_splat(p2[j]), v)
            a3 = f32x16_fma(a3, f32x16_splat(p3[j]), v)
        f32x16_store(o0, col, a0)
        if heads > 1:
            f32x16_store(o1, col, a1)
        if heads > 2:
            f32x16_store(o2, col, a2)
        if heads > 3:
            f32x16_store(o3, col, a3)


@twins_dot
def _attention(out, q, k_cache, v_cache, start_pos, rows, running):
    n_tokens, n_heads, head_dim = q.shape
    group = n_heads // k_cache.shape[0]
    sqrt_dim = np.float32(math.sqrt(head_dim))  # Meta divides the scores by sqrt(head_dim)
    for th in prange(n_tokens * n_heads):
        t, h = th // n_heads, th % n_heads
        keys, values = k_cache[h // group], v_cache[h // group]
        qv, dst = q[t, h], out[t, h]
        n_ctx = start_pos + t + 1  # causal: positions 0 .. p
        tid = numba.get_thread_id()  # this thread's scratch
        scores, probs, mine = rows[tid, 0, 0], rows[tid, 1, 0], running[tid, 0]
        for b0 in range(0, n_ctx, KEY_BLOCK):
            n = min(KEY_BLOCK, n_ctx - b0)
            for j in range(n):
                kj = keys[b0 + j]
                dot = np.float32(0.0)
                for d in range(head_dim):
                    dot += qv[d] * widen(kj[d])
                scores[j] = dot / sqrt_dim
            keep = _fold_scores(probs, scores, n, mine, 0, b0 == 0)
            for d in range(head_dim):
                dst[d] = dst[d] * keep if b0 > 0 else np.float32(0.0)
            for j in range(n):
                weight, vj = probs[j], values[b0 + j]
                for d in range(head_dim):
                    dst[d] += weight * widen(vj[d])


@njit_inline
def _transpose_block(kt, keys, b0, filled):
    """kt[b, d, i] = keys[b0 + 16 b + i, d] (widened) for the block's first `filled` keys, zeros
    past them to the end of their 16-key group."""
    head_dim = keys.shape[1]
    for b in range((filled + 15) // 16):
        block = kt[b]
        for i in range(16):
            if b * 16 + i < filled:
                key = keys[b0 + b * 16 + i]
                for d in range(head_dim):
                    block[d, i] = widen(key[d])
            else:
                for d in range(head_dim):
                    block[d, i] = 0.0


@njit_parallel
def _attention_tiled(out, q, k_cache, v_cache, start_pos, key_tile, rows, running):
    n_tokens, n_heads, head_dim = q.shape
    n_kv = k_cache.shape[0]
    group = n_heads // n_kv
    sqrt_dim = np.float32(math.sqrt(head_dim))  # Meta divides the scores by sqrt(head_dim)
    chunks = (group + 3) // 4  # up to 4 heads of a group per task
    tiles = (n_tokens + QUERY_TILE - 1) // QUERY_TILE
    for task in prange(n_kv * tiles * chunks):
        g, rest = task // (tiles * chunks), task % (tiles * chunks)
        t0, h0 = (rest // chunks) * QUERY_TILE, g * group + (rest % chunks) * 4
        t_end = min(t0 + QUERY_TILE, n_tokens)
        heads = min(4, (g + 1) * group - h0)
        last = heads - 1  # rows past it repeat the last head: computed, never stored
        keys, values = k_cache[g], v_cache[g]
        tid = numba.get_thread_id()  # this thread's scratch
        kt, scores, probs = key_tile[tid], rows[tid, 0], rows[tid, 1]
        n_tile = start_pos + t_end  # the tile's last token sees positions 0 .. n_tile - 1
        for b0 in range(0, n_tile, KEY_BLOCK):
            _transpose_block(kt, keys, b0, min(KEY_BLOCK, n_tile - b0))
            for t in range(t0, t_end):
                n_ctx = start_pos + t + 1  # causal: positions 0 .. p, the same for every head here
                if n_ctx <= b0:
                    continue
                n = min(KEY_BLOCK, n_ctx - b0)
                q0, q1, q2, q3 = q[t, h0], q[t, h0 + min(1, last)], q[t, h0 + min(2, last)], q[t, h0 + min(3, last)]
                for b in range((n + 15) // 16):
                    block = kt[b]
                    a0 = a1 = a2 = a3 = f32x16_zero()
                    for d in range(head_dim):
                        kd = f32x16_load(block[d], 0)
                        a0 = f32x16_fma(a0, f32x16_splat(q0[d]), kd)
                        a1 = f32x16_fma(a1, f32x16_splat(q1[d]), kd)
                        a2 = f32x16_fma(a2, f32x16_splat(q2[d]), kd)
                        a3 = f32x16_fma(a3, f32x16_splat(q3[d]), kd)
                    f32x16_store(scores[0], b * 16, a0)
                    f32x16_store(scores[1], b * 16, a1)
                    f32x16_store(scores[2], b * 16, a2)
                    f32x16_store(scores[3], b * 16, a3)
                for i in range(heads):
                    row = scores[i, :n]
                    for j in range(n):
                        row[j] = row[j] / sqrt_dim
                _fold_block_4(out[t], h0, heads, scores, probs, running[tid, t - t0], values, b0, n, b0 == 0)


@twins
def _attention_decode(out, q, k_cache, v_cache, start_pos, rows, running):
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
        outs = (out[0, h0], out[0, h0 + min(1, last)], out[0, h0 + min(2, last)], out[0, h0 + min(3, last)])
        tid = numba.get_thread_id()  # this thread's scratch
        scores, probs, mine = rows[tid, 0], rows[tid, 1], running[tid, 0]
        weights = rows[tid, 1].reshape(4 * KEY_BLOCK)  # probs, one row of KEY_BLOCK per head
        for b0 in range(0, n_ctx, KEY_BLOCK):
            n = min(KEY_BLOCK, n_ctx - b0)
            for j in range(n):
                key = keys[b0 + j]
                a0 = a1 = a2 = a3 = f32x16_zero()
                for c in range(0, head_dim, 16):
                    kc = load16_f32(key, c)
                    a0 = f32x16_fma(a0, f32x16_load(q0, c), kc)
                    a1 = f32x16_fma(a1, f32x16_load(q1, c), kc)
                    a2 = f32x16_fma(a2, f32x16_load(q2, c), kc)
                    a3 = f32x16_fma(a3, f32x16_load(q3, c), kc)
                scores[0, j] = f32x16_sum(a0) / sqrt_dim
                scores[1, j] = f32x16_sum(a1) / sqrt_dim
                scores[2, j] = f32x16_sum(a2) / sqrt_dim
                scores[3, j] = f32x16_sum(a3) / sqrt_dim
            if head_dim % 64 == 0:  # the value pass that reads each row whole (attention_bf16.py)
                keeps = _fold_heads(probs, scores, n, mine, last, b0 == 0)
                _weigh_values_64(outs, keeps, weights, False, values, b0, n, b0 == 0, last)
            else:
                _fold_block_4(out[0], h0, heads, scores, probs, mine, values, b0, n, b0 == 0)


def attention(out: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray,
              start_pos: int, key_tile: np.ndarray, rows: np.ndarray, running: np.ndarray) -> None:
    """Append k, v at start_pos; causal GQA of q[T, H, Dh] over k_cache/v_cache[KVH, S, Dh], a
    float32 or a bf16 (uint16) cache."""
    start_pos = int(start_pos)
    append = _append_bf16 if k_cache.dtype == np.uint16 else _append_f32
    append(k_cache, k, start_pos)
    append(v_cache, v, start_pos)
    cache_read = 2 * k_cache.shape[0] * (start_pos + q.shape[0]) * q.shape[2] * k_cache.itemsize  # filled rows
    if q.shape[2] % 16:
        _attention.pick(cache_read)(out, q, k_cache, v_cache, start_pos, rows, running)
    elif q.shape[0] == 1 and k_cache.dtype == np.uint16:
        decode_kernel(q.shape[2]).pick(cache_read)(out, q, k_cache, v_cache, start_pos, rows, running)
    elif q.shape[0] == 1:
        _attention_decode.pick(cache_read)(out, q, k_cache, v_cache, start_pos, rows, running)
    else:
        _attention_tiled(out, q, k_cache, v_cache, start_pos, key_tile, rows, running)


register("attention", "numba", switches={"T": (1,)})(attention)
register("attention_bf16kv", "numba", switches={"T": (1,)})(attention)

"""Decode attention over a bf16 KV cache: the T = 1 kernel of op "attention_bf16kv" (attention.py
holds the op, its math and the other kernels; this file only the one whose speed the cache read sets).

Decode attention is a stream: each step reads every cached key and value once, 2 * KVH * S * Dh
bf16 values (64 MiB for the 1B heads at 32K positions), and does 4 multiply-adds per value per
query head of the group (scores and weighted sum, GQA groups of 4 in Llama 3). So the kernel must
do that arithmetic as fast as memory delivers the cache, on both cores, which leaves no room for
scalar work per key. Tasks are (kv group g, up to 4 of its query heads); per block of KEY_BLOCK keys:

1. scores of 4 keys x 4 heads at a time: 16 accumulators, every loaded (and widened) key chunk
   feeding the 4 heads; their lane sums in one f32x16_sums (lane 4 h + k: head h, key k of the
   four), divided by sqrt(Dh) as one vector, so w[16 jb + 4 h + k] is head h's score of key 4 jb + k;
2. the online-softmax step (attention.py's module docstring) on all 16 lanes at once: per-lane
   max, exp, float32 sums of at most KEY_BLOCK / 4 terms per lane, each head's max and sum taken
   over its 4 lanes; the weights scaled by 1 / l;
3. the weighted sum of the value rows, 16 accumulators per pass over the block's rows: passes of
   the 4 heads x 64 columns (two "segments" of a head pair each). Dh = 64 (1B): one pass; Dh = 128
   (8B, 70B, 405B): two, so each value is widened once.
   Dh not a multiple of 64 (test shapes only): passes of 4 heads x 32 columns.
Heads of Dh >= PREFETCH_FROM_DIM (64: every Llama) prefetch, in step 1, every line of the keys KEYS_AHEAD rows on and
of the 4 keys' value rows, which step 3 then finds in cache. Without it one core's compute and
memory did not overlap at Dh 128: the kernel ran at 16 GB/s, the rate of the cache read (36 GB/s on
one core) and of the arithmetic on hot rows (31 GB/s) taken one after the other.

Measured (bench/attention.py, 32K positions, medians of the ratio to the plain read around each
call). 2026-12-02 05:53 UTC, idle machine, -r 5: 1B heads (Dh 64) 85% on 2 threads, 58% on 1;
8B heads (Dh 128) 56% and 45% (passes of 32 columns before that: 51% and 35% on 2 threads). With
the prefetch (07:48 UTC, -r 3, helpers reading code): 8B heads 75% on 2 threads (max 79%), 71% on
1; the 1B heads, unchanged code, 68% then (the machine was not idle). In one process, alternating,
1 thread, best of 8 at Dh 128: 8.55 -> 5.54 ms (1.57x); 2 threads 4.35 -> 3.14 ms (1.41x); at Dh 64
the prefetch made 1 thread 5% slower and 2 threads 1.5%, so it is off there. Then the weights'
scaling by 1 / l as vectors (step 2): Dh 128 1.12x on 1 thread, 1.05x on 2; Dh 64 1.22x and 1.16x.
Idle, -r 5, 15:15 UTC, a slow-memory spell (plain read 31-35 GB/s): 1B heads 82% on 2 threads,
51% on 1; 8B heads 71% and 46% (one round in 5 at 36% / 43% on 2 threads).
On a 2-core Intel Xeon (AMX host, plain read 21-25 GB/s on 2 threads, 12-14 on 1), idle, -r 5,
18:26 UTC: 1B heads 64% on 2 threads, 60% on 1, 8B heads 87% and 87%; with the prefetch at Dh 64
too (PREFETCH_FROM_DIM 128 -> 64, 18:27 UTC): 1B heads 85% and 80%. So every head width prefetches.
Each task's rows are addressed flat (row j of its group at j * Dh) and Llama's head widths, 64 and
128, are compiled as constants (kernels of their own, decode_kernel picks one): the loops over a
row unroll, the loads take fixed offsets, and the address arithmetic per 4 keys (a multiply by the
row stride and a clamp per row, spilled registers) is gone; the same bits. Measured 2026-12-04 on
the AMD EPYC, idle, best of 15, alternating with the kernel before: 2048 positions (the cache in
L3), 1 thread, 1B heads 1.17-1.25x, 8B heads 1.00-1.16x; 32K positions, 1 thread, 1.12x; 32K on 2
threads within the spells' noise (0.88-1.04x). A cold compile of the Dh-64 kernel takes 6.7 s (4.0
before: the unrolled body is longer). Hints without the clamps (a branch per 4 keys
instead) were 1.1-1.4x faster from L3 but 0.8x at 32K positions on 2 threads, so they stay.
Tried and dropped: each 32 bf16 values loaded as 16 dwords and split into the even and the odd
columns by a shift and a mask, in both passes (q and the output kept in that layout): 1.00-1.07x
from L3, 2026-12-04, not worth the layout. Earlier (1 thread, best of 30): widening bf16 pairs
with a shift and a mask instead of vpmovzxwd (slower: 9.8 against 7.2 ms at Dh 128), value rows
widened once into a float32 scratch, larger key blocks (no change); column passes of the value
rows without the prefetch (0.86x: they swept each row's lines apart); hinting the next block's keys from the value pass instead (0.72-0.83x),
or every other line (1.0x and 0.82x: the hardware prefetcher seems to follow the hints).

The sums are those of the float32-cache kernel's order per column of the weighted sum (any pass
layout gives the same bits: each output column is its own chain of multiply-adds, key by key), but
the scores' lane sums differ from attention.py's _attention_decode in the last bits: which is why
the float32 cache (Meta's numerics, pinned bit for bit) keeps that kernel.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

from llama_nb.ops.fastexp import exp_nonpositive
from llama_nb.ops.jit import njit_inline, twins
from llama_nb.ops.simd import (f32x16_div, f32x16_fma, f32x16_lane, f32x16_load, f32x16_max, f32x16_splat,
                               f32x16_store, f32x16_sums, f32x16_zero, load16_f32, prefetch)
from llama_nb.ops.specs import KEY_BLOCK

# Heads at least this wide prefetch their cache (see the module docstring: at Dh 64 the prefetches
# cost 1.5-5% on the AMD host and bought 1.33x on the Intel one; at Dh 128 they are 1.4-1.6x).
PREFETCH_FROM_DIM = 64
KEYS_AHEAD = 32  # rows: how far ahead of the score pass the key rows are fetched (16-128 measured)


@twins
def attention_decode_bf16(out, q, k_cache, v_cache, start_pos, rows, running):
    """out float32[1, H, Dh] = attention of q float32[1, H, Dh] over positions 0 .. start_pos of
    k_cache, v_cache uint16[KVH, S, Dh] (bf16 bits; row start_pos already appended). Scratch:
    rows float32[threads, 2, 4, KEY_BLOCK], running float32[threads, QUERY_TILE, 2, 4]. Any Dh
    (a multiple of 16); decode_kernel picks the twins compiled for Llama's 64 and 128."""
    for task in prange(_tasks(q, k_cache)):
        _group(out, q, k_cache, v_cache, start_pos, rows, running, task, q.shape[2])


# Llama's head widths as constants: the loops over a row unroll and its loads take fixed offsets
# (the generic body computes a row's address and its loop bounds per 4 keys). Kernels of their
# own, not branches of one: Numba compiles each on first use, and one prange over three inlined
# bodies took 21 s to compile instead of 4.
@twins
def attention_decode_bf16_64(out, q, k_cache, v_cache, start_pos, rows, running):
    """attention_decode_bf16 for Dh = 64 (Llama 3.2 1B and 3B)."""
    for task in prange(_tasks(q, k_cache)):
        _group(out, q, k_cache, v_cache, start_pos, rows, running, task, 64)


@twins
def attention_decode_bf16_128(out, q, k_cache, v_cache, start_pos, rows, running):
    """attention_decode_bf16 for Dh = 128 (Llama 3.1 8B, 70B, 405B)."""
    for task in prange(_tasks(q, k_cache)):
        _group(out, q, k_cache, v_cache, start_pos, rows, running, task, 128)


def decode_kernel(head_dim: int):
    """The Twins of attention_decode_bf16 for heads of head_dim."""
    return {64: attention_decode_bf16_64, 128: attention_decode_bf16_128}.get(head_dim, attention_decode_bf16)


@njit_inline
def _chunks(q, k_cache):
    """Tasks per kv group: its query heads in chunks of up to 4."""
    return (q.shape[1] // k_cache.shape[0] + 3) // 4


@njit_inline
def _tasks(q, k_cache):
    """Tasks of a call: every kv group's chunks."""
    return k_cache.shape[0] * _chunks(q, k_cache)


@njit_inline
def _group(out, q, k_cache, v_cache, start_pos, rows, running, task, head_dim):
    """One task of attention_decode_bf16: kv group g, up to 4 of its query heads."""
    n_heads = q.shape[1]
    n_kv = k_cache.shape[0]
    group = n_heads // n_kv
    chunks = _chunks(q, k_cache)
    sqrt_dim = np.float32(math.sqrt(head_dim))  # Meta divides the scores by sqrt(head_dim)
    root = f32x16_splat(sqrt_dim)
    n_ctx = start_pos + 1
    g = task // chunks
    h0 = g * group + (task % chunks) * 4
    heads = min(4, (g + 1) * group - h0)
    last = heads - 1  # rows past it repeat the last head: computed, never stored
    q0, q1, q2, q3 = q[0, h0], q[0, h0 + min(1, last)], q[0, h0 + min(2, last)], q[0, h0 + min(3, last)]
    outs = (out[0, h0], out[0, h0 + min(1, last)], out[0, h0 + min(2, last)], out[0, h0 + min(3, last)])
    # this group's rows, flat: row j at j * head_dim; one prefetch hint per 64-byte line
    keys, values = k_cache[g].reshape(k_cache.shape[1] * head_dim), v_cache[g].reshape(v_cache.shape[1] * head_dim)
    last_line = keys.size - 32
    fetch = head_dim >= PREFETCH_FROM_DIM
    tid = numba.get_thread_id()  # this thread's scratch
    w = rows[tid, 0].reshape(4 * KEY_BLOCK)  # scores, then weights, 16 per 4 keys
    lane_max, lane_scale, mine = rows[tid, 1, 0], rows[tid, 1, 1], running[tid, 0]
    for b0 in range(0, n_ctx, KEY_BLOCK):
        n = min(KEY_BLOCK, n_ctx - b0)
        first = b0 == 0
        top = f32x16_splat(np.float32(-np.inf))
        for jb in range((n + 3) // 4):
            j0 = b0 + 4 * jb
            end = b0 + n - 1  # keys past it (the last group's): the last key again, masked below
            a0, a1, a2, a3 = j0 * head_dim, min(j0 + 1, end) * head_dim, min(j0 + 2, end) * head_dim, min(j0 + 3, end) * head_dim
            if fetch:  # the keys KEYS_AHEAD rows on, and these 4 keys' value rows for step 3
                _prefetch_lines(keys, values, a0, KEYS_AHEAD * head_dim, 4 * head_dim, last_line)
            s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = f32x16_zero()
            s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = f32x16_zero()
            for c in range(0, head_dim, 16):
                k0, k1, k2, k3 = load16_f32(keys, a0 + c), load16_f32(keys, a1 + c), load16_f32(keys, a2 + c), load16_f32(keys, a3 + c)
                x = f32x16_load(q0, c)
                s00, s01, s02, s03 = f32x16_fma(s00, x, k0), f32x16_fma(s01, x, k1), f32x16_fma(s02, x, k2), f32x16_fma(s03, x, k3)
                x = f32x16_load(q1, c)
                s10, s11, s12, s13 = f32x16_fma(s10, x, k0), f32x16_fma(s11, x, k1), f32x16_fma(s12, x, k2), f32x16_fma(s13, x, k3)
                x = f32x16_load(q2, c)
                s20, s21, s22, s23 = f32x16_fma(s20, x, k0), f32x16_fma(s21, x, k1), f32x16_fma(s22, x, k2), f32x16_fma(s23, x, k3)
                x = f32x16_load(q3, c)
                s30, s31, s32, s33 = f32x16_fma(s30, x, k0), f32x16_fma(s31, x, k1), f32x16_fma(s32, x, k2), f32x16_fma(s33, x, k3)
            scores = f32x16_sums((s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, s22, s23, s30, s31, s32, s33))
            f32x16_store(w, 16 * jb, f32x16_div(scores, root))
            if j0 + 3 > end:  # the block's last group is short: its missing keys weigh nothing
                for lane in range(16):
                    if j0 + (lane & 3) > end:
                        w[16 * jb + lane] = -np.inf
            top = f32x16_max(f32x16_load(w, 16 * jb), top)
        for i in range(4):  # each head's max over its 4 lanes, the running max included
            m = max(max(f32x16_lane(top, 4 * i), f32x16_lane(top, 4 * i + 1)),
                    max(f32x16_lane(top, 4 * i + 2), f32x16_lane(top, 4 * i + 3)))
            if not first:
                m = max(m, mine[0, i])
            for k in range(4):
                lane_max[4 * i + k] = m
        total = f32x16_zero()
        for jb in range((n + 3) // 4):
            for lane in range(16):
                w[16 * jb + lane] = exp_nonpositive(w[16 * jb + lane] - lane_max[lane])
            total = f32x16_fma(total, f32x16_load(w, 16 * jb), f32x16_splat(np.float32(1.0)))
        keeps = (_fold_head(0, total, lane_max, lane_scale, mine, first), _fold_head(1, total, lane_max, lane_scale, mine, first),
                 _fold_head(2, total, lane_max, lane_scale, mine, first), _fold_head(3, total, lane_max, lane_scale, mine, first))
        # as one vector per 4 keys: a loop over the lanes ran 13% slower (LLVM did not vectorise it)
        scale = f32x16_load(lane_scale, 0)
        for jb in range((n + 3) // 4):
            f32x16_store(w, 16 * jb, f32x16_fma(f32x16_zero(), f32x16_load(w, 16 * jb), scale))  # w * scale, exactly
        if head_dim % 64 == 0:
            _weigh_flat_64(outs, keeps, w, values, head_dim, b0, n, first, last)
        else:
            _weigh_values_32(outs, keeps, w, v_cache[g], b0, n, first, heads)


@njit_inline
def _weigh_flat_64(outs, keeps, w, values, head_dim, b0, n, first, last):
    """_weigh_values_64's interleaved passes over the flat rows of one group (row j at j * head_dim)."""
    wa0, wa1, wb0, wb1 = 0, 4 * min(1, last), 4 * min(2, last), 4 * min(3, last)
    for ca in range(0, head_dim, 64):
        a = _pair_start(outs[0], outs[1], ca, keeps[0], keeps[1], first)
        b = _pair_start(outs[2], outs[3], ca, keeps[2], keeps[3], first)
        for j in range(n):
            at = 16 * (j >> 2) + (j & 3)  # head 0's weight of key j
            row = (b0 + j) * head_dim + ca
            a = _pair_fma(a, f32x16_splat(w[at + wa0]), f32x16_splat(w[at + wa1]), values, row)
            b = _pair_fma(b, f32x16_splat(w[at + wb0]), f32x16_splat(w[at + wb1]), values, row)
        _pair_store(outs[0], outs[1], ca, a)
        if 2 <= last:
            _pair_store(outs[2], outs[3], ca, b)


@njit_inline
def _prefetch_lines(keys, values, start, ahead, count, last_line):
    """Hint every 64-byte line of keys[start + ahead :][:count] and values[start :][:count] (uint16,
    flat), clamped to the arrays.

    Every line: hinting every other one (trusting the adjacent-line prefetcher) was slower than
    hinting none."""
    for at in range(start, start + count, 32):
        prefetch(keys, min(at + ahead, last_line))
        prefetch(values, min(at, last_line))


@njit_inline
def _fold_head(i, total, lane_max, lane_scale, mine, first):
    """The online-softmax bookkeeping of head i for a block: its block sum (its 4 lanes of
    `total`, in float64) joins the running sum carried from earlier blocks; mine[:, i] = (max, sum)
    afterwards, lane_scale = 1 / sum on its lanes; returns keep, the factor of the head's output
    so far (0 on the first block)."""
    block = (float(f32x16_lane(total, 4 * i)) + float(f32x16_lane(total, 4 * i + 1))
             + float(f32x16_lane(total, 4 * i + 2)) + float(f32x16_lane(total, 4 * i + 3)))
    keep = np.float32(0.0)
    if not first:
        carried = float(mine[1, i]) * math.exp(float(mine[0, i]) - float(lane_max[4 * i]))
        block += carried
        keep = np.float32(carried / block)
    mine[0, i], mine[1, i] = lane_max[4 * i], np.float32(block)
    for k in range(4):
        lane_scale[4 * i + k] = np.float32(1.0 / block)
    return keep


@njit_inline
def _weigh_values_64(outs, keeps, w, interleaved, values, b0, n, first, last):
    """outs[i][:] = outs[i][:] * keeps[i] + sum_j weight(i, j) * values[b0 + j, :] for the 4 heads
    (head_dim % 64 == 0), in passes of two segments (head pair p, 64 columns at c). The weights:
    interleaved (this file's kernel), w[16 (j >> 2) + (j & 3) + 4 i]; else (attention.py's float32
    kernel) one row of KEY_BLOCK per head, w[KEY_BLOCK i + j]. Heads past `last` (a group of 1 to
    3 heads) take the last head's weights and are not stored: their rows repeat the last.

    The passes: interleaved, the 4 heads at the same 64 columns (both head pairs), so each value
    is widened once (the rows are in cache: the score pass prefetched them); else a head pair over
    the whole row (the float32 cache's rows come from memory: one sweep reads each row whole)."""
    per_pair = values.shape[1] // 64  # segments per head pair; also the passes
    step = 4 if interleaved else KEY_BLOCK  # from one head's weights to the next head's
    for s in range(per_pair):
        if interleaved:
            pa, ca, pb, cb = 0, 64 * s, 1, 64 * s
        else:
            pa, ca = (2 * s) // per_pair, ((2 * s) % per_pair) * 64
            pb, cb = (2 * s + 1) // per_pair, ((2 * s + 1) % per_pair) * 64
        wa0, wa1 = step * min(2 * pa, last), step * min(2 * pa + 1, last)
        wb0, wb1 = step * min(2 * pb, last), step * min(2 * pb + 1, last)
        a = _pair_start(outs[2 * pa], outs[2 * pa + 1], ca, keeps[2 * pa], keeps[2 * pa + 1], first)
        b = _pair_start(outs[2 * pb], outs[2 * pb + 1], cb, keeps[2 * pb], keeps[2 * pb + 1], first)
        for j in range(n):
            at = 16 * (j >> 2) + (j & 3) if interleaved else j  # head 0's weight of key j
            row = values[b0 + j]
            a = _pair_fma(a, f32x16_splat(w[at + wa0]), f32x16_splat(w[at + wa1]), row, ca)
            b = _pair_fma(b, f32x16_splat(w[at + wb0]), f32x16_splat(w[at + wb1]), row, cb)
        if 2 * pa <= last:
            _pair_store(outs[2 * pa], outs[2 * pa + 1], ca, a)
        if 2 * pb <= last:
            _pair_store(outs[2 * pb], outs[2 * pb + 1], cb, b)


@njit_inline
def _pair_start(out_a, out_b, col, keep_a, keep_b, first):
    """The 8 accumulators of a segment: heads a and b, columns col .. col + 63, holding the output
    so far times its keep factor (zeros on the first block: the output is garbage then, never read)."""
    zero = f32x16_zero()
    if first:
        return zero, zero, zero, zero, zero, zero, zero, zero
    x, y = f32x16_splat(keep_a), f32x16_splat(keep_b)
    return (f32x16_fma(zero, f32x16_load(out_a, col), x), f32x16_fma(zero, f32x16_load(out_a, col + 16), x),
            f32x16_fma(zero, f32x16_load(out_a, col + 32), x), f32x16_fma(zero, f32x16_load(out_a, col + 48), x),
            f32x16_fma(zero, f32x16_load(out_b, col), y), f32x16_fma(zero, f32x16_load(out_b, col + 16), y),
            f32x16_fma(zero, f32x16_load(out_b, col + 32), y), f32x16_fma(zero, f32x16_load(out_b, col + 48), y))


@njit_inline
def _pair_fma(acc, x, y, row, col):
    """acc += (x * row[col : col + 64] for head a, y * the same for head b), row widened once."""
    v0, v1, v2, v3 = load16_f32(row, col), load16_f32(row, col + 16), load16_f32(row, col + 32), load16_f32(row, col + 48)
    return (f32x16_fma(acc[0], x, v0), f32x16_fma(acc[1], x, v1), f32x16_fma(acc[2], x, v2), f32x16_fma(acc[3], x, v3),
            f32x16_fma(acc[4], y, v0), f32x16_fma(acc[5], y, v1), f32x16_fma(acc[6], y, v2), f32x16_fma(acc[7], y, v3))


@njit_inline
def _pair_store(out_a, out_b, col, acc):
    """out_a[col : col + 64], out_b[col : col + 64] = the segment's accumulators."""
    for k in range(4):
        f32x16_store(out_a, col + 16 * k, acc[k])
        f32x16_store(out_b, col + 16 * k, acc[4 + k])


@njit_inline
def _weigh_values_32(outs, keeps, w, values, b0, n, first, heads):
    """As _weigh_values_64 for any head_dim % 16 == 0: passes of 4 heads x 32 columns (16 when
    head_dim % 32 == 16: the last pass has one 16-column half, computed twice, stored once)."""
    head_dim = values.shape[1]
    o0, o1, o2, o3 = outs
    for col in range(0, head_dim, 32):
        two = col + 16 < head_dim
        c2 = col + 16 if two else col
        a0 = b0_ = a1 = b1 = a2 = b2 = a3 = b3 = f32x16_zero()
        if not first:  # the output so far (garbage before the first block: never read)
            a0, b0_ = _kept(o0, col, c2, keeps[0])
            a1, b1 = _kept(o1, col, c2, keeps[1])
            a2, b2 = _kept(o2, col, c2, keeps[2])
            a3, b3 = _kept(o3, col, c2, keeps[3])
        for j in range(n):
            at = 16 * (j >> 2) + (j & 3)
            row = values[b0 + j]
            v, u = load16_f32(row, col), load16_f32(row, c2)
            x = f32x16_splat(w[at])
            a0, b0_ = f32x16_fma(a0, x, v), f32x16_fma(b0_, x, u)
            x = f32x16_splat(w[at + 4])
            a1, b1 = f32x16_fma(a1, x, v), f32x16_fma(b1, x, u)
            x = f32x16_splat(w[at + 8])
            a2, b2 = f32x16_fma(a2, x, v), f32x16_fma(b2, x, u)
            x = f32x16_splat(w[at + 12])
            a3, b3 = f32x16_fma(a3, x, v), f32x16_fma(b3, x, u)
        _store_halves(o0, col, a0, b0_, two)
        if heads > 1:
            _store_halves(o1, col, a1, b1, two)
        if heads > 2:
            _store_halves(o2, col, a2, b2, two)
        if heads > 3:
            _store_halves(o3, col, a3, b3, two)


@njit_inline
def _kept(row, col, c2, keep):
    """keep * row[col : col + 16] and keep * row[c2 : c2 + 16]."""
    x = f32x16_splat(keep)
    return f32x16_fma(f32x16_zero(), f32x16_load(row, col), x), f32x16_fma(f32x16_zero(), f32x16_load(row, c2), x)


@njit_inline
def _store_halves(row, col, a, b, two):
    """row[col : col + 16] = a, and row[col + 16 : col + 32] = b when `two`."""
    f32x16_store(row, col, a)
    if two:
        f32x16_store(row, col + 16, b)

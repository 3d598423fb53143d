"""linear for the block formats on int8 activations: integer dot products, 64 bytes at a time.

    out[t, n] = sum over blocks of (weight scale) * (activation scale) * (integer dot product)
    q int8[T, K], d float32[T, K // 32], sums int32[T, K // 16], dsum float32[T, K // 32]: x rounded to int8 blocks
                                      (ops/quant_act.py; the math: llama_nb/quant/activations.py)
    w uint8[N, K // block * block_bytes]: the weight's blocks (llama_nb/quant/*.py)
    out float32[T, N]

Per 64 bytes, one i8x64 dot product (vpdpbusd on a zmm: u8 x s8 into sixteen int32 lanes), its
lanes converted to float32 and multiplied into an accumulator by a vector of sixteen scales, each
the scale of the block its lane belongs to (f32x16_pairs / f32x16_spread: one vpermps of the
scales of a super-block, computed once as a vector):
    Q8_0  eight blocks a step, two per zmm (w's 32 bytes at 34b + 2 and 34b + 36). w flipped to
          u8 (w + 128) times x as s8 is w . x + 128 * sum(x): the excess 128 * d_w * d_x * sum(q_x)
          is subtracted through dsum = d_x * sum(q_x), one 8-lane FMA per step. Scale d_w * d_x;
          the eight halves d_w gathered into one vector. Blocks past the last 8: 32 bytes at a time.
    Q4_K  two chunks of 32 bytes per zmm: the low nibbles are sub-blocks 2c, 2c + 2, the high
          nibbles 2c + 1, 2c + 3 (x's blocks reordered to match, once per call). The 6-bit
          scales and mins of a super-block decoded as one 16-lane vector (q4_k_scales_mins); lanes
          0-7 of d * sc[j] * d_x scale the dots, lanes 8-15 (dmin * m[j] * dsum) accumulate the
          mins' share, summed once per row.
    Q6_K  two runs of 32 per zmm: ql's 64 bytes with qh and qh >> 2 side by side give runs 0, 1
          (low nibbles, qh bits 0-1 and 2-3) and 2, 3 (high nibbles, bits 4-5 and 6-7), each against
          x's 64 contiguous bytes. Lanes 4g .. 4g + 3 are group g of 16, scaled by f[g] = d * sc[g]
          * d_x (one 16-lane vector per super-block); the offset 32 of q is subtracted through
          f[g] * sum(q_x) of each group (one FMA per super-block).
Four float32 accumulators per row (one chain of dependent FMAs was the limit at 256 bits). Each
block prefetches the bytes a fixed distance ahead of it in w's stream (Q8_0_AHEAD etc.; rows one
after another, so near a row's end the next row's): the hardware prefetcher alone streams these
kernels' reads at less than two thirds of the memory's rate. The distance is in bytes, not rows:
the row two on (as until 2026-12-03) is 2.3 KB ahead on the 1B's Q4_K rows but 9-13 KB on w2's
(K = 14336), and too far ahead costs as much as too near. Measured 2026-12-03 on the Intel Xeon,
idle, decode tokens/s of whole models, processes alternating (2-3 rounds each): at 1B Q4_K_M no
prefetch 15.8, one row ahead 20.0, two rows 25.2, 4.6 KB (the 1B's Q4_K rows four on) 19.7, bytes
1152 26.3, 1536 25.9, 2304 26.2, 3456 23.7; at the 8B widths (4 layers) Q4_K_M 1536 bytes 26.6,
2304 25.3, 3072 23.8; Q8_0 1536 18.7, 2304 19.8, 3072 18.8; Q6_K (the 8B's output) 1536 26.0, 2304
24.8 (1B: 26.9, 27.4). Two rows -> these distances: 1B Q4_K_M
26.2 -> 27.8, 8B widths Q4_K_M 21.2 -> 26.3, Q8_0 15.6 -> 18.1 (hot, in L2, they cost 0-6%: the
hints are instructions too).
The AMD EPYC (Zen 5) wants the lines farther ahead: measured 2026-12-04 05:40 UTC, idle, 2 threads,
cold weights (bench/quant_kernels.py's rotated copies), medians of 3-5 alternating rounds, GB/s at
the Intel distances -> 4608 / 6144 bytes (ratio to the Intel distance, by round): Q4_K 2048x2048
33.3 -> 39.5 / 38.3 (1.18 / 1.17), 2048x8192 38.8 -> 41.4 / 41.4 (1.10 / 1.10), 8192x2048 36.2 ->
41.2 / 40.3 (1.15 / 1.11), 4096x14336 20.9 -> 26.3 / 29.0 (1.26 / 1.42, a slow spell); Q6_K
2048x8192 38.7 -> 43.5 / 43.2 (1.15 / 1.10), 14336x4096 35.5 -> 43.9 / 41.1 (1.25 / 1.24),
2048x128256 (the 1B's output) 40.5 -> 41.1 / 42.8; Q8_0 4096x14336 36.8 -> 40.2 at 4608 (1.09;
6912: 1.05). Nearer (768 bytes) lost 4-9%; bf16's matvec did not care (2304-9216 bytes within
+-5%). Hence a table by CPU (AHEAD_BY_CPU), keyed on LLVM's host CPU name.

Measured on a busy machine, 1 thread, GB/s of weights, the 256-bit kernels (one sub-block per
step, scales decoded one by one) -> these (bench/README.md has every shape):
    cold, bench/quant_kernels.py, 4096 x 14336, median of 3 rounds (plain read ~31 GB/s):
        Q8_0 31.3 -> 40.1, Q4_K 16.2 -> 35.5, Q6_K 12.8 -> 40.3
    hot, 4096 x 1024 in L3, best of 100:  Q8_0 48 -> 55, Q4_K 17 -> 37, Q6_K 14 -> 53
    the prefetch, in an earlier version of each: cold +20-30% (Q8_0), +10% (Q4_K), +20% (Q6_K);
        hot -10%, -2%, -3%
Tried and dropped: two rows per pass sharing the x loads (Q4_K: +10% hot, -35% cold; -20% cold
with the next rows prefetched).

Parallel over tasks of ROWS output rows (as ops/matvec.py); within a task, every token of the
batch against the task's rows, so a prefill chunk reads each weight row from memory once and
from cache T - 1 times. Each kernel is compiled twice: with vpdpbusd (where HAS_AVX512_VNNI) and
with a portable int8 dot in generic LLVM IR (any CPU), from the same source (ops/int8_variants.py).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from llama_nb.ops.int8_variants import variants
from llama_nb.ops.jit import host_cpu_name, njit_inline, njit_serial
from llama_nb.ops.matvec import rows_ahead, stream_ahead
from llama_nb.ops.quant_rows import Q4_K_BYTES, Q6_K_BYTES, Q8_0_BYTES
from llama_nb.ops.simd import f32x16_fma, f32x16_splat, f32x16_sum, f32x16_zero, prefetch
from llama_nb.ops.simd_int8 import (
    dot_u8s8_portable, f32x8_fma, f32x8_fma_i32, f32x8_load, f32x8_mul, f32x8_sum, f32x8_zero,
    half_load, i8x32_flip, i8x32_load, i8x32_splat, i32x8_sub, i32x8_zero,
)
from llama_nb.ops.simd_int8x64 import (
    dot64_u8s8_portable, f32x16_add, f32x16_fma_i32, f32x16_high, f32x16_mul, f32x16_of_halves,
    f32x16_of_i8, f32x16_of_i32, f32x16_pairs, f32x16_spread, f32x16_two_halves, halves_load8, i8x64_flip,
    i8x64_high_nibbles, i8x64_load, i8x64_load2, i8x64_low_nibbles, i8x64_q6, i8x64_q6_high_bits, i32x16_zero,
    q4_k_scales_mins,
)

ROWS = 64  # output rows per parallel task (ops/matvec.py's MATVEC_BLOCK, measured there)
# How far ahead of its reads each kernel prefetches, in bytes of w's stream (rows one after
# another), (Q8_0, Q4_K, Q6_K) by CPU: measured on the 1B and 8B-widths shapes (docstring above),
# the Intel Xeon's for every CPU but AMD's Zen.
AHEAD_BY_CPU = {"znver": (4608, 6144, 4608), "other": (2304, 1536, 1536)}
Q8_0_AHEAD, Q4_K_AHEAD, Q6_K_AHEAD = AHEAD_BY_CPU["znver" if host_cpu_name().startswith("znver") else "other"]
dot_u8s8, dot64_u8s8 = dot_u8s8_portable, dot64_u8s8_portable  # rebound per compiled variant (ops/int8_variants.py)


@njit_inline
def _prefetch(row, at, nbytes):
    """Hint the cache lines of row[at : at + nbytes]: one every 72 bytes (the spacing measured)."""
    for offset in range(0, nbytes, 72):
        prefetch(row, at + offset)


@njit_inline
def _prefetch_ahead(rows_ahead, at, nbytes):
    """Hint the nbytes of w's stream ahead of row n's byte at (rows_ahead: rows_ahead(w, n, stream))."""
    first, second, offset, boundary = rows_ahead
    if at < boundary:
        _prefetch(first, at + offset, nbytes)
    else:
        _prefetch(second, at - boundary, nbytes)


def _q8_0(out, q, d, sums, dsum, w):
    n_tokens, k_in = q.shape
    n_out, n_blocks = w.shape[0], k_in // 32
    n_wide = n_blocks - n_blocks % 8  # blocks taken 8 at a time (a zmm holds two); the rest one by one
    bias = i8x32_splat(128)
    stream = stream_ahead(w, Q8_0_AHEAD)
    for task in prange((n_out + ROWS - 1) // ROWS):
        for t in range(n_tokens):
            xq, xd, xds = q[t], d[t], dsum[t]
            for n in range(task * ROWS, min((task + 1) * ROWS, n_out)):
                row, ahead = w[n], rows_ahead(w, n, stream)
                acc0, acc1, acc2, acc3 = f32x16_zero(), f32x16_zero(), f32x16_zero(), f32x16_zero()
                offsets = f32x8_zero()  # 128 * d_w * d_x * sum(q_x) of each block: the flip's share
                for b in range(0, n_wide, 8):
                    at = Q8_0_BYTES * b
                    _prefetch_ahead(ahead, at, 8 * Q8_0_BYTES)
                    scales = halves_load8(row, at, Q8_0_BYTES)
                    offsets = f32x8_fma(offsets, scales, f32x8_load(xds, b))
                    f = f32x16_of_halves(f32x8_mul(scales, f32x8_load(xd, b)), f32x8_zero())
                    # (w + 128) . x = w . x + 128 * sum(x): w flipped to u8, x as it is (s8)
                    acc0 = f32x16_fma_i32(acc0, dot64_u8s8(i32x16_zero(), i8x64_flip(i8x64_load2(row, at + 2, at + 36)),
                                                           i8x64_load(xq, 32 * b)), f32x16_pairs(f, 0, 1))
                    acc1 = f32x16_fma_i32(acc1, dot64_u8s8(i32x16_zero(), i8x64_flip(i8x64_load2(row, at + 70, at + 104)),
                                                           i8x64_load(xq, 32 * b + 64)), f32x16_pairs(f, 2, 3))
                    acc2 = f32x16_fma_i32(acc2, dot64_u8s8(i32x16_zero(), i8x64_flip(i8x64_load2(row, at + 138, at + 172)),
                                                           i8x64_load(xq, 32 * b + 128)), f32x16_pairs(f, 4, 5))
                    acc3 = f32x16_fma_i32(acc3, dot64_u8s8(i32x16_zero(), i8x64_flip(i8x64_load2(row, at + 206, at + 240)),
                                                           i8x64_load(xq, 32 * b + 192)), f32x16_pairs(f, 6, 7))
                tail = f32x8_zero()
                for b in range(n_wide, n_blocks):  # K % 256: 32 bytes at a time, x flipped, 128 * sum(w) subtracted
                    wv = i8x32_load(row, Q8_0_BYTES * b + 2)
                    shifted = dot_u8s8(i32x8_zero(), i8x32_flip(i8x32_load(xq, 32 * b)), wv)  # (x + 128) . w
                    lanes = i32x8_sub(shifted, dot_u8s8(i32x8_zero(), bias, wv))  # - 128 * sum(w)
                    tail = f32x8_fma_i32(tail, lanes, half_load(row, Q8_0_BYTES * b) * xd[b])
                total = (f32x16_sum(acc0) + f32x16_sum(acc1)) + (f32x16_sum(acc2) + f32x16_sum(acc3))
                out[t, n] = total - np.float32(128.0) * f32x8_sum(offsets) + f32x8_sum(tail)


@njit_serial
def _q4_k_order(q):
    """q's blocks of 32 reordered 0, 2, 1, 3 in every 4, so that each zmm pair of Q4_K sub-blocks
    (2c, 2c + 2 in the low nibbles, 2c + 1, 2c + 3 in the high) meets its 64 bytes of x in one load
    (+6%). A serial function of its own: inside the parallel kernel, Numba made each block's copy
    a parallel loop of its own, which cost more than the product (w2 of the 1B: 20 GB/s, not 31)."""
    n_tokens, k_in = q.shape
    xp = np.empty_like(q)
    for t in range(n_tokens):
        for b in range(k_in // 32):
            src = 32 * (b - b % 4 + (b % 2) * 2 + (b % 4) // 2)
            for i in range(32):
                xp[t, 32 * b + i] = q[t, src + i]
    return xp


def _q4_k(out, q, d, sums, dsum, w):
    n_tokens, k_in = q.shape
    n_out = w.shape[0]
    xp = _q4_k_order(q)
    stream = stream_ahead(w, Q4_K_AHEAD)
    for task in prange((n_out + ROWS - 1) // ROWS):
        for t in range(n_tokens):
            xq, xd, xds = xp[t], d[t], dsum[t]
            for n in range(task * ROWS, min((task + 1) * ROWS, n_out)):
                row, ahead = w[n], rows_ahead(w, n, stream)
                acc0, acc1, acc2, acc3 = f32x16_zero(), f32x16_zero(), f32x16_zero(), f32x16_zero()
                mins = f32x16_zero()  # lanes 8-15: dmin * m[j] * d_x * sum(q_x), summed once at the end
                for s in range(k_in // 256):
                    at, x = Q4_K_BYTES * s, 256 * s
                    _prefetch_ahead(ahead, at, Q4_K_BYTES)
                    # lanes 0-7: d * sc[j] * d_x of sub-block j; lanes 8-15: dmin * m[j] * dsum
                    f = f32x16_mul(f32x16_mul(q4_k_scales_mins(row, at + 4),
                                              f32x16_of_halves(f32x8_load(xd, 8 * s), f32x8_load(xds, 8 * s))),
                                   f32x16_two_halves(row, at))
                    mins = f32x16_add(mins, f)
                    # 64 bytes = chunks c, c + 1: sub-blocks 2c, 2c + 2 in the low nibbles, 2c + 1, 2c + 3 in the high
                    v = i8x64_load(row, at + 16)
                    acc0 = f32x16_fma_i32(acc0, dot64_u8s8(i32x16_zero(), i8x64_low_nibbles(v), i8x64_load(xq, x)),
                                          f32x16_pairs(f, 0, 2))
                    acc1 = f32x16_fma_i32(acc1, dot64_u8s8(i32x16_zero(), i8x64_high_nibbles(v), i8x64_load(xq, x + 64)),
                                          f32x16_pairs(f, 1, 3))
                    v = i8x64_load(row, at + 80)
                    acc2 = f32x16_fma_i32(acc2, dot64_u8s8(i32x16_zero(), i8x64_low_nibbles(v), i8x64_load(xq, x + 128)),
                                          f32x16_pairs(f, 4, 6))
                    acc3 = f32x16_fma_i32(acc3, dot64_u8s8(i32x16_zero(), i8x64_high_nibbles(v), i8x64_load(xq, x + 192)),
                                          f32x16_pairs(f, 5, 7))
                out[t, n] = (f32x16_sum(acc0) + f32x16_sum(acc1)) + (f32x16_sum(acc2) + f32x16_sum(acc3)) - f32x8_sum(f32x16_high(mins))


def _q6_k(out, q, d, sums, dsum, w):
    n_tokens, k_in = q.shape
    n_out = w.shape[0]
    stream = stream_ahead(w, Q6_K_AHEAD)
    for task in prange((n_out + ROWS - 1) // ROWS):
        for t in range(n_tokens):
            xq, xd, xs = q[t], d[t], sums[t]
            for n in range(task * ROWS, min((task + 1) * ROWS, n_out)):
                row, ahead = w[n], rows_ahead(w, n, stream)
                acc0, acc1, acc2, acc3 = f32x16_zero(), f32x16_zero(), f32x16_zero(), f32x16_zero()
                offsets = f32x16_zero()  # sum of d * sc[g] * d_x * sum(q_x) over the groups g of 16
                for s in range(k_in // 256):
                    at, x = Q6_K_BYTES * s, 256 * s
                    _prefetch_ahead(ahead, at, Q6_K_BYTES)
                    # lane g: d * sc[g] * d_x of group g of 16 (x's block g // 2)
                    dx = f32x16_of_halves(f32x8_load(xd, 8 * s), f32x8_load(xd, 8 * s))  # lanes 0-7: x's 8 block scales
                    f = f32x16_mul(f32x16_mul(f32x16_of_i8(row, at + 192), f32x16_splat(half_load(row, at + 208))),
                                   f32x16_spread(dx, 0, 2))
                    offsets = f32x16_fma(offsets, f, f32x16_of_i32(xs, 16 * s))
                    # 128 weights per half: ql 64 bytes (runs 0, 1 in the low nibbles, 2, 3 in the high),
                    # qh 32 bytes (bits 0-1, 2-3, 4-5, 6-7: runs 0-3); each run is x's block 4h + r, groups 8h + 2r, + 1
                    ql, qh = i8x64_load(row, at), i8x64_q6_high_bits(row, at + 128)
                    acc0 = f32x16_fma_i32(acc0, dot64_u8s8(i32x16_zero(), i8x64_q6(ql, qh, 0), i8x64_load(xq, x)),
                                          f32x16_spread(f, 0, 4))
                    acc1 = f32x16_fma_i32(acc1, dot64_u8s8(i32x16_zero(), i8x64_q6(ql, qh, 1), i8x64_load(xq, x + 64)),
                                          f32x16_spread(f, 4, 4))
                    ql, qh = i8x64_load(row, at + 64), i8x64_q6_high_bits(row, at + 160)
                    acc2 = f32x16_fma_i32(acc2, dot64_u8s8(i32x16_zero(), i8x64_q6(ql, qh, 0), i8x64_load(xq, x + 128)),
                                          f32x16_spread(f, 8, 4))
                    acc3 = f32x16_fma_i32(acc3, dot64_u8s8(i32x16_zero(), i8x64_q6(ql, qh, 1), i8x64_load(xq, x + 192)),
                                          f32x16_spread(f, 12, 4))
                total = (f32x16_sum(acc0) + f32x16_sum(acc1)) + (f32x16_sum(acc2) + f32x16_sum(acc3))
                out[t, n] = total - np.float32(32.0) * f32x16_sum(offsets)


KERNELS = {name: variants(fn) for name, fn in (("q8_0", _q8_0), ("q4_k", _q4_k), ("q6_k", _q6_k))}

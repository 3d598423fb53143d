"""Decode (T = 1) kernels of linear: matrix-vector products that stream the weights once.

    out[0, n] = act(x)[0, :] . dequantize(w)[n, :]       out float32[1, N], x float32[1, K]

Each weight is read once and used once, so the only goal is to stream w at the memory bandwidth:
parallel over blocks of MATVEC_BLOCK output rows, a plain loop over the rows of a block, the
widening and the dot product in one vectorised loop. The float32-activation kernels are one source
for every plain format (bf16, f16, f32: `widen` picks the conversion by the array's dtype at
compile time); `matvec_bf16dot` multiplies bf16 bits of x (made once per call, in the caller's
scratch) with bf16 weights on vdpbf16ps.

Measured on the 2-core AMD EPYC dev box (bench/bench_ops.py has the current numbers):
- 1 thread, 512 MB of weights (cold), interleaved runs on a busy machine: `prange` over single rows
  streamed 18-21 GB/s; `prange` over blocks of 64 rows with a plain `range` inside streamed 31-37
  GB/s, the same as a plain read kernel written the same way (32-36 GB/s), so the blocked form is
  used (Numba's parfor lowering of a prange body optimises the inner loop less well than a loop
  nested in it).
- rows per iteration (1 thread, cold weights, medians of 8): with K = 4096 or 2048, x (16 KB) sits
  in L1 and one row at a time is best: 36 GB/s vs 23 (2 rows) and 26-28 (4 rows). With K = 14336
  (w2), x is 57 KB, out of L1: one row 19 GB/s, 2 rows 26, 4 rows 31. Hence `matvec_4rows` above
  X_IN_L1. Splitting K into L1-sized chunks instead did not help (19).
Each kernel is a pair (ops/jit.py Twins): parallel, and serial for weights below PARALLEL_MIN_BYTES.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from llama_nb.ops.bf16 import bf16_to_f32, widen
from llama_nb.ops.jit import njit_inline, twins, twins_dot
from llama_nb.ops.simd import bf16x32_dot, bf16x32_load, f32x16_lane, f32x16_sum, f32x16_sums, f32x16_zero, prefetch

MATVEC_BLOCK = 64  # output rows per parallel task (see the measurements above)
X_IN_L1 = 8192  # float32 elements of x (32 KB) that stay in a typical 32-48 KB L1d; beyond: 4 rows
MATVEC_AHEAD = 1152  # bf16 elements (2304 bytes) matvec_bf16dot hints ahead of its reads (measured there)
FEW_TOKENS = 8  # up to this many tokens (a batched decode step), matvec_bf16dot_rows; beyond, the tiles


@twins_dot
def matvec(out, x, w):
    n_out, k_in = w.shape
    xv = x[0]
    for block in prange((n_out + MATVEC_BLOCK - 1) // MATVEC_BLOCK):
        for n in range(block * MATVEC_BLOCK, min((block + 1) * MATVEC_BLOCK, n_out)):
            row = w[n]  # a 0-based view: `range(k_in)` over it vectorises, `range(lo, hi)` would not
            acc = np.float32(0.0)
            for k in range(k_in):
                acc += xv[k] * widen(row[k])
            out[0, n] = acc


@twins_dot
def matvec_4rows(out, x, w):
    # For long rows (K > X_IN_L1): x no longer fits in L1, so each x element loaded serves four rows.
    n_out, k_in = w.shape
    xv = x[0]
    for block in prange((n_out + MATVEC_BLOCK - 1) // MATVEC_BLOCK):
        n, end = block * MATVEC_BLOCK, min((block + 1) * MATVEC_BLOCK, n_out)
        while n + 3 < end:
            r0, r1, r2, r3 = w[n], w[n + 1], w[n + 2], w[n + 3]
            a0 = a1 = a2 = a3 = np.float32(0.0)
            for k in range(k_in):
                xk = xv[k]
                a0 += xk * widen(r0[k])
                a1 += xk * widen(r1[k])
                a2 += xk * widen(r2[k])
                a3 += xk * widen(r3[k])
            out[0, n], out[0, n + 1], out[0, n + 2], out[0, n + 3] = a0, a1, a2, a3
            n += 4
        while n < end:  # the last 1-3 rows of the matrix
            row = w[n]
            acc = np.float32(0.0)
            for k in range(k_in):
                acc += xv[k] * widen(row[k])
            out[0, n] = acc
            n += 1


@njit_inline
def stream_ahead(w, ahead):
    """(rows, offset): `ahead` elements of w's stream (its rows one after another) as whole rows
    and the rest, for rows_ahead. Once per call, not per row: LLVM kept the division in the row
    loop, about 15 cycles of a Q4_K row's ~200 at K = 2048."""
    return ahead // w.shape[1], ahead % w.shape[1]


@njit_inline
def rows_ahead(w, n, stream):
    """(first, second, offset, boundary): where w's stream is `ahead` elements past row n's (stream:
    stream_ahead(w, ahead)): element k of row n is followed there by element k + offset of `first`
    while k < boundary, else by element k - boundary of `second`. Rows past the last are the last:
    these are prefetch hints, which never fault. For kernels that hint their reads a fixed
    distance ahead (the block formats' ops/quant_dot.py, matvec_bf16dot)."""
    rows, offset = stream
    last = w.shape[0] - 1
    return w[min(n + rows, last)], w[min(n + rows + 1, last)], offset, w.shape[1] - offset


@njit_inline
def _plus_leftover(acc, xv, row, k_vec):
    """acc + xv[k] * row[k] over the K % 32 columns from k_vec on, in order (xv, row: bf16 bits):
    how every vdpbf16ps kernel below ends a row's sum, so they agree bit for bit."""
    for k in range(k_vec, row.shape[0]):
        acc += bf16_to_f32(xv[k]) * bf16_to_f32(row[k])
    return acc


@twins
def matvec_bf16dot(out, xh, w):
    """out[0, n] = xh[0] . w[n] on vdpbf16ps (xh: bf16 bits of x), one row at a time, for rows that
    leave xh in L1 (K <= X_IN_L1); matvec_bf16dot_4rows beyond.

    Decode is bound by memory, but the bf16 dot streams weights faster than widening them to
    float32 first: fewer instructions per byte, and xh is half of x's size in L1. Each row is
    summed in one 16-lane accumulator over K in order, then its lanes (f32x16_sum), then the
    K % 32 leftover columns: matvec_bf16dot_4rows and matvec_bf16dot_rows sum every row exactly
    so, so the three agree bit for bit.

    Why one row at a time (issue 12): the memory reads one stream, the rows in order, as
    llama.cpp's bf16 vec_dot does. Passing over four rows at once makes four streams a row
    apart, and with rows of 4-8 KB each lasts only a page or two: on this host's slow-memory spells
    (plain read ~30 GB/s) that read 25-45% slower. Measured 2026-12-02 14:14 UTC, 2 threads, cold
    weights, medians of 16 alternating (1 thread, medians of 10), GB/s, four rows -> one row:
    N x K 8192x2048 22.8 -> 29.9 (13.1 -> 23.3), 2048x2048 20.9 -> 30.4 (14.9 -> 27.8),
    14336x4096 28.1 -> 29.8 (16.9 -> 25.5), 32768x2048 26.8 -> 32.1 (17.1 -> 26.7), 2048x8192
    30.0 -> 29.3 (21.0 -> 21.3); and 4096x14336 28.0 -> 20.4 (22.6 -> 15.7), hence the 4-row
    kernel for long rows. Prefetching the next rows (distance 1, 2 or 4 row groups) did not help
    the 4-row pass (0.84-1.03x).

    Each step hints the line MATVEC_AHEAD elements on in w's stream (rows one after another), as
    the block formats' kernels do (ops/quant_dot.py). Measured 2026-12-03 on the Intel Xeon, idle,
    whole-model bf16 decode, processes alternating, 3 rounds, tok/s: Llama 3.2 1B no hint 10.72,
    2304 bytes ahead 11.89, 4096 bytes 9.11 (too far); 8B widths (whose w2 takes the 4-row kernel)
    10.92, 11.02, 10.24.
    """
    n_out, k_in = w.shape
    xv = xh[0]
    k_vec = k_in - k_in % 32
    stream = stream_ahead(w, MATVEC_AHEAD)
    for block in prange((n_out + MATVEC_BLOCK - 1) // MATVEC_BLOCK):
        for n in range(block * MATVEC_BLOCK, min((block + 1) * MATVEC_BLOCK, n_out)):
            row = w[n]
            first, second, offset, boundary = rows_ahead(w, n, stream)
            split = min(k_vec, (boundary + 31) // 32 * 32)  # the steps that hint `first`, then `second`
            acc16 = f32x16_zero()
            for k in range(0, split, 32):
                prefetch(first, k + offset)
                acc16 = bf16x32_dot(acc16, bf16x32_load(xv, k), bf16x32_load(row, k))
            for k in range(split, k_vec, 32):
                prefetch(second, k - boundary)
                acc16 = bf16x32_dot(acc16, bf16x32_load(xv, k), bf16x32_load(row, k))
            out[0, n] = _plus_leftover(f32x16_sum(acc16), xv, row, k_vec)


@twins
def matvec_bf16dot_4rows(out, xh, w):
    """matvec_bf16dot for long rows (K > X_IN_L1): four rows per pass, so each chunk of xh, which
    no longer stays in L1, is loaded once for four rows. Measured (before the one-row kernel), 1 x K
    x N, 2 threads, alternating, median of 14 (GB/s ratio to the float32 matvec on bf16(x)):
    2048x2048 1.11, 2048x512 1.07, 2048x8192 1.02, 8192x2048 1.16, 4096x4096 0.97, 4096x14336
    1.01, 14336x4096 1.11.
    """
    n_out, k_in = w.shape
    xv = xh[0]
    k_vec = k_in - k_in % 32
    for block in prange((n_out + MATVEC_BLOCK - 1) // MATVEC_BLOCK):
        n, end = block * MATVEC_BLOCK, min((block + 1) * MATVEC_BLOCK, n_out)
        while n < end:
            # rows n..n+3, the last ones clamped at the block's end (recomputed, same value)
            r0, r1, r2, r3 = w[n], w[min(n + 1, end - 1)], w[min(n + 2, end - 1)], w[min(n + 3, end - 1)]
            a0 = a1 = a2 = a3 = f32x16_zero()
            for k in range(0, k_vec, 32):
                u = bf16x32_load(xv, k)
                a0, a1 = bf16x32_dot(a0, u, bf16x32_load(r0, k)), bf16x32_dot(a1, u, bf16x32_load(r1, k))
                a2, a3 = bf16x32_dot(a2, u, bf16x32_load(r2, k)), bf16x32_dot(a3, u, bf16x32_load(r3, k))
            sums = (f32x16_sum(a0), f32x16_sum(a1), f32x16_sum(a2), f32x16_sum(a3))
            for j in range(min(4, end - n)):
                out[0, n + j] = _plus_leftover(sums[j], xv, w[n + j], k_vec)
            n += 4


@twins
def matvec_bf16dot_rows(out, xh, w):
    """out[t, :] = xh[t] . w[n] for a few tokens (T <= FEW_TOKENS: a decode step of several
    sequences), on vdpbf16ps. Each weight chunk is loaded once for 4 tokens (a 4-token x 4-row
    tile of accumulators), so the weights stream once per call as in decode, and each (t, n) is
    summed exactly as matvec_bf16dot sums its one row: one 16-lane accumulator over K in order,
    the same tree of lane sums (f32x16_sums adds as f32x16_sum does), then the K % 32 leftover.
    So a token's result does not depend on the other tokens of the batch (a sequence's logits
    beside others equal its logits alone), unlike the prefill tiles, which sum K in blocks.
    Tokens past T in the last group of 4 repeat the last one (computed, never stored).

    With four times the arithmetic per weight byte of a matvec, the hardware prefetcher falls
    behind: the first token group's pass prefetches the next 4 rows, chunk by chunk. Measured, 1
    thread, 4 tokens, best of 30, GB/s of weights (busy machine; the one-token matvec beside it):
    32768 x 2048: 25.2 with the prefetch, 18.3 without, tiles 22.9 (matvec 34.0); 8192 x 8192:
    26.3, 22.8, 21.1 (39.7); 14336 x 4096: 23.1, 20.8, 22.1 (38.6). The same prefetch in the
    matvec: within noise."""
    n_tokens = xh.shape[0]
    n_out, k_in = w.shape
    k_vec = k_in - k_in % 32
    for block in prange((n_out + MATVEC_BLOCK - 1) // MATVEC_BLOCK):
        n, end = block * MATVEC_BLOCK, min((block + 1) * MATVEC_BLOCK, n_out)
        while n < end:
            r0, r1, r2, r3 = w[n], w[min(n + 1, end - 1)], w[min(n + 2, end - 1)], w[min(n + 3, end - 1)]
            p0, p1, p2, p3 = w[min(n + 4, n_out - 1)], w[min(n + 5, n_out - 1)], w[min(n + 6, n_out - 1)], w[min(n + 7, n_out - 1)]
            for t0 in range(0, n_tokens, 4):
                last = n_tokens - 1
                x0, x1, x2, x3 = xh[t0], xh[min(t0 + 1, last)], xh[min(t0 + 2, last)], xh[min(t0 + 3, last)]
                a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = f32x16_zero()
                a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = f32x16_zero()
                for k in range(0, k_vec, 32):
                    if t0 == 0:  # once per row group: the next group's rows, as far on as this chunk
                        prefetch(p0, k)
                        prefetch(p1, k)
                        prefetch(p2, k)
                        prefetch(p3, k)
                    w0, w1, w2, w3 = bf16x32_load(r0, k), bf16x32_load(r1, k), bf16x32_load(r2, k), bf16x32_load(r3, k)
                    u = bf16x32_load(x0, k)
                    a00, a01, a02, a03 = bf16x32_dot(a00, u, w0), bf16x32_dot(a01, u, w1), bf16x32_dot(a02, u, w2), bf16x32_dot(a03, u, w3)
                    u = bf16x32_load(x1, k)
                    a10, a11, a12, a13 = bf16x32_dot(a10, u, w0), bf16x32_dot(a11, u, w1), bf16x32_dot(a12, u, w2), bf16x32_dot(a13, u, w3)
                    u = bf16x32_load(x2, k)
                    a20, a21, a22, a23 = bf16x32_dot(a20, u, w0), bf16x32_dot(a21, u, w1), bf16x32_dot(a22, u, w2), bf16x32_dot(a23, u, w3)
                    u = bf16x32_load(x3, k)
                    a30, a31, a32, a33 = bf16x32_dot(a30, u, w0), bf16x32_dot(a31, u, w1), bf16x32_dot(a32, u, w2), bf16x32_dot(a33, u, w3)
                sums = f32x16_sums((a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23, a30, a31, a32, a33))
                for i in range(min(4, n_tokens - t0)):
                    xv = xh[t0 + i]
                    for j in range(min(4, end - n)):
                        out[t0 + i, n + j] = _plus_leftover(f32x16_lane(sums, 4 * i + j), xv, w[n + j], k_vec)
            n += 4

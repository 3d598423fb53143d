"""Prefill (T > FEW_TOKENS) kernels of linear for the block formats: 4-token x 2-row register tiles of
integer dot products (vpdpbusd), one float32 scale step per super-block of 256 weights.

    out[t, n] = sum over super-blocks s, sub-blocks j of  S[n, s, j] * D[t, s, j] * I[n, t, s, j]
                (+ Q4_K's mins:  - M[n, s, j] * dsum[t, s, j])
    S  the weight's scale of sub-block j (Q8_0 d, Q4_K d * sc[j], Q6_K d * sc[j]; float32)
    D  x's block scale d_x (ops/quant_act.py), I the integer dot product of the sub-block
    q int8[T, K], d float32[T, K // 32], sums int32[T, K // 16]: x rounded to int8 blocks of 32
                                      (ops/quant_act.py; the math: llama_nb/quant/activations.py)
    w uint8[N, K // block * block_bytes]: the weight's blocks (llama_nb/quant/*.py)
    out float32[T, N]

The same integers and scales as the decode kernels (ops/quant_dot.py), summed in another order:
the results agree with theirs to float32 summation order and stay within rounding_bound of the
float32 product. What changes is where the float work happens. The decode kernels scale every
64-byte dot (its 16 int32 lanes hold two sub-blocks, so each needs a permuted vector of scales:
a convert, a multiply and an FMA per 64 bytes per token and row). Here the 256 bytes of a
super-block are re-laid so that int32 lane l of all four dots belongs to the same sub-block
(i8x64_interleave: lanes 2j, 2j + 1 are block j of 32 for Q8_0 and Q4_K, lane g is group g of 16
for Q6_K), so the four vpdpbusd of a (token, row) accumulate into one int32 vector, started at
the offsets the u8 x s8 form adds (Q8_0: -128 * sum(q_x) for w flipped to u8; Q6_K: -32 *
sum(q_x) for q - 32), and are scaled once: per (token, row, super-block) one convert, one
multiply (S . D, 16 lanes) and one FMA (plus one FMA for Q4_K's mins, -M . (d_x * sums16)).
x is re-laid the same way once per call (prepare_x, into xq past the int8 blocks): the
permuted bytes xt int8[T, K256], D per lane d2 float32[T, K256 // 16], the integer offsets
int32[T, K256 // 16], Q4_K's -d_x * sums float32[T, K256 // 16] (K256: K rounded down to 256).
The weights are re-laid by each task, once per K block (_repack, into the task's own buffers):
per row and super-block its four vectors decoded (nibbles, 6-bit q) and interleaved, and its 16
scales (and Q4_K's mins) as vectors: 384 bytes, 196 KB per task, in L2. So every weight's bits
and scales are decoded once per call, not once per group of tokens.

Tiles as ops/matmul_tiles.py's: parallel over tasks of TASK_ROWS output rows, K in blocks of
K_SUPER super-blocks, tiles of 4 tokens x 2 rows: each re-laid weight vector loaded serves 4
tokens, each x vector 2 rows. (4 x 4, as the float tiles, ran no faster: its sixteen float32
accumulators, the int32 sums and the vectors used 4 times do not fit in 32 registers, and LLVM
spilled accumulators to the stack inside the loop; 4 x 2 keeps 8 accumulators and both rows'
weight vectors in registers, x as memory operands.) The reduction axis is never split across
threads, so results do not depend on the thread count; ragged T and N are clamped indices
(store_tile). Q8_0's K % 256 tail blocks: one pass per task (_tail_q8_0), as the decode kernel
sums them. Every kernel is compiled with vpdpbusd and with the portable int8 dot from one source
(ops/int8_variants.py), and one source serves the three formats (the row decoder `decode_row`
and the flags bound per format).

Measured on a busy machine (bench/quant_kernels.py -t 128, 1 thread): see bench/README.md.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from llama_nb.ops.int8_variants import variants
from llama_nb.ops.jit import njit_inline, twins
from llama_nb.ops.matmul_tiles import store_tile
from llama_nb.ops.quant_rows import Q4_K_BYTES, Q6_K_BYTES, Q8_0_BYTES
from llama_nb.ops.simd import f32x16_fma, f32x16_load, f32x16_splat, f32x16_store, f32x16_zero
from llama_nb.ops.simd_int8 import (
    dot_u8s8_portable, f32x8_fma_i32, f32x8_sum, f32x8_zero, half_load, i8x32_flip, i8x32_load, i8x32_splat,
    i32x8_sub, i32x8_zero,
)
from llama_nb.ops.simd_int8x64 import (
    dot64_u8s8_portable, f32x16_fma_i32, f32x16_mul, f32x16_of_halves, f32x16_of_i8, f32x16_spread,
    f32x16_two_halves, halves_load8, i8x64_flip, i8x64_high_nibbles, i8x64_interleave, i8x64_load, i8x64_load2,
    i8x64_low_nibbles, i8x64_q6, i8x64_q6_high_bits, i8x64_store, i32x16_load, i32x16_zero, q4_k_scales_mins,
)

TASK_ROWS = 64  # output rows per parallel task
K_SUPER = 8  # super-blocks (of 256) per K block: a task's 64 rows of 2048 weights, re-laid (196 KB), stay in L2
SUPER = 256
# rebound per compiled kernel (ops/int8_variants.py): the dots, the format's row decoder and flags
dot_u8s8, dot64_u8s8 = dot_u8s8_portable, dot64_u8s8_portable
decode_row = None
HAS_MINS = False  # Q4_K: the mins' FMA
HAS_TAIL = False  # Q8_0: blocks past the last whole 256


# ------------------------------------------------------------------ x, re-laid once per call

@njit_inline
def _prepare_row(xt, d2, offsets, mins_x, q, d, sums, piece, bias):
    for s in range(xt.shape[0] // SUPER):
        x = SUPER * s
        v0, v1, v2, v3 = i8x64_load(q, x), i8x64_load(q, x + 64), i8x64_load(q, x + 128), i8x64_load(q, x + 192)
        if piece == 2:
            i8x64_store(xt, x, i8x64_interleave(v0, v1, v2, v3, 0, 2, 0))
            i8x64_store(xt, x + 64, i8x64_interleave(v0, v1, v2, v3, 1, 2, 0))
            i8x64_store(xt, x + 128, i8x64_interleave(v0, v1, v2, v3, 2, 2, 0))
            i8x64_store(xt, x + 192, i8x64_interleave(v0, v1, v2, v3, 3, 2, 0))
        else:
            i8x64_store(xt, x, i8x64_interleave(v0, v1, v2, v3, 0, 1, 0))
            i8x64_store(xt, x + 64, i8x64_interleave(v0, v1, v2, v3, 1, 1, 0))
            i8x64_store(xt, x + 128, i8x64_interleave(v0, v1, v2, v3, 2, 1, 0))
            i8x64_store(xt, x + 192, i8x64_interleave(v0, v1, v2, v3, 3, 1, 0))
        for lane in range(16):  # lane l: x's block l // 2, its 16 values l (groups of 16 in order)
            at = 16 * s + lane
            scale = d[8 * s + lane // 2]
            d2[at] = scale
            offsets[at] = -bias * sums[at]
            mins_x[at] = -(scale * np.float32(sums[at]))


@twins
def _prepare(xt, d2, offsets, mins_x, q, d, sums, piece, bias):
    for t in prange(q.shape[0]):
        _prepare_row(xt[t], d2[t], offsets[t], mins_x[t], q[t], d[t], sums[t], piece, bias)


LAYOUT = {"q8_0": (2, 128), "q4_k": (2, 0), "q6_k": (1, 32)}  # (interleave piece, offset per sum(q_x))


def prepare_x(fmt: str, q: np.ndarray, d: np.ndarray, sums: np.ndarray, xq: np.ndarray):
    """(xt int8[T, K256], d2 float32[T, K256 // 16], offsets int32[T, K256 // 16], mins_x
    float32[T, K256 // 16]): x's int8 blocks re-laid for fmt's tiles, in xq after the bytes
    quantize_activations filled (1.5 per element of its 4)."""
    n_tokens, k_in = q.shape
    k256 = k_in - k_in % SUPER
    start, lanes = q.size * 3 // 2, n_tokens * k256 // 16
    xt = xq[start : start + n_tokens * k256].view(np.int8).reshape(n_tokens, k256)
    start += xt.size
    d2, offsets, mins_x = (xq[start + 4 * lanes * i : start + 4 * lanes * (i + 1)].view(dtype).reshape(n_tokens, k256 // 16)
                           for i, dtype in enumerate((np.float32, np.int32, np.float32)))
    piece, bias = LAYOUT[fmt]
    _prepare.pick(q.nbytes)(xt, d2, offsets, mins_x, q, d, sums, piece, bias)
    return xt, d2, offsets, mins_x


# -------------------------------------------------------------- a row's super-block, re-laid

@njit_inline
def _row_q8_0(row, s):
    """(w0, w1, w2, w3 i8x64, scales, mins f32x16): super-block s (8 blocks of 34 bytes) of a Q8_0
    row, flipped to u8 (w + 128) and interleaved; scales lane l = d_w of block l // 2."""
    at = 8 * Q8_0_BYTES * s
    v0 = i8x64_flip(i8x64_load2(row, at + 2, at + 36))
    v1 = i8x64_flip(i8x64_load2(row, at + 70, at + 104))
    v2 = i8x64_flip(i8x64_load2(row, at + 138, at + 172))
    v3 = i8x64_flip(i8x64_load2(row, at + 206, at + 240))
    scales = f32x16_spread(f32x16_of_halves(halves_load8(row, at, Q8_0_BYTES), f32x8_zero()), 0, 2)
    return (i8x64_interleave(v0, v1, v2, v3, 0, 2, 0), i8x64_interleave(v0, v1, v2, v3, 1, 2, 0),
            i8x64_interleave(v0, v1, v2, v3, 2, 2, 0), i8x64_interleave(v0, v1, v2, v3, 3, 2, 0), scales, f32x16_zero())


@njit_inline
def _row_q4_k(row, s):
    """As _row_q8_0 for Q4_K: the nibbles (u8 0..15); scales lane l = d * sc[l // 2], mins lane l =
    dmin * m[l // 2]."""
    at = Q4_K_BYTES * s
    f = f32x16_mul(q4_k_scales_mins(row, at + 4), f32x16_two_halves(row, at))  # d * sc[j] | dmin * m[j]
    v = i8x64_load(row, at + 16)  # chunks 0, 1: sub-blocks 0, 2 (low nibbles), 1, 3 (high)
    v0, v1 = i8x64_low_nibbles(v), i8x64_high_nibbles(v)
    v = i8x64_load(row, at + 80)
    v2, v3 = i8x64_low_nibbles(v), i8x64_high_nibbles(v)
    return (i8x64_interleave(v0, v1, v2, v3, 0, 2, 1), i8x64_interleave(v0, v1, v2, v3, 1, 2, 1),
            i8x64_interleave(v0, v1, v2, v3, 2, 2, 1), i8x64_interleave(v0, v1, v2, v3, 3, 2, 1),
            f32x16_spread(f, 0, 2), f32x16_spread(f, 8, 2))


@njit_inline
def _row_q6_k(row, s):
    """As _row_q8_0 for Q6_K: q (u8 0..63), groups of 16 in order; scales lane g = d * sc[g]."""
    at = Q6_K_BYTES * s
    ql, qh = i8x64_load(row, at), i8x64_q6_high_bits(row, at + 128)
    v0, v1 = i8x64_q6(ql, qh, 0), i8x64_q6(ql, qh, 1)  # values 0..63, 64..127
    ql, qh = i8x64_load(row, at + 64), i8x64_q6_high_bits(row, at + 160)
    v2, v3 = i8x64_q6(ql, qh, 0), i8x64_q6(ql, qh, 1)
    scales = f32x16_mul(f32x16_of_i8(row, at + 192), f32x16_splat(half_load(row, at + 208)))
    return (i8x64_interleave(v0, v1, v2, v3, 0, 1, 0), i8x64_interleave(v0, v1, v2, v3, 1, 1, 0),
            i8x64_interleave(v0, v1, v2, v3, 2, 1, 0), i8x64_interleave(v0, v1, v2, v3, 3, 1, 0), scales, f32x16_zero())


# ------------------------------------------------------------------------------- the tiles

@njit_inline
def _repack(wt, ws, wm, w, n0, n1, s0, s1):
    """Rows n0..n1, super-blocks s0..s1 of w, decoded and re-laid once per task and K block:
    wt uint8[TASK_ROWS, K_SUPER * 256] (w0..w3 of each super-block), ws, wm float32[TASK_ROWS,
    K_SUPER * 16] (scales, mins)."""
    for n in range(n0, n1):
        row, dst, scales, mins = w[n], wt[n - n0], ws[n - n0], wm[n - n0]
        for s in range(s0, s1):
            w0, w1, w2, w3, sc, mn = decode_row(row, s)
            at = SUPER * (s - s0)
            i8x64_store(dst, at, w0)
            i8x64_store(dst, at + 64, w1)
            i8x64_store(dst, at + 128, w2)
            i8x64_store(dst, at + 192, w3)
            f32x16_store(scales, 16 * (s - s0), sc)
            f32x16_store(mins, 16 * (s - s0), mn)


@njit_inline
def _cell(acc, wt, ws, wm, j, xt, d2, offsets, mins_x, s):
    """acc + one (token, row) super-block: four dots into one int32 vector, scaled once. wt, ws, wm:
    the row's re-laid super-blocks (j: this one's index among them); xt, d2, ...: the token's."""
    x, lanes, at = SUPER * s, 16 * s, SUPER * j
    dots = i32x16_zero() if HAS_MINS else i32x16_load(offsets, lanes)
    dots = dot64_u8s8(dots, i8x64_load(wt, at), i8x64_load(xt, x))
    dots = dot64_u8s8(dots, i8x64_load(wt, at + 64), i8x64_load(xt, x + 64))
    dots = dot64_u8s8(dots, i8x64_load(wt, at + 128), i8x64_load(xt, x + 128))
    dots = dot64_u8s8(dots, i8x64_load(wt, at + 192), i8x64_load(xt, x + 192))
    acc = f32x16_fma_i32(acc, dots, f32x16_mul(f32x16_load(ws, 16 * j), f32x16_load(d2, lanes)))
    if HAS_MINS:
        acc = f32x16_fma(acc, f32x16_load(wm, 16 * j), f32x16_load(mins_x, lanes))
    return acc


@njit_inline
def _tile(out, xt, d2, offsets, mins_x, wt, ws, wm, t0, r0, n0, r_end, s0, s1):
    """out[t0:t0+4, r0:r0+2] (+)= super-blocks s0..s1 (the first K block writes); rows r re-laid at
    wt[r - n0] (task n0..r_end)."""
    last = xt.shape[0] - 1
    ta, tb, tc, td = t0, min(t0 + 1, last), min(t0 + 2, last), min(t0 + 3, last)
    xa, xb, xc, xd = xt[ta], xt[tb], xt[tc], xt[td]
    da, db, dc, dd = d2[ta], d2[tb], d2[tc], d2[td]
    oa, ob, oc, od = offsets[ta], offsets[tb], offsets[tc], offsets[td]
    ma, mb, mc, md = mins_x[ta], mins_x[tb], mins_x[tc], mins_x[td]
    ra, rb = r0 - n0, min(r0 + 1, r_end - 1) - n0
    wa, wb, sa, sb, na, nb = wt[ra], wt[rb], ws[ra], ws[rb], wm[ra], wm[rb]
    a00 = a01 = a10 = a11 = a20 = a21 = a30 = a31 = f32x16_zero()  # a[token][row]
    for s in range(s0, s1):
        j = s - s0
        a00 = _cell(a00, wa, sa, na, j, xa, da, oa, ma, s)
        a01 = _cell(a01, wb, sb, nb, j, xa, da, oa, ma, s)
        a10 = _cell(a10, wa, sa, na, j, xb, db, ob, mb, s)
        a11 = _cell(a11, wb, sb, nb, j, xb, db, ob, mb, s)
        a20 = _cell(a20, wa, sa, na, j, xc, dc, oc, mc, s)
        a21 = _cell(a21, wb, sb, nb, j, xc, dc, oc, mc, s)
        a30 = _cell(a30, wa, sa, na, j, xd, dd, od, md, s)
        a31 = _cell(a31, wb, sb, nb, j, xd, dd, od, md, s)
    # store_tile writes a 4 x 4 tile: rows r0 + 2, r0 + 3 clamp to r0 + 1 and rewrite its value
    store_tile(out, t0, r0, min(r0 + 2, r_end), s0 == 0, a00, a01, a01, a01, a10, a11, a11, a11,
               a20, a21, a21, a21, a30, a31, a31, a31)


@njit_inline
def _tail_q8_0(out, q, d, w, n0, n1, b0):
    """out[:, n0:n1] (+)= Q8_0 blocks b0.. (K % 256), 32 bytes at a time as the decode kernel sums
    them; writes when the tiles covered nothing (b0 = 0)."""
    bias = i8x32_splat(128)
    for t in range(q.shape[0]):
        xq, xd = q[t], d[t]
        for n in range(n0, n1):
            row = w[n]
            tail = f32x8_zero()
            for b in range(b0, d.shape[1]):  # x flipped, 128 * sum(w) subtracted
                wv = i8x32_load(row, Q8_0_BYTES * b + 2)
                shifted = dot_u8s8(i32x8_zero(), i8x32_flip(i8x32_load(xq, 32 * b)), wv)  # (x + 128) . w
                lanes = i32x8_sub(shifted, dot_u8s8(i32x8_zero(), bias, wv))  # - 128 * sum(w)
                tail = f32x8_fma_i32(tail, lanes, half_load(row, Q8_0_BYTES * b) * xd[b])
            out[t, n] = f32x8_sum(tail) if b0 == 0 else out[t, n] + f32x8_sum(tail)


def _tiles(out, xt, d2, offsets, mins_x, q, d, w):
    n_tokens, n_out = q.shape[0], w.shape[0]
    n_super = xt.shape[1] // SUPER
    for task in prange((n_out + TASK_ROWS - 1) // TASK_ROWS):
        n0 = task * TASK_ROWS
        n1 = min(n0 + TASK_ROWS, n_out)
        wt = np.empty((TASK_ROWS, K_SUPER * SUPER), np.uint8)  # this task's rows, re-laid per K block
        ws = np.empty((TASK_ROWS, K_SUPER * 16), np.float32)
        wm = np.empty((TASK_ROWS, K_SUPER * 16), np.float32)
        for s0 in range(0, n_super, K_SUPER):
            s1 = min(s0 + K_SUPER, n_super)
            _repack(wt, ws, wm, w, n0, n1, s0, s1)
            for t0 in range(0, n_tokens, 4):
                for r0 in range(n0, n1, 2):
                    _tile(out, xt, d2, offsets, mins_x, wt, ws, wm, t0, r0, n0, n1, s0, s1)
        if HAS_TAIL and SUPER * n_super < q.shape[1]:
            _tail_q8_0(out, q, d, w, n0, n1, 8 * n_super)


_FORMATS = {"q8_0": dict(decode_row=_row_q8_0, HAS_TAIL=True), "q4_k": dict(decode_row=_row_q4_k, HAS_MINS=True),
            "q6_k": dict(decode_row=_row_q6_k)}
KERNELS = {fmt: variants(_tiles, fmt, bound, helpers=(_repack, _cell, _tile, _tail_q8_0))
           for fmt, bound in _FORMATS.items()}


def linear_tiles(kernel, fmt: str, out: np.ndarray, q: np.ndarray, d: np.ndarray, sums: np.ndarray,
                 w: np.ndarray, xq: np.ndarray) -> None:
    """out[T, N] = the int8 blocks (q, d, sums) of x . w's blocks (uint8[N, ...] of format fmt), on the
    tiles of `kernel` (a Twins of KERNELS[fmt]); xq: the linear's scratch, q's blocks at its start."""
    xt, d2, offsets, mins_x = prepare_x(fmt, q, d, sums, xq)
    # each weight byte is used T times: parallel by the work, not the bytes (a 1B wq, 2.4 MB, at
    # pp128 is 4 ms of work on one thread, far above a launch's cost)
    kernel.pick(w.nbytes * q.shape[0])(out, xt, d2, offsets, mins_x, q, d, w)

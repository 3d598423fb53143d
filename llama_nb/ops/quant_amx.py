"""Prefill (T >= MIN_TOKENS) products of the block formats q8_0, q4_k, q6_k on AMX-INT8 tiles, for
CPUs that have them (Intel Xeon since Sapphire Rapids): the same integers and scales as the
vpdpbusd tiles (ops/quant_tiles.py), 256 times the multiply-adds per instruction.

    out[t, n] = sum over sub-blocks j of  S[n, j] * D[t, j] * I[n, t, j]  (- M[n, j] * dsum[t, j])
    I[n, t, j] = sum over the sub-block's k of  qw[n, k] * qx[t, k]   (exact, int32)
    qw  the weight's integers: Q8_0 q (s8), Q4_K q (u8 0..15), Q6_K q - 32 (s8)
    S   its scale per sub-block of SUB weights: Q8_0 d, Q4_K d * sc[j], Q6_K d * sc[j] (float32)
    M   Q4_K's dmin * m[j];  qx, D, dsum: x rounded to int8 blocks of 32 (ops/quant_act.py)
    out float32[T, N], w uint8[N, K // block * block_bytes] (llama_nb/quant/*.py)

Sub-blocks: 32 weights for Q8_0 and Q4_K, 16 for Q6_K (its scales are per 16). A tile product
(tdpbusd for Q4_K's unsigned nibbles, tdpbssd for the signed formats) sums one sub-block: tile A
holds 16 weight rows of SUB bytes, tile B SUB / 4 rows of 16 tokens' 4 bytes (x "VNNI-packed"
once per call, pack_x), so C[n, t] = I[n, t, j] for 16 rows x 16 tokens. Every sub-block has its
own scales, so its four C tiles (2 row tiles x 2 token tiles, 32 x 32 outputs) are stored after
each product and scaled into float32 sums on the stack, C * (S[n] * D[t]) (- M[n] * dsum[t]):
that float work, not the tiles, is what bounds the kernel.

A parallel group of tasks per thread; a task computes ROWS = 32 output columns for every token:
it decodes its rows once (decode_rows: the integers as tile A wants them, sub-block by
sub-block, and S, M; rows past N are not read and their outputs not written), then runs the
token blocks over them. Each output is summed over sub-blocks in order, in float32, so results
differ from the vpdpbusd tiles' (another order) in the last bits and stay within rounding_bound
of the float32 product. The reduction is never split across threads.

Scratch: x's packed bytes xb uint32[TB, K / 4, 16] (TB even: tokens in blocks of 32, zero past
T) and the block scales transposed, dT, dsT float32[K / 32, 16 TB], in linear's xq after the
bytes quantize_activations filled: 1.5 T K + 1.25 K 16 TB <= 4 T K bytes from T = 16 on.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from llama_nb.ops.int8_variants import renamed_in
from llama_nb.ops.jit import njit_inline, njit_parallel
from llama_nb.ops.quant_rows import Q4_K_BYTES, Q6_K_BYTES, Q8_0_BYTES, q4_k_scale_min
from llama_nb.ops.simd_amx import (stack_array, tile_config, tile_dpbssd, tile_dpbusd, tile_load, tile_release,
                                   tile_store, tile_zero)
from llama_nb.ops.simd import f32x16_fma, f32x16_load, f32x16_splat, f32x16_store
from llama_nb.ops.simd_int8 import half_load
from llama_nb.ops.simd_int8x64 import (f32x16_fma_i32, f32x16_mul, i8x64_high_nibbles, i8x64_join, i8x64_load,
                                       i8x64_load2, i8x64_low_nibbles, i8x64_minus32, i8x64_q6, i8x64_q6_high_bits,
                                       i8x64_store, i32x16_load)

MIN_TOKENS = 16  # from here x's packed bytes and scales fit in linear's scratch (module docstring)
TOKEN_BLOCK = 32  # two B tiles of 16 tokens
ROWS = 32  # two A tiles of 16 weight rows: one task
ACT_BLOCK = 32  # x's int8 blocks (ops/quant_act.py)
# rebound per format (_FORMATS): the sub-block, the row decoder, the tile product, the mins' term
SUB = 32
decode_rows = None
tile_product = tile_dpbssd
HAS_MINS = False


def tile_config_bytes(sub: int) -> np.ndarray:
    """ldtilecfg's 64 bytes: C tiles 0-3 16 x 64 bytes, A tiles 4, 5 16 x sub, B tiles 6, 7 sub / 4 x 64."""
    cfg = np.zeros(64, np.uint8)
    cfg[0] = 1  # palette
    colsb = cfg[16:32].view(np.uint16)
    colsb[:8] = (64, 64, 64, 64, sub, sub, 64, 64)
    cfg[48:56] = (16, 16, 16, 16, 16, 16, sub // 4, sub // 4)
    return cfg


# ------------------------------------------------------------------- x, packed once per call

@njit_parallel
def pack_x(xb, d_t, dsum_t, q32, d, dsum):
    """xb[b, p, j] = the 4 bytes q[16 b + j, 4 p : 4 p + 4] (q32: q viewed as uint32[T, K / 4]);
    d_t[j, t] = d[t, j], dsum_t likewise; zero past T."""
    n_tokens = q32.shape[0]
    for b in prange(xb.shape[0]):
        for i in range(16):
            t = 16 * b + i
            if t < n_tokens:
                for p in range(q32.shape[1]):
                    xb[b, p, i] = q32[t, p]
                for j in range(d.shape[1]):
                    d_t[j, t] = d[t, j]
                    dsum_t[j, t] = dsum[t, j]
            else:
                for p in range(q32.shape[1]):
                    xb[b, p, i] = 0
                for j in range(d.shape[1]):
                    d_t[j, t] = 0.0
                    dsum_t[j, t] = 0.0


# -------------------------------------------------- a task's rows, decoded for tile A

# wa uint8[ROWS, K]: row r's integers at r K, in order (tile A: 16 rows of SUB bytes, stride K);
# ws, wm float32[K / SUB, ROWS]: S, M of sub-block j, row r at j ROWS + r

@njit_inline
def _rows_q8_0(wa, ws, wm, w, n0, n_valid):
    k_in = wa.shape[0] // ROWS
    n_blocks = k_in // 32
    for r in range(n_valid):
        row, at = w[n0 + r], r * k_in
        for j in range(n_blocks):
            ws[j * ROWS + r] = half_load(row, Q8_0_BYTES * j)
        for p in range(n_blocks // 2):  # two blocks' 32 bytes, past their scales
            i8x64_store(wa, at + 64 * p, i8x64_load2(row, 2 * Q8_0_BYTES * p + 2, 2 * Q8_0_BYTES * p + Q8_0_BYTES + 2))
        if n_blocks % 2:
            for i in range(32):
                wa[at + 32 * (n_blocks - 1) + i] = row[Q8_0_BYTES * (n_blocks - 1) + 2 + i]


@njit_inline
def _rows_q4_k(wa, ws, wm, w, n0, n_valid):
    k_in = wa.shape[0] // ROWS
    for r in range(n_valid):
        row = w[n0 + r]
        for s in range(k_in // 256):
            at, dst = Q4_K_BYTES * s, r * k_in + 256 * s
            d, dmin = half_load(row, at), half_load(row, at + 2)
            for j in range(8):
                sc, m = q4_k_scale_min(row, at + 4, j)
                ws[(8 * s + j) * ROWS + r], wm[(8 * s + j) * ROWS + r] = d * np.float32(sc), dmin * np.float32(m)
            for h in range(2):  # 32-byte chunk c: sub-block 2c in the low nibbles, 2c + 1 in the high ones
                v = i8x64_load(row, at + 16 + 64 * h)  # chunks 2h, 2h + 1
                low, high = i8x64_low_nibbles(v), i8x64_high_nibbles(v)  # sub-blocks 4h, 4h + 2 | 4h + 1, 4h + 3
                i8x64_store(wa, dst + 128 * h, i8x64_join(low, high, 0))
                i8x64_store(wa, dst + 128 * h + 64, i8x64_join(low, high, 1))


@njit_inline
def _rows_q6_k(wa, ws, wm, w, n0, n_valid):
    k_in = wa.shape[0] // ROWS
    for r in range(n_valid):
        row = w[n0 + r]
        for s in range(k_in // 256):
            at, dst = Q6_K_BYTES * s, r * k_in + 256 * s
            d = half_load(row, at + 208)
            for g in range(16):
                ws[(16 * s + g) * ROWS + r] = d * np.float32(np.int8(row[at + 192 + g]))
            for h in range(2):  # values 128 h .. 128 h + 127 (as the decode kernels' _row_q6_k)
                ql, qh = i8x64_load(row, at + 64 * h), i8x64_q6_high_bits(row, at + 128 + 32 * h)
                i8x64_store(wa, dst + 128 * h, i8x64_minus32(i8x64_q6(ql, qh, 0)))
                i8x64_store(wa, dst + 128 * h + 64, i8x64_minus32(i8x64_q6(ql, qh, 1)))


# ------------------------------------------------------------------------------- the tiles

@njit_inline
def _products(wa, xb, c, at, j, b0, block_elems):
    """c[at : at + 1024] = the 4 C tiles of sub-block j: rows 0-15, 16-31 x tokens of blocks b0.., the next."""
    tile_zero(0)
    tile_zero(1)
    tile_zero(2)
    tile_zero(3)
    k_in = wa.shape[0] // ROWS
    tile_load(4, wa, j * SUB, k_in)  # rows 0..15 of sub-block j
    tile_load(5, wa, 16 * k_in + j * SUB, k_in)
    tile_load(6, xb, b0 + j * (SUB // 4) * 16, 64)  # 16 tokens, bytes j SUB .. (j + 1) SUB
    tile_load(7, xb, b0 + block_elems + j * (SUB // 4) * 16, 64)
    tile_product(0, 4, 6)
    tile_product(1, 4, 7)
    tile_product(2, 5, 6)
    tile_product(3, 5, 7)
    tile_store(0, c, at, 64)
    tile_store(1, c, at + 256, 64)
    tile_store(2, c, at + 512, 64)
    tile_store(3, c, at + 768, 64)


@njit_inline
def _scale_tile(acc, c, at, q, ws, wm, d_t, dsum_t, j, t0):
    """acc[32 n + t] += C tile q (at c[at]: rows 16 (q // 2).., tokens 16 (q % 2)..) * S[n] * D[t] (- M dsum)."""
    r0, tq = 16 * (q // 2), 16 * (q % 2)
    block = (j * SUB) // ACT_BLOCK
    dx = f32x16_load(d_t[block], t0 + tq)
    dm = f32x16_load(dsum_t[block], t0 + tq)
    for i in range(16):
        v = f32x16_fma_i32(f32x16_load(acc, 32 * (r0 + i) + tq), i32x16_load(c, at + 16 * i),
                           f32x16_mul(f32x16_splat(ws[j * ROWS + r0 + i]), dx))
        if HAS_MINS:
            v = f32x16_fma(v, f32x16_splat(-wm[j * ROWS + r0 + i]), dm)
        f32x16_store(acc, 32 * (r0 + i) + tq, v)


def _amx_tiles(out, xb, d_t, dsum_t, w, cfg, threads):
    n_tokens, n_out = out.shape
    n_sub = 4 * xb.shape[1] // SUB
    n_tasks = (n_out + ROWS - 1) // ROWS
    groups = min(n_tasks, threads)
    block_elems = xb.shape[1] * 16  # uint32 of one 16-token block
    for g in prange(groups):
        wa = np.empty(n_sub * ROWS * SUB, np.uint8)
        ws = np.empty(n_sub * ROWS, np.float32)
        wm = np.empty(n_sub * ROWS, np.float32)
        c = stack_array(2048, np.int32)  # the 4 C tiles twice, [h, q, i, k] at 1024 h + 256 q + 16 i + k
        acc = stack_array(1024, np.float32)  # 32 rows x 32 tokens
        tile_config(cfg)  # tile state is per thread
        for task in range(g * n_tasks // groups, (g + 1) * n_tasks // groups):
            n0 = task * ROWS
            n_valid = min(ROWS, n_out - n0)
            decode_rows(wa, ws, wm, w, n0, n_valid)  # rows past n_valid: stale, their outputs unused
            for pair in range(xb.shape[0] // 2):
                for i in range(1024):
                    acc[i] = 0.0
                b0, t0 = 2 * pair * block_elems, TOKEN_BLOCK * pair
                # the products of sub-block j are issued before the float work of j - 1 (from the
                # other half of c), so the tiles and the vector units work side by side
                for j in range(n_sub + 1):
                    if j < n_sub:
                        _products(wa, xb, c, 1024 * (j % 2), j, b0, block_elems)
                    if j > 0:
                        for q in range(4):
                            _scale_tile(acc, c, 1024 * ((j - 1) % 2) + 256 * q, q, ws, wm, d_t, dsum_t, j - 1, t0)
                for k in range(min(TOKEN_BLOCK, n_tokens - t0)):
                    for i in range(n_valid):
                        out[t0 + k, n0 + i] = acc[32 * i + k]
        tile_release()


_FORMATS = {
    "q8_0": dict(SUB=32, decode_rows=_rows_q8_0, tile_product=tile_dpbssd),
    "q4_k": dict(SUB=32, decode_rows=_rows_q4_k, tile_product=tile_dpbusd, HAS_MINS=True),
    "q6_k": dict(SUB=16, decode_rows=_rows_q6_k, tile_product=tile_dpbssd),
}
KERNELS = {fmt: njit_parallel(renamed_in(_amx_tiles, f"amx_{fmt}", bound, helpers=(_products, _scale_tile)))
           for fmt, bound in _FORMATS.items()}
CONFIGS = {fmt: tile_config_bytes(bound["SUB"]) for fmt, bound in _FORMATS.items()}


def packed_x(q: np.ndarray, xq: np.ndarray):
    """(xb uint32[TB, K / 4, 16], d_t, dsum_t float32[K / 32, 16 TB]): pack_x's arrays, views into
    linear's scratch xq past quantize_activations' bytes (q: its int8 blocks, int8[T, K])."""
    n_tokens, k_in = q.shape
    n_blocks = 2 * (-(-n_tokens // TOKEN_BLOCK))
    start = q.size * 3 // 2
    xb = xq[start : start + 64 * n_blocks * (k_in // 4)].view(np.uint32).reshape(n_blocks, k_in // 4, 16)
    start += xb.nbytes
    padded = 16 * n_blocks * (k_in // ACT_BLOCK)
    d_t = xq[start : start + 4 * padded].view(np.float32).reshape(k_in // ACT_BLOCK, 16 * n_blocks)
    dsum_t = xq[start + 4 * padded : start + 8 * padded].view(np.float32).reshape(d_t.shape)
    return xb, d_t, dsum_t


def linear_amx_int8(fmt: str, out: np.ndarray, q: np.ndarray, d: np.ndarray, dsum: np.ndarray,
                    w: np.ndarray, xq: np.ndarray) -> None:
    """out[T, N] = the int8 blocks (q, d, dsum; ops/quant_act.py) of x . w's blocks (uint8[N, ...]
    of format fmt) on AMX-INT8 tiles; T >= MIN_TOKENS; xq: linear's scratch, q's blocks at its start."""
    xb, d_t, dsum_t = packed_x(q, xq)
    pack_x(xb, d_t, dsum_t, q.view(np.uint32), d, dsum)
    KERNELS[fmt](out, xb, d_t, dsum_t, w, CONFIGS[fmt], numba.get_num_threads())

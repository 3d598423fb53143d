"""Prefill (T > FEW_TOKENS) bf16 products on AMX tiles, for CPUs that have them (Intel Xeon since
Sapphire Rapids): the same product as matmul_tiles.matmul_bf16dot, 256 times the multiply-adds per
instruction.

    out[t, n] = bf16(x)[t, :] . w[n, :]      out float32[T, N], x float32[T, K], w bf16 bits uint16[N, K]

The weights stay as the checkpoint stores them. AMX wants its second operand VNNI-packed (rows
of bf16 pairs, ops/simd_amx.py), and w's rows, read 16 at a time, are already the first operand's
layout, so the product is computed transposed, C[n, t] = w[n, :] . x[t, :], with w in tile A
and the tokens, packed once per call (pack_tokens), in tile B:

    xp  uint32[TB, K / 2, 16]   xp[b, p, j] = bf16(x[16 b + j, 2 p]) | bf16(x[16 b + j, 2 p + 1]) << 16,
                                zero for tokens past T; TB even (tokens in blocks of TOKEN_BLOCK)

A parallel task computes ROW_BLOCK = 32 output columns for every token: for each pair of
16-token blocks, four accumulator tiles (2 row tiles x 2 token tiles) over K in steps of 32, then
stored (to the thread's stack) and written transposed into out. The four tiles are the most
eight tile registers allow with the two A and two B tiles beside them. A last, partial block of
rows runs on tiles configured with fewer rows, so any N works and no load reads past w; K must
be a multiple of 32 (every Llama width is) and T at least MIN_TOKENS, else linear uses
matmul_bf16dot. Nothing is allocated: x is packed into linear's scratch. Each output is summed
as one float32 chain over K, in the hardware's order, so results differ from the vdpbf16ps
kernels (16 lanes, then a tree) in the last bits; tests/test_ops.py bounds it as for the tiles.

Measured (2026-12-02, Intel Xeon with AMX, 2 cores, idle, best of 5, GFLOP/s, x packed in the
timing): 128x2048x2048 627, 128x4096x14336 733, 128x14336x4096 928, 37x2048x8192 608; the
vdpbf16ps tiles on the same host: bench/bench_ops.py (linear, T = 128).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from llama_nb.ops.bf16 import f32_to_bf16
from llama_nb.ops.jit import njit_inline, njit_parallel
from llama_nb.ops.simd_amx import (TILE_CONFIG, stack_array, tile_config, tile_dpbf16, tile_load, tile_release,
                                   tile_store, tile_zero)

TOKEN_BLOCK = 32  # two B tiles of 16 tokens
# From 16 tokens on, x's packed tokens (2 bytes x K x T rounded up to TOKEN_BLOCK) fit in linear's
# scratch (4 bytes x K x T); fewer tokens would leave most of a token tile empty anyway.
MIN_TOKENS = 16
ROW_BLOCK = 32  # two A tiles of 16 weight rows: one parallel task
K_STEP = 32  # bf16 values per tile row (64 bytes)


def packed_shape(n_tokens: int, k_in: int) -> tuple[int, int, int]:
    """The shape of pack_tokens' output for x[n_tokens, k_in]."""
    return 2 * (-(-n_tokens // TOKEN_BLOCK)), k_in // 2, 16


@njit_parallel
def pack_tokens(xp, x):
    """xp (uint32[TB, K/2, 16], packed_shape) = the bf16 bits of x (float32[T, K]), VNNI-packed."""
    n_tokens, k_in = x.shape
    for b in prange(xp.shape[0]):
        for j in range(16):
            t = 16 * b + j
            if t < n_tokens:
                row = x[t]
                for p in range(k_in // 2):
                    xp[b, p, j] = np.uint32(f32_to_bf16(row[2 * p])) | (np.uint32(f32_to_bf16(row[2 * p + 1])) << 16)
            else:
                for p in range(k_in // 2):
                    xp[b, p, j] = 0


@njit_inline
def _row_block(out, xp, w, n0, n_valid):
    """out[:, n0 : n0 + n_valid] = x . w[n0 : n0 + n_valid].T on the configured tiles (n_valid <=
    32; tiles 0, 1, 4 hold rows n0.., tiles 2, 3, 5 rows n0 + 16.., as many as configured)."""
    n_tokens = out.shape[0]
    k_in = w.shape[1]
    block_elems = (k_in // 2) * 16  # uint32 elements of one 16-token block of xp
    second = n0 + 16 if n_valid > 16 else n0  # tile 5's first row: never past w (then unused)
    c = stack_array(1024, np.float32)  # the 4 accumulator tiles, [q, i, j] at 256 q + 16 i + j
    for pair in range(xp.shape[0] // 2):
        tile_zero(0)
        tile_zero(1)
        tile_zero(2)
        tile_zero(3)
        b0 = 2 * pair * block_elems
        for k in range(0, k_in, K_STEP):
            tile_load(4, w, n0 * k_in + k, 2 * k_in)  # rows n0..n0+15, columns k..k+31
            tile_load(5, w, second * k_in + k, 2 * k_in)
            tile_load(6, xp, b0 + k * 8, 64)  # tokens of block 2 pair: pairs k/2 .. k/2 + 15
            tile_load(7, xp, b0 + block_elems + k * 8, 64)
            tile_dpbf16(0, 4, 6)
            tile_dpbf16(1, 4, 7)
            tile_dpbf16(2, 5, 6)
            tile_dpbf16(3, 5, 7)
        tile_store(0, c, 0, 64)
        tile_store(1, c, 256, 64)
        tile_store(2, c, 512, 64)
        tile_store(3, c, 768, 64)
        for q in range(4):  # tile q: rows 16 (q // 2) on, tokens of block 2 pair + q % 2
            i0, t0 = 16 * (q // 2), 16 * (2 * pair + q % 2)
            for j in range(min(16, n_tokens - t0)):
                for i in range(min(16, n_valid - i0)):
                    out[t0 + j, n0 + i0 + i] = c[256 * q + 16 * i + j]


@njit_parallel
def matmul_amx(out, xp, w, cfg):
    """out = x @ w.T with xp = pack_tokens(x); cfg: TILE_CONFIG. A last block of N % 32 rows
    runs on tiles configured with fewer rows, so no load reads past w."""
    n_out = w.shape[0]
    for task in prange(-(-n_out // ROW_BLOCK)):
        n0 = task * ROW_BLOCK
        n_valid = min(ROW_BLOCK, n_out - n0)
        if n_valid == ROW_BLOCK:
            tile_config(cfg)  # tile state is per thread: configure in every task
        else:
            tail = stack_array(64, np.uint8)
            for b in range(64):
                tail[b] = cfg[b]
            first, rest = min(16, n_valid), max(1, n_valid - 16)
            for t in (0, 1, 4):
                tail[48 + t] = first
            for t in (2, 3, 5):
                tail[48 + t] = rest
            tile_config(tail)
        _row_block(out, xp, w, n0, n_valid)
        tile_release()


def linear_amx(out: np.ndarray, x: np.ndarray, w: np.ndarray, xq: np.ndarray) -> None:
    """out[T, N] = bf16(x[T, K]) @ w[N, K].T on AMX tiles (w: bf16 bits; K % 32 == 0 and
    T >= MIN_TOKENS, so x's packed tokens fit in the scratch xq, uint8[T*K*4])."""
    shape = packed_shape(*x.shape)
    xp = xq[: 4 * shape[0] * shape[1] * shape[2]].view(np.uint32).reshape(shape)
    pack_tokens(xp, x)
    matmul_amx(out, xp, w, TILE_CONFIG)

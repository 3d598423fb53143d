"""Scalar decoding of ggml's block formats inside Numba kernels (layouts: llama_nb/quant/*.py).

    q4_k_scale_min(row, at, j) -> (sc, m)     the 6-bit scale and min of sub-block j, from the 12
                                              packed bytes row[at : at + 12] (get_scale_min_k4)
    dequantize_row_q8_0(dst, row)             dst float32[K] = the values of one row of blocks
    dequantize_row_q4_k(dst, row)
    dequantize_row_q6_k(dst, row)

The row decoders compute exactly what the NumPy references compute, in the same order and
without fastmath ((d * sc) * q - (dmin * m) for Q4_K, (d * scale) * q for Q6_K, q * d for Q8_0),
so embedding and dequantize match them bit for bit.
"""

from __future__ import annotations

import numpy as np

from llama_nb.ops.jit import njit_inline
from llama_nb.ops.simd_int8 import half_load

Q8_0_BYTES, Q4_K_BYTES, Q6_K_BYTES = 34, 144, 210


@njit_inline
def q4_k_scale_min(row, at, j):
    if j < 4:
        return np.int32(row[at + j] & 63), np.int32(row[at + j + 4] & 63)
    sc = (row[at + j + 4] & 15) | ((row[at + j - 4] >> 6) << 4)
    m = (row[at + j + 4] >> 4) | ((row[at + j] >> 6) << 4)
    return np.int32(sc), np.int32(m)


@njit_inline
def dequantize_row_q8_0(dst, row):
    for b in range(dst.shape[0] // 32):
        d = half_load(row, Q8_0_BYTES * b)
        for i in range(32):
            dst[32 * b + i] = np.float32(np.int8(row[Q8_0_BYTES * b + 2 + i])) * d


@njit_inline
def dequantize_row_q4_k(dst, row):
    for s in range(dst.shape[0] // 256):
        at = Q4_K_BYTES * s
        d, dmin = half_load(row, at), half_load(row, at + 2)
        for c in range(4):  # chunk c: sub-block 2c in the low nibbles, 2c + 1 in the high ones
            sc0, m0 = q4_k_scale_min(row, at + 4, 2 * c)
            sc1, m1 = q4_k_scale_min(row, at + 4, 2 * c + 1)
            scale0, offset0 = d * np.float32(sc0), dmin * np.float32(m0)
            scale1, offset1 = d * np.float32(sc1), dmin * np.float32(m1)
            out0 = 256 * s + 64 * c
            for l in range(32):
                byte = row[at + 16 + 32 * c + l]
                dst[out0 + l] = scale0 * np.float32(byte & 15) - offset0
                dst[out0 + 32 + l] = scale1 * np.float32(byte >> 4) - offset1


@njit_inline
def dequantize_row_q6_k(dst, row):
    for s in range(dst.shape[0] // 256):
        at = Q6_K_BYTES * s
        d = half_load(row, at + 208)
        for h in range(2):
            low, high = at + 64 * h, at + 128 + 32 * h
            for l in range(32):
                a, b, hb = row[low + l], row[low + 32 + l], row[high + l]
                q = ((a & 15) | ((hb & 3) << 4), (b & 15) | (((hb >> 2) & 3) << 4),
                     (a >> 4) | (((hb >> 4) & 3) << 4), (b >> 4) | (((hb >> 6) & 3) << 4))
                for r in range(4):
                    i = 128 * h + 32 * r + l
                    scale = d * np.float32(np.int8(row[at + 192 + i // 16]))
                    dst[256 * s + i] = scale * np.float32(np.int32(q[r]) - 32)

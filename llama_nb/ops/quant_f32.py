"""linear for the block formats on float32 activations (--precision float32): x as it is, the
weights decoded block by block inside the dot product, never written out.

    out[t, n] = sum over blocks of scale * sum_i x[t, k_i] * q_i   (- min * sum_i x[t, k_i] for Q4_K)
    x float32[T, K], w uint8[N, K // block * block_bytes], out float32[T, N]

The exact path (no activation rounding): the products of the dequantized weights, regrouped per
block, so the result differs from the reference's only in float32 summation order. Compiled with
the dot fastmath flags (ops/jit.py) so that each block's inner loop vectorises. Parallel over
tasks of ROWS output rows; every token of the batch within a task (as ops/quant_dot.py).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from llama_nb.ops.jit import twins_dot
from llama_nb.ops.quant_dot import ROWS
from llama_nb.ops.quant_rows import Q4_K_BYTES, Q6_K_BYTES, Q8_0_BYTES, q4_k_scale_min
from llama_nb.ops.simd_int8 import half_load


@twins_dot
def q8_0_f32(out, x, w):
    n_tokens, k_in = x.shape
    n_out = w.shape[0]
    for task in prange((n_out + ROWS - 1) // ROWS):
        for t in range(n_tokens):
            xv = x[t]
            for n in range(task * ROWS, min((task + 1) * ROWS, n_out)):
                row = w[n]
                acc = np.float32(0.0)
                for b in range(k_in // 32):
                    at = Q8_0_BYTES * b + 2
                    s = np.float32(0.0)
                    for i in range(32):
                        s += xv[32 * b + i] * np.float32(np.int8(row[at + i]))
                    acc += half_load(row, Q8_0_BYTES * b) * s
                out[t, n] = acc


@twins_dot
def q4_k_f32(out, x, w):
    n_tokens, k_in = x.shape
    n_out = w.shape[0]
    for task in prange((n_out + ROWS - 1) // ROWS):
        for t in range(n_tokens):
            xv = x[t]
            for n in range(task * ROWS, min((task + 1) * ROWS, n_out)):
                row = w[n]
                acc = np.float32(0.0)
                for s in range(k_in // 256):
                    at = Q4_K_BYTES * s
                    scale, offset = half_load(row, at), half_load(row, at + 2)
                    for c in range(4):
                        k0 = 256 * s + 64 * c
                        lo = hi = x_lo = x_hi = np.float32(0.0)
                        for l in range(32):
                            byte = row[at + 16 + 32 * c + l]
                            a, b = xv[k0 + l], xv[k0 + 32 + l]
                            lo += a * np.float32(byte & 15)
                            hi += b * np.float32(byte >> 4)
                            x_lo += a
                            x_hi += b
                        sc0, m0 = q4_k_scale_min(row, at + 4, 2 * c)
                        sc1, m1 = q4_k_scale_min(row, at + 4, 2 * c + 1)
                        acc += scale * (np.float32(sc0) * lo + np.float32(sc1) * hi) \
                            - offset * (np.float32(m0) * x_lo + np.float32(m1) * x_hi)
                out[t, n] = acc


@twins_dot
def q6_k_f32(out, x, w):
    n_tokens, k_in = x.shape
    n_out = w.shape[0]
    for task in prange((n_out + ROWS - 1) // ROWS):
        for t in range(n_tokens):
            xv = x[t]
            for n in range(task * ROWS, min((task + 1) * ROWS, n_out)):
                row = w[n]
                acc = np.float32(0.0)
                for s in range(k_in // 256):
                    at = Q6_K_BYTES * s
                    part = np.float32(0.0)
                    for h in range(2):
                        low, high = at + 64 * h, at + 128 + 32 * h
                        for half16 in range(2):  # l in 0..15 and 16..31: each run's two groups
                            s0 = s1 = s2 = s3 = np.float32(0.0)
                            for l in range(16 * half16, 16 * half16 + 16):
                                a, b, hb = row[low + l], row[low + 32 + l], row[high + l]
                                k0 = 256 * s + 128 * h + l
                                s0 += xv[k0] * np.float32(np.int32((a & 15) | ((hb & 3) << 4)) - 32)
                                s1 += xv[k0 + 32] * np.float32(np.int32((b & 15) | (((hb >> 2) & 3) << 4)) - 32)
                                s2 += xv[k0 + 64] * np.float32(np.int32((a >> 4) | (((hb >> 4) & 3) << 4)) - 32)
                                s3 += xv[k0 + 96] * np.float32(np.int32((b >> 4) | (((hb >> 6) & 3) << 4)) - 32)
                            g = at + 192 + 8 * h + half16  # run r's group is g + 2r
                            part += np.float32(np.int8(row[g])) * s0 + np.float32(np.int8(row[g + 2])) * s1 \
                                + np.float32(np.int8(row[g + 4])) * s2 + np.float32(np.int8(row[g + 6])) * s3
                    acc += half_load(row, at + 208) * part
                out[t, n] = acc


KERNELS = {"q8_0": q8_0_f32, "q4_k": q4_k_f32, "q6_k": q6_k_f32}

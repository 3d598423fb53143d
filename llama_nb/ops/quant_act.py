"""x rounded to int8 blocks of 32 in the linear op's scratch, for the block-format kernels.

The math is llama_nb/quant/activations.py's (the NumPy definition): per block of 32, d = amax /
127, q = roundf(x * (1 / d)). The scratch xq (uint8[T * K * 4], declared by linear) holds, for
T rows of K values:

    q     int8[T, K]          bytes 0 ..                the rounded values
    d     float32[T, K // 32]  bytes T*K ..             the block scales
    sums  int32[T, K // 16]    bytes T*K + T*K/8 ..     sum of q over each 16 values
    dsum  float32[T, K // 32]  bytes T*K + 3*T*K/8 ..   d * (sum of q over the block), for Q4_K's mins

1.5 bytes per element of the 4 declared. Compiled without fastmath: the rounding must be
bit for bit the reference's (an FMA or a reordered multiply would move ties). A block is two
f32x16 vectors (the amax, the products x * (1 / d) and the rounding lane by lane, the same IEEE
operations as the reference's), 4-5x the speed of the scalar loop Numba had made of it (it did not
vectorise the rounding's branch and int8 store). Measured 2026-12-03, Intel Xeon, idle, best of
50, one thread: K = 2048 6.0 -> 1.4 us, K = 8192 22.6 -> 4.4 us, 128 x 4096 1.35 -> 0.26 ms (0.14
ms on 2 threads; a decode step of the 1B quantizes 113 rows: 1.1 ms -> 0.25 ms of its ~39).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from llama_nb.ops.jit import twins
from llama_nb.ops.simd import f32x16_load, f32x16_max, f32x16_max_lane, f32x16_splat
from llama_nb.ops.simd_int8x64 import f32x16_abs, f32x16_mul, i8x16_store_rounded
from llama_nb.quant.activations import ACT_BLOCK


@twins
def _quantize_rows(q, d, sums, dsum, x):
    n_tokens, k_in = x.shape
    for t in prange(n_tokens):
        row, q_row = x[t], q[t]
        for b in range(k_in // ACT_BLOCK):
            at = b * ACT_BLOCK
            low, high = f32x16_load(row, at), f32x16_load(row, at + 16)
            scale = f32x16_max_lane(f32x16_max(f32x16_abs(low), f32x16_abs(high))) / np.float32(127.0)
            inverse = f32x16_splat(np.float32(1.0) / scale if scale != 0 else np.float32(0.0))
            d[t, b] = scale
            sums[t, 2 * b] = i8x16_store_rounded(q_row, at, f32x16_mul(low, inverse))
            sums[t, 2 * b + 1] = i8x16_store_rounded(q_row, at + 16, f32x16_mul(high, inverse))
            dsum[t, b] = scale * np.float32(sums[t, 2 * b] + sums[t, 2 * b + 1])


def quantize_activations(x: np.ndarray, xq: np.ndarray):
    """(q int8[T, K], d float32[T, K // 32], sums int32[T, K // 16], dsum float32[T, K // 32]):
    views into xq, filled from x."""
    n_tokens, k_in = x.shape
    size = n_tokens * k_in
    q = xq[:size].view(np.int8).reshape(n_tokens, k_in)
    d = xq[size : size + size // 8].view(np.float32).reshape(n_tokens, k_in // ACT_BLOCK)
    sums = xq[size + size // 8 : size + 3 * size // 8].view(np.int32).reshape(n_tokens, k_in // 16)
    dsum = xq[size + 3 * size // 8 : size + size // 2].view(np.float32).reshape(n_tokens, k_in // ACT_BLOCK)
    # parallel from 256 KB of x (16 tokens of the 8B): a launch costs more than a decode row (1 x
    # 8192: 4.4 us serial, 6.2 parallel), less than a prefill chunk (128 x 4096: 0.26 ms, 0.14)
    _quantize_rows.pick(16 * x.nbytes)(q, d, sums, dsum, x)
    return q, d, sums, dsum

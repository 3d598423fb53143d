"""x rounded to int8 blocks of 32 in the linear op's scratch, for the block-format kernels.

The math is llama_nb/quant/activations.py's (the NumPy definition): per block of 32, d = amax /
127, q = roundf(x * (1 / d)). The scratch xq (uint8[T * K * 4], declared by linear) holds, for
T rows of K values:

    q     int8[T, K]          bytes 0 ..                the rounded values
    d     float32[T, K // 32]  bytes T*K ..             the block scales
    sums  int32[T, K // 16]    bytes T*K + T*K/8 ..     sum of q over each 16 values
    dsum  float32[T, K // 32]  bytes T*K + 3*T*K/8 ..   d * (sum of q over the block), for Q4_K's mins

1.5 bytes per element of the 4 declared. Compiled without fastmath: the rounding must be
bit for bit the reference's (an FMA or a reordered multiply would move ties).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from llama_nb.ops.jit import njit_inline, twins
from llama_nb.quant.activations import ACT_BLOCK


@njit_inline
def _round_away(v):
    a = abs(v)
    whole = np.floor(a)
    r = whole + np.float32(1.0) if a - whole >= np.float32(0.5) else whole
    return -r if v < 0 else r


@twins
def _quantize_rows(q, d, sums, dsum, x):
    n_tokens, k_in = x.shape
    for t in prange(n_tokens):
        row = x[t]
        for b in range(k_in // ACT_BLOCK):
            amax = np.float32(0.0)
            for i in range(b * ACT_BLOCK, (b + 1) * ACT_BLOCK):
                amax = max(amax, abs(row[i]))
            scale = amax / np.float32(127.0)
            inverse = np.float32(1.0) / scale if scale != 0 else np.float32(0.0)
            d[t, b] = scale
            for half in range(2):
                total = 0
                for i in range(b * ACT_BLOCK + 16 * half, b * ACT_BLOCK + 16 * half + 16):
                    value = np.int8(_round_away(row[i] * inverse))
                    q[t, i] = value
                    total += value
                sums[t, 2 * b + half] = total
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
    # parallel only for megabytes of x: a launch costs more than a decode row or a small chunk
    # (measured on the busy dev box: 12 ms for 3 x 512 floats, as ops/jit.py warns)
    _quantize_rows.pick(x.nbytes)(q, d, sums, dsum, x)
    return q, d, sums, dsum

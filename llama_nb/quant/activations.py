"""The int8 activation blocks the block-format kernels multiply: NumPy's definition.

At --precision bf16 (the default) a linear with Q8_0, Q4_K or Q6_K weights does what llama.cpp
does for them: the activations x are rounded to int8 in blocks of 32 first, so every product in
the dot product is an integer one (vpdpbusd). Per block b of 32 values of a row of x:

    amax  = max |x[b]|
    d[b]  = amax / 127            (float32; the scale, kept in float32, not rounded to half)
    q[b]  = roundf(x[b] / d[b])   computed as roundf(x * (1 / d)), 0 for an all-zero block
    x ~ d[b] * q[b],   q in -127..127

so each value moves by at most d[b] / 2 (plus float32 rounding of x * (1/d)). A linear's output
n then moves by at most

    bound[t, n] = sum_b d[t, b] / 2 * sum_{k in b} |w[n, k]|  (w dequantized)

the tolerance of these kernels against the float32 product of the dequantized weights
(tests/test_quant_kernels.py checks it). The kernels store the sums of q over each 16 values too
(ggml's Q8_K `bsums`): Q4_K's mins and Q6_K's offset of 32 are subtracted through them.
"""

from __future__ import annotations

import numpy as np

from llama_nb.quant.blocks import F32, round_away

ACT_BLOCK = 32


def quantize_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(q int8[T, K], d float32[T, K // 32]) of x float32[T, K], K a multiple of 32."""
    t, k = x.shape
    blocks = np.ascontiguousarray(x, np.float32).reshape(t, k // ACT_BLOCK, ACT_BLOCK)
    d = np.abs(blocks).max(axis=2, initial=F32(0)) / F32(127)
    with np.errstate(divide="ignore"):
        inverse = np.where(d == 0, F32(0), F32(1) / d).astype(np.float32)
    q = round_away(blocks * inverse[:, :, None]).astype(np.int8)
    return q.reshape(t, k), d.astype(np.float32)


def round_activations(x: np.ndarray) -> np.ndarray:
    """float32[T, K]: x as the int8 kernels see it, d[b] * q[b]."""
    q, d = quantize_activations(x)
    t, k = x.shape
    return (q.reshape(t, k // ACT_BLOCK, ACT_BLOCK).astype(np.float32) * d[:, :, None]).reshape(t, k)


def rounding_bound(x: np.ndarray, w_values: np.ndarray) -> np.ndarray:
    """float32[T, N]: how far rounding x to int8 blocks can move x @ w_values.T (w_values float32[N, K])."""
    _, d = quantize_activations(x)
    t, k = x.shape
    half_steps = np.repeat(d / F32(2), ACT_BLOCK, axis=1)  # [T, K]
    return (half_steps.astype(np.float64) @ np.abs(w_values).T.astype(np.float64)).astype(np.float32)

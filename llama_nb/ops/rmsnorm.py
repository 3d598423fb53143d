"""rmsnorm (Meta's RMSNorm): out[t, :] = x[t, :] / sqrt(mean(x[t, :]**2) + eps) * weight

out     float32[T, D]   may be x itself
x       float32[T, D]
weight  float32[D]      attention_norm / ffn_norm / norm weight (the loader widens the stored bf16:
                        exact, and only D values)
eps     float           norm_eps from params.json
Parallel over tokens (rows); the D-long reduction stays in one thread.

The sum of squares is accumulated in float64. A single float32 running sum over D = 4096 terms
loses about log2(4096) = 12 bits in the worst case (each add rounds at the size of the running
total); NumPy and torch avoid that with pairwise sums. A float64 accumulator is simpler and more
accurate than either, and costs nothing here: the row is read once from cache, the loop vectorises
(DOT_FASTMATH) and the op is a vanishing fraction of the forward pass. The scale is rounded to
float32 once, then every element is scaled in float32 as Meta does.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from llama_nb.ops.jit import twins_dot
from llama_nb.ops.registry import register


@twins_dot
def _rmsnorm(out, x, weight, eps):
    n_tokens, dim = x.shape
    for t in prange(n_tokens):
        row, dst = x[t], out[t]
        sum_sq = 0.0  # float64
        for d in range(dim):
            v = np.float64(row[d])
            sum_sq += v * v
        scale = np.float32(1.0 / math.sqrt(sum_sq / dim + eps))
        for d in range(dim):  # when out is x, each element is read before it is overwritten
            dst[d] = (row[d] * scale) * weight[d]


@register("rmsnorm", "numba")
def rmsnorm(out: np.ndarray, x: np.ndarray, weight: np.ndarray, eps: float) -> None:
    """out[t, :] = x[t, :] * rsqrt(mean(x[t, :]**2) + eps) * weight."""
    _rmsnorm.pick(2 * x.nbytes)(out, x, weight, float(eps))

"""softmax, row-wise, max-subtracted so exp never overflows:
    out[r, :] = exp(x[r, :] - m) / sum(exp(x[r, :] - m)),   m = max(x[r, :])
out  float32[R, C]   may be x itself
x    float32[R, C]
Parallel over rows. The exponentials are float32; their sum is accumulated in float64 (each term
is in (0, 1], C can be 128256 for a vocabulary-sized row) and rounded once.
A row of all -inf has no defined softmax and comes out NaN, as in NumPy and torch.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from llama_nb.ops._jit import njit_parallel_dot
from llama_nb.ops.registry import register


@njit_parallel_dot
def _softmax(out, x):
    n_rows, n_cols = x.shape
    for r in prange(n_rows):
        row, dst = x[r], out[r]
        # max without reassoc-sensitive arithmetic; NaN propagates because `v > m` is False for
        # NaN only when m is not NaN, so test it explicitly.
        m = row[0]
        for c in range(n_cols):
            v = row[c]
            if v > m or v != v:
                m = v
        total = 0.0  # float64
        for c in range(n_cols):  # when out is x, each element is read before it is overwritten
            e = np.exp(row[c] - m)
            dst[c] = e
            total += e
        inv = np.float32(1.0 / total)
        for c in range(n_cols):
            dst[c] *= inv


@register("softmax", "numba", default=True)
def softmax(out: np.ndarray, x: np.ndarray) -> None:
    """out[r, :] = softmax(x[r, :]), max-subtracted."""
    if x.shape[1] == 0:
        return
    _softmax(out, x)

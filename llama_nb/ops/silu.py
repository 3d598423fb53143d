"""silu: the SwiGLU gate in one pass, out = silu(a) * b = a / (1 + exp(-a)) * b

out  float32[T, F]   may be a or b itself
a    float32[T, F]   w1 @ x
b    float32[T, F]   w3 @ x
Parallel over rows (tokens). Written as
    e = exp(-|a|)  in (0, 1]           never overflows, for any finite a
    silu(a) = a / (1 + e)              a >= 0
            = a * e / (1 + e)          a < 0   (multiply top and bottom of the definition by e)
so a large negative a gives a tiny or zero result without ever computing exp(-a) = inf (an
overflow). a = -inf gives NaN (-inf * 0), as torch's silu does; activations are never infinite.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from llama_nb.ops._jit import njit_parallel
from llama_nb.ops.registry import register


@njit_parallel
def _silu(out, a, b):
    n_rows, width = a.shape
    for r in prange(n_rows):
        ar, br, dst = a[r], b[r], out[r]
        for i in range(width):  # element i of a and b is read before out[r, i] is written
            av = ar[i]
            e = np.exp(-abs(av))
            num = av if av >= 0 else av * e
            dst[i] = num / (np.float32(1.0) + e) * br[i]


@register("silu", "numba", default=True)
def silu(out: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """out = a * sigmoid(a) * b, elementwise."""
    _silu(out, a, b)

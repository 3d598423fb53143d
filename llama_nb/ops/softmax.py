"""softmax, row-wise, max-subtracted so exp never overflows:
    out[r, :] = exp(x[r, :] - m) / sum(exp(x[r, :] - m)),   m = max(x[r, :])
out  float32[R, C]   may be x itself
x    float32[R, C]
The exponentials are float32 (ops/fastexp.py, vectorised); their sum is accumulated in float64
(each term is in (0, 1], C can be 128256 for a vocabulary-sized row) and rounded once.
A row of all -inf has no defined softmax and comes out NaN, as in NumPy and torch; so does a row
holding NaN or +inf.

Each row is four vectorised passes: max (integer keys, argmax.ordered_key), exp(x - m) written
to out, the float64 sum of out, the scaling. The exp pass is compiled without `reassoc` (fastexp
needs its exact order), the sum pass with it (so the float64 sum runs in vector lanes); hence two
passes where one would do. row_max, exp_shifted and sum64 are also attention's softmax passes.
Parallel over rows when there are several; a single row (sampling from 128256 logits) runs on one
thread. A two-level version for one long row (chunk maxima combined into m, chunk sums added in
chunk order, so still independent of the thread count) was written and measured, and dropped:
its three parallel launches cost more than they save at 128256 columns (argmax.py has numbers).
Measured, 1 x 128256, one process, alternating, best of 7 x 20 calls (passes: max 2.2 us, exp
28 us, float64 sum 4.7 us, scale 2.5 us): previous kernel (libm expf per element) 269-280 us,
NumPy reference 93-436 us (it allocates), this kernel 39-40 us.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from llama_nb.ops.jit import njit_serial, njit_serial_dot, twins
from llama_nb.ops.argmax import float_of_key, max_key
from llama_nb.ops.fastexp import exp_nonpositive
from llama_nb.ops.registry import register

_PARALLEL_FROM = 65536  # elements: fewer than this (or a single row) run on one thread


@njit_serial
def row_max(x):
    """max(x) (NaN if x holds one), through integer keys so the loop vectorises."""
    return float_of_key(max_key(x))


@njit_serial
def exp_shifted(out, x, m):
    for i in range(x.size):  # when out is x, each element is read before it is overwritten
        out[i] = exp_nonpositive(x[i] - m)


@njit_serial_dot
def sum64(x):
    total = 0.0  # float64
    for i in range(x.size):
        total += x[i]
    return total


@njit_serial_dot
def _scale(x, factor):
    for i in range(x.size):
        x[i] *= factor


@njit_serial
def _softmax_row(out, x):
    m = row_max(x)
    exp_shifted(out, x, m)
    _scale(out, np.float32(1.0 / sum64(out)))


@twins
def _softmax_rows(out, x):
    for r in prange(x.shape[0]):
        _softmax_row(out[r], x[r])


@register("softmax", "numba", switches={"R": (1,), "C": (_PARALLEL_FROM,)})
def softmax(out: np.ndarray, x: np.ndarray) -> None:
    """out[r, :] = softmax(x[r, :]), max-subtracted."""
    n_rows, n_cols = x.shape
    if n_cols == 0 or n_rows == 0:
        return
    serial = n_rows == 1 or n_rows * n_cols < _PARALLEL_FROM
    (_softmax_rows.serial if serial else _softmax_rows.parallel)(out, x)

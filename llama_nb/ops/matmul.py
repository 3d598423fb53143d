"""matmul: out = x @ float32(w).T   (nn.Linear convention: rows of w are output features)

out  float32[T, N]   must not alias x
x    float32[T, K]   activations
w    uint16[N, K]    bf16 bits, exactly as stored in consolidated.00.pth

Nearly all of a forward pass is spent here, so there are two kernels behind the one op:
- T == 1 (decode): a matrix-vector product. Each weight is read once and used once, so the only
  goal is to stream w at memory bandwidth: parallel over blocks of MATVEC_BLOCK output rows, one
  row at a time, the widening and the dot product in a single vectorised loop.
- T > 1 (prefill): each weight is used T times. Parallel over blocks of ROW_BLOCK output rows;
  a block's rows are widened once into a small float32 scratch (ROW_BLOCK * K * 4 bytes, L2
  sized), then every token's dot products read that scratch, so w is streamed once for all T.
Both accumulate in float32 lanes (see DOT_FASTMATH in _jit.py); the reduction axis K is never split
across threads.

Measured on the 2-core AMD EPYC dev box (bench/bench_ops.py has the current numbers):
- matvec, 1 thread, 512 MB of weights (cold), interleaved runs on a busy machine: `prange` over
  single rows streamed 18-21 GB/s; `prange` over blocks of 64 rows with a plain `range` inside
  streamed 31-37 GB/s, the same as a plain read kernel written the same way (32-36 GB/s), so the
  blocked form is used (Numba's parfor lowering of a prange body optimises the inner loop less
  well than a loop nested in it).
- matvec rows per iteration (1 thread, cold weights, medians of 8): with K = 4096 or 2048, x
  (16 KB) sits in L1 and one row at a time is best: 36 GB/s vs 23 (2 rows) and 26-28 (4 rows).
  With K = 14336 (w2), x is 57 KB, out of L1: one row 19 GB/s, 2 rows 26, 4 rows 31. Hence
  `_matvec_4rows` above X_IN_L1. Splitting K into L1-sized chunks instead did not help (19).
- prefill: ~90 GFLOP/s at T=8 and ~120 GFLOP/s at T=64 (2 threads, K=N=4096); a 2x2 register
  block (two tokens x two rows) bought nothing measurable, so the simple loop stays. A blocked
  GEMM with a register-tiled micro-kernel would do better for long prompts; not done yet.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from llama_nb.ops._jit import njit_parallel_dot
from llama_nb.ops.bf16 import bf16_to_f32
from llama_nb.ops.registry import register

ROW_BLOCK = 16  # output rows widened together in the prefill kernel
MATVEC_BLOCK = 64  # output rows per parallel task in the matvec (see the measurements above)
X_IN_L1 = 8192  # float32 elements of x (32 KB) that stay in a typical 32-48 KB L1d; beyond: 4 rows


@njit_parallel_dot
def _matvec(out, x, w):
    n_out, k_in = w.shape
    xv = x[0]
    for block in prange((n_out + MATVEC_BLOCK - 1) // MATVEC_BLOCK):
        for n in range(block * MATVEC_BLOCK, min((block + 1) * MATVEC_BLOCK, n_out)):
            row = w[n]  # a 0-based view: `range(k_in)` over it vectorises, `range(lo, hi)` would not
            acc = np.float32(0.0)
            for k in range(k_in):
                acc += xv[k] * bf16_to_f32(row[k])
            out[0, n] = acc


@njit_parallel_dot
def _matvec_4rows(out, x, w):
    # For long rows (K > X_IN_L1): x no longer fits in L1, so each x element loaded serves four rows.
    n_out, k_in = w.shape
    xv = x[0]
    for block in prange((n_out + MATVEC_BLOCK - 1) // MATVEC_BLOCK):
        n, end = block * MATVEC_BLOCK, min((block + 1) * MATVEC_BLOCK, n_out)
        while n + 3 < end:
            r0, r1, r2, r3 = w[n], w[n + 1], w[n + 2], w[n + 3]
            a0 = a1 = a2 = a3 = np.float32(0.0)
            for k in range(k_in):
                xk = xv[k]
                a0 += xk * bf16_to_f32(r0[k])
                a1 += xk * bf16_to_f32(r1[k])
                a2 += xk * bf16_to_f32(r2[k])
                a3 += xk * bf16_to_f32(r3[k])
            out[0, n], out[0, n + 1], out[0, n + 2], out[0, n + 3] = a0, a1, a2, a3
            n += 4
        while n < end:  # the last 1-3 rows of the matrix
            row = w[n]
            acc = np.float32(0.0)
            for k in range(k_in):
                acc += xv[k] * bf16_to_f32(row[k])
            out[0, n] = acc
            n += 1


@njit_parallel_dot
def _matmul_prefill(out, x, w, n_slots):
    n_tokens, k_in = x.shape
    n_out = w.shape[0]
    # One scratch per thread, allocated once per call: a fresh 256 KB array per block would be an
    # mmap plus page faults every time (measured: 15-30% slower at 8x4096x128256 and 64x2048x8192).
    scratch = np.empty((n_slots, ROW_BLOCK, k_in), np.float32)
    for block in prange((n_out + ROW_BLOCK - 1) // ROW_BLOCK):
        n0 = block * ROW_BLOCK
        rows = min(ROW_BLOCK, n_out - n0)
        wide = scratch[numba.get_thread_id()]  # float32(w[n0:n0+rows]), this thread's own
        for r in range(rows):
            src, dst = w[n0 + r], wide[r]
            for k in range(k_in):
                dst[k] = bf16_to_f32(src[k])
        for t in range(n_tokens):
            xt = x[t]
            for r in range(rows):
                wr = wide[r]
                acc = np.float32(0.0)
                for k in range(k_in):
                    acc += xt[k] * wr[k]
                out[t, n0 + r] = acc


@register("matmul", "numba", default=True)
def matmul(out: np.ndarray, x: np.ndarray, w: np.ndarray) -> None:
    """out[T, N] = x[T, K] @ float32(w[N, K]).T; dispatches on T (1: matvec, >1: prefill)."""
    if x.shape[0] == 0:
        return
    if x.shape[0] == 1:
        if x.shape[1] > X_IN_L1:
            _matvec_4rows(out, x, w)
        else:
            _matvec(out, x, w)
    else:
        # Thread ids are below NUMBA_NUM_THREADS whatever set_num_threads() chose.
        _matmul_prefill(out, x, w, numba.config.NUMBA_NUM_THREADS)

"""Prefill (T > 1) kernels of linear: 4-token x 4-row register tiles, bound by arithmetic.

    out[t, n] = act(x)[t, :] . dequantize(w)[n, :]       out float32[T, N], x float32[T, K]

Each weight is used T times, so the goal is arithmetic throughput. Parallel over tasks of
TASK_ROWS output rows; inside a task, K in blocks of K_BLOCK (the task's w block stays in L2),
tokens in groups of 4, rows in groups of 4: a 4 x 4 register tile. Two tiles:
    float32 FMA   w widened in registers (load16_f32: bf16, f16 or f32 rows), x as given. Any CPU.
    vdpbf16ps     (AVX512_BF16 only) w's bf16 pairs used as stored, x rounded to bf16 once per
                  call; twice the multiply-adds per instruction: about 1.6x the FMA tile.
All accumulate in float32; the reduction axis K is never split across threads, so results do not
depend on the thread count.

Measured on the 2-core AMD EPYC dev box:
- previous kernel (rows widened into a float32 scratch, one auto-vectorised dot per token and row,
  LLVM reducing 16 lanes each time): 40-60 GFLOP/s on 1 thread; a 2x2 register block written in
  plain Numba bought nothing (LLVM does not keep a tile of vector accumulators).
- the 4 x 4 tiles on explicit vectors (ops/simd.py), one process, alternating old / fma / bf16dot,
  best of 5, GFLOP/s (2 threads in a quiet spell of the shared host):
                         1 thread              2 threads
      T x K x N          old   fma  bf16dot    old   fma  bf16dot
      128x2048x2048       49   202   320        92   359   706
      128x2048x8192       57   207   310       120   368   692
      128x8192x2048       35   191   298        76   390   586
      128x4096x4096       47   197   360        92   375   700
      128x4096x14336      56   206   359       117   385   600
      128x14336x4096      39   187   289        68   372   578
      64x2048x8192        46   186   285        90   368   585
      8x4096x128256       39   108   141        68   195   253   (T = 8: 1 GB of weights to read)
  Whole model, prefill of 128 tokens (random weights of the real shapes, one process,
  alternating, 2 threads, tokens/s): Llama 3.2 1B: old 48, fma 176, bf16dot 285 (pp512: 53,
  169, 277); Llama 3.1 8B, 4 layers: old 58, fma 202, bf16dot 350. llama.cpp bf16 on this
  machine: 169 (1B) and 239 (8B width, 4 layers).
  Per-core peaks of this CPU (LLVM says znver5: full-width AVX-512): 234 GFLOP/s float32 FMA,
  469 bf16 dot. torch's bf16 matmul gets 367-398 on 2 threads. When other jobs hold the cores,
  every parallel launch can stall for 4-16 ms (a scheduler tick), whatever the kernel.
  Compiled for AVX2 only (NUMBA_CPU_NAME=haswell + its NUMBA_CPU_FEATURES), 1 thread: old 50-59,
  fma 84-91 GFLOP/s (16 accumulators of 2 ymm each spill, but the tiling still pays).
- what did not work: the tile as a called function instead of inlined at the Numba level
  (1.5-3x slower); 16 leftover-K loops inlined into every tile (18 s compile; 4.6-4.9 s with
  one leftover pass per task, 2.3 s with the tile's store called, not inlined, at no measurable
  cost: 1 thread, alternating, within +-4%); a 4-row-outer / token-inner order (within noise
  or worse, on a busy machine); other block sizes (see K_BLOCK_BF16).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from llama_nb.ops.bf16 import bf16_to_f32, widen
from llama_nb.ops.jit import njit_inline, njit_parallel_dot, njit_serial
from llama_nb.ops.simd import bf16x32_dot, bf16x32_load, f32x16_fma, f32x16_lane, f32x16_load, f32x16_sums, f32x16_zero, load16_f32

TASK_ROWS = 64  # output rows per parallel task
K_BLOCK = 1024  # FMA reduction block: a task's w[64, 1024] (128 KB bf16) stays in L2
# bf16-dot reduction block: its x is bf16 (half the bytes), and the longer inner loop amortises the
# tile's 16 lane sums better. Measured, 1 thread, TASK_ROWS x K_BLOCK_BF16 (GFLOP/s at 128x2048x8192,
# 128x4096x4096, 128x14336x4096): 64x1024 330/318/309, 64x2048 363/361/347, 64x4096 363/258/272,
# 128x2048 372/324/351, 32x2048 349/335/335, 16x1024 309/306/294, 32x512 269/269/265.
# (FMA kernel: 64x1024 194/190/203, 64x2048 188/183/207, 32x1024 188/185/195, 16x1024 178/171/181.)
K_BLOCK_BF16 = 2048


# Both prefill kernels compute a 4-token x 4-row tile of out at a time, with sixteen 16-lane
# accumulators held in registers (ops/simd.py): per step every loaded x vector serves 4 rows and
# every loaded w vector serves 4 tokens, so 8 loads feed 16 multiply-add instructions. Lane j of
# an accumulator sums the products of k = j (mod lanes); the 16 lanes are added by a fixed tree at
# the end, so the result is deterministic and independent of the thread count. The 16 trees run
# together, transposing the accumulators while adding them (f32x16_sums: 45 vector operations
# instead of 192; the same sums bit for bit; prefill tiles 1.3-3.3% faster, 128-token shapes).
# Ragged edges need no code of their own: token and row indices past the end are clamped to the
# last one, so an edge tile recomputes (and rewrites, with the same value) a valid cell.
# The tile is inlined into the kernel (Numba-level inline): called as a function instead it
# ran 1.5-3x slower (measured, 1 thread). Its store of 16 lane sums is a call (once per tile, out
# of the hot loop: halves the compile time). The K % 16 (or 32) leftover columns are one pass per
# task (_tail_*), not 16 inlined loops per tile: those made the kernel take 18 s to compile.


@njit_inline
def _put(out, t, r, partial, first, distinct):
    # The first K block writes; later ones add, but only into cells not already covered by the
    # tile (a clamped duplicate index must not add its partial sum twice).
    if first:
        out[t, r] = partial
    elif distinct:
        out[t, r] += partial


@njit_serial
def store_tile(out, t0, r0, r_end, first, s00, s01, s02, s03, s10, s11, s12, s13,
                s20, s21, s22, s23, s30, s31, s32, s33):
    """out[t0:t0+4, r0:r0+4] = (first K block) or += (later blocks) the 16 lane sums."""
    n_tokens = out.shape[0]
    ta, tb, tc, td = t0, min(t0 + 1, n_tokens - 1), min(t0 + 2, n_tokens - 1), min(t0 + 3, n_tokens - 1)
    ra, rb, rc, rd = r0, min(r0 + 1, r_end - 1), min(r0 + 2, r_end - 1), min(r0 + 3, r_end - 1)
    ob, oc, od = t0 + 1 < n_tokens, t0 + 2 < n_tokens, t0 + 3 < n_tokens
    pb, pc, pd = r0 + 1 < r_end, r0 + 2 < r_end, r0 + 3 < r_end
    # lane 4 i + j of `sums` is the lane sum of s_ij (transposed while added: see f32x16_sums)
    sums = f32x16_sums((s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, s22, s23, s30, s31, s32, s33))
    _put(out, ta, ra, f32x16_lane(sums, 0), first, True)
    _put(out, ta, rb, f32x16_lane(sums, 1), first, pb)
    _put(out, ta, rc, f32x16_lane(sums, 2), first, pc)
    _put(out, ta, rd, f32x16_lane(sums, 3), first, pd)
    _put(out, tb, ra, f32x16_lane(sums, 4), first, ob)
    _put(out, tb, rb, f32x16_lane(sums, 5), first, ob and pb)
    _put(out, tb, rc, f32x16_lane(sums, 6), first, ob and pc)
    _put(out, tb, rd, f32x16_lane(sums, 7), first, ob and pd)
    _put(out, tc, ra, f32x16_lane(sums, 8), first, oc)
    _put(out, tc, rb, f32x16_lane(sums, 9), first, oc and pb)
    _put(out, tc, rc, f32x16_lane(sums, 10), first, oc and pc)
    _put(out, tc, rd, f32x16_lane(sums, 11), first, oc and pd)
    _put(out, td, ra, f32x16_lane(sums, 12), first, od)
    _put(out, td, rb, f32x16_lane(sums, 13), first, od and pb)
    _put(out, td, rc, f32x16_lane(sums, 14), first, od and pc)
    _put(out, td, rd, f32x16_lane(sums, 15), first, od and pd)


@njit_inline
def _tile_bf16dot(out, xh, w, t0, r0, r_end, k0, k1):
    """out[t0:t0+4, r0:r0+4] (+)= xh[t, k0:k1] . w[r, k0:k1] with vdpbf16ps; xh: bf16 bits of x.

    k1 - k0 must be a multiple of 32.
    """
    n_tokens = xh.shape[0]
    xa, xb, xc, xd = xh[t0], xh[min(t0 + 1, n_tokens - 1)], xh[min(t0 + 2, n_tokens - 1)], xh[min(t0 + 3, n_tokens - 1)]
    wa, wb, wc, wd = w[r0], w[min(r0 + 1, r_end - 1)], w[min(r0 + 2, r_end - 1)], w[min(r0 + 3, r_end - 1)]
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = f32x16_zero()
    a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = f32x16_zero()
    for k in range(k0, k1, 32):
        va, vb, vc, vd = bf16x32_load(wa, k), bf16x32_load(wb, k), bf16x32_load(wc, k), bf16x32_load(wd, k)
        u = bf16x32_load(xa, k)
        a00, a01, a02, a03 = bf16x32_dot(a00, u, va), bf16x32_dot(a01, u, vb), bf16x32_dot(a02, u, vc), bf16x32_dot(a03, u, vd)
        u = bf16x32_load(xb, k)
        a10, a11, a12, a13 = bf16x32_dot(a10, u, va), bf16x32_dot(a11, u, vb), bf16x32_dot(a12, u, vc), bf16x32_dot(a13, u, vd)
        u = bf16x32_load(xc, k)
        a20, a21, a22, a23 = bf16x32_dot(a20, u, va), bf16x32_dot(a21, u, vb), bf16x32_dot(a22, u, vc), bf16x32_dot(a23, u, vd)
        u = bf16x32_load(xd, k)
        a30, a31, a32, a33 = bf16x32_dot(a30, u, va), bf16x32_dot(a31, u, vb), bf16x32_dot(a32, u, vc), bf16x32_dot(a33, u, vd)
    store_tile(out, t0, r0, r_end, k0 == 0, a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23, a30, a31, a32, a33)


# _tile_fma is _tile_bf16dot's shape with other loads and instructions, on purpose: the tile must be
# inlined at the Numba level into its kernel (passed as a function it ran 1.5-3x slower).
@njit_inline
def _tile_fma(out, x, w, t0, r0, r_end, k0, k1):
    """out[t0:t0+4, r0:r0+4] (+)= x[t, k0:k1] . float32(w[r, k0:k1]), float32 FMA, w widened in registers
    (any plain format: load16_f32).

    k1 - k0 must be a multiple of 16.
    """
    n_tokens = x.shape[0]
    xa, xb, xc, xd = x[t0], x[min(t0 + 1, n_tokens - 1)], x[min(t0 + 2, n_tokens - 1)], x[min(t0 + 3, n_tokens - 1)]
    wa, wb, wc, wd = w[r0], w[min(r0 + 1, r_end - 1)], w[min(r0 + 2, r_end - 1)], w[min(r0 + 3, r_end - 1)]
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = f32x16_zero()
    a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = f32x16_zero()
    for k in range(k0, k1, 16):
        va, vb, vc, vd = load16_f32(wa, k), load16_f32(wb, k), load16_f32(wc, k), load16_f32(wd, k)
        u = f32x16_load(xa, k)
        a00, a01, a02, a03 = f32x16_fma(a00, u, va), f32x16_fma(a01, u, vb), f32x16_fma(a02, u, vc), f32x16_fma(a03, u, vd)
        u = f32x16_load(xb, k)
        a10, a11, a12, a13 = f32x16_fma(a10, u, va), f32x16_fma(a11, u, vb), f32x16_fma(a12, u, vc), f32x16_fma(a13, u, vd)
        u = f32x16_load(xc, k)
        a20, a21, a22, a23 = f32x16_fma(a20, u, va), f32x16_fma(a21, u, vb), f32x16_fma(a22, u, vc), f32x16_fma(a23, u, vd)
        u = f32x16_load(xd, k)
        a30, a31, a32, a33 = f32x16_fma(a30, u, va), f32x16_fma(a31, u, vb), f32x16_fma(a32, u, vc), f32x16_fma(a33, u, vd)
    store_tile(out, t0, r0, r_end, k0 == 0, a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23, a30, a31, a32, a33)


@njit_serial
def _tail_f32(out, x, w, n0, n1, k_vec):
    """out[:, n0:n1] (+)= x[:, k_vec:] . widen(w[n0:n1, k_vec:]): the columns the tiles left.

    Writes instead of adding when the tiles covered no column at all (K < 16).
    """
    k_in = x.shape[1]
    for t in range(x.shape[0]):
        xr = x[t]
        for r in range(n0, n1):
            wr = w[r]
            acc = np.float32(0.0)
            for k in range(k_vec, k_in):
                acc += xr[k] * widen(wr[k])
            out[t, r] = acc if k_vec == 0 else out[t, r] + acc


@njit_serial
def _tail_bf16(out, xh, w, n0, n1, k_vec):
    """As _tail_f32, for the bf16 bits xh of the bf16-dot kernel (products exact, as vdpbf16ps's)."""
    k_in = xh.shape[1]
    for t in range(xh.shape[0]):
        xr = xh[t]
        for r in range(n0, n1):
            wr = w[r]
            acc = np.float32(0.0)
            for k in range(k_vec, k_in):
                acc += bf16_to_f32(xr[k]) * bf16_to_f32(wr[k])
            out[t, r] = acc if k_vec == 0 else out[t, r] + acc


@njit_parallel_dot
def matmul_fma(out, x, w):
    n_tokens, k_in = x.shape
    n_out = w.shape[0]
    k_vec = k_in - k_in % 16
    for task in prange((n_out + TASK_ROWS - 1) // TASK_ROWS):
        n0 = task * TASK_ROWS
        n1 = min(n0 + TASK_ROWS, n_out)
        for k0 in range(0, k_vec, K_BLOCK):
            k1 = min(k0 + K_BLOCK, k_vec)
            for t0 in range(0, n_tokens, 4):
                for r0 in range(n0, n1, 4):
                    _tile_fma(out, x, w, t0, r0, n1, k0, k1)
        if k_vec < k_in:
            _tail_f32(out, x, w, n0, n1, k_vec)


@njit_parallel_dot
def matmul_bf16dot(out, xh, w):
    """out = xh @ w.T on vdpbf16ps tiles; xh: the bf16 bits of x (_bf16_bits: 1 MB at 128 x 4096,
    rounded once and read N/4 times here)."""
    n_tokens, k_in = xh.shape
    n_out = w.shape[0]
    k_vec = k_in - k_in % 32
    for task in prange((n_out + TASK_ROWS - 1) // TASK_ROWS):
        n0 = task * TASK_ROWS
        n1 = min(n0 + TASK_ROWS, n_out)
        for k0 in range(0, k_vec, K_BLOCK_BF16):
            k1 = min(k0 + K_BLOCK_BF16, k_vec)
            for t0 in range(0, n_tokens, 4):
                for r0 in range(n0, n1, 4):
                    _tile_bf16dot(out, xh, w, t0, r0, n1, k0, k1)
        if k_vec < k_in:
            _tail_bf16(out, xh, w, n0, n1, k_vec)

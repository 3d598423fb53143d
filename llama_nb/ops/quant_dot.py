"""linear for the block formats on int8 activations: integer dot products, 32 bytes at a time.

    out[t, n] = sum over blocks of (weight scale) * (activation scale) * (integer dot product)
    q int8[T, K], d float32[T, K // 32], sums int32[T, K // 16], dsum float32[T, K // 32]: x rounded to int8 blocks
                                      (ops/quant_act.py; the math: llama_nb/quant/activations.py)
    w uint8[N, K // block * block_bytes]: the weight's blocks (llama_nb/quant/*.py)
    out float32[T, N]

Per 32 weights, one i8x32 dot product into eight int32 lanes (vpdpbusd multiplies u8 by s8):
    Q8_0  w s8, x s8: x's sign bit flipped (x + 128, u8), then 128 * sum(w) (a second vpdpbusd
          with 128 in every byte) subtracted: exact s8 x s8. Scale d_w * d_x.
    Q4_K  w is u8 (4-bit q, 0..15): directly. Scale d * sc[j] * d_x; the mins contribute
          dmin * m[j] * d_x * sum(q_x), through the stored dsum = d_x * sum(q_x) (8 lanes at once).
    Q6_K  w is u8 (6-bit q, 0..63): directly, then 32 * sum(q_x) of each group of 16 subtracted
          (q - 32 is the value). Lanes 0-3 and 4-7 are the two groups of 16 with their own scales.
The int32 lanes are scaled into float32 lanes (one FMA per 32 weights) and summed once per row.
Two float32 accumulators per row, and the scalar min/offset terms summed per super-block before
they join the row's sum: one chain of dependent FMAs (4 cycles each) was the limit otherwise
(measured, 1 thread, 1 x 4096 x 14336, busy machine: Q8_0 27 GB/s, Q4_K 15, Q6_K 16 with one chain).

Parallel over tasks of ROWS output rows (as ops/matvec.py); within a task, every token of the
batch against the task's rows, so a prefill chunk reads each weight row from memory once and
from cache T - 1 times. Each kernel is compiled twice: with vpdpbusd (where HAS_AVX512_VNNI) and
with a portable int8 dot in generic LLVM IR (any CPU), from the same source: `_variants` copies
the function with `dot_u8s8` bound to one or the other, under its own name (so Numba's cache
keeps both; see jit._serial_copy).
"""

from __future__ import annotations

import types as pytypes

import numpy as np
from numba import prange

from llama_nb.ops.jit import HAS_AVX512_VNNI, Twins, twins
from llama_nb.ops.quant_rows import Q4_K_BYTES, Q6_K_BYTES, Q8_0_BYTES, q4_k_mins, q4_k_scales
from llama_nb.ops.simd_int8 import (
    dot_u8s8_portable, dot_u8s8_vnni, f32x8_fma_i32, f32x8_fma_i32_halves, f32x8_lane, f32x8_load, f32x8_mul, f32x8_of,
    f32x8_sum, f32x8_zero,
    half_load, i8x32_flip, i8x32_high_nibbles, i8x32_load, i8x32_low_nibbles, i8x32_q6, i8x32_splat, i32x8_sub,
    i32x8_zero,
)

ROWS = 64  # output rows per parallel task (ops/matvec.py's MATVEC_BLOCK, measured there)
dot_u8s8 = dot_u8s8_portable  # rebound per compiled variant (see _variants)


def _q8_0(out, q, d, sums, dsum, w):
    n_tokens, k_in = q.shape
    n_out, n_blocks = w.shape[0], k_in // 32
    bias = i8x32_splat(128)
    for task in prange((n_out + ROWS - 1) // ROWS):
        for t in range(n_tokens):
            xq, xd = q[t], d[t]
            for n in range(task * ROWS, min((task + 1) * ROWS, n_out)):
                row = w[n]
                acc0, acc1 = f32x8_zero(), f32x8_zero()  # two FMA chains: even and odd blocks
                for b in range(n_blocks):
                    wv = i8x32_load(row, Q8_0_BYTES * b + 2)
                    shifted = dot_u8s8(i32x8_zero(), i8x32_flip(i8x32_load(xq, 32 * b)), wv)  # (x + 128) . w
                    lanes = i32x8_sub(shifted, dot_u8s8(i32x8_zero(), bias, wv))  # - 128 * sum(w)
                    if b % 2 == 0:
                        acc0 = f32x8_fma_i32(acc0, lanes, half_load(row, Q8_0_BYTES * b) * xd[b])
                    else:
                        acc1 = f32x8_fma_i32(acc1, lanes, half_load(row, Q8_0_BYTES * b) * xd[b])
                out[t, n] = f32x8_sum(acc0) + f32x8_sum(acc1)


def _q4_k(out, q, d, sums, dsum, w):
    n_tokens, k_in = q.shape
    n_out = w.shape[0]
    for task in prange((n_out + ROWS - 1) // ROWS):
        for t in range(n_tokens):
            xq, xd, xds = q[t], d[t], dsum[t]
            for n in range(task * ROWS, min((task + 1) * ROWS, n_out)):
                row = w[n]
                acc_lo, acc_hi = f32x8_zero(), f32x8_zero()  # two FMA chains (their latency bounds the loop)
                mins = np.float32(0.0)
                for s in range(k_in // 256):
                    at = Q4_K_BYTES * s
                    scale, offset = half_load(row, at), half_load(row, at + 2)
                    # the eight sub-blocks' factors d * sc[j] * d_x at once; their mins' share
                    # sum_j m[j] * d_x * sum(q_x) as one 8-lane product
                    factors = f32x8_mul(f32x8_of(q4_k_scales(row, at + 4)), f32x8_load(xd, 8 * s))
                    mins += offset * f32x8_sum(f32x8_mul(f32x8_of(q4_k_mins(row, at + 4)), f32x8_load(xds, 8 * s)))
                    for c in range(4):  # 32 bytes: sub-block 2c (low nibbles), 2c + 1 (high)
                        v = i8x32_load(row, at + 16 + 32 * c)
                        b = 8 * s + 2 * c  # x's block of sub-block 2c
                        lo = dot_u8s8(i32x8_zero(), i8x32_low_nibbles(v), i8x32_load(xq, 32 * b))
                        hi = dot_u8s8(i32x8_zero(), i8x32_high_nibbles(v), i8x32_load(xq, 32 * b + 32))
                        acc_lo = f32x8_fma_i32(acc_lo, lo, scale * f32x8_lane(factors, 2 * c))
                        acc_hi = f32x8_fma_i32(acc_hi, hi, scale * f32x8_lane(factors, 2 * c + 1))
                out[t, n] = f32x8_sum(acc_lo) + f32x8_sum(acc_hi) - mins


def _q6_k(out, q, d, sums, dsum, w):
    n_tokens, k_in = q.shape
    n_out = w.shape[0]
    for task in prange((n_out + ROWS - 1) // ROWS):
        for t in range(n_tokens):
            xq, xd, xs = q[t], d[t], sums[t]
            for n in range(task * ROWS, min((task + 1) * ROWS, n_out)):
                row = w[n]
                acc0, acc1 = f32x8_zero(), f32x8_zero()  # two FMA chains: runs 0, 2 and 1, 3
                offsets = np.float32(0.0)
                for s in range(k_in // 256):
                    at = Q6_K_BYTES * s
                    scale = half_load(row, at + 208)
                    block_offsets = np.float32(0.0)
                    for h in range(2):  # 128 weights: runs r = 0..3 of 32, see llama_nb/quant/q6_k.py
                        low0, low1 = i8x32_load(row, at + 64 * h), i8x32_load(row, at + 64 * h + 32)
                        high = i8x32_load(row, at + 128 + 32 * h)
                        runs = (i8x32_q6(low0, high, 0, 0), i8x32_q6(low1, high, 0, 2),
                                i8x32_q6(low0, high, 4, 4), i8x32_q6(low1, high, 4, 6))
                        for r in range(4):
                            b = 8 * s + 4 * h + r  # x's block; groups 2b, 2b + 1 of 16
                            lanes = dot_u8s8(i32x8_zero(), runs[r], i8x32_load(xq, 32 * b))
                            group = at + 192 + 8 * h + 2 * r
                            sc0, sc1 = np.float32(np.int8(row[group])), np.float32(np.int8(row[group + 1]))
                            f = scale * xd[b]
                            if r % 2 == 0:
                                acc0 = f32x8_fma_i32_halves(acc0, lanes, f * sc0, f * sc1)
                            else:
                                acc1 = f32x8_fma_i32_halves(acc1, lanes, f * sc0, f * sc1)
                            block_offsets += xd[b] * (sc0 * np.float32(xs[2 * b]) + sc1 * np.float32(xs[2 * b + 1]))
                    offsets += scale * block_offsets
                out[t, n] = f32x8_sum(acc0) + f32x8_sum(acc1) - np.float32(32.0) * offsets


def _variants(fn, dots: dict) -> dict[str, Twins]:
    """{suffix: Twins of fn with dot_u8s8 bound to dots[suffix]}."""
    made = {}
    for suffix, dot in dots.items():
        scope = {**fn.__globals__, "dot_u8s8": dot}
        copy = pytypes.FunctionType(fn.__code__, scope, f"{fn.__name__}_{suffix}", fn.__defaults__, fn.__closure__)
        copy.__qualname__ = f"{fn.__qualname__}_{suffix}"
        made[suffix] = twins(copy)
    return made


_DOTS = {"portable": dot_u8s8_portable, **({"vnni": dot_u8s8_vnni} if HAS_AVX512_VNNI else {})}
KERNELS = {name: _variants(fn, _DOTS) for name, fn in (("q8_0", _q8_0), ("q4_k", _q4_k), ("q6_k", _q6_k))}

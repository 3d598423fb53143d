"""linear: every weight product of the model, out = act(x) @ dequantize(w).T (nn.Linear convention).

out  float32[T, N]   must not alias x
x    float32[T, K]   activations
w    Weight[N, K]    a weight matrix in a registered format (llama_nb/formats.py)
xq   uint8[T*K*4]    scratch: x converted to what the kernel multiplies (bf16 bits, rounded floats)

Implementations are registered per (weight format, activation type); --precision names the
activation type, the model calls one entry point (`ops.linear`) and the OpSet dispatches on
w.format. The built-ins, for the plain formats bf16, f16 and f32:

    act float32  numba            T = 1: matvec (matvec_4rows when x leaves L1); T > 1: the float32
                                  FMA tiles; one kernel source for the three formats (ops/bf16.widen)
    act bf16     numba_fma        x rounded to bf16 into xq once, then the float32 kernels (any CPU;
                                  bf16 weights only, for comparison)
                 numba_bf16dot    (bf16 weights, CPUs with AVX512_BF16) the bf16 bits of x into xq
                                  once, then vdpbf16ps: a matvec one row at a time (four per pass
                                  when x leaves L1; for a few tokens, T <= 8, summed as the matvec
                                  sums one), and tiles
                                  with twice the multiply-adds per instruction (prefill ~1.6x)
                 numba_amx        (bf16 weights, CPUs with AMX-BF16) numba_bf16dot with the prefill
                                  products (T >= 16, K % 32 == 0) on AMX tiles (ops/matmul_amx.py)
                 numba            bf16 weights: numba_amx, else numba_bf16dot, where the CPU has
                                  it, else numba_fma;
                                  f16 and f32 weights: x rounded, then the float32 kernels
    reference    (ops/reference.py) dequantize, then NumPy's float32 matmul, for every format and act

Decode is bound by memory bandwidth and runs as fast in either precision; prefill is bound by
arithmetic (ops/matmul_tiles.py). The kernels are in ops/matvec.py and ops/matmul_tiles.py.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from llama_nb.formats import Weight
from llama_nb.ops.bf16 import PLAIN_FORMATS, bf16_to_f32, f32_to_bf16
from llama_nb.ops.jit import HAS_AMX_BF16, HAS_AVX512_BF16, njit_inline, twins
from llama_nb.ops.matmul_amx import K_STEP, MIN_TOKENS, linear_amx
from llama_nb.ops.matmul_tiles import matmul_bf16dot, matmul_fma
from llama_nb.ops.matvec import (FEW_TOKENS, X_IN_L1, matvec, matvec_4rows, matvec_bf16dot, matvec_bf16dot_4rows,
                                 matvec_bf16dot_rows)
from llama_nb.ops.registry import register

# ------------------------------------------------------------- activations, into the scratch


@njit_inline
def _round_row(dst, src):
    for k in range(src.shape[0]):
        dst[k] = bf16_to_f32(f32_to_bf16(src[k]))


@njit_inline
def _bits_row(dst, src):
    for k in range(src.shape[0]):
        dst[k] = f32_to_bf16(src[k])


@twins
def _bits_rows(dst, x):
    for t in prange(x.shape[0]):
        _bits_row(dst[t], x[t])


@twins
def _round_rows(dst, x):
    for t in prange(x.shape[0]):
        _round_row(dst[t], x[t])


def _in_scratch(x: np.ndarray, xq: np.ndarray, dtype) -> np.ndarray:
    return xq[: x.size * np.dtype(dtype).itemsize].view(dtype).reshape(x.shape)


# Decode's one row is converted on the calling thread: a parallel launch costs more than the row.
def bf16_bits(x: np.ndarray, xq: np.ndarray) -> np.ndarray:
    """uint16[T, K] in xq: the bf16 bits of each x, rounded to nearest (ties to even); for vdpbf16ps."""
    dst = _in_scratch(x, xq, np.uint16)
    (_bits_rows.serial if x.shape[0] == 1 else _bits_rows.parallel)(dst, x)
    return dst


def rounded_to_bf16(x: np.ndarray, xq: np.ndarray) -> np.ndarray:
    """float32[T, K] in xq: each x rounded to the nearest bf16 (ties to even)."""
    dst = _in_scratch(x, xq, np.float32)
    (_round_rows.serial if x.shape[0] == 1 else _round_rows.parallel)(dst, x)
    return dst


# --------------------------------------------------------------------------------- the entries

_F32_SWITCHES = {"T": (1,), "K": (X_IN_L1,)}  # decode vs prefill; matvec vs matvec_4rows
_BF16DOT_SWITCHES = {"T": (1, FEW_TOKENS), "K": (X_IN_L1,)}  # matvec; a few tokens; the tiles; 1 or 4 rows
_AMX_SWITCHES = {**_BF16DOT_SWITCHES, "T": (1, FEW_TOKENS, MIN_TOKENS - 1)}  # and from MIN_TOKENS, AMX tiles


def linear_f32(out: np.ndarray, x: np.ndarray, w: Weight, xq: np.ndarray) -> None:
    """out[T, N] = x[T, K] @ float32(w[N, K]).T; T = 1: matvec, T > 1: float32 FMA tiles (any CPU)."""
    if x.shape[0] == 0:
        return
    if x.shape[0] > 1:
        matmul_fma(out, x, w.data)
    else:
        (matvec_4rows if x.shape[1] > X_IN_L1 else matvec).pick(w.nbytes)(out, x, w.data)


def linear_bf16_fma(out: np.ndarray, x: np.ndarray, w: Weight, xq: np.ndarray) -> None:
    """out[T, N] = float32(bf16(x)) @ float32(w).T: x rounded once, then the float32 kernels."""
    if x.shape[0] == 0:
        return
    linear_f32(out, rounded_to_bf16(x, xq), w, xq)


def linear_bf16_dot(out: np.ndarray, x: np.ndarray, w: Weight, xq: np.ndarray) -> None:
    """out[T, N] = float32(bf16(x)) @ float32(w).T on vdpbf16ps: T = 1 a matvec, T <= FEW_TOKENS the
    matvec's sums for a few tokens at once (a batched decode step), more the prefill tiles."""
    if x.shape[0] == 0:
        return
    if x.shape[0] == 1:
        kernel = (matvec_bf16dot_4rows if x.shape[1] > X_IN_L1 else matvec_bf16dot).pick(w.nbytes)
    elif x.shape[0] <= FEW_TOKENS:
        kernel = matvec_bf16dot_rows.pick(w.nbytes)
    else:
        kernel = matmul_bf16dot
    kernel(out, bf16_bits(x, xq), w.data)


def linear_bf16_amx(out: np.ndarray, x: np.ndarray, w: Weight, xq: np.ndarray) -> None:
    """linear_bf16_dot with the prefill products (T >= MIN_TOKENS, K % 32 == 0) on AMX tiles."""
    if x.shape[0] >= MIN_TOKENS and x.shape[1] % K_STEP == 0:
        linear_amx(out, x, w.data, xq)
    else:
        linear_bf16_dot(out, x, w, xq)


for _fmt in PLAIN_FORMATS:
    register("linear", "numba", format=_fmt, act="float32", switches=_F32_SWITCHES)(linear_f32)
register("linear", "numba_fma", format="bf16", act="bf16", switches=_F32_SWITCHES)(linear_bf16_fma)
if HAS_AVX512_BF16:
    register("linear", "numba_bf16dot", format="bf16", act="bf16", switches=_BF16DOT_SWITCHES)(linear_bf16_dot)
if HAS_AMX_BF16:
    register("linear", "numba_amx", format="bf16", act="bf16", switches=_AMX_SWITCHES)(linear_bf16_amx)
# the default: the fastest kernel this CPU has, with the switches it declares
_BEST_BF16, _BEST_SWITCHES = ((linear_bf16_amx, _AMX_SWITCHES) if HAS_AMX_BF16 else
                              (linear_bf16_dot, _BF16DOT_SWITCHES) if HAS_AVX512_BF16 else
                              (linear_bf16_fma, _F32_SWITCHES))
register("linear", "numba", format="bf16", act="bf16", default=True, switches=_BEST_SWITCHES)(_BEST_BF16)
for _fmt in ("f16", "f32"):
    register("linear", "numba", format=_fmt, act="bf16", switches=_F32_SWITCHES)(linear_bf16_fma)

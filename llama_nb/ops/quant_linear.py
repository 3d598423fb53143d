"""The ops of the block formats q8_0, q4_k, q6_k (llama_nb/quant): linear, embedding, dequantize.

    linear[fmt/bf16]     numba       x rounded to int8 blocks of 32 into the scratch xq once
                                     (ops/quant_act.py), then integer dot products: T <= FEW_TOKENS
                                     the decode kernels (ops/quant_dot.py), more tokens the prefill
                                     tiles (ops/quant_tiles.py); vpdpbusd where the CPU has
                                     AVX512_VNNI, else the portable int8 dot; from 16 tokens on
                                     AMX-INT8 tiles where the CPU has them (ops/quant_amx.py)
                         numba_vnni  (CPUs with AMX-INT8) the vpdpbusd tiles at every T, to be
                                     tested and compared
                         numba_int8  the portable int8 dot, registered beside vpdpbusd to be
                                     tested and compared (only where the CPU has VNNI)
    linear[fmt/float32]  numba       x as it is, weights decoded inside the dot (ops/quant_f32.py)
    embedding[fmt], dequantize[fmt]  numba: rows decoded as the NumPy reference decodes them
    reference            dequantize, then NumPy's float32 product (ops/reference.py); at bf16 x
                         first rounded to the same int8 blocks (llama_nb/quant/activations.py)

At --precision bf16 these formats take int8 activations, as llama.cpp does for them (its
vec_dot_type), not bf16 ones: that is what makes their decode bound by memory, not arithmetic.
How far that rounding moves an output is llama_nb/quant/activations.py's `rounding_bound`.
Each kernel's parallel twin runs from PARALLEL_MIN_BYTES of weights on (ops/jit.py); the int8 decode
kernels' bytes count ARITHMETIC_PER_BYTE times.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from llama_nb import quant
from llama_nb.formats import Weight
from llama_nb.ops import quant_amx, quant_dot, quant_f32, quant_tiles
from llama_nb.ops.jit import HAS_AMX_INT8, HAS_AVX512_VNNI, njit_parallel, twins
from llama_nb.ops.matvec import FEW_TOKENS
from llama_nb.ops.quant_act import quantize_activations
from llama_nb.ops.quant_rows import dequantize_row_q4_k, dequantize_row_q6_k, dequantize_row_q8_0
from llama_nb.ops.reference import register_format_references
from llama_nb.ops.registry import register
from llama_nb.quant.activations import round_activations

FORMATS = (quant.Q8_0.name, quant.Q4_K.name, quant.Q6_K.name)
# What a weight byte of the integer decode kernels counts for in jit.parallel_pays: they are bound
# by arithmetic on one core (17-24 GB/s of weights, against 28 for bf16's matvec), so a second
# core pays from far fewer bytes than for a plain read. Measured 2026-12-02 15:05 UTC, idle, cold
# weights, 2 threads over 1 (medians of 40): Q4_K 512x2048 (0.56 MiB) 1.62x, 2048x2048 1.69x;
# Q6_K 512x2048 1.59x; Q8_0 512x2048 (1.06 MiB) 1.38x; bf16's matvec at 2 MiB only 1.16x. So the
# 1B's attention products (0.6-4 MB) run parallel too.
ARITHMETIC_PER_BYTE = 8


def _int8_entry(fmt: str, variant: str, amx: bool = False):
    decode, tiles = quant_dot.KERNELS[fmt][variant], quant_tiles.KERNELS[fmt][variant]

    def linear_int8(out: np.ndarray, x: np.ndarray, w: Weight, xq: np.ndarray) -> None:
        """out[T, N] = int8 blocks of x (into xq) . w's blocks, in integers; scaled in float32. Up to
        FEW_TOKENS tokens (decode, a batched decode step) the decode kernels, more the prefill tiles
        (with amx, from quant_amx.MIN_TOKENS on, the AMX-INT8 tiles)."""
        if x.shape[0] == 0:
            return
        q, d, sums, dsum = quantize_activations(x, xq)
        if x.shape[0] <= FEW_TOKENS:
            decode.pick(ARITHMETIC_PER_BYTE * w.nbytes)(out, q, d, sums, dsum, w.data)
        elif amx and x.shape[0] >= quant_amx.MIN_TOKENS:
            quant_amx.linear_amx_int8(fmt, out, q, d, dsum, w.data, xq)
        else:
            quant_tiles.linear_tiles(tiles, fmt, out, q, d, sums, w.data, xq)

    return linear_int8


def _f32_entry(kernel):
    def linear_f32(out: np.ndarray, x: np.ndarray, w: Weight, xq: np.ndarray) -> None:
        """out[T, N] = x[T, K] . dequantize(w)[N, K], decoded inside the dot."""
        if x.shape[0] == 0:
            return
        kernel.pick(w.nbytes)(out, x, w.data)

    return linear_f32


def _row_ops(decode_row):
    """embedding and dequantize for one format, from its row decoder."""

    @twins
    def embedding_rows(out, table, tokens):
        for t in prange(tokens.shape[0]):
            decode_row(out[t], table[tokens[t]])

    @njit_parallel
    def dequantize_rows(out, data):
        for n in prange(data.shape[0]):
            decode_row(out[n], data[n])

    def embedding(out: np.ndarray, table: Weight, tokens: np.ndarray) -> None:
        """out[t, :] = dequantize(table)[tokens[t], :]."""
        embedding_rows.pick(2 * out.nbytes)(out, table.data, tokens)

    def dequantize(out: np.ndarray, w: Weight) -> None:
        """out = dequantize(w)."""
        dequantize_rows(out, w.data)

    return embedding, dequantize


_ROW_DECODERS = {"q8_0": dequantize_row_q8_0, "q4_k": dequantize_row_q4_k, "q6_k": dequantize_row_q6_k}

_INT8_SWITCHES = {"T": (FEW_TOKENS,)}  # the decode kernels; the prefill tiles
_AMX_SWITCHES = {"T": (FEW_TOKENS, quant_amx.MIN_TOKENS - 1)}  # and from MIN_TOKENS, the AMX-INT8 tiles

for _fmt in FORMATS:
    if HAS_AMX_INT8:
        register("linear", "numba", format=_fmt, act="bf16", default=True,
                 switches=_AMX_SWITCHES)(_int8_entry(_fmt, "vnni", amx=True))
        register("linear", "numba_vnni", format=_fmt, act="bf16", switches=_INT8_SWITCHES)(_int8_entry(_fmt, "vnni"))
    else:
        register("linear", "numba", format=_fmt, act="bf16", default=True,
                 switches=_INT8_SWITCHES)(_int8_entry(_fmt, "vnni" if HAS_AVX512_VNNI else "portable"))
    if HAS_AVX512_VNNI:
        register("linear", "numba_int8", format=_fmt, act="bf16", switches=_INT8_SWITCHES)(_int8_entry(_fmt, "portable"))
    register("linear", "numba", format=_fmt, act="float32", default=True)(_f32_entry(quant_f32.KERNELS[_fmt]))
    _embedding, _dequantize = _row_ops(_ROW_DECODERS[_fmt])
    register("embedding", "numba", format=_fmt, default=True)(_embedding)
    register("dequantize", "numba", format=_fmt, default=True)(_dequantize)
    register_format_references(_fmt, round_bf16=round_activations)

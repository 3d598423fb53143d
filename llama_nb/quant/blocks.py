"""What the three ggml block formats share: fp16 fields, ggml's two rounding rules, and the
WeightFormat built from a pair of block functions.

A block format stores each row of a [N, K] weight as K // block blocks of `block_bytes` bytes,
exactly the bytes a GGUF file holds for the tensor (ggml's `block_q8_0`, `block_q4_K`,
`block_q6_K`, little-endian, no padding), so the `data` of a Weight is uint8[N, K // block *
block_bytes] and a GGUF tensor maps onto it without a copy.

    dequantize_blocks(blocks uint8[B, block_bytes]) -> float32[B, block]   the definition
    quantize_blocks(values float32[B, block])       -> uint8[B, block_bytes]  ggml's reference quantizer

Rounding, as ggml-quants.c does it:
    round_away(v)   roundf: halves away from zero (quantize_row_q8_0_ref)
    nearest_int(v)  the 1.5 * 2^23 trick: halves to even (the k-quants' nearest_int), as np.rint
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from llama_nb.errors import LlamaNbError
from llama_nb.formats import Weight, WeightFormat, register_format

F32 = np.float32


def fp16_bits_to_f32(two_bytes: np.ndarray) -> np.ndarray:
    """float32[...] of little-endian IEEE half fields uint8[..., 2] (exact)."""
    return np.ascontiguousarray(two_bytes).view(np.float16)[..., 0].astype(np.float32)


def f32_to_fp16_bytes(values: np.ndarray) -> np.ndarray:
    """uint8[..., 2]: values rounded to IEEE half (to nearest, ties to even: GGML_FP32_TO_FP16)."""
    return np.asarray(values, np.float32).astype(np.float16)[..., None].view(np.uint8)


def round_away(v: np.ndarray) -> np.ndarray:
    """C's roundf, exactly: |v| rounded half away from zero, sign restored (float32 in, float32 out)."""
    a = np.abs(v)
    whole = np.floor(a)
    return np.copysign(whole + (a - whole >= F32(0.5)), v).astype(np.float32)


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int as int32: to nearest, halves to even (exact for |v| < 2^22, as ggml asserts)."""
    return np.rint(v).astype(np.int32)


def block_format(name: str, doc: str, block: int, block_bytes: int,
                 dequantize_blocks: Callable[[np.ndarray], np.ndarray],
                 quantize_blocks: Callable[[np.ndarray], np.ndarray]) -> WeightFormat:
    """Register the WeightFormat `name` whose rows are blocks decoded by `dequantize_blocks`."""

    def dequantize(weight: Weight, lo: int, hi: int) -> np.ndarray:
        n, k = hi - lo, weight.shape[1]
        blocks = weight.data[lo:hi].reshape(n * (k // block), block_bytes)
        return dequantize_blocks(blocks).reshape(n, k)

    def quantize(values: np.ndarray) -> Weight:
        values = np.ascontiguousarray(values, np.float32)
        if values.ndim != 2:
            raise LlamaNbError(f"weight format {name}: quantize needs a matrix, got shape {values.shape}")
        n, k = values.shape
        data = np.empty(fmt.data_shape(n, k), np.uint8)  # raises when K is not a multiple of the block
        rows = max(1, (1 << 16) // max(1, k))  # quantize ~64K values at a time: the temporaries stay small
        for r0 in range(0, n, rows):
            part = values[r0 : r0 + rows]
            data[r0 : r0 + rows] = quantize_blocks(part.reshape(-1, block)).reshape(part.shape[0], -1)
        return Weight(fmt, (n, k), data)

    fmt = register_format(WeightFormat(name, doc, np.dtype(np.uint8), block, block_bytes, dequantize, quantize))
    return fmt

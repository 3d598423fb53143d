"""Q8_0: blocks of 32 weights, one fp16 scale each (ggml's block_q8_0, 34 bytes, 8.5 bits per weight).

    bytes 0..1    d       IEEE half
    bytes 2..33   q[32]   int8
    x[i] = float32(d) * q[i]

Quantizing (quantize_row_q8_0_ref, bit for bit): amax = max|x|, d = amax / 127 in float32,
id = 1 / d (0 for an all-zero block), q[i] = roundf(x[i] * id); the stored d is d rounded to half.
"""

from __future__ import annotations

import numpy as np

from llama_nb.quant.blocks import F32, block_format, f32_to_fp16_bytes, fp16_bits_to_f32, round_away

BLOCK, BLOCK_BYTES = 32, 34


def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
    """float32[B, 32] of uint8[B, 34] Q8_0 blocks."""
    d = fp16_bits_to_f32(blocks[:, 0:2])
    q = blocks[:, 2:].view(np.int8).astype(np.float32)
    return q * d[:, None]


def quantize_blocks(x: np.ndarray) -> np.ndarray:
    """uint8[B, 34] Q8_0 blocks of float32[B, 32]."""
    d = np.abs(x).max(axis=1) / F32(127)
    with np.errstate(divide="ignore"):
        inverse = np.where(d == 0, F32(0), F32(1) / d).astype(np.float32)
    q = round_away(x * inverse[:, None]).astype(np.int8)
    return np.concatenate([f32_to_fp16_bytes(d), q.view(np.uint8)], axis=1)


Q8_0 = block_format("q8_0", "x = fp16 d * int8 q, blocks of 32 (ggml Q8_0)", BLOCK, BLOCK_BYTES,
                    dequantize_blocks, quantize_blocks)

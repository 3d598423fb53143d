"""Q6_K: super-blocks of 256 weights = 16 groups of 16, each with an int8 scale (ggml's block_q6_K,
210 bytes, 6.5625 bits per weight).

    bytes 0..127     ql[128]     low 4 bits of q
    bytes 128..191   qh[64]      high 2 bits of q
    bytes 192..207   scales[16]  int8, one per group of 16 weights: weight i uses scales[i // 16]
    bytes 208..209   d           IEEE half
    For half h = 0, 1 (weights 128 h ..) and l = 0..31, with L = ql[64 h ..], H = qh[32 h ..]:
        q[128h + l]      = (L[l] & 15)      | ((H[l] >> 0) & 3) << 4
        q[128h + 32 + l] = (L[l + 32] & 15) | ((H[l] >> 2) & 3) << 4
        q[128h + 64 + l] = (L[l] >> 4)      | ((H[l] >> 4) & 3) << 4
        q[128h + 96 + l] = (L[l + 32] >> 4) | ((H[l] >> 6) & 3) << 4
    x[i] = (d * scales[i // 16]) * (q[i] - 32)      (float32)

Quantizing follows quantize_row_q6_K_ref: each group's scale from make_qx_quants(16, nmax 32,
rmse_type 1: weights x^2, 18 trial scales around -32 / max), the 16 scales quantized to int8
against the largest (d = max_scale / -128, rounded to half), then q recomputed from the stored
scales: q = clamp(nearest_int(x / (d * scale)), -32, 31) + 32. An all-but-zero super-block (every
scale below 1e-15) is all zero bytes. Vectorised over groups, so sums run in NumPy's order, not C's
(see q4_k.py); tests bound the error.
"""

from __future__ import annotations

import numpy as np

from llama_nb.quant.blocks import F32, block_format, f32_to_fp16_bytes, fp16_bits_to_f32, nearest_int

BLOCK, BLOCK_BYTES = 256, 210
GROUP = 16
GROUP_MAX_EPS = F32(1e-15)


def unpack_q(ql: np.ndarray, qh: np.ndarray) -> np.ndarray:
    """int8[B, 256]: q - 32 of each weight, in weight order, from ql uint8[B, 128], qh uint8[B, 64]."""
    low = ql.reshape(-1, 2, 1, 2, 32)  # [B, half, 1, (first / second 32 bytes), l]
    low = np.concatenate([low & 15, low >> 4], axis=2).reshape(-1, 2, 4, 32)  # q order: +0, +32, +64, +96
    high = qh.reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8)[None, None, :, None]
    return ((low | ((high & 3) << 4)).astype(np.int8) - np.int8(32)).reshape(-1, BLOCK)


def pack_q(levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ql uint8[B, 128], qh uint8[B, 64]) of levels uint8[B, 256] in 0..63 (q + 32)."""
    q = levels.reshape(-1, 2, 4, 32)
    ql = np.concatenate([q[:, :, 0] & 15 | (q[:, :, 2] & 15) << 4, q[:, :, 1] & 15 | (q[:, :, 3] & 15) << 4], axis=2)
    qh = (q[:, :, 0] >> 4) | (q[:, :, 1] >> 4) << 2 | (q[:, :, 2] >> 4) << 4 | (q[:, :, 3] >> 4) << 6
    return ql.reshape(-1, 128).astype(np.uint8), qh.reshape(-1, 64).astype(np.uint8)


def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
    """float32[B, 256] of uint8[B, 210] Q6_K blocks."""
    d = fp16_bits_to_f32(blocks[:, 208:210])[:, None]
    scale = (d * blocks[:, 192:208].view(np.int8).astype(np.float32))[:, :, None]  # [B, 16, 1]
    q = unpack_q(blocks[:, 0:128], blocks[:, 128:192]).reshape(-1, 16, GROUP).astype(np.float32)
    return (scale * q).reshape(-1, BLOCK)


def _trial(x, iscale, nmax):
    levels = np.clip(nearest_int(iscale[:, None] * x), -nmax, nmax - 1).astype(np.float32)
    weights = x * x
    return levels, np.sum(weights * x * levels, axis=1), np.sum(weights * levels * levels, axis=1)


def make_qx_quants(x: np.ndarray, nmax: int):
    """(scale float32[S], L uint8[S, n] = l + nmax) for groups x float32[S, n]: x ~ scale * l, l in
    -nmax..nmax-1, by ggml's make_qx_quants with rmse_type 1 (weights x^2) and no importance."""
    first = np.argmax(np.abs(x), axis=1)  # the first largest |x|, signed
    signed_max = x[np.arange(x.shape[0]), first]
    zero = np.abs(signed_max) < GROUP_MAX_EPS
    safe_max = np.where(zero, F32(1), signed_max)
    with np.errstate(divide="ignore", invalid="ignore"):
        levels, sum_lx, sum_l2 = _trial(x, F32(-nmax) / safe_max, nmax)
        scale = np.where(sum_l2 != 0, sum_lx / sum_l2, F32(0))
        best = scale * sum_lx
        for step in [s for s in range(-9, 10) if s != 0]:
            trial, lx, l2 = _trial(x, -(F32(nmax) + F32(0.1) * F32(step)) / safe_max, nmax)
            better = (l2 > 0) & (lx * lx > best * l2)
            levels = np.where(better[:, None], trial, levels)
            scale = np.where(better, lx / l2, scale)
            best = np.where(better, scale * lx, best)
    levels = np.where(zero[:, None], 0, levels + nmax)
    return np.where(zero, F32(0), scale).astype(np.float32), levels.astype(np.uint8)


def quantize_blocks(x: np.ndarray) -> np.ndarray:
    """uint8[B, 210] Q6_K blocks of float32[B, 256] (quantize_row_q6_K_ref)."""
    n_blocks = x.shape[0]
    scales, levels = make_qx_quants(x.reshape(-1, GROUP), 32)
    scales, levels = scales.reshape(n_blocks, 16), levels.reshape(n_blocks, 16, GROUP)
    first = np.argmax(np.abs(scales), axis=1)
    max_scale = scales[np.arange(n_blocks), first]
    empty = np.abs(max_scale) < GROUP_MAX_EPS
    iscale = F32(-128) / np.where(empty, F32(1), max_scale)
    d_bytes = f32_to_fp16_bytes(F32(1) / iscale)
    int_scales = np.minimum(nearest_int(iscale[:, None] * scales), 127).astype(np.int8)
    step = fp16_bits_to_f32(d_bytes)[:, None] * int_scales.astype(np.float32)  # [B, 16]
    safe_step = np.where(step != 0, step, F32(1))[:, :, None]  # groups with step 0 keep their levels
    again = np.clip(nearest_int(x.reshape(n_blocks, 16, GROUP) / safe_step), -32, 31) + 32
    levels = np.where(step[:, :, None] != 0, again, levels).astype(np.uint8)
    ql, qh = pack_q(levels.reshape(n_blocks, BLOCK))
    out = np.concatenate([ql, qh, int_scales.view(np.uint8), d_bytes], axis=1)
    out[empty] = 0
    return out


Q6_K = block_format("q6_k", "x = fp16 d * int8 scale * (6-bit q - 32), super-blocks of 256 (ggml Q6_K)",
                    BLOCK, BLOCK_BYTES, dequantize_blocks, quantize_blocks)

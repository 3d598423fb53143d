"""Q4_K: super-blocks of 256 weights = 8 sub-blocks of 32, each with a 6-bit scale and a 6-bit min
(ggml's block_q4_K, 144 bytes, 4.5 bits per weight).

    bytes 0..1      d          IEEE half: the scale of the sub-block scales
    bytes 2..3      dmin       IEEE half: the scale of the sub-block mins
    bytes 4..15     scales[12] eight 6-bit scales sc[j] and eight 6-bit mins m[j], packed:
                               j < 4:  sc[j] = s[j] & 63,            m[j] = s[j + 4] & 63
                               j >= 4: sc[j] = (s[j + 4] & 15) | (s[j - 4] >> 6) << 4,
                                       m[j]  = (s[j + 4] >> 4) | (s[j] >> 6) << 4
    bytes 16..143   qs[128]    4-bit q, in 4 chunks of 32 bytes: chunk c holds sub-block 2c in
                               its low nibbles and sub-block 2c + 1 in its high nibbles
    x = (d * sc[j]) * q - (dmin * m[j])      for weight 32 j + l of the super-block (float32)

Quantizing follows quantize_row_q4_K_ref (the path llama.cpp takes without an importance matrix):
for each sub-block, make_qkx2_quants(32, 15, weights = rms(x) + |x|, rmin -1, rdelta 0.1, 20
steps) searches a scale and a min (min <= 0) minimising the weighted squared error; the eight
scales and mins are then quantized to 6 bits against their maxima (d = max_scale / 63, dmin =
max_min / 63, both rounded to half), and q is recomputed from the stored scales:
q = clamp(nearest_int((x + dmin * m) / (d * sc)), 0, 15). Vectorised over blocks here, so sums
run in NumPy's order rather than C's: the result can differ from ggml's in the last bit of a
search's error and so, rarely, in one choice; tests bound the error instead (tests/test_quant_formats.py).
"""

from __future__ import annotations

import numpy as np

from llama_nb.quant.blocks import F32, block_format, f32_to_fp16_bytes, fp16_bits_to_f32, nearest_int

BLOCK, BLOCK_BYTES = 256, 144
SUB = 32  # weights per sub-block


def unpack_scales(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sc, m), each uint8[B, 8], of the 12 packed scale bytes uint8[B, 12] (get_scale_min_k4)."""
    s = packed.astype(np.uint8)
    low, high = s[:, 0:4], s[:, 4:8]
    sc = np.concatenate([low & 63, (s[:, 8:12] & 15) | ((low >> 6) << 4)], axis=1)
    m = np.concatenate([high & 63, (s[:, 8:12] >> 4) | ((high >> 6) << 4)], axis=1)
    return sc, m


def pack_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """uint8[B, 12]: the inverse of unpack_scales for 6-bit sc, m uint8[B, 8]."""
    sc, m = sc.astype(np.uint8), m.astype(np.uint8)
    low = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)
    high = m[:, 0:4] | ((m[:, 4:8] >> 4) << 6)
    return np.concatenate([low, high, (sc[:, 4:8] & 15) | ((m[:, 4:8] & 15) << 4)], axis=1)


def unpack_q(qs: np.ndarray) -> np.ndarray:
    """uint8[B, 256]: the 4-bit q of each weight, in weight order, from qs uint8[B, 128]."""
    chunks = qs.reshape(-1, 4, 1, 32)
    return np.concatenate([chunks & 15, chunks >> 4], axis=2).reshape(-1, BLOCK)


def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
    """float32[B, 256] of uint8[B, 144] Q4_K blocks."""
    d = fp16_bits_to_f32(blocks[:, 0:2])[:, None]
    dmin = fp16_bits_to_f32(blocks[:, 2:4])[:, None]
    sc, m = unpack_scales(blocks[:, 4:16])
    scale = (d * sc.astype(np.float32))[:, :, None]  # [B, 8, 1]
    offset = (dmin * m.astype(np.float32))[:, :, None]
    q = unpack_q(blocks[:, 16:]).reshape(-1, 8, SUB).astype(np.float32)
    return (scale * q - offset).reshape(-1, BLOCK)


def _weighted_sums(w, *terms):
    return [np.sum(w * t, axis=1) for t in terms]


def make_qkx2_quants(x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int):
    """(scale float32[S], the_min float32[S] >= 0, L uint8[S, n]) for sub-blocks x float32[S, n]:
    x ~ scale * L - the_min, L in 0..nmax, minimising sum(weights * err^2) (ggml's make_qkx2_quants)."""
    low = np.minimum(x.min(axis=1), F32(0))
    high = x.max(axis=1)
    flat = high == low
    span = np.where(flat, F32(1), high - low)
    sum_w, sum_x = _weighted_sums(weights, np.ones_like(x), x)
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F32(nmax) / span
        scale = F32(1) / iscale
        levels = np.clip(nearest_int(iscale[:, None] * (x - low[:, None])), 0, nmax)
        best = np.sum(weights * np.square(scale[:, None] * levels + low[:, None] - x), axis=1)
        for step in range(nstep + 1):
            iscale = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / span
            trial = np.clip(nearest_int(iscale[:, None] * (x - low[:, None])), 0, nmax).astype(np.float32)
            sum_l, sum_l2, sum_xl = _weighted_sums(weights, trial, trial * trial, trial * x)
            det = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            positive = this_min > 0
            this_scale = np.where(positive, sum_xl / sum_l2, this_scale)
            this_min = np.where(positive, F32(0), this_min)
            error = np.sum(weights * np.square(this_scale[:, None] * trial + this_min[:, None] - x), axis=1)
            better = (det > 0) & (error < best)
            levels = np.where(better[:, None], trial, levels)
            best = np.where(better, error, best)
            scale = np.where(better, this_scale, scale)
            low = np.where(better, this_min, low)
    levels = np.where(flat[:, None], 0, levels)
    scale = np.where(flat, F32(0), scale)
    return scale.astype(np.float32), (-low).astype(np.float32), levels.astype(np.uint8)


def quantize_blocks(x: np.ndarray) -> np.ndarray:
    """uint8[B, 144] Q4_K blocks of float32[B, 256] (quantize_row_q4_K_ref)."""
    n_blocks = x.shape[0]
    sub = x.reshape(-1, SUB)
    rms = np.sqrt(np.sum(sub * sub, axis=1) / F32(SUB))
    scales, mins, levels = make_qkx2_quants(sub, rms[:, None] + np.abs(sub), 15, -1.0, 0.1, 20)
    scales, mins, levels = scales.reshape(n_blocks, 8), mins.reshape(n_blocks, 8), levels.reshape(n_blocks, 8, SUB)
    max_scale = np.maximum(scales.max(axis=1), F32(0))
    max_min = np.maximum(mins.max(axis=1), F32(0))
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0)).astype(np.float32)
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0)).astype(np.float32)
    # uint8 of nearest_int, then at most 63, as the C code stores them
    sc = np.minimum(nearest_int(inv_scale[:, None] * scales).astype(np.uint8), 63)
    m = np.minimum(nearest_int(inv_min[:, None] * mins).astype(np.uint8), 63)
    d_bytes, dmin_bytes = f32_to_fp16_bytes(max_scale / F32(63)), f32_to_fp16_bytes(max_min / F32(63))
    step = fp16_bits_to_f32(d_bytes)[:, None] * sc.astype(np.float32)  # the stored d * sc[j]
    offset = fp16_bits_to_f32(dmin_bytes)[:, None] * m.astype(np.float32)
    safe_step = np.where(step != 0, step, F32(1))[:, :, None]  # sub-blocks with step 0 keep their levels
    again = np.clip(nearest_int((x.reshape(n_blocks, 8, SUB) + offset[:, :, None]) / safe_step), 0, 15)
    levels = np.where(step[:, :, None] != 0, again, levels).astype(np.uint8).reshape(n_blocks, 4, 2, SUB)
    qs = (levels[:, :, 0] | (levels[:, :, 1] << 4)).reshape(n_blocks, 128)
    return np.concatenate([d_bytes, dmin_bytes, pack_scales(sc, m), qs], axis=1)


Q4_K = block_format("q4_k", "x = fp16 d * 6-bit sc * 4-bit q - fp16 dmin * 6-bit m, super-blocks of 256 (ggml Q4_K)",
                    BLOCK, BLOCK_BYTES, dequantize_blocks, quantize_blocks)

"""RoPE tables: the rotation angles of every position, as Meta's precompute_freqs_cis makes them.

rope_tables(head_dim, max_pos, theta, scaling) -> (cos, sin), float32[max_pos, head_dim/2],
computes what Meta's precompute_freqs_cis computes, step by step in float32:
    freqs  = 1 / theta ** (arange(0, Dh, 2) / Dh)
    freqs  = apply_scaling(freqs)        Llama 3.1+ only: `scaling` (io/params.py's RopeScaling),
                                         Meta's constants or the model's own (factor 32 for 3.2 1B/3B)
    angle  = float32(p) * freqs          torch.outer in float32: one rounding
    cos, sin of angle                    (torch.polar)
The angle must be bit-identical to Meta's: at p = 131071 one ulp of a frequency near 1 moves the
angle by 0.016 rad. torch's float32 pow happens to equal the float64 pow rounded to float32 for
every exponent used here, and NumPy's float32 pow differs from it by an ulp on 11 to 13 of the 64
exponents (Dh = 128), so the pow is done in float64 and rounded; every other step is a single
IEEE float32 operation, identical in NumPy and torch. cos/sin are computed in float64 from the
float32 angle and rounded (correctly rounded; torch's float32 cos/sin are within an ulp of it).
"""

from __future__ import annotations

import math

import numpy as np

from llama_nb.errors import LlamaNbError
from llama_nb.io.params import RopeScaling


def rope_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> np.ndarray:
    """float32[head_dim/2]: Meta's freqs, bit for bit (see the module docstring); `scaling` None
    for unscaled RoPE (Llama 3.0)."""
    f32 = np.float32
    exponent = np.arange(0, head_dim, 2)[: head_dim // 2].astype(f32) / f32(head_dim)
    power = np.power(np.float64(f32(theta)), exponent.astype(np.float64)).astype(f32)
    freqs = f32(1.0) / power
    if scaling is None:
        return freqs
    # torch evaluates `scalar / tensor` as tensor.reciprocal() * scalar (Tensor.__rtruediv__), and
    # rounds each python scalar to float32; reproduce both so the comparisons below agree exactly.
    factor, old_context = f32(scaling.factor), scaling.original_context
    low, high = scaling.low_freq_factor, scaling.high_freq_factor
    low_freq_wavelen = f32(old_context / low)
    high_freq_wavelen = f32(old_context / high)
    wavelen = (f32(1.0) / freqs) * f32(2 * math.pi)
    new_freqs = np.where(wavelen > low_freq_wavelen, freqs / factor, freqs)
    smooth = ((f32(1.0) / wavelen) * f32(old_context) - f32(low)) / f32(high - low)
    blended = (f32(1.0) - smooth) * new_freqs / factor + smooth * new_freqs
    in_between = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(in_between, blended, new_freqs).astype(f32)


def rope_tables(head_dim: int, max_pos: int, theta: float,
                scaling: RopeScaling | None) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), each float32[max_pos, head_dim/2], for positions 0 .. max_pos-1."""
    if head_dim <= 0 or head_dim % 2:
        raise LlamaNbError(f"rope_tables: head_dim must be a positive even number, got {head_dim}")
    if max_pos <= 0:
        raise LlamaNbError(f"rope_tables: max_pos must be positive, got {max_pos}")
    freqs = rope_frequencies(head_dim, theta, scaling)
    positions = np.arange(max_pos, dtype=np.float32)
    angle = np.outer(positions, freqs).astype(np.float64)  # product rounded to float32 first
    return np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)

"""exp for loops that must vectorise: `exp_nonpositive(x) = exp(x)` for float32 x <= 0.

Numba's np.exp is a call to the C library's expf, one element at a time: a loop that calls it
never vectorises (without Intel's SVML). This helper is straight-line float32 arithmetic, so LLVM
turns a loop of it into 16-lane AVX-512 code (8 lanes on AVX2). It is Cephes' expf:
    n = round(x / ln 2),  r = x - n ln 2      (ln 2 in two parts, so r is exact: Cody & Waite)
    exp(x) = 2^n * (1 + r + r^2 P(r))         P of degree 5, |r| <= ln(2)/2
with 2^n built from its exponent bits. Relative error: about 1 ulp (measured max 2 ulps against
np.exp over [-87, 0] in tests/test_ops.py).
Only x <= 0 is needed (softmax's x - max, silu's -|a|), which keeps 2^n a normal number:
    x < -87.3   -> 0.0        (the true value is below 1.2e-38, a float32 subnormal or zero)
    x = -inf    -> 0.0
    x = NaN     -> NaN
Callers must compile it without `reassoc` (njit_parallel, not njit_parallel_dot): reassociation
could fold `r = x - n*LN2_HI - n*LN2_LO` into a less exact order. No x > 0 check is made.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from llama_nb.ops.jit import njit_inline

_LOG2E = np.float32(1.44269504088896341)
_LN2_HI = np.float32(0.693359375)  # exactly representable in 9 bits: n * LN2_HI is exact
_LN2_LO = np.float32(-2.12194440e-4)
_LOWEST = np.float32(-87.3)  # exp(-87.3) = 1.2e-38 > FLT_MIN: 2^n stays normal
_P0 = np.float32(1.9875691500e-4)
_P1 = np.float32(1.3981999507e-3)
_P2 = np.float32(8.3334519073e-3)
_P3 = np.float32(4.1665795894e-2)
_P4 = np.float32(1.6666665459e-1)
_P5 = np.float32(5.0000001201e-1)


@intrinsic
def _f32_from_bits(typingctx, bits):
    """The float32 whose IEEE-754 bits are the int32 `bits`."""
    if bits != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(bits), codegen


@njit_inline
def exp_nonpositive(x):
    """exp(x) for float32 x <= 0 (see the module docstring for the edge cases)."""
    xc = max(x, _LOWEST)  # x = -inf or NaN: dealt with at the end; keep n in range meanwhile
    n = np.floor(xc * _LOG2E + np.float32(0.5))
    r = xc - n * _LN2_HI
    r = r - n * _LN2_LO
    z = r * r
    p = (((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5) * z + r + np.float32(1.0)
    scale = _f32_from_bits(np.int32((np.int32(n) + np.int32(127)) << np.int32(23)))
    e = p * scale
    e = np.float32(0.0) if x < _LOWEST else e
    return x if x != x else e

"""bf16 <-> float32, the two conversions every kernel uses, as scalar helpers and as array ops.

A bf16 number is the high half of a float32: same sign bit, same 8-bit exponent, 7 of the 23
mantissa bits. So
    widening   float32(b) = bits(b) << 16                  exact, every pattern (NaN payloads too)
    narrowing  bf16(f)    = (bits(f) + 0x7FFF + lsb) >> 16  round to nearest, ties to even,
                            where lsb = bit 16 of bits(f) (the bf16 mantissa's last bit).
The rounding carry walks naturally into the exponent (0x3F7FFFFF -> 1.0, FLT_MAX -> Inf) and works
for subnormals; only NaN needs a rule of its own, because the carry could turn a NaN into Inf.

NaN rule when narrowing: any NaN becomes the canonical quiet NaN with the input's sign,
0x7FC0 or 0xFFC0. Torch has no single answer to copy: its scalar c10::BFloat16(float) gives 0x7FC0
for every NaN (the sign is lost), while `tensor.to(torch.bfloat16)` on CPU (the vectorised AVX2 and
AVX-512 paths) gives 0xFFFF for every NaN (positive NaNs come out negative). We keep the sign, as
the op's contract asks; positive NaNs then match c10::BFloat16 bit for bit, and every non-NaN
input matches both torch paths bit for bit (tests/test_bf16.py checks all of this).

Scalar helpers, for kernels (always inlined; Numba only, call them from @njit code):
    bf16_to_f32(u16) -> float32        f32_to_bf16(float32) -> uint16
    widen(v) -> float32                one stored weight of any plain format, by its type:
                                       uint16 bf16 bits, int16 IEEE half bits (llama_nb/formats.py
                                       keeps f16 in int16 arrays for exactly this), float32 as is;
                                       so one kernel source serves the bf16, f16 and f32 formats
Array ops, registered as "numba" (any shape; they work on ravel views):
    bf16_to_f32   out float32[...], x uint16[...]
    f32_to_bf16   out uint16[...],  x float32[...]
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from llama_nb.errors import LlamaNbError
from llama_nb.ops.jit import njit_inline, njit_parallel
from llama_nb.ops.registry import register

PLAIN_FORMATS = ("bf16", "f16", "f32")  # the weight formats (llama_nb/formats.py) whose values `widen` reads

# The reinterpretation of bits needs no memory round trip: an LLVM bitcast between i32 and float
# is free, and (unlike a view of a one-element array) lets LLVM vectorise the loops that call it.


@intrinsic
def _u16_widen_to_f32(typingctx, u):
    """float32 whose bits are `u << 16` (u: any unsigned integer holding bf16 bits)."""
    if not isinstance(u, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        (value,) = args
        i32 = ir.IntType(32)
        if value.type.width > 16:  # keep the low 16 bits, whatever integer type the caller had
            value = builder.trunc(value, ir.IntType(16))
        shifted = builder.shl(builder.zext(value, i32), ir.Constant(i32, 16))
        return builder.bitcast(shifted, ir.FloatType())

    return types.float32(u), codegen


@intrinsic
def widen(typingctx, v):
    """float32 of one stored weight: uint16 = bf16 bits, int16 = IEEE half bits, float32 = itself."""
    if v not in (types.uint16, types.int16, types.float32):
        return None

    def codegen(context, builder, signature, args):
        (value,) = args
        if signature.args[0] == types.float32:
            return value
        if signature.args[0] == types.int16:  # half -> float: exact (vcvtph2ps where F16C exists)
            return builder.fpext(builder.bitcast(value, ir.HalfType()), ir.FloatType())
        i32 = ir.IntType(32)
        return builder.bitcast(builder.shl(builder.zext(value, i32), ir.Constant(i32, 16)), ir.FloatType())

    return types.float32(v), codegen


@intrinsic
def _f32_bits(typingctx, f):
    """The IEEE-754 bits of a float32, as uint32."""
    if f != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(f), codegen


@njit_inline
def bf16_to_f32(u):
    """Exact widening of one bf16 (its bits in an unsigned integer) to float32."""
    return _u16_widen_to_f32(u)


@njit_inline
def f32_to_bf16(f):
    """One float32 to bf16 bits: round to nearest even; NaN -> quiet NaN with the sign kept."""
    bits = np.int64(_f32_bits(np.float32(f)))  # int64: the rounding carry must not wrap
    if (bits & 0x7FFFFFFF) > 0x7F800000:  # NaN: the carry below could turn it into Inf
        return np.uint16(((bits >> 16) & 0x8000) | 0x7FC0)
    return np.uint16((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16)


_BLOCK = 1 << 16  # elements per parallel task: large enough to amortise scheduling, fits L2


@njit_parallel
def _widen(out, x):
    n = x.size
    for b in prange((n + _BLOCK - 1) // _BLOCK):
        lo = b * _BLOCK
        src = x[lo : min(lo + _BLOCK, n)]  # 0-based slices: the loop below vectorises
        dst = out[lo : min(lo + _BLOCK, n)]
        for i in range(src.size):
            dst[i] = bf16_to_f32(src[i])


@njit_parallel
def _narrow(out, x):
    n = x.size
    for b in prange((n + _BLOCK - 1) // _BLOCK):
        lo = b * _BLOCK
        src = x[lo : min(lo + _BLOCK, n)]
        dst = out[lo : min(lo + _BLOCK, n)]
        for i in range(src.size):
            dst[i] = f32_to_bf16(src[i])


def _require_contiguous(op: str, out: np.ndarray, x: np.ndarray) -> None:
    # reshape(-1) of a strided array is a copy: the result would silently land in a temporary.
    if not (out.flags.c_contiguous and x.flags.c_contiguous):
        raise LlamaNbError(f"{op}: out and x must be C-contiguous (shapes {out.shape}, {x.shape})")


@register("bf16_to_f32", "numba")
def bf16_to_f32_array(out: np.ndarray, x: np.ndarray) -> None:
    """out[...] = float32(x[...]), parallel over blocks of elements."""
    _require_contiguous("bf16_to_f32", out, x)
    _widen(out.reshape(-1), x.reshape(-1))


@register("f32_to_bf16", "numba")
def f32_to_bf16_array(out: np.ndarray, x: np.ndarray) -> None:
    """out[...] = bf16(x[...]) (round to nearest even), parallel over blocks of elements."""
    _require_contiguous("f32_to_bf16", out, x)
    _narrow(out.reshape(-1), x.reshape(-1))

"""512-bit integer vectors for the block-format decode kernels: 64 bytes (two Q4_K sub-blocks, two
Q6_K runs of 32, i.e. four groups of 16) multiplied into sixteen int32 lanes, then scaled into the
sixteen float32 lanes of ops/simd.py's f32x16.

    i8x64    <64 x i8>    sixty-four bytes (the kernel says whether they are u8 or s8)
    i32x16   <16 x i32>   sixteen int32 lanes; lane j holds the sum over bytes 4j .. 4j+3

    i8x64_load(a: uint8[:] | int8[:], i) -> i8x64        a[i : i + 64], unaligned
    i8x64_load2(a, i, j) -> i8x64                        a[i : i + 32] then a[j : j + 32]
    i8x64_low_nibbles(v), i8x64_high_nibbles(v)          v & 15, v >> 4 (as u8)
    i8x64_flip(v) -> i8x64                               v ^ 0x80: s8 w -> u8 w + 128
    i8x64_minus32(v) -> i8x64                            v - 32 (Q6_K's u8 q -> s8 q - 32)
    i8x64_join(a, b, upper) -> i8x64                     a[0:32] then b[0:32] (upper, a literal 1:
                                                         a[32:64] then b[32:64])
    i8x64_q6_high_bits(a: uint8[:], i) -> i8x64          h = a[i : i + 32]: h, then h >> 2 (Q6_K's qh
                                                         for two runs side by side)
    i8x64_q6(ql: i8x64, qh2: i8x64, upper: literal 0 or 1) -> i8x64
                                                         Q6_K's 6-bit q (u8 0..63) of two runs:
                                                         lower  (ql & 15) | ((qh2 & 3) << 4)
                                                         upper  (ql >> 4) | (qh2 & 0x30)
    i32x16_zero() -> i32x16
    dot64_u8s8_vnni(acc, u, s) -> i32x16                 acc[j] + sum_{i<4} u8(u[4j+i]) * s8(s[4j+i]):
                                                         vpdpbusd on zmm (AVX512_VNNI); exact
    dot64_u8s8_portable(acc, u, s) -> i32x16             the same sums in generic LLVM IR, any CPU
    f32x16_fma_i32(acc: f32x16, v: i32x16, scales: f32x16) -> f32x16   acc + float32(v) * scales
    f32x16_of_halves(a: f32x8, b: f32x8) -> f32x16       a in lanes 0-7, b in lanes 8-15
    f32x16_two_halves(a: uint8[:], i) -> f32x16          the IEEE halves at a[i] (lanes 0-7) and a[i + 2] (8-15)
    f32x16_high(v: f32x16) -> f32x8                      lanes 8-15
    f32x16_pairs(v: f32x16, i, j) -> f32x16              v[i] in lanes 0-7, v[j] in 8-15 (literals: one vpermps)
    f32x16_spread(v: f32x16, g, width) -> f32x16         lane l = v[g + l // width] (literals: one vpermps)
    f32x16_mul(a, b), f32x16_add(a, b) -> f32x16         lane by lane
    f32x16_of_i8(a: uint8[:], i) -> f32x16               float32 of the int8 bytes a[i : i + 16]
    f32x16_of_i32(a: int32[:], i) -> f32x16              float32 of a[i : i + 16]
    halves_load8(a: uint8[:], i, stride) -> f32x8        the IEEE halves at a[i + stride * j], j < 8
                                                         (stride literal: Q8_0's eight block scales)
    q4_k_scales_mins(a: uint8[:], i) -> f32x16           Q4_K's eight 6-bit scales (lanes 0-7) and
                                                         eight mins (8-15) from the 12 packed bytes
                                                         a[i : i + 12] (reads a[i : i + 16])
    i8x64_store(a: uint8[:] | int8[:], i, v)             a[i : i + 64] = v, unaligned
    i32x16_load(a: int32[:], i) -> i32x16                a[i : i + 16]
    f32x16_abs(v: f32x16) -> f32x16                      |v|, lane by lane (the sign bit cleared)
    i8x16_store_rounded(a: int8[:], i, v: f32x16) -> int32
                                                         a[i : i + 16] = v rounded half away from
                                                         zero (|v| < 2**31), as the NumPy reference's
                                                         round_away; returns the sum of the 16 values
    i8x64_interleave(v0, v1, v2, v3, i, piece, swap) -> i8x64   (literals i < 4, piece 1 or 2, swap 0 or 1)
                                                         the prefill tiles' layout (ops/quant_tiles.py):
                                                         the 256 bytes v0..v3 as 16 / piece groups of
                                                         16 * piece bytes: the i-th 4 * piece bytes of
                                                         each group (swap: in NIBBLE_ORDER)

`dot64_u8s8_vnni` is LLVM's `llvm.x86.avx512.vpdpbusd.512` and must only be compiled where
HAS_AVX512_VNNI (llama_nb/ops/jit.py) holds; everything else is generic LLVM vector IR (split into
narrower registers on CPUs without AVX-512). Loads take an index, not a slice: the caller
guarantees the bytes read are inside a.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from llama_nb.ops.simd import f32x16
from llama_nb.ops.simd_int8 import dot_u8s8_pair, f32x8


class _I8x64(types.Type):
    def __init__(self):
        super().__init__(name="i8x64")


class _I32x16(types.Type):
    def __init__(self):
        super().__init__(name="i32x16")


i8x64, i32x16 = _I8x64(), _I32x16()
_I8, _I32, _F32 = ir.IntType(8), ir.IntType(32), ir.FloatType()
_V_I8 = ir.VectorType(_I8, 64)
_V_I32 = ir.VectorType(_I32, 16)
_V_F32 = ir.VectorType(_F32, 16)
_V_F32x8 = ir.VectorType(_F32, 8)


@register_model(_I8x64)
class _I8x64Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V_I8)


@register_model(_I32x16)
class _I32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V_I32)


def _is_1d(a, dtypes) -> bool:
    return isinstance(a, types.Array) and a.ndim == 1 and a.dtype in dtypes and a.layout in "CA"


def _bytes_1d(a) -> bool:
    return _is_1d(a, (types.uint8, types.int8))


def _load(context, builder, array_type, array, index, vector_type, align=1):
    ary = context.make_array(array_type)(context, builder, array)
    ptr = builder.gep(ary.data, [index])
    return builder.load(builder.bitcast(ptr, vector_type.as_pointer()), align=align)


def _mask(lanes):
    lanes = list(lanes)
    return ir.Constant(ir.VectorType(_I32, len(lanes)), lanes)


def _concat(builder, a, b):
    n = a.type.count
    return builder.shuffle_vector(a, b, _mask(range(2 * n)))


def _const8(value: int):
    return ir.Constant(_V_I8, [value] * 64)


@intrinsic
def i8x64_load(typingctx, a, i):
    if not (_bytes_1d(a) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        return _load(context, builder, signature.args[0], args[0], args[1], _V_I8)

    return i8x64(a, i), codegen


@intrinsic
def i8x64_load2(typingctx, a, i, j):
    if not (_bytes_1d(a) and isinstance(i, types.Integer) and isinstance(j, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        half = ir.VectorType(_I8, 32)
        lo = _load(context, builder, signature.args[0], args[0], args[1], half)
        hi = _load(context, builder, signature.args[0], args[0], args[2], half)
        return _concat(builder, lo, hi)

    return i8x64(a, i, j), codegen


def _bytewise(name: str, op):
    def typer(typingctx, v):
        if v != i8x64:
            return None

        def codegen(context, builder, signature, args):
            return op(builder, args[0])

        return i8x64(v), codegen

    typer.__name__ = name
    return intrinsic(typer)


i8x64_low_nibbles = _bytewise("i8x64_low_nibbles", lambda b, v: b.and_(v, _const8(15)))
i8x64_high_nibbles = _bytewise("i8x64_high_nibbles", lambda b, v: b.lshr(v, _const8(4)))
i8x64_minus32 = _bytewise("i8x64_minus32", lambda b, v: b.sub(v, _const8(32)))  # Q6_K's u8 q -> s8 q - 32


@intrinsic(prefer_literal=True)
def i8x64_join(typingctx, a, b, upper):
    if not (a == i8x64 and b == i8x64 and isinstance(upper, types.IntegerLiteral)):
        return None
    start = 32 * bool(upper.literal_value)

    def codegen(context, builder, signature, args):
        lanes = list(range(start, start + 32)) + list(range(64 + start, 64 + start + 32))
        return builder.shuffle_vector(args[0], args[1], _mask(lanes))

    return i8x64(a, b, upper), codegen


@intrinsic
def i8x64_q6_high_bits(typingctx, a, i):
    if not (_bytes_1d(a) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        high = _load(context, builder, signature.args[0], args[0], args[1], ir.VectorType(_I8, 32))
        return _concat(builder, high, builder.lshr(high, ir.Constant(ir.VectorType(_I8, 32), [2] * 32)))

    return i8x64(a, i), codegen


@intrinsic
def i8x64_q6(typingctx, ql, qh2, upper):
    if not (ql == i8x64 and qh2 == i8x64 and isinstance(upper, types.IntegerLiteral)):
        return None
    is_upper = upper.literal_value

    def codegen(context, builder, signature, args):
        low, high = args[0], args[1]
        if is_upper:
            return builder.or_(builder.lshr(low, _const8(4)), builder.and_(high, _const8(0x30)))
        return builder.or_(builder.and_(low, _const8(15)), builder.and_(builder.shl(high, _const8(4)), _const8(0x30)))

    return i8x64(ql, qh2, upper), codegen


@intrinsic
def i32x16_zero(typingctx):
    def codegen(context, builder, signature, args):
        return ir.Constant(_V_I32, [0] * 16)

    return i32x16(), codegen


dot64_u8s8_vnni, dot64_u8s8_portable = dot_u8s8_pair("dot64_u8s8", i32x16, i8x64, 16)


@intrinsic
def f32x16_fma_i32(typingctx, acc, v, scales):
    if not (acc == f32x16 and v == i32x16 and scales == f32x16):
        return None

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V_F32, [_V_F32] * 3), "llvm.fma.v16f32")
        return builder.call(fn, [builder.sitofp(args[1], _V_F32), args[2], args[0]])

    return f32x16(acc, v, scales), codegen


@intrinsic
def f32x16_of_halves(typingctx, a, b):
    if not (a == f32x8 and b == f32x8):
        return None

    def codegen(context, builder, signature, args):
        return _concat(builder, args[0], args[1])

    return f32x16(a, b), codegen


@intrinsic
def f32x16_high(typingctx, v):
    if v != f32x16:
        return None

    def codegen(context, builder, signature, args):
        return builder.shuffle_vector(args[0], args[0], _mask(range(8, 16)))

    return f32x8(v), codegen


@intrinsic
def f32x16_pairs(typingctx, v, i, j):
    if not (v == f32x16 and isinstance(i, types.IntegerLiteral) and isinstance(j, types.IntegerLiteral)):
        return None
    lanes = [i.literal_value] * 8 + [j.literal_value] * 8

    def codegen(context, builder, signature, args):
        return builder.shuffle_vector(args[0], args[0], _mask(lanes))

    return f32x16(v, i, j), codegen


@intrinsic
def f32x16_spread(typingctx, v, g, width):
    if not (v == f32x16 and isinstance(g, types.IntegerLiteral) and isinstance(width, types.IntegerLiteral)):
        return None
    lanes = [g.literal_value + lane // width.literal_value for lane in range(16)]

    def codegen(context, builder, signature, args):
        return builder.shuffle_vector(args[0], args[0], _mask(lanes))

    return f32x16(v, g, width), codegen


def _lanewise(name: str, op):
    def typer(typingctx, a, b):
        if not (a == f32x16 and b == f32x16):
            return None

        def codegen(context, builder, signature, args):
            return op(builder, args[0], args[1])

        return f32x16(a, b), codegen

    typer.__name__ = name
    return intrinsic(typer)


f32x16_mul = _lanewise("f32x16_mul", lambda b, x, y: b.fmul(x, y))
f32x16_add = _lanewise("f32x16_add", lambda b, x, y: b.fadd(x, y))


@intrinsic
def f32x16_of_i8(typingctx, a, i):
    if not (_bytes_1d(a) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        raw = _load(context, builder, signature.args[0], args[0], args[1], ir.VectorType(_I8, 16))
        return builder.sitofp(raw, _V_F32)

    return f32x16(a, i), codegen


@intrinsic
def f32x16_of_i32(typingctx, a, i):
    if not (_is_1d(a, (types.int32,)) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        return builder.sitofp(_load(context, builder, signature.args[0], args[0], args[1], _V_I32, align=4), _V_F32)

    return f32x16(a, i), codegen


@intrinsic
def q4_k_scales_mins(typingctx, a, i):
    if not (_bytes_1d(a) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        # get_scale_min_k4 on all 16 at once, bytes b = a[i : i + 16] (the last 4 unused):
        #   scale j < 4: b[j] & 63            scale j >= 4: (b[j + 4] & 15) | (b[j - 4] >> 6) << 4
        #   min   j < 4: b[j + 4] & 63        min   j >= 4: (b[j + 4] >> 4) | (b[j] >> 6) << 4
        # The bytes widened to 32-bit lanes first, where x86 shifts each lane by its own count
        # (vpsrlvd) and not bytes: the same values, Q4_K's kernel 1.06x from cache on one core
        # (AMD EPYC, 2026-12-04; the scales and their products are about half of its work there)
        v16 = ir.VectorType(_I8, 16)
        b = _load(context, builder, signature.args[0], args[0], args[1], v16)
        low = builder.zext(builder.shuffle_vector(b, b, _mask([0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11])), _V_I32)
        top = builder.zext(builder.shuffle_vector(b, b, _mask([0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7, 4, 5, 6, 7])), _V_I32)
        const = lambda values: ir.Constant(_V_I32, values)  # noqa: E731
        low = builder.and_(builder.lshr(low, const([0] * 12 + [4] * 4)), const([63] * 4 + [15] * 4 + [63] * 4 + [15] * 4))
        top = builder.and_(builder.shl(builder.lshr(top, const([6] * 16)), const([4] * 16)), const(([0] * 4 + [0x30] * 4) * 2))
        return builder.sitofp(builder.or_(low, top), _V_F32)  # at most 63: signed and unsigned agree

    return f32x16(a, i), codegen


@intrinsic
def halves_load8(typingctx, a, i, stride):
    if not (_bytes_1d(a) and isinstance(i, types.Integer) and isinstance(stride, types.IntegerLiteral)):
        return None
    step = stride.literal_value

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        bits = ir.Constant(ir.VectorType(ir.IntType(16), 8), ir.Undefined)
        for lane in range(8):
            at = builder.add(args[1], ir.Constant(args[1].type, step * lane))
            ptr = builder.bitcast(builder.gep(ary.data, [at]), ir.IntType(16).as_pointer())
            bits = builder.insert_element(bits, builder.load(ptr, align=1), ir.Constant(_I32, lane))
        return builder.fpext(builder.bitcast(bits, ir.VectorType(ir.HalfType(), 8)), _V_F32x8)

    return f32x8(a, i, stride), codegen


@intrinsic
def i8x64_flip(typingctx, v):
    if v != i8x64:
        return None

    def codegen(context, builder, signature, args):
        return builder.xor(args[0], _const8(0x80))

    return i8x64(v), codegen


@intrinsic
def f32x16_two_halves(typingctx, a, i):
    if not (_bytes_1d(a) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        pair = _load(context, builder, signature.args[0], args[0], args[1], ir.VectorType(ir.HalfType(), 2))
        wide = builder.fpext(pair, ir.VectorType(_F32, 2))
        return builder.shuffle_vector(wide, wide, _mask([0] * 8 + [1] * 8))

    return f32x16(a, i), codegen


@intrinsic
def i8x64_store(typingctx, a, i, v):
    if not (_bytes_1d(a) and isinstance(i, types.Integer) and v == i8x64):
        return None

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), _V_I8.as_pointer())
        builder.store(args[2], ptr, align=1)
        return context.get_dummy_value()

    return types.none(a, i, v), codegen


@intrinsic
def i32x16_load(typingctx, a, i):
    if not (_is_1d(a, (types.int32,)) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        return _load(context, builder, signature.args[0], args[0], args[1], _V_I32, align=4)

    return i32x16(a, i), codegen


@intrinsic
def f32x16_abs(typingctx, v):
    if v != f32x16:
        return None

    def codegen(context, builder, signature, args):
        bits = builder.bitcast(args[0], _V_I32)
        return builder.bitcast(builder.and_(bits, ir.Constant(_V_I32, [0x7FFFFFFF] * 16)), _V_F32)

    return f32x16(v), codegen


@intrinsic
def i8x16_store_rounded(typingctx, a, i, v):
    """Round half away from zero as llama_nb/quant/blocks.py's round_away does it, exactly:
    whole = trunc(|v|) (floor, for |v| >= 0), + 1 where |v| - whole >= 0.5, the sign of v put back."""
    if not (_is_1d(a, (types.int8,)) and isinstance(i, types.Integer) and v == f32x16):
        return None

    def codegen(context, builder, signature, args):
        value = args[2]
        magnitude = builder.bitcast(builder.and_(builder.bitcast(value, _V_I32), ir.Constant(_V_I32, [0x7FFFFFFF] * 16)),
                                    _V_F32)
        whole = builder.fptosi(magnitude, _V_I32)
        fraction = builder.fsub(magnitude, builder.sitofp(whole, _V_F32))
        up = builder.fcmp_ordered(">=", fraction, ir.Constant(_V_F32, [0.5] * 16))
        rounded = builder.select(up, builder.add(whole, ir.Constant(_V_I32, [1] * 16)), whole)
        negative = builder.fcmp_ordered("<", value, ir.Constant(_V_F32, [0.0] * 16))
        signed = builder.select(negative, builder.neg(rounded), rounded)
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), ir.VectorType(_I8, 16).as_pointer())
        builder.store(builder.trunc(signed, ir.VectorType(_I8, 16)), ptr, align=1)
        width, total = 16, signed  # the sum: halves added until one lane is left
        while width > 1:
            width //= 2
            low = builder.shuffle_vector(total, total, _mask(range(width)))
            high = builder.shuffle_vector(total, total, _mask(range(width, 2 * width)))
            total = builder.add(low, high)
        return builder.extract_element(total, ir.Constant(_I32, 0))

    return types.int32(a, i, v), codegen


# Q4_K's natural vectors hold its sub-blocks in the order 0, 2, 1, 3, 4, 6, 5, 7 (low nibbles of
# two 32-byte chunks, then the high nibbles): `swap` reads cat block NIBBLE_ORDER[j] for block j.
NIBBLE_ORDER = (0, 2, 1, 3, 4, 6, 5, 7)


@intrinsic
def i8x64_interleave(typingctx, v0, v1, v2, v3, i, piece, swap):
    if not (v0 == v1 == v2 == v3 == i8x64 and all(isinstance(p, types.IntegerLiteral) for p in (i, piece, swap))):
        return None
    step, width, order = i.literal_value, piece.literal_value, NIBBLE_ORDER if swap.literal_value else tuple(range(8))
    # cat = v0 v1 v2 v3 as 64 dwords; out dword l = cat[4 * width * block(l // width) + width * i + l % width]
    lanes = [4 * width * (order[lane // width] if width == 2 else lane // width) + width * step + lane % width
             for lane in range(16)]

    def codegen(context, builder, signature, args):
        dwords = [builder.bitcast(v, _V_I32) for v in args[:4]]
        low, high = _concat(builder, dwords[0], dwords[1]), _concat(builder, dwords[2], dwords[3])
        return builder.bitcast(builder.shuffle_vector(low, high, _mask(lanes)), _V_I8)

    return i8x64(v0, v1, v2, v3, i, piece, swap), codegen

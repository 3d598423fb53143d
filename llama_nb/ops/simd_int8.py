"""256-bit integer vectors for the block-format kernels: 32 bytes (one Q8_0 block) multiplied into
eight int32 lanes, then scaled into eight float32 lanes (the 512-bit ones: ops/simd_int8x64.py).

    i8x32    <32 x i8>    thirty-two bytes (the kernel says whether they are u8 or s8)
    i32x8    <8 x i32>    eight int32 lanes; lane j holds the sum over bytes 4j .. 4j+3
    f32x8    <8 x float>  eight float32 lanes

    i8x32_load(a: uint8[:] | int8[:], i) -> i8x32      a[i : i + 32], unaligned
    i8x32_flip(v) -> i8x32                             v ^ 0x80: s8 x -> u8 x + 128
    i8x32_splat(value: int) -> i8x32                   value in every byte
    i32x8_zero() -> i32x8
    i32x8_sub(a, b) -> i32x8                           lane by lane
    dot_u8s8_vnni(acc, u, s) -> i32x8                  acc[j] + sum_{i<4} u8(u[4j+i]) * s8(s[4j+i]):
                                                       vpdpbusd (AVX512_VNNI + AVX512VL); exact (no
                                                       saturation: at most 4 * 255 * 128 per step)
    dot_u8s8_portable(acc, u, s) -> i32x8              the same sums in generic LLVM IR, any CPU
    f32x8_zero() -> f32x8
    f32x8_fma_i32(acc, v: i32x8, scale: float32) -> f32x8   acc + float32(v) * scale, lane by lane
    f32x8_fma(acc, a: f32x8, b: f32x8) -> f32x8        acc + a * b, lane by lane (one rounding)
    f32x8_sum(v) -> float32                            a fixed pairwise tree of the 8 lanes
    f32x8_load(a: float32[:], i) -> f32x8              a[i : i + 8], unaligned
    f32x8_mul(a, b) -> f32x8                           lane by lane
    half_load(a: uint8[:], i) -> float32               the IEEE half at bytes a[i], a[i + 1] (exact)

`dot_u8s8_vnni` is LLVM's `llvm.x86.avx512.vpdpbusd.256` and must only be compiled where
HAS_AVX512_VNNI (llama_nb/ops/jit.py) holds. Loads take an index, not a slice: the caller
guarantees i + 32 <= a.size.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model


class _I8x32(types.Type):
    def __init__(self):
        super().__init__(name="i8x32")


class _I32x8(types.Type):
    def __init__(self):
        super().__init__(name="i32x8")


class _F32x8(types.Type):
    def __init__(self):
        super().__init__(name="f32x8")


i8x32, i32x8, f32x8 = _I8x32(), _I32x8(), _F32x8()
_I8, _I32 = ir.IntType(8), ir.IntType(32)
_V_I8 = ir.VectorType(_I8, 32)
_V_I32 = ir.VectorType(_I32, 8)
_V_F32 = ir.VectorType(ir.FloatType(), 8)


def _model(ir_type):
    class Model(models.PrimitiveModel):
        def __init__(self, dmm, fe_type):
            super().__init__(dmm, fe_type, ir_type)

    return Model


register_model(_I8x32)(_model(_V_I8))
register_model(_I32x8)(_model(_V_I32))
register_model(_F32x8)(_model(_V_F32))


def _bytes_1d(a) -> bool:
    return isinstance(a, types.Array) and a.ndim == 1 and a.dtype in (types.uint8, types.int8) and a.layout in "CA"


def _byte_pointer(context, builder, array_type, array, index):
    ary = context.make_array(array_type)(context, builder, array)
    return builder.gep(ary.data, [index])


def _splat8(builder, value, vector_type):
    lane0 = builder.insert_element(ir.Constant(vector_type, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(lane0, lane0, ir.Constant(ir.VectorType(_I32, vector_type.count), [0] * vector_type.count))


@intrinsic
def i8x32_load(typingctx, a, i):
    if not (_bytes_1d(a) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        ptr = _byte_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.load(builder.bitcast(ptr, _V_I8.as_pointer()), align=1)

    return i8x32(a, i), codegen


def _bytewise(name: str, op):
    """An intrinsic v -> op(builder, v) on the 32 bytes."""

    def typer(typingctx, v):
        if v != i8x32:
            return None

        def codegen(context, builder, signature, args):
            return op(builder, args[0])

        return i8x32(v), codegen

    typer.__name__ = name
    return intrinsic(typer)


def _const8(value: int):
    return ir.Constant(_V_I8, [value] * 32)


i8x32_flip = _bytewise("i8x32_flip", lambda b, v: b.xor(v, _const8(0x80)))


@intrinsic
def i8x32_splat(typingctx, value):
    if not isinstance(value, types.IntegerLiteral):
        return None
    byte = value.literal_value & 0xFF

    def codegen(context, builder, signature, args):
        return _const8(byte)

    return i8x32(value), codegen


@intrinsic
def i32x8_zero(typingctx):
    def codegen(context, builder, signature, args):
        return ir.Constant(_V_I32, [0] * 8)

    return i32x8(), codegen


def _lanewise(name: str, vector_type, op):
    """An intrinsic (a, b) -> op(builder, a, b) on two vectors of vector_type."""

    def typer(typingctx, a, b):
        if not (a == vector_type and b == vector_type):
            return None

        def codegen(context, builder, signature, args):
            return op(builder, args[0], args[1])

        return vector_type(a, b), codegen

    typer.__name__ = name
    return intrinsic(typer)


i32x8_sub = _lanewise("i32x8_sub", i32x8, lambda b, x, y: b.sub(x, y))


def dot_u8s8_pair(name: str, acc_type, byte_type, lanes: int):
    """The two intrinsics `name`_vnni and `name`_portable: (acc, u, s) -> acc[j] + sum_{i<4}
    u8(u[4j+i]) * s8(s[4j+i]) for `lanes` int32 lanes (8: 256-bit, 16: 512-bit). The first is
    vpdpbusd (only where HAS_AVX512_VNNI), the second the same sums in generic LLVM IR."""
    v_i32 = ir.VectorType(_I32, lanes)

    def vnni(typingctx, acc, u, s):
        if not (acc == acc_type and u == byte_type and s == byte_type):
            return None

        def codegen(context, builder, signature, args):
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v_i32, [v_i32] * 3),
                                                f"llvm.x86.avx512.vpdpbusd.{32 * lanes}")
            acc_, u_, s_ = args
            return builder.call(fn, [acc_, builder.bitcast(u_, v_i32), builder.bitcast(s_, v_i32)])

        return acc_type(acc, u, s), codegen

    def portable(typingctx, acc, u, s):
        if not (acc == acc_type and u == byte_type and s == byte_type):
            return None

        def codegen(context, builder, signature, args):
            acc_, u_, s_ = args
            wide = ir.VectorType(_I32, 4 * lanes)
            products = builder.mul(builder.zext(u_, wide), builder.sext(s_, wide))
            for offset in range(4):  # lane j gets the products 4j + offset
                mask = ir.Constant(v_i32, [4 * j + offset for j in range(lanes)])
                acc_ = builder.add(acc_, builder.shuffle_vector(products, products, mask))
            return acc_

        return acc_type(acc, u, s), codegen

    vnni.__name__, portable.__name__ = f"{name}_vnni", f"{name}_portable"
    return intrinsic(vnni), intrinsic(portable)


dot_u8s8_vnni, dot_u8s8_portable = dot_u8s8_pair("dot_u8s8", i32x8, i8x32, 8)


@intrinsic
def f32x8_zero(typingctx):
    def codegen(context, builder, signature, args):
        return ir.Constant(_V_F32, [0.0] * 8)

    return f32x8(), codegen


def _fma(builder, acc, v, scales):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V_F32, [_V_F32] * 3), "llvm.fma.v8f32")
    return builder.call(fn, [builder.sitofp(v, _V_F32), scales, acc])


@intrinsic
def f32x8_fma_i32(typingctx, acc, v, scale):
    if not (acc == f32x8 and v == i32x8 and scale == types.float32):
        return None

    def codegen(context, builder, signature, args):
        return _fma(builder, args[0], args[1], _splat8(builder, args[2], _V_F32))

    return f32x8(acc, v, scale), codegen


@intrinsic
def f32x8_fma(typingctx, acc, a, b):
    if not (acc == f32x8 and a == f32x8 and b == f32x8):
        return None

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V_F32, [_V_F32] * 3), "llvm.fma.v8f32")
        return builder.call(fn, [args[1], args[2], args[0]])

    return f32x8(acc, a, b), codegen


@intrinsic
def f32x8_sum(typingctx, v):
    if v != f32x8:
        return None

    def codegen(context, builder, signature, args):
        (vec,) = args
        width = 8
        while width > 1:  # halves added lane by lane: 4 + 2 + 1 adds, always in this order
            width //= 2
            lo = builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(_I32, width), list(range(width))))
            hi = builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(_I32, width), list(range(width, 2 * width))))
            vec = builder.fadd(lo, hi)
        return builder.extract_element(vec, ir.Constant(_I32, 0))

    return types.float32(v), codegen


@intrinsic
def half_load(typingctx, a, i):
    if not (_bytes_1d(a) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        ptr = _byte_pointer(context, builder, signature.args[0], args[0], args[1])
        bits = builder.load(builder.bitcast(ptr, ir.IntType(16).as_pointer()), align=1)
        return builder.fpext(builder.bitcast(bits, ir.HalfType()), ir.FloatType())

    return types.float32(a, i), codegen


@intrinsic
def f32x8_load(typingctx, a, i):
    if not (isinstance(a, types.Array) and a.ndim == 1 and a.dtype == types.float32 and a.layout in "CA"
            and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        return builder.load(builder.bitcast(ptr, _V_F32.as_pointer()), align=4)

    return f32x8(a, i), codegen


f32x8_mul = _lanewise("f32x8_mul", f32x8, lambda b, x, y: b.fmul(x, y))

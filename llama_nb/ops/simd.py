"""SIMD vectors for Numba kernels: two 512-bit register types and the few intrinsics on them.

Numba has no vector types, and LLVM's auto-vectoriser cannot register-tile a matmul by itself (it
vectorises one loop, never a 4 x 4 block of dot products). These types let a kernel written in
plain Numba keep sixteen 16-lane accumulators in registers and say which instruction to use:

    f32x16   <16 x float>   sixteen float32 lanes
    bf16x32  <32 x i16>     thirty-two bf16 values (raw bits), i.e. sixteen adjacent pairs

    f32x16_zero() -> f32x16
    f32x16_load(a: float32[:], i) -> f32x16           a[i : i + 16], unaligned
    f32x16_store(a: float32[:], i, v)                 a[i : i + 16] = v, unaligned
    f32x16_splat(s: float32) -> f32x16                s in every lane
    f32x16_fma(acc, a, b) -> f32x16                   acc + a * b, lane by lane (llvm.fma: one rounding)
    f32x16_sum(v) -> float32                          v[0] + ... + v[15], a fixed pairwise tree
    f32x16_sums((v0, ..., v15)) -> f32x16             lane i = f32x16_sum(vi), the same tree
    f32x16_lane(v, i) -> float32                      v[i]
    f32x16_max(a, b) -> f32x16                        a if a > b else b, lane by lane (vmaxps)
    f32x16_div(a, b) -> f32x16                        a / b, lane by lane (vdivps: each lane as a
                                                      float32 division would round it)
    f32x16_max_lane(v) -> float32                     the largest lane (for v without NaN)
    bf16x32_load(a: uint16[:], i) -> bf16x32          a[i : i + 32], unaligned
    load16_f32(a, i) -> f32x16                        float32 of a[i : i + 16] for a weight row of any
                                                      plain format: uint16 bf16 bits, int16 half
                                                      bits, float32 (see bf16.widen)
    bf16x32_dot(acc, a, b) -> f32x16                  acc[j] += a[2j] * b[2j] + a[2j+1] * b[2j+1]
    prefetch(a, i)                                    a hint: fetch the cache line of a[i] into every
                                                      level (llvm.prefetch; no fault past the end)

The f32x16 operations are generic LLVM vector IR: they compile on any CPU (LLVM splits them into
AVX2 or SSE registers where there is no AVX-512). `bf16x32_dot` is the AVX512_BF16 instruction
`vdpbf16ps` (LLVM intrinsic `llvm.x86.avx512bf16.dpbf16ps.512`) and must only be compiled where
`HAS_AVX512_BF16` (llama_nb/ops/jit.py) is true: LLVM cannot lower it for any other CPU. vdpbf16ps multiplies bf16 pairs
exactly (a bf16 x bf16 product fits in float32) and adds them to the float32 lane with round to
nearest even; bf16 subnormal inputs count as zero and subnormal results are flushed (Intel SDM).

Loads take an index, not a slice: the caller guarantees i + 16 (or 32) <= a.size, no check is made.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model


class _F32x16(types.Type):
    def __init__(self):
        super().__init__(name="f32x16")


class _BF16x32(types.Type):
    def __init__(self):
        super().__init__(name="bf16x32")


f32x16 = _F32x16()
bf16x32 = _BF16x32()
_F32 = ir.FloatType()
_V_F32 = ir.VectorType(_F32, 16)
_V_I16 = ir.VectorType(ir.IntType(16), 32)


class _BFloatIR(ir.Type):
    """LLVM's `bfloat` scalar type, which llvmlite's IR builder does not provide."""

    def _to_string(self):
        return "bfloat"

    def __eq__(self, other):
        return isinstance(other, _BFloatIR)

    def __hash__(self):
        return hash(_BFloatIR)


_V_BF16 = ir.VectorType(_BFloatIR(), 32)


@register_model(_F32x16)
class _F32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V_F32)


@register_model(_BF16x32)
class _BF16x32Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V_I16)


def _element_pointer(context, builder, array_type, array, index, vector_type):
    """Pointer to array[index] as a pointer to vector_type (1-d contiguous arrays only)."""
    ary = context.make_array(array_type)(context, builder, array)
    ptr = builder.gep(ary.data, [index])
    return builder.bitcast(ptr, vector_type.as_pointer())


def _is_1d(a, dtype) -> bool:
    return isinstance(a, types.Array) and a.ndim == 1 and a.dtype == dtype and a.layout in "CA"


@intrinsic
def f32x16_zero(typingctx):
    def codegen(context, builder, signature, args):
        return ir.Constant(_V_F32, [0.0] * 16)

    return f32x16(), codegen


@intrinsic
def f32x16_load(typingctx, a, i):
    if not (_is_1d(a, types.float32) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1], _V_F32)
        return builder.load(ptr, align=4)

    return f32x16(a, i), codegen


@intrinsic
def bf16x32_load(typingctx, a, i):
    if not (_is_1d(a, types.uint16) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1], _V_I16)
        return builder.load(ptr, align=2)

    return bf16x32(a, i), codegen


@intrinsic
def f32x16_fma(typingctx, acc, a, b):
    if not (acc == f32x16 and a == f32x16 and b == f32x16):
        return None

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V_F32, [_V_F32] * 3), "llvm.fma.v16f32")
        acc_, a_, b_ = args
        return builder.call(fn, [a_, b_, acc_])

    return f32x16(acc, a, b), codegen


@intrinsic
def bf16x32_dot(typingctx, acc, a, b):
    if not (acc == f32x16 and a == bf16x32 and b == bf16x32):
        return None

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(_V_F32, [_V_F32, _V_BF16, _V_BF16])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.avx512bf16.dpbf16ps.512")
        acc_, a_, b_ = args
        return builder.call(fn, [acc_, builder.bitcast(a_, _V_BF16), builder.bitcast(b_, _V_BF16)])

    return f32x16(acc, a, b), codegen


@intrinsic
def f32x16_sum(typingctx, v):
    if v != f32x16:
        return None

    def codegen(context, builder, signature, args):
        (vec,) = args
        width = 16
        while width > 1:  # halves added lane by lane: 8 + 4 + 2 + 1 adds, always in this order
            width //= 2
            lo = builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(ir.IntType(32), width), list(range(width))))
            hi = builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(ir.IntType(32), width), list(range(width, 2 * width))))
            vec = builder.fadd(lo, hi)
        return builder.extract_element(vec, ir.Constant(ir.IntType(32), 0))

    return types.float32(v), codegen


@intrinsic
def f32x16_sums(typingctx, vs):
    """(v0, ..., v15) -> the f32x16 whose lane i is f32x16_sum(vi): the same additions in the same
    order, but with the 16 vectors transposed while they are added (each level adds lane halves of
    two vectors at once), so 15 vector adds and 30 shuffles instead of 16 x (4 adds + 8 shuffles)."""
    if not (isinstance(vs, types.UniTuple) and vs.count == 16 and vs.dtype == f32x16):
        return None

    def codegen(context, builder, signature, args):
        vecs = [builder.extract_value(args[0], i) for i in range(16)]
        width = 16  # every vector holds 16 // width groups of `width` lanes, each group one vi
        while width > 1:
            half = width // 2
            lo, hi = [], []  # of each group: the first half of its lanes, the second half
            for source in (0, 16):  # shufflevector numbers the lanes of the second vector 16..31
                for group in range(0, 16, width):
                    lo += [source + group + k for k in range(half)]
                    hi += [source + group + half + k for k in range(half)]
            lo_mask = ir.Constant(ir.VectorType(ir.IntType(32), 16), lo)
            hi_mask = ir.Constant(ir.VectorType(ir.IntType(32), 16), hi)
            vecs = [
                builder.fadd(builder.shuffle_vector(a, b, lo_mask), builder.shuffle_vector(a, b, hi_mask))
                for a, b in zip(vecs[0::2], vecs[1::2])
            ]
            width = half
        return vecs[0]

    return f32x16(vs), codegen


@intrinsic
def f32x16_lane(typingctx, v, i):
    """v[i] (i in 0..15, not checked)."""
    if not (v == f32x16 and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        index = builder.trunc(args[1], ir.IntType(32)) if args[1].type.width > 32 else args[1]
        return builder.extract_element(args[0], index)

    return types.float32(v, i), codegen


@intrinsic
def load16_f32(typingctx, a, i):
    """float32(a[i : i + 16]) for a weight row: uint16 bf16 bits (each the high half of a float32),
    int16 IEEE half bits (vcvtph2ps), or float32 (a plain load)."""
    dtype = getattr(a, "dtype", None)
    if not (dtype in (types.uint16, types.int16, types.float32) and _is_1d(a, dtype) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        if dtype == types.float32:
            return builder.load(_element_pointer(context, builder, signature.args[0], args[0], args[1], _V_F32), align=4)
        v_i16 = ir.VectorType(ir.IntType(16), 16)
        bits = builder.load(_element_pointer(context, builder, signature.args[0], args[0], args[1], v_i16), align=2)
        if dtype == types.int16:
            return builder.fpext(builder.bitcast(bits, ir.VectorType(ir.HalfType(), 16)), _V_F32)
        v_i32 = ir.VectorType(ir.IntType(32), 16)
        return builder.bitcast(builder.shl(builder.zext(bits, v_i32), ir.Constant(v_i32, [16] * 16)), _V_F32)

    return f32x16(a, i), codegen


@intrinsic
def f32x16_max(typingctx, a, b):
    """a[j] if a[j] > b[j] else b[j], lane by lane: one vmaxps (a NaN in either lane gives b[j])."""
    if not (a == f32x16 and b == f32x16):
        return None

    def codegen(context, builder, signature, args):
        a_, b_ = args
        return builder.select(builder.fcmp_ordered(">", a_, b_), a_, b_)

    return f32x16(a, b), codegen


@intrinsic
def f32x16_div(typingctx, a, b):
    """a[j] / b[j], lane by lane, correctly rounded (the same bits as 16 scalar divisions)."""
    if not (a == f32x16 and b == f32x16):
        return None

    def codegen(context, builder, signature, args):
        return builder.fdiv(args[0], args[1])

    return f32x16(a, b), codegen


@intrinsic
def f32x16_max_lane(typingctx, v):
    """The largest lane of v, by the same `>` select tree (meaningful when v has no NaN)."""
    if v != f32x16:
        return None

    def codegen(context, builder, signature, args):
        (vec,) = args
        width = 16
        while width > 1:
            width //= 2
            lo = builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(ir.IntType(32), width), list(range(width))))
            hi = builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(ir.IntType(32), width), list(range(width, 2 * width))))
            vec = builder.select(builder.fcmp_ordered(">", lo, hi), lo, hi)
        return builder.extract_element(vec, ir.Constant(ir.IntType(32), 0))

    return types.float32(v), codegen


@intrinsic
def f32x16_splat(typingctx, value):
    """All 16 lanes = value (a float32)."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        lane0 = builder.insert_element(ir.Constant(_V_F32, ir.Undefined), args[0], ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(lane0, lane0, ir.Constant(ir.VectorType(ir.IntType(32), 16), [0] * 16))

    return f32x16(value), codegen


@intrinsic
def f32x16_store(typingctx, a, i, v):
    """a[i : i + 16] = v, unaligned (a: float32[:], i + 16 <= a.size)."""
    if not (_is_1d(a, types.float32) and isinstance(i, types.Integer) and v == f32x16):
        return None

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1], _V_F32)
        builder.store(args[2], ptr, align=4)
        return context.get_dummy_value()

    return types.none(a, i, v), codegen


@intrinsic
def prefetch(typingctx, a, i):
    """Hint the CPU to bring the cache line holding a[i] into every cache level (llvm.prefetch:
    read, locality 3, data). For streams whose next rows the hardware prefetcher does not fetch
    early enough (ops/matvec.py matvec_bf16dot_rows). A prefetch never faults."""
    if not (isinstance(a, types.Array) and a.ndim == 1 and a.layout in "CA" and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        i8 = ir.IntType(8)
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1], i8)
        i32 = ir.IntType(32)
        hint = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [pointer.type, i32, i32, i32]),
                                              "llvm.prefetch.p0")
        builder.call(hint, [pointer, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.none(a, i), codegen

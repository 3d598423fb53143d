"""AMX tiles for Numba kernels: the few intrinsics of Intel's Advanced Matrix Extensions that the
bf16 prefill product needs (ops/matmul_amx.py).

An AMX unit has eight tile registers tmm0..tmm7 of up to 16 rows x 64 bytes, and one instruction,
TDPBF16PS, that multiplies two tiles of bf16 pairs into a tile of float32 sums:

    C[m, n] += sum over p < 16 of  A[m, 2p] * B[p, 2n] + A[m, 2p + 1] * B[p, 2n + 1]
    C float32[16, 16]    A bf16[16, 32] (16 rows of 32 values)    B bf16[16, 32] (16 rows of 16 pairs)

that is 16 x 16 x 32 = 8,192 multiply-adds per instruction (vdpbf16ps: 32). B holds its second
operand "VNNI-packed": row p of B is the pairs (k = 2p, 2p + 1) of 16 columns side by side.

    tile_config(cfg: uint8[64])                      ldtilecfg: palette 1, rows and bytes per row of
                                                     each tile (TILE_CONFIG); once per thread before
                                                     the first tile instruction
    tile_release()                                   tilerelease: back to the INIT state (the kernel
                                                     no longer saves 8 KB of tiles at each switch)
    tile_zero(t)                                     tilezero tmm{t}
    tile_load(t, a, i, stride)                       tileloadd: tmm{t} row r = the 64 bytes at
                                                     &a.flat[i] + r * stride (stride in bytes)
    tile_store(t, a, i, stride)                      tilestored: the reverse
    tile_dpbf16(c, a, b)                             tdpbf16ps tmm{c} += tmm{a} . tmm{b}
    tile_dpbusd(c, a, b), tile_dpbssd(c, a, b)       AMX-INT8's tdpbusd, tdpbssd: int32 sums of
                                                     bytes, A u8 or s8, B s8, four per product:
                                                     C[m, n] += sum over p of sum over i < 4 of
                                                     A[m, 4p + i] * B[p, 4n + i] (A's rows of
                                                     4 x (B's rows) bytes, B's rows 64 bytes)
    stack_array(n, dtype) -> dtype[n]                an uninitialised array on the calling
                                                     thread's stack (64-byte aligned; n a literal):
                                                     a tile's store area or a config, allocating
                                                     nothing (the array is valid within the call)

Tile numbers are compile-time constants (LLVM takes them as immediates): pass integer literals.
Arrays must be C-contiguous; i is a flat element index; no bounds are checked.

The instructions are LLVM's `llvm.x86.*` intrinsics on architectural tiles (as clang's
`_tile_loadd` and friends lower), compiled only where `HAS_AMX_BF16` (ops/jit.py) is true (the int8 products: `HAS_AMX_INT8`).
Linux hands out tile state only to a process that asks for it (arch_prctl ARCH_REQ_XCOMP_PERM,
XFEATURE_XTILEDATA; Linux 5.16+): `request_amx()` asks, once, before any kernel runs; a tile
instruction without that permission kills the process with SIGILL. Numerics (Intel SDM):
products of bf16 pairs in float32, round to nearest even, bf16 subnormal inputs count as zero
and subnormal results are flushed, as vdpbf16ps does.
"""

from __future__ import annotations

import ctypes
import sys

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.arrayobj import populate_array

_SYS_ARCH_PRCTL = 158  # x86-64 Linux
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18

TILE_ROWS, TILE_BYTES = 16, 64  # every tile used here is full size: 16 rows of 64 bytes


def tile_config_bytes() -> np.ndarray:
    """The 64-byte ldtilecfg operand: palette 1, start row 0, tiles 0-7 of 16 rows x 64 bytes."""
    cfg = np.zeros(64, np.uint8)
    cfg[0] = 1
    cfg[16:32].view(np.uint16)[:8] = TILE_BYTES  # bytes per row of tile i: offset 16 + 2 i
    cfg[48:56] = TILE_ROWS  # rows of tile i: offset 48 + i
    return cfg


TILE_CONFIG = tile_config_bytes()


def request_amx() -> bool:
    """Ask Linux for the tile-data state (once per process; threads share it). False where it is
    refused or there is no such call (another OS, an old kernel): the kernels then stay unused."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


_I8, _I64, _VOID = ir.IntType(8), ir.IntType(64), ir.VoidType()
_P8 = _I8.as_pointer()


def _pointer(context, builder, array_type, array, index):
    """&array.flat[index] as an i8* (C-contiguous arrays)."""
    ary = context.make_array(array_type)(context, builder, array)
    return builder.bitcast(builder.gep(ary.data, [index]), _P8)


def _call(builder, name, arg_types, args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VOID, arg_types), name)
    builder.call(fn, args)


def _tile(number) -> int | None:
    ok = isinstance(number, types.IntegerLiteral) and 0 <= number.literal_value < 8
    return number.literal_value if ok else None


def _c_array(a) -> bool:
    return isinstance(a, types.Array) and a.layout == "C"


@intrinsic
def tile_config(typingctx, cfg):
    if not (_c_array(cfg) and cfg.dtype == types.uint8):
        return None

    def codegen(context, builder, signature, args):
        _call(builder, "llvm.x86.ldtilecfg", [_P8], [_pointer(context, builder, signature.args[0], args[0], _I64(0))])
        return context.get_dummy_value()

    return types.none(cfg), codegen


@intrinsic
def tile_release(typingctx):
    def codegen(context, builder, signature, args):
        _call(builder, "llvm.x86.tilerelease", [], [])
        return context.get_dummy_value()

    return types.none(), codegen


@intrinsic(prefer_literal=True)
def tile_zero(typingctx, t):
    number = _tile(t)
    if number is None:
        return None

    def codegen(context, builder, signature, args):
        _call(builder, "llvm.x86.tilezero", [_I8], [_I8(number)])
        return context.get_dummy_value()

    return types.none(t), codegen


def _memory_intrinsic(name: str, llvm_name: str):
    def typer(typingctx, t, a, i, stride):
        number = _tile(t)
        if number is None or not (_c_array(a) and isinstance(i, types.Integer) and isinstance(stride, types.Integer)):
            return None

        def codegen(context, builder, signature, args):
            ptr = _pointer(context, builder, signature.args[1], args[1], args[2])
            step = context.cast(builder, args[3], signature.args[3], types.int64)
            _call(builder, llvm_name, [_I8, _P8, _I64], [_I8(number), ptr, step])
            return context.get_dummy_value()

        return types.none(t, a, i, stride), codegen

    typer.__name__ = typer.__qualname__ = name  # Numba keys an intrinsic by its function's name
    return intrinsic(prefer_literal=True)(typer)


tile_load = _memory_intrinsic("tile_load", "llvm.x86.tileloadd64")
tile_store = _memory_intrinsic("tile_store", "llvm.x86.tilestored64")


def _product_intrinsic(name: str, llvm_name: str):
    def typer(typingctx, c, a, b):
        numbers = [_tile(v) for v in (c, a, b)]
        if None in numbers:
            return None

        def codegen(context, builder, signature, args):
            _call(builder, llvm_name, [_I8] * 3, [_I8(n) for n in numbers])
            return context.get_dummy_value()

        return types.none(c, a, b), codegen

    typer.__name__ = typer.__qualname__ = name
    return intrinsic(prefer_literal=True)(typer)


tile_dpbf16 = _product_intrinsic("tile_dpbf16", "llvm.x86.tdpbf16ps")
tile_dpbusd = _product_intrinsic("tile_dpbusd", "llvm.x86.tdpbusd")  # AMX-INT8: A u8, B s8
tile_dpbssd = _product_intrinsic("tile_dpbssd", "llvm.x86.tdpbssd")  # AMX-INT8: A s8, B s8


@intrinsic(prefer_literal=True)
def stack_array(typingctx, n, dtype):
    if not (isinstance(n, types.IntegerLiteral) and n.literal_value > 0 and isinstance(dtype, types.NumberClass)):
        return None
    count, array_type = n.literal_value, types.Array(dtype.instance_type, 1, "C")

    def codegen(context, builder, signature, args):
        element = context.get_data_type(array_type.dtype)
        with builder.goto_entry_block():  # once per function, not per loop iteration
            storage = builder.alloca(ir.ArrayType(element, count))
            storage.align = 64
        intp = context.get_value_type(types.intp)
        itemsize = intp(context.get_abi_sizeof(element))
        ary = context.make_array(array_type)(context, builder)
        populate_array(ary, data=builder.bitcast(storage, element.as_pointer()), shape=[intp(count)],
                       strides=[itemsize], itemsize=itemsize, meminfo=None)
        return ary._getvalue()

    return array_type(n, dtype), codegen

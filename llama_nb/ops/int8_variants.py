"""One kernel source, compiled with vpdpbusd and with a portable int8 dot: the block-format kernels'
variants (ops/quant_dot.py for decode, ops/quant_tiles.py for prefill).

A kernel calls `dot_u8s8` (256-bit) and `dot64_u8s8` (512-bit) as globals. `variants` copies it
once per entry of DOTS, with those names bound to the VNNI intrinsics (only where
HAS_AVX512_VNNI: LLVM cannot lower them elsewhere) or to their portable twins in generic LLVM IR,
under a name of its own (so Numba's on-disk cache keeps both; see jit._serial_copy). Other names
can be bound the same way (`bound`: a row decoder, a flag), and inlined helpers that call them are
copied into the same scope (`helpers`), so a whole family of kernels is written once.
"""

from __future__ import annotations

import types as pytypes

from llama_nb.ops.jit import HAS_AVX512_VNNI, Twins, njit_inline, twins
from llama_nb.ops.simd_int8 import dot_u8s8_portable, dot_u8s8_vnni
from llama_nb.ops.simd_int8x64 import dot64_u8s8_portable, dot64_u8s8_vnni

PORTABLE = {"dot_u8s8": dot_u8s8_portable, "dot64_u8s8": dot64_u8s8_portable}
VNNI = {"dot_u8s8": dot_u8s8_vnni, "dot64_u8s8": dot64_u8s8_vnni}
DOTS = {"portable": PORTABLE, **({"vnni": VNNI} if HAS_AVX512_VNNI else {})}


def _renamed(fn, scope: dict, suffix: str):
    copy = pytypes.FunctionType(fn.__code__, scope, f"{fn.__name__}_{suffix}", fn.__defaults__, fn.__closure__)
    copy.__qualname__ = f"{fn.__qualname__}_{suffix}"
    copy.__doc__ = fn.__doc__
    return copy


def renamed_in(fn, tag: str, bound: dict, helpers: tuple = ()):
    """A copy of the Python function fn, named fn_tag, that sees the names in `bound` as its
    globals; the `helpers` (njit_inline dispatchers fn calls by their global names) are copied into
    the same scope, so they see the bindings too. Jit the copy with the decorator fn needs."""
    scope = {**fn.__globals__, **bound}
    for helper in helpers:  # a copy of each helper that sees the same bindings (and the other copies)
        scope[helper.py_func.__name__] = njit_inline(_renamed(helper.py_func, scope, tag))
    return _renamed(fn, scope, tag)


def variants(fn, name: str = "", bound: dict | None = None, helpers: tuple = ()) -> dict[str, Twins]:
    """{dots name: Twins of fn} with dot_u8s8 and dot64_u8s8 bound to DOTS[dots name], and the names
    in `bound` to their values; `helpers` (njit_inline dispatchers fn calls by their global names)
    are copied into the same scope. `name` distinguishes several kernels made from one fn."""
    return {suffix: twins(renamed_in(fn, f"{name}_{suffix}" if name else suffix, {**dots, **(bound or {})}, helpers))
            for suffix, dots in DOTS.items()}

"""argmax: the index of the largest element of x, the first one on ties, as a Python int.

x  float32[N]   (N >= 1), typically the 128256 logits of the last token

NaN: like np.argmax, a NaN counts as larger than everything, so the index of the FIRST NaN is
returned. Logits with a NaN mean the forward pass is broken; returning a NaN's index (rather than
quietly skipping it, as nanargmax would) keeps that visible and matches the NumPy reference.

Vectorised with integer keys: `ordered_key(v)` maps each float32 to an int32 in the same order
(-inf < ... < -0 < +0 < ... < +inf < every NaN), so the maximum is an integer max reduction, and
"first index holding it" is an integer min reduction over `i if x[i] == max else N`; LLVM
vectorises both (a float compare-and-branch loop does not vectorise: NaN and ties make its order
matter). Two passes over x (500 KB for 128256 logits: L2 resident).
The first pass (max_key) runs on explicit 16-lane vectors (ops/simd.py) with 4 independent chains.
One thread: a two-level parallel reduction (chunk winners combined in order, exact since it is a
max) was written and measured, and dropped: waking the second thread costs about what the whole
scan costs (5 us), and it stalls for milliseconds when the cores are oversubscribed (measured:
an empty `prange` launch took 6-22 ms while other jobs held both cores).
Measured, 1 x 128256, one process, alternating, best of 7 x 100 calls: previous kernel
(compare-and-branch loop, 8 parallel chunks) 38 us (94 us when the cores were busy), np.argmax
5.0-5.8 us, integer keys in both passes 11.4 us, this kernel 4.4-4.9 us.
"""

from __future__ import annotations

import numpy as np

from llama_nb.ops.jit import njit_inline, njit_serial
from llama_nb.ops.bf16 import _f32_bits
from llama_nb.ops.fastexp import _f32_from_bits
from llama_nb.ops.registry import register
from llama_nb.ops.simd import f32x16_fma, f32x16_load, f32x16_max, f32x16_max_lane, f32x16_sum, f32x16_zero

_NAN_KEY = np.int32(0x7FFFFFFF)


@njit_inline
def ordered_key(v):
    """int32 in the order of the float32 v: larger float, larger key; -0 = +0; every NaN above +inf."""
    s = np.int32(_f32_bits(v))
    key = s ^ ((s >> np.int32(31)) & np.int32(0x7FFFFFFF))  # negative floats: flip the magnitude
    # Two selects, no branch: written this way LLVM vectorises the loops calling it (measured:
    # without the -0 select, LLVM turned the NaN select into a branch and the loop ran 3x slower).
    key = np.int32(0) if v == 0 else key
    return _NAN_KEY if v != v else key


@njit_inline
def max_key(x):
    """ordered_key of max(x), NaN counting as the largest: _NAN_KEY if x holds a NaN.

    Fast path, for finite x: a running vmaxps over 16 lanes, and a probe `p + x * 0` that turns
    NaN as soon as x holds a NaN or an infinity (finite * 0 is +-0; inf * 0 and NaN * 0 are NaN).
    Only then are the keys compared one by one (an integer max reduction, also vectorised but
    3x slower: 9 us vs ~3 us for 128256 floats, measured).
    """
    n = x.size
    n_vec = n // 64 * 64  # four independent chains: vmaxps and the FMA have 2-4 cycles of latency
    zero = f32x16_zero()
    t0 = t1 = t2 = t3 = f32x16_load(x, 0) if n_vec > 0 else zero
    p0 = p1 = p2 = p3 = zero
    for i in range(0, n_vec, 64):
        v0, v1, v2, v3 = f32x16_load(x, i), f32x16_load(x, i + 16), f32x16_load(x, i + 32), f32x16_load(x, i + 48)
        t0, t1, t2, t3 = f32x16_max(t0, v0), f32x16_max(t1, v1), f32x16_max(t2, v2), f32x16_max(t3, v3)
        p0, p1, p2, p3 = f32x16_fma(p0, v0, zero), f32x16_fma(p1, v1, zero), f32x16_fma(p2, v2, zero), f32x16_fma(p3, v3, zero)
    top = f32x16_max(f32x16_max(t0, t1), f32x16_max(t2, t3))
    probe = f32x16_fma(f32x16_fma(p0, p1, zero), p2, p3)  # NaN if any lane of any probe is
    finite = f32x16_sum(probe) == 0
    best = ordered_key(f32x16_max_lane(top)) if n_vec > 0 else np.int32(-0x80000000)
    for i in range(n_vec, n):
        v = x[i]
        finite = finite and (v - v == 0)
        best = max(best, ordered_key(v))
    if finite:
        return best
    best = np.int32(-0x80000000)
    for i in range(n):
        best = max(best, ordered_key(x[i]))
    return best


@njit_inline
def float_of_key(key):
    """The float32 of an ordered_key (NaN for _NAN_KEY)."""
    if key == _NAN_KEY:
        return np.float32(np.nan)
    bits = key ^ ((key >> np.int32(31)) & np.int32(0x7FFFFFFF))  # the key map is its own inverse
    return _f32_from_bits(np.int32(bits))


@njit_serial
def _argmax(chunk):
    """Index of the first maximum of chunk."""
    n = np.int32(chunk.size)
    best = max_key(chunk)
    first = n
    # The first index holding the maximum: an integer min reduction, vectorised (a loop with an
    # early exit is not). Floats compared, not keys, so -0 and +0 tie as in np.argmax.
    if best == _NAN_KEY:
        for i in range(n):
            v = chunk[i]
            first = min(first, np.int32(i) if v != v else n)
    else:
        top = float_of_key(best)
        for i in range(n):
            first = min(first, np.int32(i) if chunk[i] == top else n)
    return first


@register("argmax", "numba")
def argmax(x: np.ndarray) -> int:
    """Index of the first maximum of x (of the first NaN, if x has one)."""
    return int(_argmax(x))

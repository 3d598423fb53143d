"""Compile policy for every kernel, in one place.

`njit_serial` and `njit_parallel` are the only decorators kernel files use, so caching, fastmath
and error models are switched here and nowhere else. `cache=True` writes compiled machine code
beside the module (or under $NUMBA_CACHE_DIR), so a second process compiles nothing.
`fastmath` stays off: reductions must be reproducible and equal the NumPy reference's order of
magnitude of error, and NaN/Inf must survive the bf16 conversions.
"""

import os

from numba import njit

CACHE = os.environ.get("LLAMA_NB_JIT_CACHE", "1") != "0"


def njit_serial(fn):
    return njit(cache=CACHE, nogil=True, error_model="numpy")(fn)


def njit_parallel(fn):
    return njit(parallel=True, cache=CACHE, nogil=True, error_model="numpy")(fn)


def njit_inline(fn):
    """For small helpers called from kernels (bf16 widening): always inlined into the caller."""
    return njit(inline="always", cache=CACHE, error_model="numpy")(fn)

"""Compile policy for every kernel, in one place.

The decorators defined here are the only ones kernel files use, so caching, fastmath
and error models are switched here and nowhere else. `cache=True` writes compiled machine code
beside the module (or under $NUMBA_CACHE_DIR), so a second process compiles nothing.
`fastmath` stays off, except for one narrow pair of flags in `njit_parallel_dot` (below): NaN and
Inf must survive the bf16 conversions and every comparison, so `nnan`/`ninf`/`nsz` are never set.
"""

import os

from numba import njit

# Numba checks a cached kernel against its own source file only: after editing a helper that
# kernels inline from another file (bf16.py), run once with LLAMA_NB_JIT_CACHE=0 or delete the
# __pycache__/*.nbi/*.nbc files, or the kernels keep the old helper.
CACHE = os.environ.get("LLAMA_NB_JIT_CACHE", "1") != "0"


def njit_serial(fn):
    return njit(cache=CACHE, nogil=True, error_model="numpy")(fn)


def njit_parallel(fn):
    return njit(parallel=True, cache=CACHE, nogil=True, error_model="numpy")(fn)


# Dot-product kernels (matmul, attention, rmsnorm's sum of squares) need LLVM to reorder a sum:
# without `reassoc` a float reduction `acc += a[k] * b[k]` runs one add at a time (4-cycle latency
# each) and never vectorises. With it, LLVM keeps 16-wide float32 partial sums (the "lanes") and
# adds them at the end; `contract` lets it fuse the multiply-add. Both only change the summation
# order and rounding of intermediate sums, within the tolerances of ops/cases.py, and the result is
# still deterministic for a given build. Measured (2 cores, AMD EPYC, 1x4096x14336 bf16 matvec):
# 1 thread 3.2 GB/s without, 39 GB/s with (= the plain-read bandwidth of the same machine).
DOT_FASTMATH = frozenset({"reassoc", "contract"})


def njit_parallel_dot(fn):
    return njit(parallel=True, cache=CACHE, nogil=True, error_model="numpy", fastmath=set(DOT_FASTMATH))(fn)


def njit_serial_dot(fn):
    return njit(cache=CACHE, nogil=True, error_model="numpy", fastmath=set(DOT_FASTMATH))(fn)


def njit_inline(fn):
    """For small helpers called from kernels (bf16 widening): always inlined into the caller."""
    return njit(inline="always", cache=CACHE, error_model="numpy")(fn)

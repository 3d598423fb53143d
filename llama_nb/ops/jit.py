"""The compile policy, in one place: decorators, CPU features, the on-disk cache, when to go
parallel, the warm-up, and the cold-start helper process.

Decorators. Kernel files use only the ones defined here, so caching, fastmath and error models are
switched here and nowhere else. `cache=True` writes compiled machine code beside the module (or
under $NUMBA_CACHE_DIR), so a second process compiles nothing; where no cache folder is writable
(a read-only install and home) kernels still compile, uncached, and `CACHE_NOTE` says why.
`fastmath` stays off, except for one narrow pair of flags in the *_dot decorators: NaN and Inf must
survive the conversions and every comparison, so `nnan`/`ninf`/`nsz` are never set.

CPU features. `HAS_AVX512_BF16`: whether the bf16 dot-product instruction may be compiled
(NUMBA_CPU_FEATURES when set, for portable caches, else the host's; LLAMA_NB_NO_BF16DOT=1 forces
the portable float32 path). Kernel files register their vdpbf16ps implementations only then.
`HAS_AVX512_VNNI` likewise for vpdpbusd (LLAMA_NB_NO_VNNI=1: the portable int8 path), and
`HAS_AMX_BF16` for the AMX tiles of bf16 prefill, `HAS_AMX_INT8` for the block formats' (LLAMA_NB_NO_AMX=1: neither).

Going parallel. `parallel_pays(nbytes)`: an op runs its parallel kernel only when it moves at least
PARALLEL_MIN_BYTES; below, its serial twin (the same code compiled serial). A parallel launch
costs microseconds on an idle machine, and milliseconds when another process holds a core (every
region waits for the descheduled thread): small work must not pay that. Measured in
bench/threads.py (see bench/README.md).

Warm-up. `warm(ops, ...)` calls every implementation an OpSet chose, for the weight formats a model
uses, on small arrays made from the op's declaration (dtypes and layouts as in the real call;
Numba specialises on types, not sizes), on both sides of every size at which the implementation
declared it switches kernels (`register(..., switches=)`): after it, no forward pass compiles.

Cold start. On an empty cache (the first run after installing), `warm` compiles the prefill half
(T > 1) in a helper process on the other core while it compiles the decode half itself; Numba
writes each cache entry atomically, so the caller then loads the helper's. Cold or warm is read
from Numba's own cache statistics of a probe kernel compiled last by every complete warm-up (no
timing guess), and the helper dies with its parent (compile_helper.py: PR_SET_PDEATHSIG on Linux).
Measured (2 cores, demo model, empty cache): compile 14.6 s alone, 8.5 s with the helper.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from typing import Iterable, Mapping

import numpy as np
from numba import njit
from numba.core import config

from llama_nb.errors import LlamaNbError
from llama_nb.formats import get_format
from llama_nb.ops import registry
from llama_nb.ops.simd_amx import request_amx

# ------------------------------------------------------------------------------ the decorators


def _cache_works() -> tuple[bool, str]:
    """Whether Numba can find a writable cache folder for kernels in this package."""
    if os.environ.get("LLAMA_NB_JIT_CACHE", "1") == "0":
        return False, ""  # asked for: nothing to explain
    from numba.core.caching import FunctionCache

    try:
        FunctionCache(_probe.py_func)
    except RuntimeError as exc:
        return False, f"no writable cache folder for compiled kernels ({' '.join(str(exc).split())[:160]}); " \
                      f"set NUMBA_CACHE_DIR to a writable folder to keep them between runs"
    return True, ""


def _probe_source(x):
    return x.size


_probe = njit(_probe_source)  # uncached twin, only for _cache_works' question
# Numba checks a cached kernel against its own source file only: after editing a helper that
# kernels inline from another file (bf16.py), run once with LLAMA_NB_JIT_CACHE=0 or delete the
# __pycache__/*.nbi/*.nbc files, or the kernels keep the old helper.
CACHE, CACHE_NOTE = _cache_works()


def njit_serial(fn):
    return njit(cache=CACHE, nogil=True, error_model="numpy")(fn)


def njit_parallel(fn):
    return njit(parallel=True, cache=CACHE, nogil=True, error_model="numpy")(fn)


# Dot-product kernels (matmul, attention, rmsnorm's sum of squares) need LLVM to reorder a sum:
# without `reassoc` a float reduction `acc += a[k] * b[k]` runs one add at a time (4-cycle latency
# each) and never vectorises. With it, LLVM keeps 16-wide float32 partial sums (the "lanes") and
# adds them at the end; `contract` lets it fuse the multiply-add. Both only change the summation
# order and rounding of intermediate sums, within the declared tolerances, and the result is
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


# ----------------------------------------------------------------------------- CPU features


def cpu_features() -> str:
    """The features Numba compiles for, as numba.core.codegen.CPUCodegen decides them:
    NUMBA_CPU_FEATURES if set (portable caches), else the host's, whatever NUMBA_CPU_NAME says."""
    if config.CPU_FEATURES is not None:
        return config.CPU_FEATURES
    import llvmlite.binding as llvm_binding

    return llvm_binding.get_host_cpu_features().flatten()


def host_cpu_name() -> str:
    """LLVM's name of the CPU this process runs on ("znver5", "sapphirerapids", ...), for tuning that
    follows the memory system, not the instruction set (the prefetch distances of ops/quant_dot.py):
    the host's, whatever NUMBA_CPU_NAME asks Numba to compile for."""
    import llvmlite.binding as llvm_binding

    return llvm_binding.get_host_cpu_name()


HAS_AVX512_BF16 = "+avx512bf16" in cpu_features().split(",") and os.environ.get("LLAMA_NB_NO_BF16DOT", "0") == "0"
# vpdpbusd (256- and 512-bit) (AVX512_VNNI + AVX512VL) for the int8 products of the block formats;
# LLAMA_NB_NO_VNNI=1 forces their portable int8 path (ops/simd_int8.py).
HAS_AVX512_VNNI = {"+avx512vnni", "+avx512vl"} <= set(cpu_features().split(",")) and \
    os.environ.get("LLAMA_NB_NO_VNNI", "0") == "0"
# AMX tiles (AMX-TILE + AMX-BF16) for the bf16 prefill products (ops/matmul_amx.py), where the
# kernel lets this process use them (simd_amx.request_amx, asked here, at the first import of any
# kernel module); LLAMA_NB_NO_AMX=1 keeps prefill on the vdpbf16ps tiles.
HAS_AMX_BF16 = HAS_AVX512_BF16 and {"+amx-tile", "+amx-bf16"} <= set(cpu_features().split(",")) and \
    os.environ.get("LLAMA_NB_NO_AMX", "0") == "0" and request_amx()
# AMX-INT8 (tdpbusd, tdpbssd) for the block formats' prefill products (ops/quant_amx.py)
HAS_AMX_INT8 = HAS_AMX_BF16 and HAS_AVX512_VNNI and "+amx-int8" in cpu_features().split(",")

# ------------------------------------------------------------------------------ going parallel

# Measured on the 2-core dev VM while other jobs held the cores (bench/threads.py has the
# whole-model numbers): a prange launch over 256 floats took 43-158 us at 2 threads and 9 us at 1;
# the same loop compiled serial 0.2 us. A memory-bound op gains at most 1.5x from the second core
# (30 -> 45 GB/s), so it pays for a launch only when it moves megabytes, and on a busy machine
# hardly ever: 4 MB keeps the demo model (and 1B's wk/wv) serial, and 1B's wq/wo, FFN and output
# products parallel.
PARALLEL_MIN_BYTES = 4 << 20
_threads = config.NUMBA_NUM_THREADS  # the Numba thread count of the pass running now (see threads())


def _start_thread_pool() -> None:
    # Kernels index per-thread scratch with numba.get_thread_id(), in their serial twins too. A
    # serial twin loaded from the on-disk cache calls into the threading layer without starting it
    # (a freshly compiled one starts it while compiling): if no parallel kernel ran before, that
    # call segfaults (measured). get_num_threads() starts the layer once, here, for every kernel.
    import numba

    numba.get_num_threads()


_start_thread_pool()


class Twins:
    """One kernel source compiled twice: `parallel` (prange runs on Numba's threads) and `serial`
    (prange is a plain range); `pick(nbytes)` chooses by parallel_pays."""

    def __init__(self, parallel, serial):
        self.parallel, self.serial = parallel, serial
        _TWINS.append(self)

    def pick(self, nbytes: int):
        return self.parallel if parallel_pays(nbytes) else self.serial

    def sync(self) -> None:
        """Compile each variant for every signature the other has (warm-up: both are ready)."""
        for a, b in ((self.parallel, self.serial), (self.serial, self.parallel)):
            for sig in list(a.signatures):
                if sig not in b.signatures:
                    b.compile(sig)


_TWINS: list[Twins] = []


def _serial_copy(fn):
    """`fn` under another qualified name: Numba's on-disk cache names its entries after the function
    (qualname and line), not after the compile flags, so the serial twin of a parallel kernel must
    not share the name, or each would load the other's machine code (measured: a segfault)."""
    import types as pytypes

    copy = pytypes.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial", fn.__defaults__, fn.__closure__)
    copy.__qualname__ = fn.__qualname__ + "_serial"
    copy.__doc__ = fn.__doc__
    return copy


def twins_dot(fn) -> Twins:
    """njit_parallel_dot and njit_serial_dot of the same function."""
    return Twins(njit_parallel_dot(fn), njit_serial_dot(_serial_copy(fn)))


def twins(fn) -> Twins:
    """njit_parallel and njit_serial of the same function."""
    return Twins(njit_parallel(fn), njit_serial(_serial_copy(fn)))


def parallel_pays(nbytes: int) -> bool:
    """Whether work that moves `nbytes` is worth a parallel launch, in the pass running now."""
    return _threads > 1 and nbytes >= PARALLEL_MIN_BYTES


@contextlib.contextmanager
def threads(n: int):
    """Within: Numba uses `n` threads on this thread, and parallel_pays knows it (a model's pass:
    another model, or the rest of the process, keeps its own count). Cheap when n is unchanged."""
    global _threads
    import numba

    outer = _threads
    if n != outer:
        numba.set_num_threads(n)
        _threads = n
    try:
        yield
    finally:
        if _threads != outer:
            numba.set_num_threads(outer)
            _threads = outer


# ---------------------------------------------------------------------------------- warm-up


def warm_cases(impl, spec, model_dims: Mapping[str, int]) -> list[dict[str, int]]:
    """The dims to compile `impl` with: the op's small `warm` dims (model dims such as Dh, which
    pick code paths, override them), then each declared switch crossed: a value past it."""
    base = {**spec.warm, **{k: v for k, v in model_dims.items() if k in spec.warm}}
    cases = [base]
    for dim, bounds in impl.switches.items():
        for bound in bounds:
            past = [{**c, dim: bound + 1} for c in cases if c.get(dim, 0) <= bound]
            at = [{**c, dim: min(c.get(dim, bound), bound)} for c in cases if c.get(dim, 0) > bound]
            cases = cases + past + at
    unique = []
    for case in cases:
        if case not in unique:
            unique.append(case)
    return unique


def warm(ops, formats: Iterable[str], model_dims: Mapping[str, int], used_ops: Iterable[str], *,
         weights_writeable: bool = True, prefill: bool | None = None) -> None:
    """Call every implementation `ops` chose for `used_ops` and these weight formats, on its warm-up
    cases (prefill=True: only those with T > 1; False: only the others; None: all)."""
    formats, used_ops = set(formats), set(used_ops)
    for (op, fmt, act), name in sorted(ops.slots.items(), key=lambda kv: tuple(p or "" for p in kv[0])):
        if op not in used_ops or (fmt is not None and fmt not in formats):
            continue
        impl, spec = registry.get_impl(op, name, format=fmt, act=act), registry.ops[op]
        fmt_obj = get_format(fmt) if fmt is not None else None
        for dims in warm_cases(impl, spec, model_dims):
            if prefill is not None and (dims.get("T", 1) > 1) != prefill:
                continue
            args = spec.make_args(_fit_block(spec, dims, fmt_obj), fmt=fmt_obj, weights_writeable=weights_writeable)
            try:
                impl.fn(*args)
            except LlamaNbError:
                raise
            except Exception as exc:  # a plugin's kernel that fails: one line naming it
                if impl.source == registry.BUILTIN_SOURCE:
                    raise
                raise LlamaNbError(f"implementation {name!r} of {registry.slot_name(impl.slot)} ({impl.source}) failed "
                                   f"on its warm-up call: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from None
    for pair in _TWINS:  # the warm-up ran the serial or the parallel kernel: ready both
        pair.sync()


def _fit_block(spec, dims: Mapping[str, int], fmt) -> dict[str, int]:
    """dims with the weight's K (its last dimension, a name) rounded up to fmt's block (q4_k: 256)."""
    k_name = spec.args[spec.weight_arg].dims[-1] if spec.weight_arg is not None else None
    if fmt is None or fmt.block == 1 or k_name not in dims:
        return dict(dims)
    return {**dims, k_name: -(-dims[k_name] // fmt.block) * fmt.block}


@njit(cache=CACHE)
def _probe_cached(x):
    return x.size


def cache_is_cold() -> bool:
    """True when the probe kernel was not in Numba's on-disk cache (so nothing else is, probably)."""
    if not CACHE:
        return False
    _probe_cached(np.ones(1, np.float32))
    return sum(_probe_cached.stats.cache_hits.values()) == 0


def warm_model(ops, formats: Iterable[str], model_dims: Mapping[str, int], weights_writeable: bool,
               used_ops: Iterable[str]) -> None:
    """warm() for a model, with the prefill half in a helper process when the cache is cold."""
    cold = cache_is_cold() and (os.cpu_count() or 1) >= 2
    job = dict(impl=ops.describe(), precision=ops.precision, formats=sorted(formats), dims=dict(model_dims),
               writeable=weights_writeable, ops=sorted(used_ops))
    helper = _start_helper(job) if cold else None
    args = (ops, job["formats"], job["dims"], job["ops"])
    if helper is None:
        warm(*args, weights_writeable=weights_writeable)
    else:
        with _running(helper):
            warm(*args, weights_writeable=weights_writeable, prefill=False)
        warm(*args, weights_writeable=weights_writeable, prefill=True)  # loads the helper's entries
    _probe_cached(np.ones(1, np.float32))  # last: its cache entry means a complete warm-up once ran


HELPER_TIMEOUT_SECONDS = 600


def _start_helper(job: dict) -> subprocess.Popen | None:
    try:
        return subprocess.Popen([sys.executable, "-m", "llama_nb.ops.compile_helper", str(os.getpid()), json.dumps(job)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return None  # the caller compiles everything itself


@contextlib.contextmanager
def _running(helper: subprocess.Popen):
    """Within: the caller's own compiling. On leaving, wait for the helper; if the caller's part
    raised (Ctrl-C), or the helper hangs, stop the helper instead."""
    try:
        yield
        helper.wait(timeout=HELPER_TIMEOUT_SECONDS)
    except BaseException:
        helper.kill()
        helper.wait()
        if sys.exc_info()[0] is not subprocess.TimeoutExpired:
            raise


def helper_main(job_json: str, make_opset) -> int:
    """The helper process (llama_nb/ops/compile_helper.py): compile the prefill half into the
    cache, then exit."""
    job = json.loads(job_json)
    ops = make_opset(job["impl"], job["precision"])
    warm(ops, job["formats"], job["dims"], job["ops"], weights_writeable=job["writeable"], prefill=True)
    return 0

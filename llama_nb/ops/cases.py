"""One table of cases per op, used by tests/test_ops.py, bench/bench_ops.py and `llama-nb bench ops`.

    CASES[op]        list of case tuples; FIELDS[op] names their entries
    BENCH_ONLY[op]   the cases too slow or too redundant for every CI run (benchmarked, not tested)
    ci_cases(op)     CASES[op] without the bench-only ones: what every CI run tests
    make_inputs(op, case, rng) -> args   seeded arguments in the op's order, outputs pre-filled with
                                         NaN so an element a kernel forgets to write is caught
    call(fn, args) -> result             runs fn on a fresh copy of args[0] (the output, or rope's
                                         in-place x) and returns the result
    TOL[op]          dict(rtol=, atol=) for comparing any implementation with "reference"
    assert_matches(op, got, want, msg)   the comparison itself (bit-exact where TOL is zero)

Sizes: tiny ones, odd ones that do not divide any block or vector width (tiling bugs), and the real
Llama 3.1 8B shapes (dim 4096, 32 heads / 8 kv heads of 128, hidden 14336, vocab 128256); the
Llama 3.2 1B shapes (dim 2048, hidden 8192) and the 128-token prefill shapes (llama.cpp's pp128)
are benchmarked only.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from llama_nb.ops.reference import f32_to_bf16_np
from llama_nb.ops.rope import rope_tables

FIELDS = {
    "bf16_to_f32": ("shape...",),
    "f32_to_bf16": ("shape...",),
    "embedding": ("T", "V", "D"),
    "rmsnorm": ("T", "D"),
    "matmul": ("T", "K", "N"),
    "matmul_bf16": ("T", "K", "N"),
    "rope": ("T", "H", "Dh", "P", "start_pos"),
    "softmax": ("R", "C"),
    "silu": ("T", "F"),
    "attention": ("T", "H", "KVH", "Dh", "S", "start_pos"),
    "argmax": ("N", "with_nan"),
}

CASES: dict[str, list[tuple[int, ...]]] = {
    "bf16_to_f32": [(1,), (257,), (3, 5, 7), (65536 + 3,), (4096, 4096)],
    "f32_to_bf16": [(1,), (257,), (3, 5, 7), (65536 + 3,), (4096, 4096)],
    "embedding": [(1, 10, 8), (5, 37, 33), (4, 128256, 64), (3, 1000, 4096)],
    "rmsnorm": [(1, 1), (3, 64), (5, 4097), (1, 4096), (8, 4096), (2, 2048)],
    "matmul": [
        (1, 64, 32), (3, 4, 5), (1, 127, 61), (3, 4097, 33), (5, 255, 129),
        (1, 8193, 7), (1, 9000, 70),                                # matvec with K beyond X_IN_L1
        (1, 4096, 4096), (1, 4096, 14336), (8, 4096, 128256),      # 8B: wq/wo, w1/w3, output
        (1, 2048, 2048), (1, 2048, 8192), (1, 2048, 128256),       # 1B decode
        (1, 14336, 4096), (64, 2048, 8192),                         # 8B w2; 1B prefill chunk
        (17, 1100, 71),                                             # prefill: ragged T, N, and K blocks
        # pp128 (bench): 1B wq/wo, w1/w3, w2; 8B wq/wo, w1/w3, w2
        (128, 2048, 2048), (128, 2048, 8192), (128, 8192, 2048),
        (128, 4096, 4096), (128, 4096, 14336), (128, 14336, 4096),
    ],
    "rope": [
        (1, 1, 2, 1, 0), (3, 5, 8, 16, 7), (7, 8, 128, 1024, 100),
        (1, 32, 128, 8192, 8191), (2, 8, 64, 131072, 131070),      # decode at the context's end
    ],
    "softmax": [(1, 1), (3, 7), (32, 1025), (1, 128256)],
    "silu": [(1, 1), (3, 17), (1, 14336), (4, 8192)],
    "attention": [
        (1, 1, 1, 2, 1, 0),            # one token, one head, position 0
        (1, 4, 2, 8, 16, 5),           # decode at start_pos > 0, GQA 4/2
        (3, 4, 1, 16, 32, 9),          # MQA (KVH = 1), chunked prefill
        (4, 6, 6, 10, 12, 2),          # MHA (KVH = H), odd Dh
        (17, 8, 2, 64, 40, 3),         # tiled prefill: 17 tokens (ragged key blocks), after 3 cached
        (2, 5, 1, 32, 40, 30),         # tiled, MQA with 5 heads per group: tasks of 4 and 1 heads
        (1, 6, 1, 16, 40, 30),         # grouped decode: 6 heads per group, tasks of 4 and 2 heads
        (6, 32, 8, 128, 64, 0),        # 8B GQA 32/8, Dh 128: prefill from position 0
        (5, 32, 8, 128, 128, 37),      # 8B: chunked prefill (start_pos > 0)
        (1, 32, 8, 128, 1024, 700),    # 8B: decode
        (1, 32, 8, 128, 8192, 4095),   # 8B: decode at a 4K context (bench)
    ],
    "argmax": [(1, 0), (5, 0), (16385, 0), (128256, 0), (128256, 1)],
}

MATMUL_OPS = ("matmul", "matmul_bf16")  # the two weight-product ops: same arguments, same shapes
CASES["matmul_bf16"] = list(CASES["matmul"])

BENCH_ONLY: dict[str, set[tuple[int, ...]]] = {
    "matmul": {
        (1, 2048, 2048), (1, 2048, 8192), (1, 2048, 128256), (64, 2048, 8192),
        (128, 2048, 2048), (128, 2048, 8192), (128, 8192, 2048),
        (128, 4096, 4096), (128, 4096, 14336), (128, 14336, 4096),
    },
    "attention": {(1, 32, 8, 128, 8192, 4095)},
}
BENCH_ONLY["matmul_bf16"] = BENCH_ONLY["matmul"]


def ci_cases(op: str) -> list[tuple[int, ...]]:
    """The cases every CI run checks: all of CASES[op] but the bench-only ones."""
    return [c for c in CASES[op] if c not in BENCH_ONLY.get(op, ())]


# Tolerances for `assert_allclose(got, want, rtol, atol)` against the reference:
TOL: dict[str, dict[str, float]] = {
    # Bit manipulations with one right answer: compared bit for bit.
    "bf16_to_f32": dict(rtol=0.0, atol=0.0),
    "f32_to_bf16": dict(rtol=0.0, atol=0.0),
    "embedding": dict(rtol=0.0, atol=0.0),
    "argmax": dict(rtol=0.0, atol=0.0),
    # One float64 (kernel) vs pairwise float32 (NumPy) sum of squares, then 2 float32 products:
    # a few ulps.
    "rmsnorm": dict(rtol=2e-6, atol=1e-6),
    # K-long dot products summed in a different order (16 float32 lanes + FMA vs BLAS blocks).
    # The error of either is ~ eps * sqrt(K) * sum|x*w| (random-walk rounding); for the inputs of
    # make_inputs (|x| <= 30, |w| <= 4, K <= 14336) that is < 1e-4 absolute; outputs are O(1..30).
    "matmul": dict(rtol=1e-4, atol=2e-4),
    # The same against the reference on the same rounded x (vdpbf16ps adds each bf16 pair's two
    # exact products to a float32 lane: only the summation order differs).
    "matmul_bf16": dict(rtol=1e-4, atol=2e-4),
    # One complex multiply per pair; the kernel and NumPy may round x0*c - x1*s differently
    # (torch/FMA): a couple of ulps of |x|, |x| <= 100 here.
    "rope": dict(rtol=1e-6, atol=2e-5),
    # exp is within an ulp or two across libms; the float64 sum vs NumPy's pairwise float32 sum.
    "softmax": dict(rtol=1e-5, atol=1e-9),
    # exp(-|a|) rewritten (see silu.py) vs the plain definition: a few ulps.
    "silu": dict(rtol=1e-5, atol=1e-7),
    # Dh-long dot products (reordered), exp, and a softmax-weighted sum of up to 1024 value rows.
    "attention": dict(rtol=1e-4, atol=1e-5),
}


def assert_matches(op: str, got, want, msg: str = "") -> None:
    """Raise AssertionError unless `got` equals `want` within TOL[op] (bit for bit when TOL is 0)."""
    tol = TOL[op]
    if np.isscalar(want) or np.ndim(want) == 0:
        assert got == want, f"{msg}: got {got}, want {want}"
    elif tol["rtol"] == 0 and tol["atol"] == 0:
        g, w = np.asarray(got), np.asarray(want)
        assert g.dtype == w.dtype and g.shape == w.shape, f"{msg}: {g.dtype}{g.shape} vs {w.dtype}{w.shape}"
        bits = {2: np.uint16, 4: np.uint32}[g.dtype.itemsize]
        bad = np.flatnonzero(g.view(bits) != w.view(bits))
        assert bad.size == 0, f"{msg}: {bad.size} elements differ, first at flat index {bad[0]}"
    else:
        np.testing.assert_allclose(got, want, err_msg=msg, **tol)


def call(fn: Callable, args: Sequence):
    """fn(*args) with args[0] copied first (it is the output, or rope's in-place x); the result.

    The result is fn's return value when it has one (argmax), else the written copy of args[0].
    Inputs other than args[0] are shared between calls, never copied (weights can be 1 GB).
    """
    first = args[0].copy()
    result = fn(first, *args[1:])
    return first if result is None else result


# ---------------------------------------------------------------------------- input makers

_POOL = 4_194_301  # a prime: a huge weight is a tiled pool, and no two rows start alike


def bf16_weights(rng: np.random.Generator, shape: tuple[int, ...], std: float = 0.02) -> np.ndarray:
    """uint16 bf16 bits ~ N(0, std) like trained weights, plus a few extremes (+-4, +-1, 0, tiny)."""
    size = int(np.prod(shape))
    values = rng.standard_normal(min(size, _POOL), dtype=np.float32) * np.float32(std)
    bits = f32_to_bf16_np(values)
    if size > _POOL:  # drawing 500M normals would take a minute; a tiled pool costs a memcpy
        bits = np.resize(bits, size)
    extremes = f32_to_bf16_np(np.array([4.0, -4.0, 1.0, -1.0, 0.0, -0.0, 1e-39, -3e-3], np.float32))
    where = rng.integers(0, size, size=min(size, 64))
    bits[where] = extremes[rng.integers(0, extremes.size, size=where.size)]
    return bits.reshape(shape)


def activations(rng: np.random.Generator, shape: tuple[int, ...], scale: float = 1.0, large: float = 30.0) -> np.ndarray:
    """float32 ~ N(0, scale) with some exact zeros and some +-large outliers (as in real residuals)."""
    x = rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)
    flat = x.reshape(-1)
    n = max(1, flat.size // 64)
    flat[rng.integers(0, flat.size, size=n)] = 0.0
    flat[rng.integers(0, flat.size, size=n)] = rng.choice(np.array([large, -large], np.float32), size=n)
    return x


def _nan_out(shape) -> np.ndarray:
    return np.full(shape, np.nan, np.float32)


def make_inputs(op: str, case: tuple[int, ...], rng: np.random.Generator) -> tuple:
    """Seeded arguments for `op`, in the op's argument order (see specs.py)."""
    if op == "bf16_to_f32":
        x = rng.integers(0, 1 << 16, size=case, dtype=np.uint16)  # every kind: NaN, Inf, subnormal
        return _nan_out(case), x
    if op == "f32_to_bf16":
        x = rng.integers(0, 1 << 32, size=case, dtype=np.uint32).view(np.float32)
        flat = x.reshape(-1)
        flat[: min(8, flat.size)] = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1.00390625, 1.01171875],
                                             np.float32)[: min(8, flat.size)]  # ties to even: down, up
        return np.full(case, 0xDEAD, np.uint16), x
    if op == "embedding":
        n_tokens, vocab, dim = case
        tokens = rng.integers(0, vocab, size=n_tokens).astype(np.int64)
        tokens[0] = vocab - 1  # the last row, and a repeat when T > 1
        if n_tokens > 1:
            tokens[1] = vocab - 1
        return _nan_out((n_tokens, dim)), bf16_weights(rng, (vocab, dim), std=0.02), tokens
    if op == "rmsnorm":
        n_tokens, dim = case
        x = activations(rng, (n_tokens, dim), large=1000.0)
        if n_tokens > 2:
            x[1] = 0.0  # an all-zero row: 0 * rsqrt(eps) = 0
        weight = bf16_weights(rng, (dim,), std=0.3)
        return _nan_out((n_tokens, dim)), x, weight, 1e-5
    if op in MATMUL_OPS:
        n_tokens, k_in, n_out = case
        return _nan_out((n_tokens, n_out)), activations(rng, (n_tokens, k_in)), bf16_weights(rng, (n_out, k_in))
    if op == "rope":
        n_tokens, n_heads, head_dim, max_pos, start_pos = case
        cos, sin = rope_tables(head_dim, max_pos, 500000.0, True)
        return activations(rng, (n_tokens, n_heads, head_dim), large=100.0), cos, sin, start_pos
    if op == "softmax":
        rows, cols = case
        x = activations(rng, (rows, cols), scale=3.0, large=80.0)
        if cols > 2:
            x[:, -2:] = -np.inf  # masked entries, as a causal mask leaves them
        if rows > 2:
            x[2] = 7.0  # a flat row
        return _nan_out((rows, cols)), x
    if op == "silu":
        n_tokens, width = case
        a = activations(rng, (n_tokens, width), scale=4.0, large=100.0)
        flat = a.reshape(-1)
        flat[: min(4, flat.size)] = np.array([-1e4, -3e38, 1e4, -88.5], np.float32)[: min(4, flat.size)]
        return _nan_out((n_tokens, width)), a, activations(rng, (n_tokens, width))
    if op == "attention":
        n_tokens, n_heads, n_kv_heads, head_dim, max_seq, start_pos = case
        n_ctx = start_pos + n_tokens
        q = activations(rng, (n_tokens, n_heads, head_dim), scale=2.0, large=8.0)
        caches = []
        for _ in range(2):
            cache = np.full((n_kv_heads, max_seq, head_dim), np.nan, np.float32)  # unfilled rows
            cache[:, :n_ctx] = activations(rng, (n_kv_heads, n_ctx, head_dim), large=8.0)
            caches.append(cache)
        return _nan_out((n_tokens, n_heads, head_dim)), q, caches[0], caches[1], start_pos
    if op == "argmax":
        n, with_nan = case
        x = np.round(rng.standard_normal(n).astype(np.float32) * 4) / 4  # coarse: many ties
        top = np.float32(x.max() + 1)
        x[rng.integers(0, n, size=3)] = top  # the max, tied three times (maybe in 3 chunks)
        if with_nan:
            x[[n - 3, n // 2]] = np.nan
        return (x,)
    raise KeyError(f"no input maker for op {op!r}")

"""The definition of correct: every op in plain NumPy float32, registered as impl "reference".

Each function is the op's math written the most obvious way, with NumPy's own reductions
(pairwise sums, BLAS), never sharing code with the Numba kernels it judges. The argument contract
is the one declared in llama_nb/ops/specs.py. Speed is no goal; memory is: the matmul widens its
weights in slabs of rows, so an 8B output projection (1 GB of bf16) never needs 2 GB at once.

Also exported for other modules and tests:
    bf16_to_f32_np(x: uint16[...]) -> float32[...]    exact widening
    f32_to_bf16_np(x: float32[...]) -> uint16[...]    round to nearest even; NaN -> 0x7FC0 | sign
"""

from __future__ import annotations

import numpy as np

from llama_nb.ops.registry import register

_SLAB_BYTES = 64 << 20  # float32 bytes of widened weights held at once by the reference matmul


def bf16_to_f32_np(x: np.ndarray) -> np.ndarray:
    """float32 copy of bf16 bits: the bits become the high half of each float32."""
    return (np.asarray(x, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_np(x: np.ndarray) -> np.ndarray:
    """bf16 bits of float32 values: round to nearest, ties to even; NaN -> quiet NaN, sign kept."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    lsb = (bits >> 16) & 1
    rounded = ((bits + 0x7FFF + lsb) >> 16).astype(np.uint16)
    is_nan = (bits & 0x7FFFFFFF) > 0x7F800000
    canonical_nan = (((bits >> 16) & 0x8000) | 0x7FC0).astype(np.uint16)
    return np.where(is_nan, canonical_nan, rounded)


@register("bf16_to_f32", "reference")
def bf16_to_f32(out, x):
    out[...] = bf16_to_f32_np(x)


@register("f32_to_bf16", "reference")
def f32_to_bf16(out, x):
    out[...] = f32_to_bf16_np(x)


@register("embedding", "reference")
def embedding(out, table, tokens):
    out[...] = bf16_to_f32_np(table[tokens])


@register("rmsnorm", "reference")
def rmsnorm(out, x, weight, eps):
    # Meta: x * rsqrt(mean(x^2) + eps), all float32 (NumPy's mean sums pairwise), then * weight.
    mean_sq = np.mean(x * x, axis=-1, keepdims=True, dtype=np.float32)
    out[...] = x * (np.float32(1.0) / np.sqrt(mean_sq + np.float32(eps))) * bf16_to_f32_np(weight)


@register("matmul", "reference")
def matmul(out, x, w):
    rows_per_slab = max(1, _SLAB_BYTES // (4 * max(1, w.shape[1])))
    for n0 in range(0, w.shape[0], rows_per_slab):
        slab = bf16_to_f32_np(w[n0 : n0 + rows_per_slab])
        out[:, n0 : n0 + slab.shape[0]] = x @ slab.T


@register("matmul_bf16", "reference")
def matmul_bf16(out, x, w):
    # Round x to bf16 (then every product of two bf16 values is exact in float32), then matmul.
    matmul(out, bf16_to_f32_np(f32_to_bf16_np(x)), w)


@register("rope", "reference")
def rope(x, cos, sin, start_pos):
    # Meta's apply_rotary_emb: adjacent pairs as complex numbers times exp(i * angle).
    n_tokens = x.shape[0]
    c = cos[start_pos : start_pos + n_tokens][:, None, :]  # [T, 1, Dh/2], broadcast over heads
    s = sin[start_pos : start_pos + n_tokens][:, None, :]
    x0, x1 = x[..., 0::2].copy(), x[..., 1::2].copy()
    x[..., 0::2] = x0 * c - x1 * s
    x[..., 1::2] = x0 * s + x1 * c


@register("softmax", "reference")
def softmax(out, x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    out[...] = e / e.sum(axis=-1, keepdims=True)


@register("silu", "reference")
def silu(out, a, b):
    with np.errstate(over="ignore", under="ignore"):  # exp(-a) = inf for a < -88: a / inf = -0
        out[...] = a / (np.float32(1.0) + np.exp(-a)) * b


@register("attention", "reference")
def attention(out, q, k_cache, v_cache, start_pos):
    # Meta's Attention.forward: repeat the kv heads, scores / sqrt(Dh) with a causal mask, softmax.
    n_tokens, n_heads, head_dim = q.shape
    n_ctx = start_pos + n_tokens
    group = n_heads // k_cache.shape[0]
    keys = np.repeat(k_cache[:, :n_ctx], group, axis=0)  # [H, n_ctx, Dh]
    values = np.repeat(v_cache[:, :n_ctx], group, axis=0)
    scores = np.einsum("thd,hjd->htj", q, keys) / np.float32(np.sqrt(head_dim))  # [H, T, n_ctx]
    future = np.arange(n_ctx)[None, :] > (start_pos + np.arange(n_tokens))[:, None]  # [T, n_ctx]
    scores = np.where(future[None], np.float32(-np.inf), scores)
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    scores /= scores.sum(axis=-1, keepdims=True)
    out[...] = np.einsum("htj,hjd->thd", scores, values)


@register("argmax", "reference")
def argmax(x):
    return int(np.argmax(x))  # first maximum; a NaN counts as the maximum (first NaN wins)

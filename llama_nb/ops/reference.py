"""The definition of correct: every op in plain NumPy float32, registered as implementation "reference".

Each function is the op's math written the most obvious way, with NumPy's own reductions
(pairwise sums, BLAS), never sharing code with the Numba kernels it judges. The argument contract
is the op's declaration in llama_nb/ops/specs.py. Speed is no goal; memory is: linear dequantizes
its weights in slabs of rows, so an 8B output projection (1 GB of bf16) never needs 2 GB at once.

The ops that read a weight have their reference for every weight format through the format's own
NumPy `dequantize` (llama_nb/formats.py): `register_format_references(name)` registers them for a
format (a new format calls it once, and its kernels are then tested against them).
"""

from __future__ import annotations

import numpy as np

from llama_nb.formats import bf16_to_f32_np, f32_to_bf16_np  # noqa: F401  (re-exported for tests)
from llama_nb.ops.registry import ACTIVATIONS, register

_SLAB_BYTES = 64 << 20  # float32 bytes of dequantized weights held at once by the reference linear


@register("bf16_to_f32", "reference")
def bf16_to_f32(out, x):
    out[...] = bf16_to_f32_np(x)


@register("f32_to_bf16", "reference")
def f32_to_bf16(out, x):
    out[...] = f32_to_bf16_np(x)


def round_activations(x: np.ndarray, act: str) -> np.ndarray:
    """x as a linear of activation type `act` sees it: float32 as is, or rounded to bf16."""
    return bf16_to_f32_np(f32_to_bf16_np(x)) if act == "bf16" else x


def _linear(act: str, round_bf16=None):
    def linear(out, x, w, xq):
        # Round x to the activation type (bf16: then every product of two bf16 values is exact in
        # float32; a format may say what its kernels round x to at bf16 instead: `round_bf16`),
        # dequantize w in slabs of rows, then NumPy's float32 matmul.
        xa = round_bf16(x) if (round_bf16 is not None and act == "bf16") else round_activations(x, act)
        rows_per_slab = max(1, _SLAB_BYTES // (4 * max(1, w.shape[1])))
        for n0 in range(0, w.shape[0], rows_per_slab):
            slab = w.dequantize(n0, min(n0 + rows_per_slab, w.shape[0]))
            out[:, n0 : n0 + slab.shape[0]] = xa @ slab.T

    return linear


def embedding(out, table, tokens):
    for t, token in enumerate(tokens):
        out[t] = table.dequantize(int(token), int(token) + 1)[0]


def dequantize(out, w):
    out[...] = w.dequantize()


def register_format_references(fmt: str, round_bf16=None) -> None:
    """Register the reference linear (every activation type), embedding and dequantize for `fmt`.
    `round_bf16(x) -> float32[T, K]`: what the format's kernels round x to at activation type bf16
    (the block formats: int8 blocks, llama_nb/quant/activations.py); None: bf16."""
    for act in ACTIVATIONS:
        register("linear", "reference", format=fmt, act=act)(_linear(act, round_bf16))
    register("embedding", "reference", format=fmt)(embedding)
    register("dequantize", "reference", format=fmt)(dequantize)


for _fmt in ("bf16", "f16", "f32"):
    register_format_references(_fmt)


@register("rmsnorm", "reference")
def rmsnorm(out, x, weight, eps):
    # Meta: x * rsqrt(mean(x^2) + eps), all float32 (NumPy's mean sums pairwise), then * weight.
    mean_sq = np.mean(x * x, axis=-1, keepdims=True, dtype=np.float32)
    out[...] = x * (np.float32(1.0) / np.sqrt(mean_sq + np.float32(eps))) * weight


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


def _attention(store, load):
    """The attention reference for a cache whose element type `store` writes (from float32) and
    `load` reads back (to float32)."""

    def attention(out, q, k, v, k_cache, v_cache, start_pos, key_tile, rows, running):
        # Append the new rows; then Meta's Attention.forward: repeat the kv heads, scores / sqrt(Dh)
        # with a causal mask, softmax, the weighted sum of values.
        n_tokens, n_heads, head_dim = q.shape
        n_ctx = start_pos + n_tokens
        k_cache[:, start_pos:n_ctx] = store(k.transpose(1, 0, 2))
        v_cache[:, start_pos:n_ctx] = store(v.transpose(1, 0, 2))
        group = n_heads // k_cache.shape[0]
        keys = np.repeat(load(k_cache[:, :n_ctx]), group, axis=0)  # [H, n_ctx, Dh]
        values = np.repeat(load(v_cache[:, :n_ctx]), group, axis=0)
        scores = np.einsum("thd,hjd->htj", q, keys) / np.float32(np.sqrt(head_dim))  # [H, T, n_ctx]
        future = np.arange(n_ctx)[None, :] > (start_pos + np.arange(n_tokens))[:, None]  # [T, n_ctx]
        scores = np.where(future[None], np.float32(-np.inf), scores)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        out[...] = np.einsum("htj,hjd->thd", scores, values)

    return attention


register("attention", "reference")(_attention(lambda x: x, lambda c: c))  # float32 cache
register("attention_bf16kv", "reference")(_attention(f32_to_bf16_np, bf16_to_f32_np))  # bf16 bits, rounded to nearest even


@register("argmax", "reference")
def argmax(x):
    return int(np.argmax(x))  # first maximum; a NaN counts as the maximum (first NaN wins)

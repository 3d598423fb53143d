"""Every op of a Llama 3.x forward pass, declared once: the math, the arguments, and their check.

Conventions shared by all ops:
- The output argument comes first and is preallocated by the caller (nothing allocates in the
  forward pass). An op "may alias" when out and an input can be the same array.
- Activations and accumulators are float32. Weights are bf16 kept as their raw bits in uint16
  arrays, exactly as stored in consolidated.00.pth, and are widened one element at a time.
- All arrays are C-contiguous.
The checks below run at the op boundary in Python (tests, LLAMA_NB_DEBUG=1), never inside a
compiled loop; their messages name the argument and show the shapes and dtypes seen.
"""

from __future__ import annotations

import numpy as np

from llama_nb.errors import LlamaNbError
from llama_nb.ops.registry import defop

F32, U16 = np.dtype(np.float32), np.dtype(np.uint16)


def _array(op: str, arg: str, a, dtype: np.dtype, ndim: int | None = None) -> None:
    if not isinstance(a, np.ndarray):
        raise LlamaNbError(f"{op}: {arg} must be a numpy array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise LlamaNbError(f"{op}: {arg} must be {dtype}, got {a.dtype} with shape {a.shape}")
    if ndim is not None and a.ndim != ndim:
        raise LlamaNbError(f"{op}: {arg} must have {ndim} dimensions, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise LlamaNbError(f"{op}: {arg} must be C-contiguous (shape {a.shape}, strides {a.strides})")


def _same(op: str, what: str, *pairs: tuple[str, tuple]) -> None:
    shapes = {shape for _, shape in pairs}
    if len(shapes) != 1:
        seen = ", ".join(f"{name}{shape}" for name, shape in pairs)
        raise LlamaNbError(f"{op}: {what} must agree; got {seen}")


def _check_bf16_to_f32(out, x):
    _array("bf16_to_f32", "out", out, F32)
    _array("bf16_to_f32", "x", x, U16)
    _same("bf16_to_f32", "shapes", ("out", out.shape), ("x", x.shape))


def _check_f32_to_bf16(out, x):
    _array("f32_to_bf16", "out", out, U16)
    _array("f32_to_bf16", "x", x, F32)
    _same("f32_to_bf16", "shapes", ("out", out.shape), ("x", x.shape))


def _check_embedding(out, table, tokens):
    _array("embedding", "out", out, F32, 2)
    _array("embedding", "table", table, U16, 2)
    if not isinstance(tokens, np.ndarray) or tokens.ndim != 1 or tokens.dtype.kind not in "iu":
        raise LlamaNbError(f"embedding: tokens must be a 1-d integer array, got {getattr(tokens, 'shape', tokens)!r}")
    _same("embedding", "rows", ("out", out.shape[:1]), ("tokens", tokens.shape))
    _same("embedding", "widths", ("out", out.shape[1:]), ("table", table.shape[1:]))
    if tokens.size and (tokens.min() < 0 or tokens.max() >= table.shape[0]):
        raise LlamaNbError(f"embedding: token ids must be in [0, {table.shape[0]}), got {tokens.min()}..{tokens.max()}")


def _check_rmsnorm(out, x, weight, eps):
    _array("rmsnorm", "out", out, F32, 2)
    _array("rmsnorm", "x", x, F32, 2)
    _array("rmsnorm", "weight", weight, U16, 1)
    _same("rmsnorm", "shapes", ("out", out.shape), ("x", x.shape))
    _same("rmsnorm", "widths", ("x", x.shape[1:]), ("weight", weight.shape))
    if not eps > 0:
        raise LlamaNbError(f"rmsnorm: eps must be > 0, got {eps}")


def _check_matmul(out, x, w, op="matmul"):
    _array(op, "out", out, F32, 2)
    _array(op, "x", x, F32, 2)
    _array(op, "w", w, U16, 2)
    if x.shape[1] != w.shape[1] or out.shape != (x.shape[0], w.shape[0]):
        raise LlamaNbError(f"{op}: need out[T,N], x[T,K], w[N,K]; got out{out.shape}, x{x.shape}, w{w.shape}")
    if np.shares_memory(out, x):
        raise LlamaNbError(f"{op}: out must not alias x")


def _check_matmul_bf16(out, x, w):
    _check_matmul(out, x, w, op="matmul_bf16")


def _check_rope(x, cos, sin, start_pos):
    _array("rope", "x", x, F32, 3)
    _array("rope", "cos", cos, F32, 2)
    _array("rope", "sin", sin, F32, 2)
    _same("rope", "tables", ("cos", cos.shape), ("sin", sin.shape))
    if x.shape[2] % 2 or cos.shape[1] != x.shape[2] // 2:
        raise LlamaNbError(f"rope: x[T,H,Dh] needs even Dh and tables [P,Dh/2]; got x{x.shape}, cos{cos.shape}")
    if start_pos < 0 or start_pos + x.shape[0] > cos.shape[0]:
        raise LlamaNbError(f"rope: positions {start_pos}..{start_pos + x.shape[0] - 1} beyond the table of {cos.shape[0]}")


def _check_softmax(out, x):
    _array("softmax", "out", out, F32, 2)
    _array("softmax", "x", x, F32, 2)
    _same("softmax", "shapes", ("out", out.shape), ("x", x.shape))


def _check_silu(out, a, b):
    for name, arr in (("out", out), ("a", a), ("b", b)):
        _array("silu", name, arr, F32, 2)
    _same("silu", "shapes", ("out", out.shape), ("a", a.shape), ("b", b.shape))


def _check_attention(out, q, k_cache, v_cache, start_pos):
    _array("attention", "out", out, F32, 3)
    _array("attention", "q", q, F32, 3)
    _array("attention", "k_cache", k_cache, F32, 3)
    _array("attention", "v_cache", v_cache, F32, 3)
    _same("attention", "out and q", ("out", out.shape), ("q", q.shape))
    _same("attention", "caches", ("k_cache", k_cache.shape), ("v_cache", v_cache.shape))
    n_tokens, n_heads, head_dim = q.shape
    n_kv_heads, max_seq, cache_head_dim = k_cache.shape
    if cache_head_dim != head_dim or n_heads % n_kv_heads:
        raise LlamaNbError(f"attention: need q[T,H,Dh], caches[KVH,S,Dh] with H % KVH == 0; got q{q.shape}, k{k_cache.shape}")
    if start_pos < 0 or start_pos + n_tokens > max_seq:
        raise LlamaNbError(f"attention: positions {start_pos}..{start_pos + n_tokens - 1} beyond the cache of {max_seq}")


def _check_argmax(x):
    _array("argmax", "x", x, F32, 1)
    if x.size == 0:
        raise LlamaNbError("argmax: x is empty")


defop(
    "bf16_to_f32",
    """out = float32(x): exact widening, the bf16 bits become the high half of the float32.
out  float32[...]  same shape as x
x    uint16[...]   bf16 bits""",
    _check_bf16_to_f32,
)
defop(
    "f32_to_bf16",
    """out = bf16(x): round to nearest, ties to even; NaN stays NaN (quiet), +-Inf stays Inf.
out  uint16[...]   bf16 bits, same shape as x
x    float32[...]""",
    _check_f32_to_bf16,
)
defop(
    "embedding",
    """out[t, :] = float32(table[tokens[t], :])
out     float32[T, D]
table   uint16[V, D]   tok_embeddings.weight, bf16 bits
tokens  int[T]         ids in [0, V)""",
    _check_embedding,
)
defop(
    "rmsnorm",
    """out[t, :] = x[t, :] / sqrt(mean(x[t, :]**2) + eps) * float32(weight)   (may alias)
out     float32[T, D]
x       float32[T, D]
weight  uint16[D]      attention_norm / ffn_norm / norm weight, bf16 bits
eps     float          norm_eps from params.json""",
    _check_rmsnorm,
)
defop(
    "matmul",
    """out = x @ float32(w).T   (nn.Linear convention: rows of w are output features)
out  float32[T, N]   must not alias x
x    float32[T, K]   activations; T = 1 is decode (matrix-vector), T > 1 is prefill
w    uint16[N, K]    bf16 bits, exactly as stored in consolidated.00.pth""",
    _check_matmul,
)
defop(
    "matmul_bf16",
    """out = float32(bf16(x)) @ float32(w).T   matmul with x rounded to the nearest bf16 first (ties to
even), as llama.cpp's bf16 path and the vdpbf16ps instruction compute it: products exact in
float32, sums in float32. Moves each output by at most 2^-8 * sum_k |x[k] w[n,k]|.
out  float32[T, N]   must not alias x
x    float32[T, K]   activations (not modified)
w    uint16[N, K]    bf16 bits, exactly as stored in consolidated.00.pth""",
    _check_matmul_bf16,
)
defop(
    "rope",
    """Rotary embedding in place, Meta's interleaved pairs (not Hugging Face's rotate-half):
for token t, head h and pair i, with p = start_pos + t,
    (x[t,h,2i], x[t,h,2i+1]) <- (x0*cos[p,i] - x1*sin[p,i],  x0*sin[p,i] + x1*cos[p,i])
x          float32[T, H, Dh]   queries or keys, rotated in place
cos, sin   float32[P, Dh/2]    tables from rope_tables(); angle = float32(p) * float32(freq_i)
start_pos  int                 absolute position of x[0]""",
    _check_rope,
)
defop(
    "softmax",
    """out[r, :] = exp(x[r, :] - max(x[r, :])) / sum(exp(x[r, :] - max(x[r, :])))   (may alias)
out  float32[R, C]
x    float32[R, C]""",
    _check_softmax,
)
defop(
    "silu",
    """The SwiGLU gate in one pass: out = silu(a) * b = a / (1 + exp(-a)) * b   (may alias a or b)
out  float32[T, F]
a    float32[T, F]   w1 @ x
b    float32[T, F]   w3 @ x""",
    _check_silu,
)
defop(
    "attention",
    """Causal grouped-query attention over a KV cache, for T new tokens at positions start_pos..:
for token t (position p = start_pos + t) and head h, with kv head g = h // (H // KVH):
    s[j]      = q[t,h,:] . k_cache[g,j,:] / sqrt(Dh)        for j = 0 .. p
    out[t,h,:] = sum_j softmax(s)[j] * v_cache[g,j,:]
K/V are read in place for every head of a group, never copied per head.
out        float32[T, H, Dh]
q          float32[T, H, Dh]     queries after rope
k_cache    float32[KVH, S, Dh]   keys after rope; rows 0 .. start_pos+T-1 filled
v_cache    float32[KVH, S, Dh]
start_pos  int""",
    _check_attention,
)
defop(
    "argmax",
    """Index of the largest element (the first one on ties), as a Python int.
x  float32[N]""",
    _check_argmax,
)

"""The Llama 3.x transformer, composed of the ops of an OpSet handed in. Reads like Meta's model.py.

    h   = x + attention(attention_norm(x))          per layer, for every new token
    out = h + feed_forward(ffn_norm(h))             feed_forward(x) = w2(silu(w1 x) * (w3 x))
    logits = output(norm(out[last]))

Weights are the bf16 tensors of consolidated.00.pth as uint16 arrays (read into memory, or views
of the memory-mapped file: see load_model), never widened as a whole; attribute names mirror
Meta's keys (`layers.3.attention.wq.weight` is `weights.layers[3].attention.wq`). Every activation buffer is float32 and preallocated in
`RunState`; `forward()` allocates nothing but the small per-call views.

Precision: every weight product is one op, chosen once by `precision`:
    "bf16"     matmul_bf16: activations rounded to bf16 before each product (llama.cpp's bf16
               numerics). The default: on CPUs with AVX512_BF16 prefill then runs on vdpbf16ps,
               about 1.6x faster; logits stay within about 4e-3 of Meta's float32 model on the test
               models, half the error of Meta's own bf16 inference (tests/test_model.py).
    "float32"  matmul: float32 activations, Meta's float32 model within 1e-6 on the same models.
Decode is bound by memory bandwidth and runs as fast in either; prefill and decode round the same
way, so a token's cache entry does not depend on whether it came in a prompt or was generated.

Prefill runs the whole prompt as one batched pass (T > 1 matmuls), in chunks of at most
`max_batch` tokens so the activation buffers stay small next to the weights; decode runs one
token at a time. Logits are computed for the last position only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from llama_nb.errors import CheckpointError, ContextLimitError, LlamaNbError
from llama_nb.io.params import ModelArgs
from llama_nb.ops.registry import OpSet, default_impl
from llama_nb.ops.rope import rope_tables


@dataclass
class Attention:
    wq: np.ndarray  # uint16[H*Dh, D]
    wk: np.ndarray  # uint16[KVH*Dh, D]
    wv: np.ndarray  # uint16[KVH*Dh, D]
    wo: np.ndarray  # uint16[D, H*Dh]


@dataclass
class FeedForward:
    w1: np.ndarray  # uint16[F, D]  gate
    w2: np.ndarray  # uint16[D, F]  down
    w3: np.ndarray  # uint16[F, D]  up


@dataclass
class TransformerBlock:
    attention: Attention
    feed_forward: FeedForward
    attention_norm: np.ndarray  # uint16[D]
    ffn_norm: np.ndarray  # uint16[D]


@dataclass
class Weights:
    tok_embeddings: np.ndarray  # uint16[V, D]
    layers: list[TransformerBlock]
    norm: np.ndarray  # uint16[D]
    output: np.ndarray  # uint16[V, D]; the embedding table itself when tied (Llama 3.2 1B/3B)

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, np.ndarray], args: ModelArgs) -> "Weights":
        """Pick Meta's tensors by key. Shapes were validated by the loader; nothing is copied."""

        def t(key: str) -> np.ndarray:
            try:
                return np.asarray(tensors[key])  # a plain ndarray (of a memmap view: no copy)
            except KeyError:
                raise CheckpointError(f"checkpoint has no tensor {key!r}") from None

        layers = [
            TransformerBlock(
                attention=Attention(*(t(f"layers.{i}.attention.{n}.weight") for n in ("wq", "wk", "wv", "wo"))),
                feed_forward=FeedForward(*(t(f"layers.{i}.feed_forward.{n}.weight") for n in ("w1", "w2", "w3"))),
                attention_norm=t(f"layers.{i}.attention_norm.weight"),
                ffn_norm=t(f"layers.{i}.ffn_norm.weight"),
            )
            for i in range(args.n_layers)
        ]
        embeddings = t("tok_embeddings.weight")
        output = t("output.weight") if "output.weight" in tensors else embeddings
        return cls(embeddings, layers, t("norm.weight"), output)


class RunState:
    """Activation buffers for up to `max_batch` tokens per pass, and the KV cache.

    `view(T)` returns the first T rows of each buffer (C-contiguous views, no copies).
    """

    def __init__(self, args: ModelArgs, max_batch: int, ctx: int):
        D, H, KVH, Dh, F = args.dim, args.n_heads, args.n_kv_heads, args.head_dim, args.hidden_dim
        f32 = np.float32
        self.max_batch = max_batch
        self.x = np.zeros((max_batch, D), f32)  # residual stream
        self.xb = np.zeros((max_batch, D), f32)  # normed input of a sub-block
        self.xb2 = np.zeros((max_batch, D), f32)  # output of a sub-block, added to x
        self.q = np.zeros((max_batch, H * Dh), f32)  # queries, viewed as [T, H, Dh]
        self.k = np.zeros((max_batch, KVH * Dh), f32)  # new keys, viewed as [T, KVH, Dh]
        self.v = np.zeros((max_batch, KVH * Dh), f32)  # new values
        self.att = np.zeros((max_batch, H * Dh), f32)  # attention output, before wo
        self.hb = np.zeros((max_batch, F), f32)  # w1 x, then silu(w1 x) * w3 x
        self.hb2 = np.zeros((max_batch, F), f32)  # w3 x
        self.last = np.zeros((1, D), f32)  # final norm of the last position
        self.logits = np.zeros((1, args.vocab_size), f32)
        # KV cache, one [KVH, ctx, Dh] block per layer: each head's positions are contiguous, so
        # attention streams them in order and every query head of a group reads the same rows.
        self.cache_k = np.zeros((args.n_layers, KVH, ctx, Dh), f32)
        self.cache_v = np.zeros((args.n_layers, KVH, ctx, Dh), f32)


_PRODUCT_OP = {"bf16": "matmul_bf16", "float32": "matmul"}  # precision -> the op of every weight product
PRECISIONS = tuple(_PRODUCT_OP)
DEFAULT_PRECISION = "bf16"


def check_precision(precision: str, ops: OpSet) -> None:
    """Refuse an unknown precision, and an --impl choice for the product op this precision does not
    use (`--impl matmul=reference` with precision bf16 would otherwise silently change nothing)."""
    if precision not in _PRODUCT_OP:
        raise LlamaNbError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    other = "float32" if precision == "bf16" else "bf16"
    used, unused = _PRODUCT_OP[precision], _PRODUCT_OP[other]
    if ops.choice.get(unused) != default_impl(unused) and ops.choice.get(used) == default_impl(used):
        raise LlamaNbError(
            f"--impl {unused}={ops.choice[unused]} has no effect with precision {precision} (its weight "
            f"products use {used}): choose {used}=..., or precision {other}"
        )


# Elements past every size threshold at which an op of the forward pass switches compiled kernels
# (silu goes parallel past 16,384 elements, matmul's x leaves L1 past 8,192); see warm_kernels.
# softmax is not part of the forward pass: the sampler compiles it when it first needs it.
WARMUP_WIDE = 2 * 65536 + 8


class Transformer:
    """Meta's `Transformer.forward(tokens, start_pos)`, on registered ops.

    args       ModelArgs from params.json
    weights    Weights (bf16 bits as uint16 arrays)
    ops        OpSet: the implementation chosen for every op (the model never looks names up)
    ctx        context length: KV cache size and the largest position + 1
    max_batch  the largest number of tokens in one batched pass (prefill chunk)
    precision  "bf16" or "float32": the op of every weight product (module docstring)
    """

    def __init__(self, args: ModelArgs, weights: Weights, ops: OpSet, ctx: int = 4096, max_batch: int = 256,
                 precision: str = DEFAULT_PRECISION):
        if ctx < 1:
            raise LlamaNbError(f"--ctx must be at least 1, got {ctx}")
        check_precision(precision, ops)
        self.args, self.weights, self.ops, self.ctx, self.precision = args, weights, ops, ctx, precision
        self.linear = getattr(ops, _PRODUCT_OP[precision])  # every weight product
        self.state = RunState(args, min(max_batch, ctx), ctx)
        self.rope_cos, self.rope_sin = rope_tables(args.head_dim, ctx, args.rope_theta, args.use_scaled_rope)
        # seconds spent in each layer's attention [:, 0] and feed-forward [:, 1] in the last pass
        self.layer_seconds = np.zeros((args.n_layers, 2))

    def forward(self, tokens, start_pos: int) -> np.ndarray:
        """Run `tokens` at positions start_pos.. and return float32[V] logits of the last one.

        The KV cache keeps positions 0..start_pos-1 from earlier calls; they are not recomputed.
        The logits are a view of the state's buffer: the next call overwrites them.
        """
        tokens = np.ascontiguousarray(tokens, dtype=np.int64).reshape(-1)
        n = len(tokens)
        if n == 0:
            raise LlamaNbError("forward: no tokens")
        if start_pos < 0 or start_pos + n > self.ctx:
            raise ContextLimitError(
                f"positions {start_pos}..{start_pos + n - 1} do not fit the context of {self.ctx} tokens (--ctx)"
            )
        if tokens.min() < 0 or tokens.max() >= self.args.vocab_size:
            raise LlamaNbError(f"token ids must be in [0, {self.args.vocab_size}), got {tokens.min()}..{tokens.max()}")
        self.layer_seconds[:] = 0.0
        step = self.state.max_batch
        for lo in range(0, n, step):
            self._forward_chunk(tokens[lo : lo + step], start_pos + lo)
        return self._logits(len(tokens[lo : lo + step]))

    def _forward_chunk(self, tokens: np.ndarray, start_pos: int) -> None:
        ops, s, w, eps = self.ops, self.state, self.weights, self.args.norm_eps
        T = len(tokens)
        x, xb, xb2 = s.x[:T], s.xb[:T], s.xb2[:T]
        ops.embedding(x, w.tok_embeddings, tokens)
        for i, layer in enumerate(w.layers):
            t0 = time.perf_counter()
            ops.rmsnorm(xb, x, layer.attention_norm, eps)
            self._attention(layer.attention, i, T, start_pos)
            x += xb2
            t1 = time.perf_counter()
            ops.rmsnorm(xb, x, layer.ffn_norm, eps)
            self._feed_forward(layer.feed_forward, T)
            x += xb2
            t2 = time.perf_counter()
            self.layer_seconds[i, 0] += t1 - t0
            self.layer_seconds[i, 1] += t2 - t1

    def _attention(self, w: Attention, layer: int, T: int, start_pos: int) -> None:
        """xb2 = wo(attention(rope(wq xb), rope(wk xb) and wv xb appended to the cache))."""
        ops, s, args = self.ops, self.state, self.args
        H, KVH, Dh = args.n_heads, args.n_kv_heads, args.head_dim
        xb = s.xb[:T]
        q, k, v = s.q[:T], s.k[:T], s.v[:T]
        self.linear(q, xb, w.wq)
        self.linear(k, xb, w.wk)
        self.linear(v, xb, w.wv)
        q3, k3 = q.reshape(T, H, Dh), k.reshape(T, KVH, Dh)
        ops.rope(q3, self.rope_cos, self.rope_sin, start_pos)
        ops.rope(k3, self.rope_cos, self.rope_sin, start_pos)
        end = start_pos + T
        cache_k, cache_v = s.cache_k[layer], s.cache_v[layer]  # [KVH, ctx, Dh]
        cache_k[:, start_pos:end, :] = k3.transpose(1, 0, 2)
        cache_v[:, start_pos:end, :] = v.reshape(T, KVH, Dh).transpose(1, 0, 2)
        att = s.att[:T]
        ops.attention(att.reshape(T, H, Dh), q3, cache_k, cache_v, start_pos)
        self.linear(s.xb2[:T], att, w.wo)

    def _feed_forward(self, w: FeedForward, T: int) -> None:
        """xb2 = w2(silu(w1 xb) * w3 xb)   (SwiGLU)"""
        ops, s = self.ops, self.state
        hb, hb2 = s.hb[:T], s.hb2[:T]
        self.linear(hb, s.xb[:T], w.w1)
        self.linear(hb2, s.xb[:T], w.w3)
        ops.silu(hb, hb, hb2)
        self.linear(s.xb2[:T], hb, w.w2)

    def _logits(self, T: int) -> np.ndarray:
        s = self.state
        self.ops.rmsnorm(s.last, s.x[T - 1 : T], self.weights.norm, self.args.norm_eps)
        self.linear(s.logits, s.last, self.weights.output)
        return s.logits[0]

    def warmup(self) -> float:
        """Compile (or load from Numba's on-disk cache) every kernel the forward pass uses; return seconds.

        Numba specialises on argument types, not sizes, so small arrays of the same dtypes,
        dimensions and read-only flags as the real buffers compile what forward() needs, without
        touching the weights (warm_kernels). On a cold cache (the first run after installing or
        upgrading) the prefill kernels compile in a helper process on the other core meanwhile
        (llama_nb/model/precompile.py), then load from the cache here.
        """
        from llama_nb.model import precompile

        t0 = time.perf_counter()
        spec = KernelSpec(self.ops.describe(), self.precision, self.args.head_dim, self.weights.norm.flags.writeable)
        helper = precompile.start_if_cold(self.ops, spec)
        if helper is None:
            warm_kernels(self.ops, spec, token_counts=(1, 2))
        else:
            with precompile.running(helper):
                warm_kernels(self.ops, spec, token_counts=(1,))
            warm_kernels(self.ops, spec, token_counts=(2,))  # from the helper's cache entries
        self.ops.reset_timings()
        return time.perf_counter() - t0


@dataclass(frozen=True)
class KernelSpec:
    """What decides which compiled kernels a forward pass needs (Numba specialises on types)."""

    impl: str  # OpSet.describe()
    precision: str
    head_dim: int
    weights_writeable: bool  # read into memory: writeable arrays; memory-mapped: read-only


def warm_kernels(ops: OpSet, spec: KernelSpec, token_counts=(1, 2)) -> None:
    """Call every op of the forward pass on tiny arrays of the real dtypes and layouts, for T in
    token_counts (1: decode, 2: prefill).

    Some ops pick a different compiled kernel by size (matmul by T and by whether x fits in L1,
    silu by element count), so each op is called once small and once with a width past every such
    threshold (WARMUP_WIDE elements): all paths are ready before the first real token, and a
    prompt's timing never includes a compile.
    """
    Dh = spec.head_dim
    linear = getattr(ops, _PRODUCT_OP[spec.precision])

    def weight(*shape):
        w = np.full(shape, 0x3F80, np.uint16)  # bf16 1.0
        w.flags.writeable = spec.weights_writeable
        return w

    cos, sin = rope_tables(Dh, 4, 500000.0, False)
    for T in token_counts:
        q = np.ones((T, 2, Dh), np.float32)
        ops.rope(q, cos, sin, 0)
        cache = np.ones((1, 4, Dh), np.float32)
        ops.attention(np.empty_like(q), q, cache, cache, 0)
        for width in (4, WARMUP_WIDE):
            x = np.ones((T, width), np.float32)
            out = np.empty((T, 3), np.float32)
            ops.embedding(x, weight(5, width), np.zeros(T, np.int64))
            ops.rmsnorm(x, x, weight(width), 1e-5)
            linear(out, x, weight(3, width))
            ops.silu(x, x, x)
    if 1 in token_counts:
        ops.argmax(np.ones(3, np.float32))
        ops.argmax(np.ones(WARMUP_WIDE, np.float32))

"""The Llama 3.x transformer, composed of the ops of an OpSet handed in. Reads like Meta's model.py.

    h   = x + attention(attention_norm(x))          per layer, for every new token
    out = h + feed_forward(ffn_norm(h))             feed_forward(x) = w2(silu(w1 x) * (w3 x))
    logits = output(norm(out[last]))

Weight matrices (`Weights`, model/weights.py) are `Weight`s (llama_nb/formats.py) in the format the checkpoint stores (bf16 for
Meta's files) or the one they were repacked into at load; the model never branches on a format:
every product is `ops.linear(out, x, w, xq)` and the OpSet dispatches on w's format. Norm weights
are float32 (widened at load: exact). Attribute names mirror Meta's keys
(`layers.3.attention.wq.weight` is `weights.layers[3].attention.wq`).

Precision is the OpSet's: the activation type of its linear implementations ("bf16", the default:
activations rounded to bf16 before each product, llama.cpp's numerics, prefill on vdpbf16ps where
the CPU has it; "float32": Meta's float32 model). Prefill and decode round the same way, so a
token's cache entry does not depend on whether it came in a prompt or was generated.

Every buffer is preallocated in `RunState` (model/state.py), sized from the ops' declarations: activations for
`max_batch` tokens, the KV cache (its layout is the attention op's), and the scratch each op
declares. The KV cache is bf16 (uint16 bits, rounded to nearest even as each token's k and v
are appended) at precision bf16, float32 at precision float32, or either by `kv_cache`
("--kv-cache f32|bf16"); its element type picks the attention op ("attention" or
"attention_bf16kv": ops/specs.py). After warm-up, forward() allocates no array
(tests/test_alloc.py counts). Prefill runs the prompt as batched passes of at most `max_batch`
tokens; decode one token at a time. Logits are computed for the last position only, and checked:
non-finite logits stop with an error that names the first layer whose output went non-finite.

Several sequences in one pass (`forward_batch`, the server's batched decode): the KV cache has
`slots` independent sequences, cache[slot, layer] one [KVH, ctx, Dh] block each. A pass takes
spans of rows, (slot, tokens, start_pos) per sequence: the products run once over all rows (each
weight is read once for every sequence: what makes batched decode cheap), RoPE and attention run
per span at its own positions over its own slot's cache, and the logits of each span's last row
come out. Every op but attention works row by row, so a row's result does not depend on the other
rows (the product kernels never mix rows); `forward(tokens, start_pos)` is one span in slot 0.

Tensor parallelism (model/parallel.py): a Transformer given an MpiGroup holds one rank's Part of
the weights (its heads, FFN columns and vocab slice; RunState sizes its buffers for them) and
sums the partial results after the embedding, wo and w2 (all-reduce) and gathers the logits.
With Single (the default) those calls do nothing.
"""

from __future__ import annotations

import time

import numba
import numpy as np

from llama_nb.errors import ContextLimitError, LlamaNbError
from llama_nb.io.params import ModelArgs
from llama_nb.model.parallel import Single
from llama_nb.model.state import KV_CACHES, RunState, kv_cache_type
from llama_nb.model.weights import Attention, FeedForward, Weights
from llama_nb.ops import cores, jit
from llama_nb.ops.opset import OpSet
from llama_nb.ops.rope_tables import rope_tables

# Every op forward() and the sampler call: what warm-up compiles ("attention" is the chosen cache
# type's attention op: KV_CACHES).
USED_OPS = ("embedding", "rmsnorm", "linear", "rope", "attention", "silu", "argmax", "softmax")


class NonFiniteError(LlamaNbError):
    """The logits went NaN or infinite: the weights (or a kernel) produced garbage."""


class Transformer:
    """Meta's `Transformer.forward(tokens, start_pos)`, on registered ops.

    args       ModelArgs from params.json
    weights    Weights
    ops        OpSet: the implementation chosen for every op and weight format, and the precision
    ctx        context length: KV cache size and the largest position + 1
    max_batch  the largest number of tokens in one batched pass (prefill chunk)
    kv_cache   "bf16" or "f32": the KV cache's element type (None: the precision's, kv_cache_type)
    threads    Numba threads for this model's passes; set around each pass only, so two models in
               one process keep their own. None (default): all cores, less those another process
               keeps busy (ops/cores.py), asked before each pass
    slots      sequences the KV cache holds at once (forward_batch); forward() uses slot 0
    group      model/parallel.py: Single (default: the whole model here), or the MpiGroup of ranks
               that each hold their Part of the weights (the collectives run in forward)
    """

    def __init__(self, args: ModelArgs, weights: Weights, ops: OpSet, ctx: int = 4096, max_batch: int = 256,
                 threads: int | None = None, slots: int = 1, group: Single | None = None,
                 kv_cache: str | None = None):
        self.args, self.weights, self.ops, self.ctx = args, weights, ops, check_ctx(ctx)
        self.threads = check_threads(threads)  # the most a pass uses
        self.auto_threads = threads is None
        self.slots = check_slots(slots)
        self.group = group if group is not None else Single()
        self.part = self.group.part(args)
        self.kv_cache = kv_cache_type(kv_cache, ops.precision)
        self.attention_op = KV_CACHES[self.kv_cache][1]
        self.attend = getattr(ops, self.attention_op)  # one sequence's attention over its cache views
        self.state = RunState(args, min(max_batch, ctx), ctx, slots, self.part, self.kv_cache)
        self.rope_cos, self.rope_sin = rope_tables(args.head_dim, ctx, args.rope_theta, args.rope_scaling)
        # seconds spent in each layer's attention [:, 0] and feed-forward [:, 1] in the last pass
        self.layer_seconds = np.zeros((args.n_layers, 2))
        self._tokens = np.zeros(self.state.max_batch, np.int64)  # ids of the current chunk

    @property
    def precision(self) -> str:
        return self.ops.precision

    @property
    def max_batch(self) -> int:
        return self.state.max_batch

    def forward(self, tokens, start_pos: int) -> np.ndarray:
        """Run `tokens` at positions start_pos.. and return float32[V] logits of the last one.

        The KV cache (slot 0) keeps positions 0..start_pos-1 from earlier calls; they are not
        recomputed. The logits are a view of the state's buffer: the next call overwrites them.
        """
        n = len(tokens)
        if n == 0:
            raise LlamaNbError("forward: no tokens")
        self._check_span(tokens, start_pos)
        self.layer_seconds[:] = 0.0
        step = self.state.max_batch
        with jit.threads(self._pass_threads()):
            for lo in range(0, n, step):
                hi = min(lo + step, n)
                chunk = self._chunk_ids(((tokens, lo, hi),))
                spans = ((0, 0, hi - lo, start_pos + lo),)
                self._forward_chunk(chunk, spans)
            logits = self._logits(spans)
            self._check_finite(logits, chunk, spans)
        return logits[0]

    def forward_batch(self, sequences) -> np.ndarray:
        """One pass over several sequences: float32[len(sequences), V] logits of each one's last token.

        sequences  (slot, tokens, start_pos) each: `tokens` (ints) go to positions start_pos.. of
                   cache slot `slot`, whose positions 0..start_pos-1 earlier passes filled; slots
                   distinct; at most max_batch tokens in all
        The products run once over every sequence's rows; RoPE and attention per sequence. A view
        of the state's buffer: the next pass overwrites it.
        """
        total, seen = 0, 0  # seen: a bit per slot (no set: nothing allocated per step)
        for slot, tokens, start_pos in sequences:
            if not 0 <= slot < self.slots:
                raise LlamaNbError(f"slot {slot} does not exist: the cache has {self.slots} slots")
            if seen >> slot & 1:
                raise LlamaNbError(f"slot {slot} appears twice in one pass")
            if len(tokens) == 0:
                raise LlamaNbError(f"forward_batch: no tokens for slot {slot}")
            self._check_span(tokens, start_pos)
            seen |= 1 << slot
            total += len(tokens)
        if total == 0 or total > self.state.max_batch:
            raise LlamaNbError(f"forward_batch takes 1..{self.state.max_batch} tokens in all, got {total}")
        self.layer_seconds[:] = 0.0
        spans, lo = [], 0
        for slot, tokens, start_pos in sequences:
            spans.append((slot, lo, lo + len(tokens), start_pos))
            lo += len(tokens)
        with jit.threads(self._pass_threads()):
            chunk = self._chunk_ids([(tokens, 0, len(tokens)) for _, tokens, _ in sequences])
            self._forward_chunk(chunk, spans)
            logits = self._logits(spans)
            self._check_finite(logits, chunk, spans)
        return logits

    def _pass_threads(self) -> int:
        """Numba threads for the pass about to run (forward and forward_batch ask the same): the
        fixed count, or by default all cores less those another process keeps busy (ops/cores.py)."""
        return cores.auto_threads(self.threads) if self.auto_threads else self.threads

    def _check_span(self, tokens, start_pos: int) -> None:
        n = len(tokens)
        if start_pos < 0 or start_pos + n > self.ctx:
            raise ContextLimitError(
                f"positions {start_pos}..{start_pos + n - 1} do not fit the context of {self.ctx} tokens (--ctx)"
            )
        low, high = (int(tokens.min()), int(tokens.max())) if isinstance(tokens, np.ndarray) else (min(tokens), max(tokens))
        if low < 0 or high >= self.args.vocab_size:
            raise LlamaNbError(f"token ids must be in [0, {self.args.vocab_size}), got {low}..{high}")

    def _check_finite(self, logits: np.ndarray, chunk: np.ndarray, spans) -> None:
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf in the sum: that is the point
            total = logits.sum()
        if not np.isfinite(total):  # cheap: NaN and inf propagate through the sum
            with np.errstate(invalid="ignore", over="ignore"):
                raise NonFiniteError(self._where_non_finite(chunk, spans))

    def _chunk_ids(self, pieces) -> np.ndarray:
        """tokens[lo:hi] of each (tokens, lo, hi) piece, one after the other, in the preallocated id
        buffer (element by element: a list assigned to an array would be converted to a temporary
        array first)."""
        n = 0
        for tokens, lo, hi in pieces:
            for i in range(lo, hi):
                self._tokens[n] = tokens[i]
                n += 1
        return self._tokens[:n]

    def _forward_chunk(self, tokens: np.ndarray, spans, check_layers: bool = False) -> str | None:
        """Run the rows `tokens`; spans: (slot, lo, hi, start_pos) for each sequence's rows lo..hi."""
        ops, s, w, eps = self.ops, self.state, self.weights, self.args.norm_eps
        T = len(tokens)
        x, xb, xb2 = s.x[:T], s.xb[:T], s.xb2[:T]
        self.group.embedding(ops, x, w.tok_embeddings, tokens, self.part)
        if check_layers and not np.isfinite(x.sum()):
            return "the token embeddings"
        for i, layer in enumerate(w.layers):
            t0 = time.perf_counter()
            ops.rmsnorm(xb, x, layer.attention_norm, eps)
            self._attention(layer.attention, i, T, spans)
            x += xb2
            t1 = time.perf_counter()
            if check_layers and not np.isfinite(x.sum()):
                return f"layer {i}'s attention"
            ops.rmsnorm(xb, x, layer.ffn_norm, eps)
            self._feed_forward(layer.feed_forward, T)
            x += xb2
            t2 = time.perf_counter()
            if check_layers and not np.isfinite(x.sum()):
                return f"layer {i}'s feed-forward"
            self.layer_seconds[i, 0] += t1 - t0
            self.layer_seconds[i, 1] += t2 - t1
        return None

    def _attention(self, w: Attention, layer: int, T: int, spans) -> None:
        """xb2 = wo(attention(rope(wq xb), with rope(wk xb) and wv xb appended to the cache)):
        the products over all T rows, RoPE and attention per sequence, at its positions, in its slot."""
        ops, s, args = self.ops, self.state, self.args
        H, KVH, Dh = self.part.n_heads, self.part.n_kv_heads, args.head_dim
        xb, xq = s.xb[:T], s.linear_xq
        q, k, v = s.q[:T], s.k[:T], s.v[:T]
        ops.linear(q, xb, w.wq, xq)
        ops.linear(k, xb, w.wk, xq)
        ops.linear(v, xb, w.wv, xq)
        q3, k3, v3 = q.reshape(T, H, Dh), k.reshape(T, KVH, Dh), v.reshape(T, KVH, Dh)
        att = s.att[:T]
        att3 = att.reshape(T, H, Dh)
        for slot, lo, hi, start_pos in spans:
            ops.rope(q3[lo:hi], self.rope_cos, self.rope_sin, start_pos)
            ops.rope(k3[lo:hi], self.rope_cos, self.rope_sin, start_pos)
            self.attend(att3[lo:hi], q3[lo:hi], k3[lo:hi], v3[lo:hi], s.cache_k[slot, layer], s.cache_v[slot, layer],
                        start_pos, s.attention_key_tile, s.attention_rows, s.attention_running)
        ops.linear(s.xb2[:T], att, w.wo, xq)
        self.group.allreduce(s.xb2[:T])

    def _feed_forward(self, w: FeedForward, T: int) -> None:
        """xb2 = w2(silu(w1 xb) * w3 xb)   (SwiGLU)"""
        ops, s = self.ops, self.state
        hb, hb2, hb3, xq = s.hb[:T], s.hb2[:T], s.hb3[:T], s.linear_xq
        ops.linear(hb, s.xb[:T], w.w1, xq)
        ops.linear(hb2, s.xb[:T], w.w3, xq)
        ops.silu(hb3, hb, hb2)
        ops.linear(s.xb2[:T], hb3, w.w2, xq)
        self.group.allreduce(s.xb2[:T])

    def _logits(self, spans) -> np.ndarray:
        """float32[len(spans), V]: the output of each span's last row (the norm row by row); with
        several ranks each computes its vocab slice and the slices are all-gathered."""
        s, n = self.state, len(spans)
        for i, (_, _, hi, _) in enumerate(spans):
            self.ops.rmsnorm(s.last[i : i + 1], s.x[hi - 1 : hi], self.weights.norm, self.args.norm_eps)
        mine = s.logits[:n] if self.part.size == 1 else s.logits_part[:n]
        self.ops.linear(mine, s.last[:n], self.weights.output, s.linear_xq)
        for i in range(n if self.part.size > 1 else 0):  # row by row: MPI concatenates whole buffers
            self.group.allgather(mine[i : i + 1], s.logits[i : i + 1])
        return s.logits[:n]

    def _where_non_finite(self, chunk: np.ndarray, spans) -> str:
        """Run the last chunk again, checking after every sub-block: which produced NaN or inf."""
        where = self._forward_chunk(chunk, spans, check_layers=True) or "the output projection (norm or output.weight)"
        positions = ", ".join(str(start_pos + hi - lo - 1) for _, lo, hi, start_pos in spans)
        return (f"the logits at position {positions} are not finite (NaN or inf): activations "
                f"first went non-finite in {where}; the weights hold NaN, inf or huge values")

    def warmup(self) -> float:
        """Compile (or load from Numba's on-disk cache) every kernel the forward pass and the
        sampler use; return seconds (the compile policy: llama_nb/ops/jit.py)."""
        t0 = time.perf_counter()
        writeable = self.weights.tok_embeddings.data.flags.writeable
        with jit.threads(self.threads):
            used = tuple(self.attention_op if op == "attention" else op for op in USED_OPS)
            jit.warm_model(self.ops, self.weights.formats(), {"Dh": self.args.head_dim}, writeable, used)
        self.ops.reset_timings()
        return time.perf_counter() - t0


def check_ctx(ctx: int) -> int:
    if ctx < 1:
        raise LlamaNbError(f"--ctx must be at least 1, got {ctx}")
    return ctx


def check_slots(slots: int) -> int:
    if slots < 1:
        raise LlamaNbError(f"--parallel must be at least 1, got {slots}")
    return slots


def check_threads(threads: int | None) -> int:
    """`threads` Numba threads (None: all available), checked against what Numba can use."""
    import os

    available = numba.config.NUMBA_NUM_THREADS
    if threads is None:
        return available
    if threads < 1:
        raise LlamaNbError(f"--threads must be >= 1, got {threads}")
    if threads > available:
        raise LlamaNbError(f"--threads {threads} is more than the {available} threads Numba can use on this "
                           f"machine ({os.cpu_count()} cores); use at most {available}")
    return threads

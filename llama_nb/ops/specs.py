"""Every op of a Llama 3.x forward pass, declared once as data (llama_nb/ops/signature.py).

Conventions shared by all ops:
- Output arguments come first and are preallocated by the caller: nothing allocates in the
  forward pass. Two arrays never overlap unless the op says `may_alias`.
- Activations and accumulators are float32. Weight matrices are `Weight`s in a format
  (llama_nb/formats.py); implementations are registered per format. Norm weights are float32
  (the loader widens them: exact, and D floats each).
- Scratch arguments are room the caller owns (model/transformer.py's RunState), sized by the
  declared dimensions for the largest call, so a kernel needs no allocation of its own.
- All arrays are C-contiguous.
Each declaration also holds the op's test and benchmark cases (tiny, odd sizes that do not divide
any block or vector width, and the real Llama 3.1 8B / 3.2 1B shapes), its tolerance against the
reference, and the dims its warm-up compiles with.
"""

from __future__ import annotations

from llama_nb.errors import LlamaNbError
from llama_nb.ops import inputs as v
from llama_nb.ops.registry import defop
from llama_nb.ops.signature import F32, I64, IN, INOUT, OUT, PARAM, SCRATCH, U8, U16, WEIGHT, Arg, OpSpec


def _cases(fields: str, *rows: tuple) -> tuple[dict, ...]:
    names = fields.split()
    return tuple(dict(zip(names, row)) for row in rows)


def _tokens_in_range(args, dims) -> None:
    tokens = args[2]
    if tokens.size and (tokens.min() < 0 or tokens.max() >= dims["V"]):
        raise LlamaNbError(f"embedding: token ids must be in [0, {dims['V']}), got {tokens.min()}..{tokens.max()}")


def _positive_eps(args, dims) -> None:
    if not args[3] > 0:
        raise LlamaNbError(f"rmsnorm: eps must be > 0, got {args[3]}")


MATRIX_CASES = _cases(
    "T K N",
    (1, 64, 32), (3, 4, 5), (1, 127, 61), (3, 4097, 33), (5, 255, 129),
    (1, 8193, 7), (1, 9000, 70),                                 # matvec with K beyond x-in-L1
    (1, 4096, 4096), (1, 4096, 14336), (8, 4096, 128256),       # 8B: wq/wo, w1/w3, output
    (1, 14336, 4096), (17, 1100, 71),                            # 8B w2; ragged T, N and K blocks
    (16, 32, 1), (33, 2048, 97), (70, 96, 64),                   # K % 32 == 0 prefill (AMX): one
)                                                                # tile step; ragged token and row blocks
# The block formats (K a multiple of 32 for q8_0, 256 for q4_k/q6_k): one block, one super-block,
# N past one 64-row task and not a multiple of it, several super-blocks, the 8B widths (K 4096, w2's
# 14336) and ragged prefill chunks; q4_k's NumPy quantizer (~0.5 us a weight) keeps them small.
MATRIX_BLOCK_CASES = _cases(
    "T K N",
    (1, 32, 5), (2, 96, 3),                                        # q8_0 only: 1 and 3 blocks
    (3, 352, 9),                                                   # q8_0 only: 8 blocks at once + 3
    (1, 256, 1), (1, 256, 67), (3, 512, 33), (5, 768, 129),
    (1, 4096, 130), (1, 14336, 70), (17, 1024, 65), (64, 512, 64),
    # T > 8, the prefill tiles (ops/quant_tiles.py): odd T and N, two K blocks, q8_0's K % 256 tail
    (9, 96, 5), (11, 608, 7),                                      # q8_0 only: the tail alone; 2 super-blocks + 3
    (13, 2560, 9),
    # T >= 16, the AMX-INT8 tiles where the CPU has them (ops/quant_amx.py): a 32-token block and a
    # ragged one, a partial 32-row task, q8_0's odd block count
    (16, 96, 33),                                                  # q8_0 only
    (37, 1280, 97),
)
MATRIX_BENCH = _cases(
    "T K N",
    (1, 2048, 2048), (1, 2048, 8192), (1, 2048, 128256), (64, 2048, 8192),  # 1B decode, a 1B prefill chunk
    # pp128: 1B wq/wo, w1/w3, w2; 8B wq/wo, w1/w3, w2
    (128, 2048, 2048), (128, 2048, 8192), (128, 8192, 2048),
    (128, 4096, 4096), (128, 4096, 14336), (128, 14336, 4096),
)

defop(OpSpec(
    "bf16_to_f32",
    "out = float32(x): exact widening, the bf16 bits become the high half of the float32.",
    (Arg("out", OUT, F32, ("...",)), Arg("x", IN, U16, ("...",), v.any_bf16_bits)),
    cases=tuple({"...": s} for s in [(1,), (257,), (3, 5, 7), (65536 + 3,), (4096, 4096)]),
))
defop(OpSpec(
    "f32_to_bf16",
    "out = bf16(x): round to nearest, ties to even; NaN stays NaN (quiet, sign kept), +-Inf stays Inf.",
    (Arg("out", OUT, U16, ("...",)), Arg("x", IN, F32, ("...",), v.any_floats)),
    cases=tuple({"...": s} for s in [(1,), (257,), (3, 5, 7), (65536 + 3,), (4096, 4096)]),
))
defop(OpSpec(
    "dequantize",
    "out = the float32 values of w (each format's own rule: llama_nb/formats.py).",
    (Arg("out", OUT, F32, ("N", "K")), Arg("w", WEIGHT, None, ("N", "K"))),
    cases=_cases("N K", (1, 1), (3, 64), (7, 4097), (4096, 4096)),
    block_cases=_cases("N K", (1, 32), (1, 256), (3, 512), (70, 4096)),
    warm=dict(N=2, K=32),
))
defop(OpSpec(
    "embedding",
    "out[t, :] = dequantize(table)[tokens[t], :]",
    (Arg("out", OUT, F32, ("T", "D")), Arg("table", WEIGHT, None, ("V", "D"), doc="tok_embeddings.weight"),
     Arg("tokens", IN, I64, ("T",), v.token_ids)),
    bytes=lambda d, args: 2 * args[0].nbytes + args[2].nbytes,  # rows read (at most as wide as out), written
    validate=_tokens_in_range,
    cases=_cases("T V D", (1, 10, 8), (5, 37, 33), (4, 128256, 64), (3, 1000, 4096)),
    block_cases=_cases("T V D", (1, 10, 32), (1, 10, 256), (5, 37, 512), (3, 300, 4096)),
    warm=dict(T=2, V=5, D=32),
))
defop(OpSpec(
    "rmsnorm",
    "out[t, :] = x[t, :] / sqrt(mean(x[t, :]**2) + eps) * weight   (Meta's RMSNorm; out may be x)",
    (Arg("out", OUT, F32, ("T", "D")), Arg("x", IN, F32, ("T", "D"), v.residuals),
     Arg("weight", IN, F32, ("D",), v.norm_values, doc="attention_norm / ffn_norm / norm weight"),
     Arg("eps", PARAM, float, (), lambda rng, s, d: 1e-5)),
    may_alias=(("out", "x"),),
    validate=_positive_eps,
    cases=_cases("T D", (1, 1), (3, 64), (5, 4097), (1, 4096), (8, 4096), (2, 2048)),
    # One float64 (kernel) vs pairwise float32 (NumPy) sum of squares, then 2 float32 products.
    tol=dict(rtol=2e-6, atol=1e-6),
    warm=dict(T=2, D=32),
))
defop(OpSpec(
    "linear",
    """out = act(x) @ dequantize(w).T   (nn.Linear: rows of w are output features)
act is the activation type the implementation is registered for:
    float32  x as it is (Meta's model.py run in float32)
    bf16     x rounded to the nearest bf16 first (ties to even), as llama.cpp's bf16 path and the
             vdpbf16ps instruction compute it: products exact, sums float32; moves each output by
             at most 2^-8 * sum_k |x[k] w[n,k]|. For the block formats (q8_0, q4_k, q6_k) bf16
             means int8 blocks instead, as llama.cpp computes them: per 32 values d = max|x| / 127,
             x ~ d * roundf(x / d); moves output n by at most sum_b d_b / 2 * sum_{k in b} |w[n,k]|
             (llama_nb/quant/activations.py). Each implementation is checked against the reference
             that rounds x the same way, within the tolerance below.
T = 1 is decode (a matrix-vector product, bound by memory), T > 1 prefill (bound by arithmetic).
xq is room for x converted to what the kernel multiplies (4 bytes per element at most).""",
    (Arg("out", OUT, F32, ("T", "N")), Arg("x", IN, F32, ("T", "K")),
     Arg("w", WEIGHT, None, ("N", "K"), doc="a weight matrix in any registered format"),
     Arg("xq", SCRATCH, U8, ("T * K * 4",))),
    flops="2 * T * K * N",
    activations=True,
    cases=MATRIX_CASES,
    bench_only=MATRIX_BENCH,
    block_cases=MATRIX_BLOCK_CASES,
    # K-long dot products summed in another order (16 float32 lanes + FMA vs BLAS blocks): the error
    # of either is ~ eps * sqrt(K) * sum|x*w|; for these inputs (|x| <= 30, |w| <= 4, K <= 14336)
    # below 1e-4 absolute, on outputs of O(1..30).
    tol=dict(rtol=1e-4, atol=2e-4),
    warm=dict(T=2, K=32, N=3),
))
defop(OpSpec(
    "rope",
    """Rotary embedding in place, Meta's interleaved pairs (not Hugging Face's rotate-half):
for token t, head h and pair i, with p = start_pos + t,
    (x[t,h,2i], x[t,h,2i+1]) <- (x0*cos[p,i] - x1*sin[p,i],  x0*sin[p,i] + x1*cos[p,i])
cos, sin come from rope_tables(); angle = float32(p) * float32(freq_i).""",
    (Arg("x", INOUT, F32, ("T", "H", "Dh"), v.rotated), Arg("cos", IN, F32, ("P", "Dh // 2"), v.rope_cos),
     Arg("sin", IN, F32, ("P", "Dh // 2"), v.rope_sin), Arg("start_pos", PARAM, int)),
    bytes=lambda d, args: 2 * args[0].nbytes + 2 * d["T"] * (d["Dh"] // 2) * 4,  # x both ways, table rows
    requires=("Dh % 2 == 0", "start_pos >= 0", "start_pos + T <= P"),
    cases=_cases("T H Dh P start_pos", (1, 1, 2, 1, 0), (3, 5, 8, 16, 7), (7, 8, 128, 1024, 100),
                 (1, 32, 128, 8192, 8191), (2, 8, 64, 131072, 131070)),  # decode at the context's end
    # One complex multiply per pair; the kernel and NumPy may round x0*c - x1*s differently.
    tol=dict(rtol=1e-6, atol=2e-5),
    warm=dict(T=2, H=2, Dh=16, P=4, start_pos=0),
))
defop(OpSpec(
    "softmax",
    "out[r, :] = exp(x[r, :] - max(x[r, :])) / sum(exp(x[r, :] - max(x[r, :])))   (out may be x)",
    (Arg("out", OUT, F32, ("R", "C")), Arg("x", IN, F32, ("R", "C"), v.logits_like)),
    may_alias=(("out", "x"),),
    cases=_cases("R C", (1, 1), (3, 7), (32, 1025), (1, 128256)),
    # exp within an ulp or two across libms; the float64 sum vs NumPy's pairwise float32 sum.
    tol=dict(rtol=1e-5, atol=1e-9),
    warm=dict(R=1, C=3),
))
defop(OpSpec(
    "silu",
    "The SwiGLU gate in one pass: out = silu(a) * b = a / (1 + exp(-a)) * b   (out may be a or b)",
    (Arg("out", OUT, F32, ("T", "F")), Arg("a", IN, F32, ("T", "F"), v.gate_values, doc="w1 @ x"),
     Arg("b", IN, F32, ("T", "F"), doc="w3 @ x")),
    may_alias=(("out", "a"), ("out", "b")),
    cases=_cases("T F", (1, 1), (3, 17), (1, 14336), (4, 8192)),
    tol=dict(rtol=1e-5, atol=1e-7),  # exp(-|a|) rewritten (silu.py) vs the plain definition
    warm=dict(T=2, F=16),
))
# The attention kernels' tiles (llama_nb/ops/attention.py): the online softmax folds keys in blocks
# of KEY_BLOCK positions, and a prefill task takes QUERY_TILE tokens; the scratch is sized by them,
# never by the context.
KEY_BLOCK = 64
QUERY_TILE = 16
ATTENTION_MATH = """Causal grouped-query attention of T new tokens at positions start_pos.., over a KV cache it
appends to. First k, v are written to rows start_pos .. start_pos+T-1 of k_cache, v_cache (the
cache layout is this op's: [KVH, S, Dh], each head's positions contiguous). Then for token t
(position p = start_pos + t) and head h, with kv head g = h // (H // KVH):
    s[j]       = q[t,h,:] . k_cache[g,j,:] / sqrt(Dh)        for j = 0 .. p
    out[t,h,:] = sum_j softmax(s)[j] * v_cache[g,j,:]
K/V are read in place for every head of a group, never copied per head. One call is one
sequence: its rows of q, k, v, its own cache, its own start_pos. key_tile, rows and running are
per-thread scratch whose size does not depend on S: a block of keys re-laid for the prefill
kernel, rows of scores and probabilities, the running max and sum of the online softmax."""


def _attention_bytes(d, args) -> int:
    # q, the new k and v, out (float32), and the filled cache rows, each read once per kv group
    n_ctx = d["start_pos"] + d["T"]
    cache_item = args[4].itemsize
    return 4 * (2 * d["T"] * d["H"] * d["Dh"] + 2 * d["T"] * d["KVH"] * d["Dh"]) + cache_item * 2 * d["KVH"] * n_ctx * d["Dh"]


def _attention_spec(name: str, cache_dtype, cache_values, how: str, bench_only: tuple, tol: dict) -> OpSpec:
    """The attention op over a KV cache of one element type (float32, or bf16 bits in uint16)."""
    return OpSpec(
        name,
        ATTENTION_MATH + "\n" + how,
        (Arg("out", OUT, F32, ("T", "H", "Dh")), Arg("q", IN, F32, ("T", "H", "Dh"), v.queries, doc="queries after rope"),
         Arg("k", IN, F32, ("T", "KVH", "Dh"), v.queries, doc="new keys after rope"),
         Arg("v", IN, F32, ("T", "KVH", "Dh"), v.queries, doc="new values"),
         Arg("k_cache", INOUT, cache_dtype, ("KVH", "S", "Dh"), cache_values),
         Arg("v_cache", INOUT, cache_dtype, ("KVH", "S", "Dh"), cache_values),
         Arg("start_pos", PARAM, int),
         Arg("key_tile", SCRATCH, F32, ("threads", KEY_BLOCK // 16, "Dh", 16)),
         Arg("rows", SCRATCH, F32, ("threads", 2, 4, KEY_BLOCK)),
         Arg("running", SCRATCH, F32, ("threads", QUERY_TILE, 2, 4))),
        flops="4 * H * Dh * (T * start_pos + T * (T + 1) // 2)",  # q.k and the weighted sum, per visible key
        bytes=_attention_bytes,
        requires=("H % KVH == 0", "start_pos >= 0", "start_pos + T <= S"),
        cases=_cases(
            "T H KVH Dh S start_pos",
            (1, 1, 1, 2, 1, 0),            # one token, one head, position 0: one key
            (1, 4, 2, 8, 16, 5),           # decode at start_pos > 0, GQA 4/2
            (3, 4, 1, 16, 32, 9),          # MQA (KVH = 1), chunked prefill
            (4, 6, 6, 10, 12, 2),          # MHA (KVH = H), odd Dh
            (3, 6, 2, 10, 200, 150),       # odd Dh over 3 key blocks, the last ragged
            (17, 8, 2, 64, 40, 3),         # tiled prefill: 17 tokens (two query tiles, ragged key groups)
            (2, 5, 1, 32, 40, 30),         # tiled, MQA with 5 heads per group: tasks of 4 and 1 heads
            (1, 6, 1, 16, 40, 30),         # grouped decode: 6 heads per group, tasks of 4 and 2 heads
            (1, 4, 2, 32, 300, 250),       # decode over 4 key blocks, the last ragged (251 keys)
            (37, 4, 2, 32, 300, 100),      # prefill of 37 tokens after 100: 3 query tiles x 3 key blocks
            (20, 4, 4, 16, 64, 44),        # MHA prefill ending exactly at a key block (64 = KEY_BLOCK)
            (6, 32, 8, 128, 64, 0),        # 8B GQA 32/8, Dh 128: prefill from position 0
            (5, 32, 8, 128, 128, 37),      # 8B: chunked prefill (start_pos > 0)
            (1, 32, 8, 128, 1024, 700),    # 8B: decode
            (1, 32, 8, 64, 300, 250),      # 1B heads (Dh 64, compiled as a constant): decode over 4 key blocks
            (1, 4, 2, 64, 70, 66),         # Dh 64, groups of 2 heads (the last head repeated), 2 key blocks
            (1, 12, 1, 128, 9, 8),         # Dh 128, MQA: 12 heads per group (tasks of 4 heads)
        ),
        bench_only=bench_only,
        tol=tol,
        warm=dict(T=2, H=2, KVH=1, Dh=16, S=4, start_pos=0),
    )


defop(_attention_spec(
    "attention", F32, v.cache_rows,
    "The cache is float32: the keys and values as computed (--kv-cache f32; precision float32's default).",
    _cases("T H KVH Dh S start_pos", (1, 32, 8, 128, 8192, 4095),  # 8B decode at a 4K context
           (1, 32, 8, 64, 32768, 32767)),  # 1B decode at 32K positions: the cache streamed, 64 MB per layer
    # Dh-long dot products (reordered), exp, and a softmax-weighted sum of up to 1024 value rows.
    dict(rtol=1e-4, atol=1e-5),
))
defop(_attention_spec(
    "attention_bf16kv",
    U16, v.cache_rows_bf16,
    """The cache holds bf16 bits (uint16): k and v are rounded to the nearest bf16 (ties to even, as
ops/bf16.py) when appended, and widened exactly when read (--kv-cache bf16; precision bf16's
default). Half the bytes of the float32 cache: 128 KiB per position for Llama 3.1 8B.""",
    _cases("T H KVH Dh S start_pos", (1, 32, 8, 128, 8192, 4095),
           (1, 32, 8, 64, 32768, 32767)),  # 1B decode at 32K positions: 32 MB of cache per layer
    # The reference rounds k, v the same way (bit for bit), so only the arithmetic's order differs.
    dict(rtol=1e-4, atol=1e-5),
))
defop(OpSpec(
    "argmax",
    "Index of the largest element (the first one on ties; a NaN counts as the largest), as an int.",
    (Arg("x", IN, F32, ("N",), v.coarse_with_ties),),
    returns="int",
    requires=("N >= 1",),
    cases=_cases("N with_nan", (1, 0), (5, 0), (16385, 0), (128256, 0), (128256, 1)),
    warm=dict(N=3),
))

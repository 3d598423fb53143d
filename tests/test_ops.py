"""Every registered implementation of every op, for every weight format and activation type,
against the NumPy reference on the op's declared cases (llama_nb/ops/specs.py, also benchmarked by
bench/bench_ops.py); the references themselves against torch / Meta's RMSNorm; the derived
argument checks; in-place aliasing."""

import os

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from llama_models.llama3.model import RMSNorm, repeat_kv

import llama_nb.ops  # noqa: F401  (registers every op)
from llama_nb.errors import LlamaNbError
from llama_nb.formats import BF16, Weight, as_weight, formats, get_format
from llama_nb.ops import registry
from llama_nb.ops.cases import assert_matches, call, ci_cases, make_inputs
from llama_nb.ops.jit import HAS_AMX_BF16, HAS_AVX512_BF16
from llama_nb.ops.reference import bf16_to_f32_np, f32_to_bf16_np

registry.load_plugins()  # plugin implementations are tested too
SLOTS = registry.slots()


def _fmt(slot):
    return get_format(slot[1]) if slot[1] is not None else None


def _get(slot, name):
    return registry.get(slot[0], name, format=slot[1], act=slot[2])


def test_every_slot_has_cases_a_reference_and_another_implementation():
    for slot in SLOTS:
        spec = registry.spec(slot[0])
        assert spec.cases and "reference" in registry.impls[slot] and len(registry.impls[slot]) >= 2, slot
    for fmt in formats:  # every format has every weight op, at every activation type
        for op in ("linear", "embedding", "dequantize"):
            acts = registry.ACTIVATIONS if registry.spec(op).activations else (None,)
            assert all((op, fmt, act) in registry.impls for act in acts), (op, fmt)


@pytest.mark.parametrize("slot", SLOTS, ids=[registry.slot_name(s) for s in SLOTS])
def test_every_implementation_matches_the_reference(slot, rng):
    op = slot[0]
    check = registry.spec(op).check
    impls = [name for name in sorted(registry.impls[slot]) if name != "reference"]
    for case in ci_cases(op, _fmt(slot)):
        args = make_inputs(op, case, rng, _fmt(slot))
        check(*args)  # the input makers produce what the contract allows
        want = call(op, _get(slot, "reference"), args)
        for impl in impls:
            got = call(op, _get(slot, impl), args)
            assert_matches(op, got, want, f"{registry.slot_name(slot)}[{impl}] case={case}")


def test_real_8b_shapes_are_tested_not_only_benchmarked():
    for case in [(1, 4096, 4096), (1, 4096, 14336), (1, 14336, 4096), (8, 4096, 128256)]:
        assert dict(zip("TKN", case)) in ci_cases("linear")
    assert dict(T=1, H=32, KVH=8, Dh=128, S=1024, start_pos=700) in ci_cases("attention")


# --------------------------------------------------------------- the references against torch


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def _tol(op):
    return registry.spec(op).tol


def test_reference_rmsnorm_matches_metas_rmsnorm(rng):
    out, x, weight, eps = make_inputs("rmsnorm", dict(T=5, D=4097), rng)
    meta = RMSNorm(x.shape[1], eps=eps)
    with torch.no_grad():
        meta.weight.copy_(_t(weight))
        want = meta(_t(x)).numpy()
    registry.get("rmsnorm", "reference")(out, x, weight, eps)
    np.testing.assert_allclose(out, want, **_tol("rmsnorm"))


def test_reference_linear_softmax_silu_embedding_argmax_match_torch(rng):
    out, x, w, xq = make_inputs("linear", dict(T=3, K=4097, N=33), rng)
    w_f32 = _t(bf16_to_f32_np(w.data))
    registry.get("linear", "reference", format="bf16", act="float32")(out, x, w, xq)
    np.testing.assert_allclose(out, F.linear(_t(x), w_f32).numpy(), **_tol("linear"))
    registry.get("linear", "reference", format="bf16", act="bf16")(out, x, w, xq)  # torch rounds x itself here
    np.testing.assert_allclose(out, F.linear(_t(x).to(torch.bfloat16).float(), w_f32).numpy(), **_tol("linear"))
    for fmt, torch_dtype in (("f16", torch.float16), ("f32", torch.float32)):  # the other formats' decoding
        wf = get_format(fmt).quantize(bf16_to_f32_np(w.data))
        registry.get("linear", "reference", format=fmt, act="float32")(out, x, wf, xq)
        want = F.linear(_t(x), w_f32.to(torch_dtype).float()).numpy()
        np.testing.assert_allclose(out, want, **_tol("linear"))

    out, x = make_inputs("softmax", dict(R=32, C=1025), rng)
    registry.get("softmax", "reference")(out, x)
    np.testing.assert_allclose(out, torch.softmax(_t(x), dim=-1).numpy(), **_tol("softmax"))

    out, a, b = make_inputs("silu", dict(T=4, F=8192), rng)
    registry.get("silu", "reference")(out, a, b)
    np.testing.assert_allclose(out, (F.silu(_t(a)) * _t(b)).numpy(), **_tol("silu"))

    out, table, tokens = make_inputs("embedding", dict(T=5, V=37, D=33), rng)
    registry.get("embedding", "reference", format="bf16")(out, table, tokens)
    want = F.embedding(_t(tokens), _t(table.data.view(np.int16)).view(torch.bfloat16)).float().numpy()
    np.testing.assert_array_equal(out, want)

    for case in ci_cases("argmax"):
        (x,) = make_inputs("argmax", case, rng)
        assert registry.get("argmax", "reference")(x) == torch.argmax(_t(x)).item(), case


@pytest.mark.parametrize("op", ["attention", "attention_bf16kv"])
def test_reference_attention_matches_metas_attention_math(op, rng):
    # Meta's Attention.forward after the cache update: repeat_kv, scores / sqrt(Dh) + causal mask
    # (built as in Transformer.forward for chunked prefill), softmax in float32, @ values. The bf16
    # cache holds the new rows rounded to nearest even (torch's own rounding), read back widened.
    stored = (lambda x: x.numpy()) if op == "attention" else (lambda x: x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16))
    widened = (lambda c: c) if op == "attention" else bf16_to_f32_np
    for case in [(5, 32, 8, 128, 128, 37), (3, 4, 1, 16, 32, 9), (1, 4, 2, 8, 16, 5), (2, 4, 2, 16, 200, 150)]:
        dims = dict(zip(("T", "H", "KVH", "Dh", "S", "start_pos"), case))
        out, q, k, v, k_cache, v_cache, start_pos, *scratch = make_inputs(op, dims, rng)
        n_tokens, n_heads, n_kv, head_dim, _, _ = case
        n_ctx = start_pos + n_tokens
        k_cache, v_cache = k_cache.copy(), v_cache.copy()
        registry.get(op, "reference")(out, q, k, v, k_cache, v_cache, start_pos, *scratch)
        np.testing.assert_array_equal(k_cache[:, start_pos:n_ctx], stored(_t(k.transpose(1, 0, 2))))  # appended
        np.testing.assert_array_equal(v_cache[:, start_pos:n_ctx], stored(_t(v.transpose(1, 0, 2))))
        k_cache, v_cache = widened(k_cache), widened(v_cache)
        keys = repeat_kv(_t(k_cache[:, :n_ctx]).transpose(0, 1)[None], n_heads // n_kv).transpose(1, 2)
        values = repeat_kv(_t(v_cache[:, :n_ctx]).transpose(0, 1)[None], n_heads // n_kv).transpose(1, 2)
        xq = _t(q)[None].transpose(1, 2)  # [1, H, T, Dh]
        mask = torch.hstack([torch.zeros(n_tokens, start_pos), torch.triu(torch.full((n_tokens, n_tokens), float("-inf")), 1)])
        scores = torch.matmul(xq, keys.transpose(2, 3)) / np.sqrt(head_dim) + mask
        want = torch.matmul(F.softmax(scores.float(), dim=-1), values).transpose(1, 2)[0].numpy()
        np.testing.assert_allclose(out, want, **_tol(op), err_msg=str(case))


def test_attention_kernels_read_no_cache_row_past_the_context(rng):
    # cache rows past start_pos + T hold NaN (ops/inputs.py): one read of them would make out NaN;
    # and the result must not depend on how many threads ran it (scratch per thread)
    for op in ("attention", "attention_bf16kv"):
        for case in ci_cases(op):
            args = make_inputs(op, case, rng)
            (out, _, _) = call(op, registry.get(op, "numba"), args)
            assert np.isfinite(out).all(), (op, case)


# ---------------------------------------------------------------------- checks and aliasing

_F = np.float32


def _w(n, k, dtype=np.uint16):
    return as_weight(np.zeros((n, k), dtype), BF16)


def _attention_args(T, H, KVH, Dh, S, start_pos):
    z = lambda *shape: np.zeros(shape, _F)  # noqa: E731
    scratch = registry.spec("attention").scratch_shapes(dict(H=H, KVH=KVH, Dh=Dh, S=S, T=T))
    return (z(T, H, Dh), z(T, H, Dh), z(T, KVH, Dh), z(T, KVH, Dh), z(KVH, S, Dh), z(KVH, S, Dh), start_pos,
            *(np.zeros(shape, dtype) for shape, dtype in scratch.values()))


@pytest.mark.parametrize(
    "op,args,message",
    [
        ("linear", (np.zeros((1, 8), _F), np.zeros((1, 4), np.float64), _w(8, 4), np.zeros(64, np.uint8)), "x must be float32"),
        ("linear", (np.zeros((1, 8), _F), np.zeros((1, 5), _F), _w(8, 4), np.zeros(64, np.uint8)), r"K is 5 elsewhere but 4 in w"),
        ("linear", (np.zeros((1, 8), _F), np.zeros((1, 4), _F), np.zeros((8, 4), np.uint16), np.zeros(64, np.uint8)), "must be a Weight"),
        ("linear", (np.zeros((2, 8), _F), np.zeros((2, 4), _F), _w(8, 4), np.zeros(8, np.uint8)), r"xq's dimension T \* K \* 4 should be 32"),
        ("rmsnorm", (np.zeros((2, 4), _F), np.zeros((2, 4), _F), np.zeros(4, np.uint16), 1e-5), "weight must be float32"),
        ("rmsnorm", (np.zeros((2, 4), _F), np.zeros((2, 4), _F), np.zeros(5, _F), 1e-5), r"D is 4 elsewhere but 5 in weight"),
        ("rmsnorm", (np.zeros((2, 4), _F), np.zeros((2, 4), _F), np.zeros(4, _F), 0.0), "eps must be > 0"),
        ("attention", _attention_args(1, 6, 4, 8, 16, 0), "H % KVH"),
        ("attention", _attention_args(2, 4, 2, 8, 16, 15), r"start_pos \+ T <= S"),
        ("rope", (np.zeros((2, 4, 8), _F), np.zeros((16, 4), _F), np.zeros((16, 4), _F), 15), r"start_pos \+ T <= P"),
        ("rope", (np.zeros((2, 4, 8), _F), np.zeros((16, 3), _F), np.zeros((16, 3), _F), 0), r"cos's dimension Dh // 2 should be 4"),
        ("embedding", (np.zeros((1, 4), _F), _w(10, 4), np.array([10])), r"\[0, 10\)"),
        ("softmax", (np.zeros((2, 4), _F), np.zeros((2, 3), _F)), "C is 4 elsewhere but 3 in x"),
        ("silu", (np.zeros((2, 4), _F), np.zeros((2, 4), _F)[:, ::2], np.zeros((2, 2), _F)), "C-contiguous"),
        ("argmax", (np.zeros(0, _F),), "need N >= 1"),
    ],
)
def test_declared_check_rejects_bad_arguments(op, args, message):
    with pytest.raises(LlamaNbError, match=message):
        registry.spec(op).check(*args)


def test_linear_check_rejects_out_aliasing_x():
    buf = np.zeros((1, 8), np.float32)
    with pytest.raises(LlamaNbError, match="alias"):
        registry.spec("linear").check(buf, buf, _w(8, 8), np.zeros(64, np.uint8))


@pytest.mark.parametrize("impl", sorted(registry.impls[("rmsnorm", None, None)]))
def test_rmsnorm_in_place(impl, rng):
    out, x, weight, eps = make_inputs("rmsnorm", dict(T=3, D=4097), rng)
    want = call("rmsnorm", registry.get("rmsnorm", "reference"), (out, x, weight, eps))
    registry.get("rmsnorm", impl)(x, x, weight, eps)
    assert_matches("rmsnorm", (x,), want, f"rmsnorm[{impl}] out is x")


@pytest.mark.parametrize("impl", sorted(registry.impls[("softmax", None, None)]))
def test_softmax_in_place(impl, rng):
    out, x = make_inputs("softmax", dict(R=32, C=1025), rng)
    want = call("softmax", registry.get("softmax", "reference"), (out, x))
    registry.get("softmax", impl)(x, x)
    assert_matches("softmax", (x,), want, f"softmax[{impl}] out is x")


@pytest.mark.parametrize("impl", sorted(registry.impls[("silu", None, None)]))
@pytest.mark.parametrize("alias", ["a", "b"])
def test_silu_in_place(impl, alias, rng):
    out, a, b = make_inputs("silu", dict(T=4, F=8192), rng)
    want = call("silu", registry.get("silu", "reference"), (out, a, b))
    target = a if alias == "a" else b
    registry.get("silu", impl)(target, a, b)
    assert_matches("silu", (target,), want, f"silu[{impl}] out is {alias}")


@pytest.mark.parametrize("impl", sorted(registry.impls[("silu", None, None)]))
def test_silu_of_large_negative_inputs_warns_nothing_and_is_finite(impl):
    a = np.array([[-1e4, -3e38, -88.7, -104.0, 0.0, 3e38]], np.float32)
    out = np.empty_like(a)
    with np.errstate(all="raise"):
        registry.get("silu", impl)(out, a, np.ones_like(a))
    assert np.isfinite(out).all() and (out[0, :5] <= 0).all() and out[0, 5] == np.float32(3e38)


@pytest.mark.parametrize("impl", sorted(registry.impls[("argmax", None, None)]))
def test_argmax_first_of_ties_and_first_nan(impl):
    argmax = registry.get("argmax", impl)
    x = np.zeros(40000, np.float32)
    x[[5, 20000, 39999]] = 2.0  # ties across parallel chunks: the first wins
    assert argmax(x) == 5
    x[[30000, 17]] = np.nan  # NaN counts as the largest, like np.argmax: the first NaN wins
    assert argmax(x) == 17
    assert isinstance(argmax(x), int)


@pytest.mark.parametrize("impl", sorted(registry.impls[("argmax", None, None)]))
def test_argmax_edge_values_like_numpy(impl, rng):    # The kernel's fast path (vector max) hands over to integer keys when x holds NaN or +-inf,
    # and treats the last n % 64 elements apart: put each special value in each region.
    argmax = registry.get("argmax", impl)
    for n in (1, 63, 64, 130, 1000):
        for special in (np.nan, np.inf, -np.inf, -0.0, 0.0):
            for where in {0, n // 2, n - 1}:
                x = -np.abs(rng.standard_normal(n).astype(np.float32)) - 1  # all negative
                x[where] = special
                assert argmax(x) == int(np.argmax(x)), (n, special, where)
    x = np.full(100, -np.inf, np.float32)
    assert argmax(x) == 0
    x = np.array([-0.0, 0.0, -0.0], np.float32)  # -0 == +0: the first wins, as in np.argmax
    assert argmax(x) == 0


def test_fastexp_is_within_an_ulp_of_exp():
    from numba import njit

    from llama_nb.ops.fastexp import exp_nonpositive

    @njit
    def apply(out, x):
        for i in range(x.size):
            out[i] = exp_nonpositive(x[i])

    x = -np.linspace(0, 87.3, 400_001).astype(np.float32)
    out = np.empty_like(x)
    apply(out, x)
    want = np.exp(x.astype(np.float64))
    ulps = np.abs(out - want) / np.spacing(want.astype(np.float32)).astype(np.float64)
    assert ulps.max() <= 1.0, ulps.max()
    edges = np.array([-np.inf, np.nan, -0.0, -87.31, -104.0, -3e38], np.float32)
    apply(out[:6], edges)
    np.testing.assert_array_equal(out[:6], [0.0, np.nan, 1.0, 0.0, 0.0, 0.0])


LINEARS = [(slot, name) for slot in registry.slots("linear") for name in sorted(registry.impls[slot])]
_IDS = [f"{registry.slot_name(s)}-{i}" for s, i in LINEARS]


def _linear_args(slot, case, rng):
    """linear's inputs for case (T, K, N); for a block format K rounded up to its block."""
    block = _fmt(slot).block if slot[1] is not None else 1
    t, k, n = case
    return make_inputs("linear", dict(T=t, K=-(-k // block) * block, N=n), rng, _fmt(slot))


@pytest.mark.parametrize("slot,impl", LINEARS, ids=_IDS)
def test_linear_with_no_tokens_writes_nothing(slot, impl):
    out, k = np.zeros((0, 3), np.float32), max(4, _fmt(slot).block)
    _get(slot, impl)(out, np.zeros((0, k), np.float32), _fmt(slot).quantize(np.zeros((3, k), np.float32)), np.zeros(0, np.uint8))


@pytest.mark.parametrize("slot,impl", [(s, i) for s, i in LINEARS if i != "reference"], ids=[i for i in _IDS if not i.endswith("reference")])
@pytest.mark.parametrize("case", [(1, 127, 61), (5, 255, 129), (3, 4097, 33), (17, 1100, 71)])
def test_linear_result_does_not_depend_on_the_thread_count(slot, impl, case, rng):
    # Each output element is one thread's dot product over the whole of K (never split across
    # threads), so 1 and 2 threads must agree bit for bit.
    args = _linear_args(slot, case, rng)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = call("linear", _get(slot, impl), args)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = call("linear", _get(slot, impl), args)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one[0], two[0])


def test_the_bf16dot_and_amx_kernels_are_registered_exactly_where_the_cpu_has_them():
    assert ("numba_bf16dot" in registry.impls[("linear", "bf16", "bf16")]) == HAS_AVX512_BF16
    assert ("numba_amx" in registry.impls[("linear", "bf16", "bf16")]) == HAS_AMX_BF16


def test_amx_is_used_only_where_asked_and_possible():
    # LLAMA_NB_NO_AMX=1 turns the AMX tiles off, and a CPU without them never gets them.
    import subprocess
    import sys

    probe = "from llama_nb.ops.jit import HAS_AMX_BF16; print(HAS_AMX_BF16)"
    off = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "LLAMA_NB_NO_AMX": "1"})
    assert off.stdout.strip() == "False", off.stderr
    from llama_nb.ops.jit import cpu_features

    if not {"+amx-tile", "+amx-bf16"} <= set(cpu_features().split(",")):
        assert not HAS_AMX_BF16  # never compiled for a CPU without the tiles


@pytest.mark.parametrize("case", [(1, 4096, 300), (5, 255, 129), (17, 1100, 71), (40, 512, 70)])
def test_default_bf16_linear_is_the_fastest_kernel_the_cpu_has(case, rng):
    slot = ("linear", "bf16", "bf16")
    args = _linear_args(slot, case, rng)
    fastest = "numba_amx" if HAS_AMX_BF16 else "numba_bf16dot" if HAS_AVX512_BF16 else "numba_fma"
    want = call("linear", _get(slot, fastest), args)
    np.testing.assert_array_equal(call("linear", _get(slot, "numba"), args)[0], want[0])


@pytest.mark.skipif(not HAS_AVX512_BF16, reason="vdpbf16ps kernels")
@pytest.mark.parametrize("n,k", [(1, 32), (7, 33), (70, 2048), (129, 1100), (64, 8193)])
def test_bf16dot_matvecs_of_one_and_four_rows_sum_alike(n, k, rng):
    # matvec_bf16dot (one row a pass) and matvec_bf16dot_4rows (long rows) sum each row in the same
    # order, so which one linear picks by K never changes a result bit (nor does the thread count).
    from llama_nb.ops.matvec import matvec_bf16dot, matvec_bf16dot_4rows

    w = f32_to_bf16_np(rng.standard_normal((n, k), np.float32))
    xh = f32_to_bf16_np(rng.standard_normal((1, k), np.float32))
    results = []
    for kernel in (matvec_bf16dot.parallel, matvec_bf16dot.serial, matvec_bf16dot_4rows.parallel,
                   matvec_bf16dot_4rows.serial):
        out = np.full((1, n), np.nan, np.float32)
        kernel(out, xh, w)
        results.append(out)
    for got in results[1:]:
        np.testing.assert_array_equal(got, results[0])
    want = bf16_to_f32_np(xh).astype(np.float64) @ bf16_to_f32_np(w).astype(np.float64).T
    np.testing.assert_allclose(results[0], want, rtol=1e-4, atol=1e-4 * np.sqrt(k))


_BF16_ACTS = [(s, i) for s, i in LINEARS if s[2] == "bf16" and get_format(s[1]).block == 1]  # block formats: int8 (test_quant_kernels)


@pytest.mark.parametrize("slot,impl", _BF16_ACTS, ids=[f"{registry.slot_name(s)}-{i}" for s, i in _BF16_ACTS])
def test_bf16_activations_really_round_x(slot, impl):
    # 1 + 2^-12 has bits below bf16's 8: it rounds to 1.0, so the sums are exactly 64.
    x = np.full((2, 64), 1.0 + 2.0**-12, np.float32)
    w = _fmt(slot).quantize(np.ones((3, 64), np.float32))
    xq = np.zeros(2 * 64 * 4, np.uint8)
    got = call("linear", _get(slot, impl), (np.empty((2, 3), np.float32), x, w, xq))[0]
    np.testing.assert_array_equal(got, np.full((2, 3), 64.0, np.float32))
    got = call("linear", _get(slot, impl), (np.empty((1, 3), np.float32), x[:1], w, xq))[0]  # decode too
    np.testing.assert_array_equal(got, np.full((1, 3), 64.0, np.float32))


@pytest.mark.parametrize("case", [(3, 4, 5), (17, 1100, 71), (2, 4096, 1000), (1, 14336, 64)])
def test_bf16_activations_stay_within_their_stated_bound_of_float32(case, rng):
    # specs.py: rounding x to bf16 moves each output by at most 2^-8 * sum_k |x[k] w[n,k]|.
    out, x, w, xq = args = _linear_args(("linear", "bf16", None), case, rng)
    exact = call("linear", registry.get("linear", "reference", format="bf16", act="float32"), args)[0]
    rounded = call("linear", registry.get("linear", "numba", format="bf16", act="bf16"), args)[0]
    abs_products = np.abs(x).astype(np.float64) @ np.abs(bf16_to_f32_np(w.data)).astype(np.float64).T
    excess = np.abs(rounded.astype(np.float64) - exact) - (2.0**-8 * abs_products + _tol("linear")["atol"])
    assert (excess <= 0).all()
    assert not np.array_equal(rounded, exact)  # and it did round something


def test_float32_activations_keep_metas_numerics(rng):
    # Meta's model multiplies float32 activations; the float32 kernels must match it to float32
    # accuracy at T > 1 too, whatever kernel the CPU selects.
    args = _linear_args(("linear", "bf16", None), (6, 1100, 40), rng)
    want = call("linear", registry.get("linear", "reference", format="bf16", act="float32"), args)[0]
    got = call("linear", registry.get("linear", format="bf16", act="float32"), args)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)


def test_weight_rows_are_views_and_slice_the_product(rng):
    # A shard of output rows (tensor parallelism): no copy, and its product is those rows' outputs.
    out, x, w, xq = _linear_args(("linear", "bf16", None), (3, 64, 40), rng)
    shard = w.rows(8, 24)
    assert shard.shape == (16, 64) and np.shares_memory(shard.data, w.data)
    full = call("linear", registry.get("linear", format="bf16", act="float32"), (out, x, w, xq))[0]
    part = call("linear", registry.get("linear", format="bf16", act="float32"), (out[:, :16], x, shard, xq))[0]
    np.testing.assert_array_equal(part, full[:, 8:24])
    with pytest.raises(LlamaNbError, match="outside a weight of 40 rows"):
        w.rows(30, 41)


def test_formats_hold_their_values_and_refuse_wrong_storage(rng):
    values = bf16_to_f32_np(f32_to_bf16_np(rng.standard_normal((4, 32)).astype(np.float32)))
    for fmt in (f for f in formats.values() if f.block == 1):  # block formats: tests/test_quant_formats.py
        w = fmt.quantize(values)
        assert w.shape == (4, 32) and w.data.dtype == fmt.dtype and w.nbytes == 4 * 32 * fmt.bytes_per_weight()
        np.testing.assert_array_equal(w.dequantize(), values)  # bf16-exact values: every format holds them
    with pytest.raises(LlamaNbError, match="needs data uint16"):
        Weight(BF16, (4, 32), np.zeros((4, 32), np.float32))


def test_benchmark_runs_the_declared_cases_and_rejects_unknown_names():
    from llama_nb.ops import benchmark

    seen = []
    result = benchmark.run(ops=["silu"], repeat=1, read_bytes=1 << 20, progress=lambda r, row: seen.append(row))
    impls = sorted(registry.impls[("silu", None, None)])
    assert [(r.impl, r.case) for r in result.rows] == [(i, c) for c in ci_cases("silu") for i in impls]
    assert seen == result.rows and result.read_gbps > 0 and all(r.ms > 0 for r in result.rows)
    assert "silu" in benchmark.format_table(result)
    with pytest.raises(LlamaNbError, match="--op 'silly'"):
        benchmark.run(ops=["silly"])
    with pytest.raises(LlamaNbError, match="--impl 'fast'"):
        benchmark.run(ops=["silu"], impls=["fast"])

"""Every registered implementation of every op against the NumPy reference, on the shared case
table (llama_nb/ops/cases.py, also used by bench/bench_ops.py); the references themselves against
torch / Meta's RMSNorm; the declared argument checks; in-place aliasing."""

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from llama_models.llama3.model import RMSNorm, repeat_kv

import llama_nb.ops  # noqa: F401  (registers every op)
from llama_nb.errors import LlamaNbError
from llama_nb.ops import registry
from llama_nb.ops.cases import CASES, TOL, assert_matches, call, make_inputs, ci_cases
from llama_nb.ops.reference import bf16_to_f32_np, f32_to_bf16_np
from llama_nb.ops.simd import HAS_AVX512_BF16

registry.load_plugins()  # plugin implementations are tested too
NON_REFERENCE = [(op, impl) for op in sorted(registry.impls) for impl in sorted(registry.impls[op]) if impl != "reference"]


def test_every_declared_op_has_cases_a_tolerance_and_a_reference():
    assert set(CASES) == set(TOL) == set(registry.ops)
    for op in registry.ops:
        assert "reference" in registry.impls[op] and len(registry.impls[op]) >= 2, op


@pytest.mark.parametrize("op,impl", NON_REFERENCE)
def test_matches_reference(op, impl, rng):
    check = registry.ops[op].check
    for case in ci_cases(op):
        args = make_inputs(op, case, rng)
        check(*args)  # the input makers produce what the contract allows
        want = call(registry.get(op, "reference"), args)
        got = call(registry.get(op, impl), args)
        assert_matches(op, got, want, f"{op}[{impl}] case={case}")


def test_real_8b_shapes_are_tested_not_only_benchmarked():
    for case in [(1, 4096, 4096), (1, 4096, 14336), (1, 14336, 4096), (8, 4096, 128256)]:
        assert case in ci_cases("matmul") and case in ci_cases("matmul_bf16")
    assert (1, 32, 8, 128, 1024, 700) in ci_cases("attention")


# --------------------------------------------------------------- the references against torch


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def test_reference_rmsnorm_matches_metas_rmsnorm(rng):
    out, x, weight, eps = make_inputs("rmsnorm", (5, 4097), rng)
    meta = RMSNorm(x.shape[1], eps=eps)
    with torch.no_grad():
        meta.weight.copy_(_t(bf16_to_f32_np(weight)))
        want = meta(_t(x)).numpy()
    registry.get("rmsnorm", "reference")(out, x, weight, eps)
    np.testing.assert_allclose(out, want, **TOL["rmsnorm"])


def test_reference_matmul_softmax_silu_embedding_argmax_match_torch(rng):
    out, x, w = make_inputs("matmul", (3, 4097, 33), rng)
    registry.get("matmul", "reference")(out, x, w)
    np.testing.assert_allclose(out, F.linear(_t(x), _t(bf16_to_f32_np(w))).numpy(), **TOL["matmul"])
    registry.get("matmul_bf16", "reference")(out, x, w)  # torch rounds x to bf16 itself here
    x_bf16 = _t(x).to(torch.bfloat16).float()
    np.testing.assert_allclose(out, F.linear(x_bf16, _t(bf16_to_f32_np(w))).numpy(), **TOL["matmul_bf16"])

    out, x = make_inputs("softmax", (32, 1025), rng)
    registry.get("softmax", "reference")(out, x)
    np.testing.assert_allclose(out, torch.softmax(_t(x), dim=-1).numpy(), **TOL["softmax"])

    out, a, b = make_inputs("silu", (4, 8192), rng)
    registry.get("silu", "reference")(out, a, b)
    np.testing.assert_allclose(out, (F.silu(_t(a)) * _t(b)).numpy(), **TOL["silu"])

    out, table, tokens = make_inputs("embedding", (5, 37, 33), rng)
    registry.get("embedding", "reference")(out, table, tokens)
    want = F.embedding(_t(tokens), _t(table.view(np.int16)).view(torch.bfloat16)).float().numpy()
    np.testing.assert_array_equal(out, want)

    for case in CASES["argmax"]:
        (x,) = make_inputs("argmax", case, rng)
        assert registry.get("argmax", "reference")(x) == torch.argmax(_t(x)).item(), case


def test_reference_attention_matches_metas_attention_math(rng):
    # Meta's Attention.forward after the cache update: repeat_kv, scores / sqrt(Dh) + causal mask
    # (built as in Transformer.forward for chunked prefill), softmax in float32, @ values.
    for case in [(5, 32, 8, 128, 128, 37), (3, 4, 1, 16, 32, 9), (1, 4, 2, 8, 16, 5)]:
        out, q, k_cache, v_cache, start_pos = make_inputs("attention", case, rng)
        n_tokens, n_heads, n_kv, head_dim, _, _ = case
        n_ctx = start_pos + n_tokens
        keys = repeat_kv(_t(k_cache[:, :n_ctx]).transpose(0, 1)[None], n_heads // n_kv).transpose(1, 2)
        values = repeat_kv(_t(v_cache[:, :n_ctx]).transpose(0, 1)[None], n_heads // n_kv).transpose(1, 2)
        xq = _t(q)[None].transpose(1, 2)  # [1, H, T, Dh]
        mask = torch.hstack([torch.zeros(n_tokens, start_pos), torch.triu(torch.full((n_tokens, n_tokens), float("-inf")), 1)])
        scores = torch.matmul(xq, keys.transpose(2, 3)) / np.sqrt(head_dim) + mask
        want = torch.matmul(F.softmax(scores.float(), dim=-1), values).transpose(1, 2)[0].numpy()
        registry.get("attention", "reference")(out, q, k_cache, v_cache, start_pos)
        np.testing.assert_allclose(out, want, **TOL["attention"], err_msg=str(case))


# ---------------------------------------------------------------------- checks and aliasing


@pytest.mark.parametrize(
    "op,args,message",
    [
        ("matmul", (np.zeros((1, 8), np.float32), np.zeros((1, 4), np.float64), np.zeros((8, 4), np.uint16)), "x must be float32"),
        ("matmul", (np.zeros((1, 8), np.float32), np.zeros((1, 5), np.float32), np.zeros((8, 4), np.uint16)), r"x\(1, 5\)"),
        ("rmsnorm", (np.zeros((2, 4), np.float32), np.zeros((2, 4), np.float32), np.zeros(4, np.float32), 1e-5), "weight must be uint16"),
        ("rmsnorm", (np.zeros((2, 4), np.float32), np.zeros((2, 4), np.float32), np.zeros(5, np.uint16), 1e-5), r"weight\(5,\)"),
        ("attention", (np.zeros((1, 6, 8), np.float32),) * 2 + (np.zeros((4, 16, 8), np.float32),) * 2 + (0,), "H % KVH"),
        ("attention", (np.zeros((2, 4, 8), np.float32),) * 2 + (np.zeros((2, 16, 8), np.float32),) * 2 + (15,), "beyond the cache"),
        ("rope", (np.zeros((2, 4, 8), np.float32), np.zeros((16, 4), np.float32), np.zeros((16, 4), np.float32), 15), "beyond the table"),
        ("embedding", (np.zeros((1, 4), np.float32), np.zeros((10, 4), np.uint16), np.array([10])), r"\[0, 10\)"),
        ("softmax", (np.zeros((2, 4), np.float32), np.zeros((2, 3), np.float32)), "shapes must agree"),
        ("silu", (np.zeros((2, 4), np.float32), np.zeros((2, 4), np.float32)[:, ::2], np.zeros((2, 2), np.float32)), "C-contiguous"),
    ],
)
def test_declared_check_rejects_bad_arguments(op, args, message):
    with pytest.raises(LlamaNbError, match=message):
        registry.ops[op].check(*args)


def test_matmul_check_rejects_out_aliasing_x():
    buf = np.zeros((1, 8), np.float32)
    with pytest.raises(LlamaNbError, match="alias"):
        registry.ops["matmul"].check(buf, buf, np.zeros((8, 8), np.uint16))


@pytest.mark.parametrize("impl", sorted(registry.impls["rmsnorm"]))
def test_rmsnorm_in_place(impl, rng):
    out, x, weight, eps = make_inputs("rmsnorm", (3, 4097), rng)
    want = call(registry.get("rmsnorm", "reference"), (out, x, weight, eps))
    registry.get("rmsnorm", impl)(x, x, weight, eps)
    assert_matches("rmsnorm", x, want, f"rmsnorm[{impl}] out is x")


@pytest.mark.parametrize("impl", sorted(registry.impls["softmax"]))
def test_softmax_in_place(impl, rng):
    out, x = make_inputs("softmax", (32, 1025), rng)
    want = call(registry.get("softmax", "reference"), (out, x))
    registry.get("softmax", impl)(x, x)
    assert_matches("softmax", x, want, f"softmax[{impl}] out is x")


@pytest.mark.parametrize("impl", sorted(registry.impls["silu"]))
@pytest.mark.parametrize("alias", ["a", "b"])
def test_silu_in_place(impl, alias, rng):
    out, a, b = make_inputs("silu", (4, 8192), rng)
    want = call(registry.get("silu", "reference"), (out, a, b))
    target = a if alias == "a" else b
    registry.get("silu", impl)(target, a, b)
    assert_matches("silu", target, want, f"silu[{impl}] out is {alias}")


@pytest.mark.parametrize("impl", sorted(registry.impls["silu"]))
def test_silu_of_large_negative_inputs_warns_nothing_and_is_finite(impl):
    a = np.array([[-1e4, -3e38, -88.7, -104.0, 0.0, 3e38]], np.float32)
    out = np.empty_like(a)
    with np.errstate(all="raise"):
        registry.get("silu", impl)(out, a, np.ones_like(a))
    assert np.isfinite(out).all() and (out[0, :5] <= 0).all() and out[0, 5] == np.float32(3e38)


@pytest.mark.parametrize("impl", sorted(registry.impls["argmax"]))
def test_argmax_first_of_ties_and_first_nan(impl):
    argmax = registry.get("argmax", impl)
    x = np.zeros(40000, np.float32)
    x[[5, 20000, 39999]] = 2.0  # ties across parallel chunks: the first wins
    assert argmax(x) == 5
    x[[30000, 17]] = np.nan  # NaN counts as the largest, like np.argmax: the first NaN wins
    assert argmax(x) == 17
    assert isinstance(argmax(x), int)


@pytest.mark.parametrize("impl", sorted(registry.impls["argmax"]))
def test_argmax_edge_values_like_numpy(impl, rng):
    # The kernel's fast path (vector max) hands over to integer keys when x holds NaN or +-inf,
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


MATMULS = [(op, impl) for op in ("matmul", "matmul_bf16") for impl in sorted(registry.impls[op])]


@pytest.mark.parametrize("op,impl", MATMULS)
def test_matmul_with_no_tokens_writes_nothing(op, impl):
    out = np.zeros((0, 3), np.float32)
    registry.get(op, impl)(out, np.zeros((0, 4), np.float32), np.zeros((3, 4), np.uint16))


@pytest.mark.parametrize("op,impl", [(op, impl) for op, impl in MATMULS if impl != "reference"])
@pytest.mark.parametrize("case", [(1, 127, 61), (5, 255, 129), (3, 4097, 33), (17, 1100, 71)])
def test_matmul_result_does_not_depend_on_the_thread_count(op, impl, case, rng):
    # Each output element is one thread's dot product over the whole of K (never split across
    # threads), so 1 and 2 threads must agree bit for bit.
    args = make_inputs(op, case, rng)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = call(registry.get(op, impl), args)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = call(registry.get(op, impl), args)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one, two)


def test_the_bf16dot_kernel_is_registered_exactly_where_the_cpu_has_it():
    assert ("numba_bf16dot" in registry.impls["matmul_bf16"]) == HAS_AVX512_BF16


@pytest.mark.parametrize("case", [(1, 4096, 300), (5, 255, 129), (17, 1100, 71)])
def test_default_matmul_bf16_is_the_fastest_kernel_the_cpu_has(case, rng):
    args = make_inputs("matmul_bf16", case, rng)
    want = call(registry.get("matmul_bf16", "numba_bf16dot" if HAS_AVX512_BF16 else "numba_fma"), args)
    np.testing.assert_array_equal(call(registry.get("matmul_bf16", "numba"), args), want)


@pytest.mark.parametrize("impl", sorted(registry.impls["matmul_bf16"]))
def test_matmul_bf16_really_rounds_x(impl):
    # 1 + 2^-12 has bits below bf16's 8: it rounds to 1.0, so the sums are exactly 64.
    x = np.full((2, 64), 1.0 + 2.0**-12, np.float32)
    w = np.full((3, 64), 0x3F80, np.uint16)  # bf16 1.0
    got = call(registry.get("matmul_bf16", impl), (np.empty((2, 3), np.float32), x, w))
    np.testing.assert_array_equal(got, np.full((2, 3), 64.0, np.float32))
    got = call(registry.get("matmul_bf16", impl), (np.empty((1, 3), np.float32), x[:1], w))  # decode too
    np.testing.assert_array_equal(got, np.full((1, 3), 64.0, np.float32))


@pytest.mark.parametrize("case", [(3, 4, 5), (17, 1100, 71), (2, 4096, 1000), (1, 14336, 64)])
def test_matmul_bf16_stays_within_its_stated_bound_of_matmul(case, rng):
    # specs.py: rounding x to bf16 moves each output by at most 2^-8 * sum_k |x[k] w[n,k]|.
    out, x, w = make_inputs("matmul", case, rng)
    exact = call(registry.get("matmul", "reference"), (out, x, w))
    rounded = call(registry.get("matmul_bf16", "numba"), (out, x, w))
    abs_products = np.abs(x).astype(np.float64) @ np.abs(bf16_to_f32_np(w)).astype(np.float64).T
    excess = np.abs(rounded.astype(np.float64) - exact) - (2.0**-8 * abs_products + TOL["matmul"]["atol"])
    assert (excess <= 0).all()
    assert not np.array_equal(rounded, exact)  # and it did round something


def test_default_matmul_keeps_float32_activations(rng):
    # Meta's model multiplies float32 activations; the default must match it to float32 accuracy
    # at T > 1 too, whatever kernel the CPU selects.
    args = make_inputs("matmul", (6, 1100, 40), rng)
    want = call(registry.get("matmul", "reference"), args)
    np.testing.assert_allclose(call(registry.get("matmul"), args), want, rtol=1e-5, atol=2e-5)


def test_benchmark_runs_the_same_table_and_rejects_unknown_names():
    from llama_nb.ops import benchmark

    seen = []
    result = benchmark.run(ops=["silu"], repeat=1, read_bytes=1 << 20, progress=lambda r, row: seen.append(row))
    assert [(r.impl, r.case) for r in result.rows] == [(i, c) for c in CASES["silu"] for i in sorted(registry.impls["silu"])]
    assert seen == result.rows and result.read_gbps > 0 and all(r.ms > 0 for r in result.rows)
    assert "silu" in benchmark.format_table(result)
    with pytest.raises(LlamaNbError, match="--op 'silly'"):
        benchmark.run(ops=["silly"])
    with pytest.raises(LlamaNbError, match="--impl 'fast'"):
        benchmark.run(ops=["silu"], impls=["fast"])

"""The block-format kernels beyond the shared case table (tests/test_ops.py runs every one of them
against its reference on linear's block_cases): the int8 activation rounding bit for bit, its
stated bound against the float32 product, the prefill tiles against the decode kernels, the
parallel twins, and vpdpbusd really compiled."""

import re

import numba
import numpy as np
import pytest

from llama_nb.formats import get_format
from llama_nb.ops import jit, quant_amx, quant_dot, quant_tiles, registry
from llama_nb.ops.cases import assert_matches, call, make_inputs
from llama_nb.ops.quant_act import quantize_activations
from llama_nb.quant import activations

FORMATS = ("q8_0", "q4_k", "q6_k")


def _hard_x(rng, t=3, k=1024):
    x = rng.standard_normal((t, k)).astype(np.float32)
    x[0, :32] = 0.0  # an all-zero block
    x[1, :32] = (np.arange(32) - 15.5) / 127 * 16.5 / 16.5  # halves of the step: roundf's ties
    x[1, 32:64] = np.float32(127 / 127) * (np.arange(32) % 3 - 1) * 0.5  # amax 0.5: x * 254 = +-127, 0
    x[2, ::37] = 30.0  # outliers
    x[2, 64:96] = 1e-30  # tiny
    x[2, 96:128] = np.arange(-16, 16) + 0.5  # amax 127: scale and 1 / scale exactly 1, so exact ties
    x[2, 96], x[2, 97] = -127.0, np.nextafter(np.float32(0.5), np.float32(0))  # 0.49999997 rounds to 0
    return x


def test_activation_rounding_kernel_equals_numpys_bit_for_bit(rng, monkeypatch):
    x = _hard_x(rng)
    xq = np.zeros(x.size * 4, np.uint8)
    for rows, threshold in ((x[:1], jit.PARALLEL_MIN_BYTES), (x, 0)):  # the serial twin, then the parallel one
        monkeypatch.setattr(jit, "PARALLEL_MIN_BYTES", threshold)
        monkeypatch.setattr(jit, "_threads", 2)
        q, d, sums, dsum = quantize_activations(rows, xq)
        want_q, want_d = activations.quantize_activations(rows)
        np.testing.assert_array_equal(q, want_q)
        np.testing.assert_array_equal(d.view(np.uint32), want_d.view(np.uint32))
        want_sums = want_q.reshape(rows.shape[0], -1, 16).astype(np.int32).sum(axis=2)
        np.testing.assert_array_equal(sums, want_sums)
        want_dsum = want_d * want_sums.reshape(rows.shape[0], -1, 2).sum(axis=2).astype(np.float32)
        np.testing.assert_array_equal(dsum.view(np.uint32), want_dsum.view(np.uint32))
    assert np.abs(want_q).max() == 127


@pytest.mark.parametrize("fmt", FORMATS)
def test_int8_activations_stay_within_their_stated_bound_of_float32(fmt, rng):
    # llama_nb/quant/activations.py: rounding x to int8 blocks moves output n by at most
    # sum_b d_b / 2 * sum_{k in b} |w[n, k]|; the kernels' float32 sums add linear's atol.
    for case in (dict(T=1, K=4096, N=64), dict(T=5, K=768, N=33)):
        out, x, w, xq = args = make_inputs("linear", case, rng, get_format(fmt))
        exact = call("linear", registry.get("linear", "reference", format=fmt, act="float32"), args)[0]
        for impl in sorted(set(registry.impls[("linear", fmt, "bf16")]) - {"reference"}):
            got = call("linear", registry.get("linear", impl, format=fmt, act="bf16"), args)[0]
            bound = activations.rounding_bound(x, w.dequantize()) + registry.spec("linear").tol["atol"]
            assert np.all(np.abs(got - exact) <= bound), (fmt, impl, case)
            assert not np.array_equal(got, exact)  # and it did round


@pytest.mark.parametrize("fmt", FORMATS)
def test_parallel_kernels_match_the_reference(fmt, rng, monkeypatch):
    # The case table's weights are below PARALLEL_MIN_BYTES: force the parallel twins here.
    monkeypatch.setattr(jit, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(jit, "_threads", 2)
    for case in (dict(T=1, K=512, N=200), dict(T=7, K=256, N=130), dict(T=11, K=512, N=130),  # decode, a few, tiles
                 dict(T=40, K=512, N=130)):  # the AMX-INT8 tiles where the CPU has them
        args = make_inputs("linear", case, rng, get_format(fmt))
        for act in ("bf16", "float32"):
            want = call("linear", registry.get("linear", "reference", format=fmt, act=act), args)
            for impl in sorted(set(registry.impls[("linear", fmt, act)]) - {"reference"}):
                got = call("linear", registry.get("linear", impl, format=fmt, act=act), args)
                assert_matches("linear", got, want, f"{fmt}/{act}[{impl}] {case}")


def test_vnni_kernels_exist_exactly_where_the_cpu_has_vnni_and_use_vpdpbusd(rng):
    for fmt in FORMATS:
        assert ("numba_int8" in registry.impls[("linear", fmt, "bf16")]) == jit.HAS_AVX512_VNNI
        assert ("vnni" in quant_dot.KERNELS[fmt]) == jit.HAS_AVX512_VNNI
    if jit.HAS_AVX512_VNNI:  # compiled afresh: Numba shows no assembly of a kernel loaded from its cache
        out, x, w, xq = make_inputs("linear", dict(T=1, K=64, N=3), rng, get_format("q8_0"))
        q, d, sums, dsum = quantize_activations(x, xq)
        for variant, has_it in (("vnni", True), ("portable", False)):
            fresh = numba.njit(quant_dot.KERNELS["q8_0"][variant].serial.py_func)
            fresh(out, q, d, sums, dsum, w.data)
            assert ("vpdpbusd" in "".join(fresh.inspect_asm().values())) == has_it, variant
        out, x, w, xq = make_inputs("linear", dict(T=9, K=256, N=3), rng, get_format("q4_k"))  # the prefill tiles
        q, d, sums, dsum = quantize_activations(x, xq)
        xt, d2, offsets, mins_x = quant_tiles.prepare_x("q4_k", q, d, sums, xq)
        fresh = numba.njit(quant_tiles.KERNELS["q4_k"]["vnni"].serial.py_func)
        fresh(out, xt, d2, offsets, mins_x, q, d, w.data)
        assert re.search(r"vpdpbusd\s[^\n]*%zmm", "".join(fresh.inspect_asm().values()))
        for fmt in ("q4_k", "q6_k"):  # and the super-block formats on 512-bit registers (64 bytes a step)
            out, x, w, xq = make_inputs("linear", dict(T=1, K=256, N=3), rng, get_format(fmt))
            q, d, sums, dsum = quantize_activations(x, xq)
            fresh = numba.njit(quant_dot.KERNELS[fmt]["vnni"].serial.py_func)
            fresh(out, q, d, sums, dsum, w.data)
            assert re.search(r"vpdpbusd\s[^\n]*%zmm", "".join(fresh.inspect_asm().values())), fmt


@pytest.mark.parametrize("fmt", FORMATS)
def test_prefill_tiles_agree_with_the_decode_kernels_run_token_by_token(fmt, rng):
    # The same integers and scales summed in another order (ops/quant_tiles.py): within a few float32
    # roundings per partial sum of sum_k |x w|; and both within rounding_bound of the float32 product.
    eps = float(np.finfo(np.float32).eps)
    for case in (dict(T=13, K=2560 + 32 * (fmt == "q8_0"), N=9), dict(T=9, K=512, N=70)):  # 2 K blocks (+ a tail); 2 tasks
        out, x, w, xq = args = make_inputs("linear", case, rng, get_format(fmt))
        values = w.dequantize()
        exact = call("linear", registry.get("linear", "reference", format=fmt, act="float32"), args)[0]
        bound = activations.rounding_bound(x, values) + registry.spec("linear").tol["atol"]
        order = 4 * eps * (case["K"] // 256 + 16) * (np.abs(activations.round_activations(x)) @ np.abs(values).T)
        q, d, sums, dsum = quantize_activations(x, xq)
        for variant in quant_dot.KERNELS[fmt]:
            tiles = np.full(out.shape, np.nan, np.float32)
            quant_tiles.linear_tiles(quant_tiles.KERNELS[fmt][variant], fmt, tiles, q, d, sums, w.data, xq)
            rows = np.full(out.shape, np.nan, np.float32)
            for t in range(case["T"]):
                quant_dot.KERNELS[fmt][variant].serial(rows[t : t + 1], q[t : t + 1], d[t : t + 1], sums[t : t + 1],
                                                       dsum[t : t + 1], w.data)
            assert np.all(np.abs(tiles - rows) <= order), (fmt, variant, case, np.abs(tiles - rows).max())
            assert np.all(np.abs(tiles - exact) <= bound), (fmt, variant, case)
            assert not np.array_equal(tiles, rows)  # really another kernel (another summation order)


def test_linear_runs_the_tiles_beyond_a_few_tokens(rng, monkeypatch):
    calls = []
    monkeypatch.setattr(quant_tiles, "linear_tiles", lambda *a: calls.append(a[1]))
    for t, tiled in ((1, False), (8, False), (9, True)):
        calls.clear()
        args = make_inputs("linear", dict(T=t, K=256, N=4), rng, get_format("q4_k"))
        registry.get("linear", "numba", format="q4_k", act="bf16")(*args)
        assert calls == (["q4_k"] if tiled else []), t


def test_amx_int8_tiles_exist_exactly_where_the_cpu_has_them_and_use_tdpbusd(rng):
    for fmt in FORMATS:
        impls = registry.impls[("linear", fmt, "bf16")]
        assert ("numba_vnni" in impls) == jit.HAS_AMX_INT8  # the vpdpbusd tiles, still tested there
    if jit.HAS_AMX_INT8:
        for fmt, product in (("q4_k", "tdpbusd"), ("q8_0", "tdpbssd")):
            out, x, w, xq = make_inputs("linear", dict(T=16, K=256, N=3), rng, get_format(fmt))
            q, d, sums, dsum = quantize_activations(x, xq)
            quant_amx.linear_amx_int8(fmt, out, q, d, dsum, w.data, xq)  # packs x into xq
            xb, d_t, dsum_t = quant_amx.packed_x(q, xq)
            fresh = numba.njit(quant_amx.KERNELS[fmt].py_func)  # compiled afresh: a cached kernel shows no assembly
            fresh(out, xb, d_t, dsum_t, w.data, quant_amx.CONFIGS[fmt], 1)
            assert re.search(product + r"\s", "".join(fresh.inspect_asm().values())), fmt


@pytest.mark.skipif(not jit.HAS_AMX_INT8, reason="the CPU has no AMX-INT8")
@pytest.mark.parametrize("fmt", FORMATS)
def test_amx_int8_tiles_agree_with_the_decode_kernels_run_token_by_token(fmt, rng):
    # The same integers and scales, each sub-block's product scaled and summed in order in float32
    # (ops/quant_amx.py): within a few roundings per partial sum of the vpdpbusd kernels' sums.
    eps = float(np.finfo(np.float32).eps)
    cases = [dict(T=16, K=512, N=9), dict(T=45, K=768, N=70)]  # one token block; a ragged second, 3 tasks
    if fmt == "q8_0":
        cases.append(dict(T=33, K=96, N=31))  # an odd count of blocks
    for case in cases:
        out, x, w, xq = args = make_inputs("linear", case, rng, get_format(fmt))
        values = w.dequantize()
        order = 4 * eps * (case["K"] // 16 + 16) * (np.abs(activations.round_activations(x)) @ np.abs(values).T)
        q, d, sums, dsum = quantize_activations(x, xq)
        rows = np.full(out.shape, np.nan, np.float32)
        for t in range(case["T"]):
            quant_dot.KERNELS[fmt]["vnni"].serial(rows[t : t + 1], q[t : t + 1], d[t : t + 1], sums[t : t + 1],
                                                  dsum[t : t + 1], w.data)
        tiles = np.full(out.shape, np.nan, np.float32)
        quant_amx.linear_amx_int8(fmt, tiles, q, d, dsum, w.data, xq)
        assert np.all(np.abs(tiles - rows) <= order), (fmt, case, np.abs(tiles - rows).max())
        default = call("linear", registry.get("linear", "numba", format=fmt, act="bf16"), args)[0]
        np.testing.assert_array_equal(default, tiles)  # the default takes the AMX tiles from MIN_TOKENS on

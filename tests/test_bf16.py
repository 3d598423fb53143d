"""bf16 <-> float32 conversions, bit for bit against torch (the test-only oracle).

Widening: all 65,536 bf16 patterns. Narrowing: one million random float32 bit patterns (every
class: normals, subnormals, zeros, Inf, NaN with every payload) plus exact ties and the edges of
the exponent range. NaN narrowing is the one documented difference (see llama_nb/ops/bf16.py):
torch has two answers (0x7FC0 from c10::BFloat16, 0xFFFF from the vectorised tensor path); we
return the quiet NaN with the input's sign, 0x7FC0 | sign.
"""

import numpy as np
import pytest
import torch
from numba import njit

import llama_nb.ops  # noqa: F401  (registers every op)
from llama_nb.errors import LlamaNbError
from llama_nb.ops import bf16, registry
from llama_nb.ops.reference import bf16_to_f32_np, f32_to_bf16_np

registry.load_plugins()  # plugin implementations are tested too
ALL_BF16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
IMPLS_WIDEN = sorted(registry.impls[("bf16_to_f32", None, None)])
IMPLS_NARROW = sorted(registry.impls[("f32_to_bf16", None, None)])


def torch_widen(bits: np.ndarray) -> np.ndarray:
    return torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).float().numpy()


def torch_narrow(x: np.ndarray) -> np.ndarray:
    return torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def is_nan_f32(x: np.ndarray) -> np.ndarray:
    return (x.view(np.uint32) & 0x7FFFFFFF) > 0x7F800000


def is_nan_bf16(b: np.ndarray) -> np.ndarray:
    return (b & 0x7FFF) > 0x7F80


@njit
def _scalar_widen_all(bits):  # the @njit_inline helpers, as kernels call them
    out = np.empty(bits.size, np.float32)
    for i in range(bits.size):
        out[i] = bf16.bf16_to_f32(bits[i])
    return out


@njit
def _scalar_narrow_all(x):
    out = np.empty(x.size, np.uint16)
    for i in range(x.size):
        out[i] = bf16.f32_to_bf16(x[i])
    return out


@pytest.fixture(scope="module")
def narrow_inputs():
    """One million random float32 bit patterns plus hand-picked edges."""
    rng = np.random.default_rng(7)
    random_bits = rng.integers(0, 1 << 32, size=1_000_000, dtype=np.uint64).astype(np.uint32)
    # Exact ties (low half 0x8000) with both parities of the kept bit, and one ulp either side.
    high = rng.integers(0, 1 << 16, size=4096, dtype=np.uint32) << 16
    ties = np.concatenate([high | 0x8000, high | 0x7FFF, high | 0x8001, high | 0x18000])
    edges = np.array(
        [0x00000000, 0x80000000, 0x00000001, 0x80000001, 0x00008000, 0x00018000, 0x007FFFFF, 0x00800000,
         0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F7FFF, 0x7F7F8000, 0x7F800000, 0xFF800000, 0x7F800001, 0xFF800001,
         0x7FC00000, 0xFFC00000, 0x7FFFFFFF, 0xFFFFFFFF, 0x7F808000, 0x7FBFFFFF, 0x3F7FFFFF, 0x3F808000],
        np.uint32,
    )
    return np.concatenate([random_bits, ties, edges]).view(np.float32)


def test_the_million_patterns_cover_every_class(narrow_inputs):
    bits = narrow_inputs.view(np.uint32)
    exponent, mantissa = (bits >> 23) & 0xFF, bits & 0x7FFFFF
    assert (is_nan_f32(narrow_inputs)).sum() > 1000
    assert ((exponent == 0) & (mantissa != 0)).sum() > 1000  # subnormals
    assert ((bits & 0xFFFF) == 0x8000).sum() >= 4096  # exact ties
    assert np.isinf(narrow_inputs).sum() == 2


@pytest.mark.parametrize("impl", IMPLS_WIDEN)
def test_widening_all_65536_patterns_matches_torch(impl):
    want = torch_widen(ALL_BF16)
    got = np.full(ALL_BF16.shape, np.nan, np.float32)
    registry.get("bf16_to_f32", impl)(got, ALL_BF16)
    # Bits, not values: NaN payloads and the sign of zero must survive too.
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    np.testing.assert_array_equal(got.view(np.uint32), ALL_BF16.astype(np.uint32) << 16)


def test_widening_scalar_helper_and_numpy_helper_match_torch():
    want = torch_widen(ALL_BF16).view(np.uint32)
    np.testing.assert_array_equal(_scalar_widen_all(ALL_BF16).view(np.uint32), want)
    np.testing.assert_array_equal(bf16_to_f32_np(ALL_BF16).view(np.uint32), want)


def _check_narrowing(got: np.ndarray, x: np.ndarray) -> None:
    want = torch_narrow(x)
    nan = is_nan_f32(x)
    assert nan.any() and (~nan).sum() > 900_000
    # Every non-NaN input: torch's answer, bit for bit (ties to even, subnormals, overflow to Inf).
    bad = np.flatnonzero((got != want) & ~nan)
    assert bad.size == 0, f"{bad.size} differ; first: x=0x{x.view(np.uint32)[bad[0]]:08X} got 0x{got[bad[0]]:04X} torch 0x{want[bad[0]]:04X}"
    # NaN: torch gives a NaN too; ours is the canonical quiet NaN with the sign kept.
    assert is_nan_bf16(want[nan]).all()
    sign = (x.view(np.uint32)[nan] >> 16) & 0x8000
    np.testing.assert_array_equal(got[nan], (sign | 0x7FC0).astype(np.uint16))


@pytest.mark.parametrize("impl", IMPLS_NARROW)
def test_narrowing_a_million_patterns_matches_torch(impl, narrow_inputs):
    got = np.zeros(narrow_inputs.shape, np.uint16)
    registry.get("f32_to_bf16", impl)(got, narrow_inputs)
    _check_narrowing(got, narrow_inputs)


def test_narrowing_scalar_helper_and_numpy_helper_match_torch(narrow_inputs):
    _check_narrowing(_scalar_narrow_all(narrow_inputs), narrow_inputs)
    _check_narrowing(f32_to_bf16_np(narrow_inputs), narrow_inputs)


def test_narrowing_matches_c10_scalar_conversion_including_positive_nan(narrow_inputs):
    # torch's 0-dim conversion goes through c10::BFloat16(float): 0x7FC0 for every NaN. Ours agrees
    # on everything except the sign of negative NaNs, which we keep.
    rng = np.random.default_rng(3)
    sample = np.concatenate([narrow_inputs[-24:], narrow_inputs[rng.integers(0, narrow_inputs.size, 1500)]])
    ours = _scalar_narrow_all(sample)
    for value, got in zip(sample, ours):
        c10 = torch.tensor(value).to(torch.bfloat16).view(torch.int16).item() & 0xFFFF
        bits = int(value.view(np.uint32))
        if is_nan_f32(np.array([value])).item():
            assert c10 == 0x7FC0 and got == (0x7FC0 | ((bits >> 16) & 0x8000))
        else:
            assert got == c10, f"x=0x{bits:08X}: got 0x{got:04X}, c10 0x{c10:04X}"


def test_round_trip_is_the_identity_on_every_non_nan_bf16():
    keep = ~is_nan_bf16(ALL_BF16)
    back = np.zeros(ALL_BF16.shape, np.uint16)
    registry.get("f32_to_bf16")(back, bf16_to_f32_np(ALL_BF16))
    np.testing.assert_array_equal(back[keep], ALL_BF16[keep])
    assert (back[~keep] & 0x7FFF == 0x7FC0).all()


@pytest.mark.parametrize("op", ["bf16_to_f32", "f32_to_bf16"])
def test_array_ops_take_any_shape_and_reject_strided_arrays(op):
    x = (np.arange(60, dtype=np.uint16) + 0x3F80).reshape(3, 4, 5)
    if op == "f32_to_bf16":
        x = bf16_to_f32_np(x)
    out = np.zeros(x.shape, np.float32 if op == "bf16_to_f32" else np.uint16)
    registry.get(op)(out, x)
    registry.get(op, "reference")(want := np.zeros_like(out), x)
    np.testing.assert_array_equal(out.view(np.uint16 if out.itemsize == 2 else np.uint32),
                                  want.view(np.uint16 if want.itemsize == 2 else np.uint32))
    with pytest.raises(LlamaNbError, match="C-contiguous"):
        registry.get(op)(out[:, ::2], x[:, ::2])


def test_f16_weights_widen_exactly_like_torch_on_every_pattern():
    # llama_nb keeps float16 weights as int16 bits; ops/bf16.widen (and the vector load16_f32 of the
    # linear kernels) widen them by LLVM's half -> float. Every one of the 65,536 patterns.
    from llama_nb.formats import F16, Weight

    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16).reshape(256, 256)
    out = np.empty((256, 256), np.float32)
    registry.get("dequantize", "numba", format="f16")(out, Weight(F16, (256, 256), bits))
    want = torch.from_numpy(bits.copy()).view(torch.float16).float().numpy()
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(out), nan)
    np.testing.assert_array_equal(out[~nan].view(np.uint32), want[~nan].view(np.uint32))

"""ggml's block formats (llama_nb/quant) against code nobody here wrote: the `gguf` package
(llama.cpp's Python library). Dequantization bit for bit on random and extreme blocks; Q8_0
quantization bit for bit; Q4_K and Q6_K quantization (ggml's reference quantizer, vectorised, so
not bit-identical to C's summation order) within stated error bounds, read back through gguf."""

import numpy as np
import pytest
from gguf import GGMLQuantizationType as GGML
from gguf import quants

from llama_nb.errors import LlamaNbError
import llama_nb.quant  # noqa: F401  (registers the block formats)
from llama_nb.formats import Weight, formats, get_format, repack

TYPES = {"q8_0": GGML.Q8_0, "q4_k": GGML.Q4_K, "q6_k": GGML.Q6_K}
LAYOUT = {"q8_0": (32, 34), "q4_k": (256, 144), "q6_k": (256, 210)}  # ggml-common.h's block sizes
SMALLEST_NORMAL_HALF = np.float32(2.0**-14)
HALF_EXTREMES = np.array([0.0, -0.0, 65504.0, -65504.0, 6e-8, -6e-8, 1e-4, 1.0, -2.5], np.float16)  # max, subnormal


def _bits(a):
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


def _random_blocks(rng, name, n_blocks):
    """Random block bytes with their half fields set to extremes (max, subnormal, zero, negative:
    negative dmin means negative mins), and a few all-zero blocks."""
    _, nbytes = LAYOUT[name]
    blocks = rng.integers(0, 256, size=(n_blocks, nbytes), dtype=np.uint8)
    half_fields = {"q8_0": [0], "q4_k": [0, 2], "q6_k": [208]}[name]
    for offset in half_fields:
        halves = rng.choice(HALF_EXTREMES, size=n_blocks).view(np.uint8).reshape(n_blocks, 2)
        use = rng.random(n_blocks) < 0.5  # the rest keep random halves (NaN and Inf included)
        blocks[use, offset : offset + 2] = halves[use]
    blocks[:3] = 0
    return blocks


@pytest.mark.parametrize("name", sorted(TYPES))
def test_format_layout_is_ggmls(name):
    fmt = formats[name]
    assert (fmt.block, fmt.block_bytes, fmt.dtype) == (*LAYOUT[name], np.dtype(np.uint8))
    assert quants.GGML_QUANT_SIZES[TYPES[name]] == LAYOUT[name]
    assert fmt.data_shape(5, 4 * fmt.block) == (5, 4 * fmt.block_bytes)
    with pytest.raises(LlamaNbError, match="not a multiple"):
        fmt.data_shape(5, fmt.block + 1)


@pytest.mark.parametrize("name", sorted(TYPES))
def test_dequantize_equals_gguf_bit_for_bit(name, rng):
    block, _ = LAYOUT[name]
    blocks_per_row = 3
    data = _random_blocks(rng, name, 4 * blocks_per_row * 7).reshape(4 * 7, -1)  # 28 rows of 3 blocks
    weight = Weight(get_format(name), (28, blocks_per_row * block), data)
    with np.errstate(all="ignore"):
        theirs = quants.dequantize(data, TYPES[name])
        ours = weight.dequantize()
        part = weight.dequantize(5, 9)  # a slice of rows decodes the same
    assert ours.shape == theirs.shape == (28, blocks_per_row * block)
    assert np.array_equal(_bits(ours), _bits(theirs))
    assert np.array_equal(_bits(part), _bits(theirs[5:9]))
    assert np.array_equal(_bits(weight.rows(5, 9).dequantize()), _bits(theirs[5:9]))


def _q8_inputs(rng):
    x = rng.standard_normal((6, 32 * 8)).astype(np.float32)
    x[0] = 0.0  # all-zero blocks: d = 0, id = 0
    x[1, :32] = np.arange(32) - 15.5  # amax 16.5 / 127 and halves
    x[1, 32:64] = np.linspace(-127, 127, 32).round() + 0.5  # ties at id = 1
    x[2] *= 1e-6  # d a half subnormal
    x[3] *= 1e-30  # d rounds to 0 in half, q still full
    x[4] *= 1e6  # d beyond half's range: inf, as in ggml
    x[5, ::7] = -30.0  # outliers
    return x


def test_q8_0_quantize_equals_gguf_bit_for_bit(rng):
    x = _q8_inputs(rng)
    ours = get_format("q8_0").quantize(x)
    assert np.array_equal(ours.data, quants.quantize(x, GGML.Q8_0))
    realistic = rng.standard_normal((64, 4096)).astype(np.float32) * 0.02
    assert np.array_equal(get_format("q8_0").quantize(realistic).data, quants.quantize(realistic, GGML.Q8_0))


def _hard_inputs(rng, k=512):
    """Gaussian rows, plus rows that are all zero, constant, all positive (min 0), all negative,
    with one huge outlier, and tiny."""
    x = rng.standard_normal((12, k)).astype(np.float32) * 0.02
    x[0] = 0.0
    x[1] = 0.5
    x[2] = np.abs(x[2]) + 0.1
    x[3] = -np.abs(x[3]) - 0.1
    x[4, 17] = 40.0
    x[5] *= 1e-5
    return x


def test_q4_k_quantize_within_its_bounds_read_back_by_gguf(rng):
    # Bounds (q4_k.py): q is recomputed by nearest rounding from the stored step d*sc and offset
    # dmin*m, so a weight inside the representable range [-offset, 15*step - offset] is within
    # step/2 of its value. Any weight (clipped ones too) within 1.25 naive steps range/15 of its
    # sub-block (measured worst 1.02 on N(0,1)) plus what the 6-bit scales lose: sc and m are
    # rounded by up to d/2 and dmin/2, over up to 15 levels, so 8*d + dmin. Blocks whose d or dmin
    # is a half subnormal (values below ~1e-4: ggml's fp16 scales cannot hold them) are exempt
    # from the second bound.
    for x in (_hard_inputs(rng), rng.standard_normal((256, 1024)).astype(np.float32)):
        w = get_format("q4_k").quantize(x)
        back = quants.dequantize(w.data, GGML.Q4_K)
        assert np.array_equal(_bits(back), _bits(w.dequantize()))
        blocks = w.data.reshape(-1, 144)
        d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
        dmin = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
        sc, m = quants.Q4_K.get_scale_min(blocks[:, 4:16])  # gguf's unpacking, not ours
        step = (d * sc.astype(np.float32)).reshape(-1, 1)
        offset = (dmin * m.astype(np.float32)).reshape(-1, 1)
        xs, err = x.reshape(-1, 32), np.abs(back - x).reshape(-1, 32)
        inside = (xs >= -offset) & (xs <= 15 * step - offset)
        assert np.all(err[inside] <= np.broadcast_to(step / 2 * (1 + 1e-5) + 1e-30, xs.shape)[inside])
        naive_step = (xs.max(axis=1) - np.minimum(xs.min(axis=1), 0)) / 15
        bound = 1.25 * naive_step + np.repeat(8 * np.abs(d) + np.abs(dmin), 8) + 1e-30
        normal = np.repeat((np.abs(d) >= SMALLEST_NORMAL_HALF) & ((np.abs(dmin) >= SMALLEST_NORMAL_HALF) | (dmin == 0)), 8)
        assert np.all(err.max(axis=1)[normal] <= bound[normal])
    zero = get_format("q4_k").quantize(np.zeros((2, 256), np.float32))
    assert np.all(zero.dequantize() == 0)
    gaussian_rms = np.sqrt(np.mean(np.square(back - x)))  # N(0, 1): llama.cpp's Q4_K is about 0.07
    assert gaussian_rms < 0.08


def test_q6_k_quantize_within_its_bounds_read_back_by_gguf(rng):
    # Bounds (q6_k.py): q recomputed by nearest rounding from the stored step d*scale: a weight
    # with x/step in [-32, 31] is within |step|/2. Any weight within max|x| of its group / 31
    # (measured worst 0.90 on N(0,1)) plus what the int8 scales lose: rounded by up to |d|/2, over
    # up to 32 levels, so 16*|d|. Blocks whose d is a half subnormal are exempt from the second.
    for x in (_hard_inputs(rng), rng.standard_normal((256, 1024)).astype(np.float32)):
        w = get_format("q6_k").quantize(x)
        back = quants.dequantize(w.data, GGML.Q6_K)
        assert np.array_equal(_bits(back), _bits(w.dequantize()))
        blocks = w.data.reshape(-1, 210)
        d = blocks[:, 208:210].copy().view(np.float16).astype(np.float32)
        step = (d * blocks[:, 192:208].view(np.int8).astype(np.float32)).reshape(-1, 1)
        xs, err = x.reshape(-1, 16), np.abs(back - x).reshape(-1, 16)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = xs / step
        inside = (ratio >= -32) & (ratio <= 31)
        assert np.all(err[inside] <= np.broadcast_to(np.abs(step) / 2 * (1 + 1e-5) + 1e-30, xs.shape)[inside])
        bound = np.abs(xs).max(axis=1) / 31 + np.repeat(16 * np.abs(d[:, 0]), 16) + 1e-30
        normal = np.repeat(np.abs(d[:, 0]) >= SMALLEST_NORMAL_HALF, 16)
        assert np.all(err.max(axis=1)[normal] <= bound[normal])
    assert np.all(get_format("q6_k").quantize(np.zeros((2, 256), np.float32)).data == 0)
    assert np.sqrt(np.mean(np.square(back - x))) < 0.02  # N(0, 1)


@pytest.mark.parametrize("name", sorted(TYPES))
def test_repack_from_bf16_and_row_slices(name, rng):
    x = rng.standard_normal((70, 512)).astype(np.float32)
    bf16 = get_format("bf16").quantize(x)
    packed = repack(bf16, get_format(name))
    assert packed.format.name == name and packed.shape == (70, 512) and packed.data.dtype == np.uint8
    assert np.array_equal(packed.data, get_format(name).quantize(bf16.dequantize()).data)
    assert np.array_equal(packed.rows(3, 10).data, packed.data[3:10])
    with pytest.raises(LlamaNbError, match="not a multiple"):
        get_format(name).quantize(np.zeros((2, LAYOUT[name][0] + 1), np.float32))

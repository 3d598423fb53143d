"""Seeded test values for the op declarations (llama_nb/ops/specs.py): like the real ones, plus
the edge cases kernels get wrong (zeros, outliers, ties, NaN, masked entries, unfilled cache rows).

Each maker takes (rng, shape, dims) and returns an array of that shape (or a scalar), so a
declaration names its maker next to the argument (`Arg("x", IN, F32, ("T", "K"), activations)`).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from llama_nb.formats import bf16_to_f32_np, f32_to_bf16_np

POOL = 4_194_301  # a prime: a huge weight is a tiled pool, and no two rows start alike


def weight_values(rng: np.random.Generator, shape: tuple, dims=None, std: float = 0.02) -> np.ndarray:
    """float32 values exact in bf16, ~ N(0, std) like trained weights, plus a few extremes
    (+-4, +-1, 0, -0, a bf16 subnormal)."""
    size = int(np.prod(shape))
    values = rng.standard_normal(min(size, POOL), dtype=np.float32) * np.float32(std)
    bits = f32_to_bf16_np(values)
    if size > POOL:  # drawing 500M normals would take a minute; a tiled pool costs a memcpy
        bits = np.resize(bits, size)
    extremes = f32_to_bf16_np(np.array([4.0, -4.0, 1.0, -1.0, 0.0, -0.0, 1e-39, -3e-3], np.float32))
    where = rng.integers(0, size, size=min(size, 64))
    bits[where] = extremes[rng.integers(0, extremes.size, size=where.size)]
    return bf16_to_f32_np(bits).reshape(shape)


def norm_values(rng: np.random.Generator, shape: tuple, dims=None) -> np.ndarray:
    """Norm weights: bf16-exact values ~ N(0, 0.3), widened to float32 as the loader keeps them."""
    return weight_values(rng, shape, std=0.3)


def activations(rng: np.random.Generator, shape: tuple, dims=None, scale: float = 1.0, large: float = 30.0) -> np.ndarray:
    """float32 ~ N(0, scale) with some exact zeros and some +-large outliers (as in real residuals)."""
    x = rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)
    flat = x.reshape(-1)
    if flat.size == 0:
        return x
    n = max(1, flat.size // 64)
    flat[rng.integers(0, flat.size, size=n)] = 0.0
    flat[rng.integers(0, flat.size, size=n)] = rng.choice(np.array([large, -large], np.float32), size=n)
    return x


def residuals(rng, shape, dims=None):
    """rmsnorm's input: outliers of 1000, and an all-zero row (0 * rsqrt(eps) = 0) when T > 2."""
    x = activations(rng, shape, large=1000.0)
    if shape[0] > 2:
        x[1] = 0.0
    return x


def rotated(rng, shape, dims=None):
    return activations(rng, shape, large=100.0)


def logits_like(rng, shape, dims=None):
    """softmax's input: -inf in the last two columns (a causal mask), a flat row when R > 2."""
    x = activations(rng, shape, scale=3.0, large=80.0)
    if shape[1] > 2:
        x[:, -2:] = -np.inf
    if shape[0] > 2:
        x[2] = 7.0
    return x


def gate_values(rng, shape, dims=None):
    """silu's a: large magnitudes of both signs, including exp's overflow and underflow points."""
    a = activations(rng, shape, scale=4.0, large=100.0)
    flat = a.reshape(-1)
    flat[: min(4, flat.size)] = np.array([-1e4, -3e38, 1e4, -88.5], np.float32)[: min(4, flat.size)]
    return a


def queries(rng, shape, dims=None):
    return activations(rng, shape, scale=2.0, large=8.0)


def cache_rows(rng, shape, dims: Mapping[str, int]):
    """A KV cache [KVH, S, Dh] with rows 0 .. start_pos-1 filled and NaN beyond (never read)."""
    cache = np.full(shape, np.nan, np.float32)
    filled = dims["start_pos"]
    cache[:, :filled] = activations(rng, (shape[0], filled, shape[2]), large=8.0)
    return cache


def cache_rows_bf16(rng, shape, dims: Mapping[str, int]):
    """cache_rows as bf16 bits (uint16): the filled rows rounded to bf16, NaN bits beyond."""
    return f32_to_bf16_np(cache_rows(rng, shape, dims))


def token_ids(rng, shape, dims: Mapping[str, int]):
    """Ids in [0, V), the last row twice (the table's edge, and a repeat)."""
    tokens = rng.integers(0, dims["V"], size=shape).astype(np.int64)
    tokens[: min(2, tokens.size)] = dims["V"] - 1
    return tokens


def rope_cos(rng, shape, dims):
    from llama_nb.io.params import RopeScaling
    from llama_nb.ops.rope_tables import rope_tables

    return rope_tables(2 * shape[1], shape[0], 500000.0, RopeScaling())[0]


def rope_sin(rng, shape, dims):
    from llama_nb.io.params import RopeScaling
    from llama_nb.ops.rope_tables import rope_tables

    return rope_tables(2 * shape[1], shape[0], 500000.0, RopeScaling())[1]


def coarse_with_ties(rng, shape, dims):
    """argmax's input: values on a 0.25 grid (many ties), the max three times, NaN if asked."""
    n = shape[0]
    x = np.round(rng.standard_normal(n).astype(np.float32) * 4) / 4
    x[rng.integers(0, n, size=3)] = np.float32(x.max() + 1)
    if dims.get("with_nan"):
        x[[n - 3, n // 2]] = np.nan
    return x


def any_bf16_bits(rng, shape, dims=None):
    return rng.integers(0, 1 << 16, size=shape, dtype=np.uint16)  # every kind: NaN, Inf, subnormal


def any_floats(rng, shape, dims=None):
    x = rng.integers(0, 1 << 32, size=shape, dtype=np.uint32).view(np.float32)
    flat = x.reshape(-1)
    edge = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1.00390625, 1.01171875], np.float32)  # ties: down, up
    flat[: min(8, flat.size)] = edge[: min(8, flat.size)]
    return x

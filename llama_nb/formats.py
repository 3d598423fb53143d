"""Weight formats: what a weight matrix's bytes mean, one row per format (like ggml's type_traits).

A `Weight` is a matrix in the nn.Linear convention, logical shape [N, K] (N output features, K
inputs), stored in a `WeightFormat`:

    format   how the bytes decode: bf16 as stored, f16, f32, or a block format (blocks of
             `block` weights along K, `block_bytes` each, maybe with scales)
    data     the format's storage, one row of blocks per output row: data.shape[0] == N
    scales   float32[N, ...] for formats with separate scales, else None

Every format has a NumPy reference `dequantize(weight, lo, hi) -> float32[hi - lo, K]` (rows lo..hi),
the definition of what its bytes mean; kernels for a format are tested against it. A format that
can be made from float32 values also has `quantize(values: float32[N, K]) -> Weight`, which the
loader uses to repack a checkpoint's weights into that format at load time (`load_model(...,
weight_format=)`). Formats are registered by name (`register_format`), so a plugin can add one
together with its kernels (README, "How to add a kernel").

    bf16  uint16[N, K]   bf16 bits, exactly as Meta's consolidated.00.pth stores them
    f16   int16[N, K]    IEEE half bits (float16 checkpoints). Numba has no float16 type on the
                         CPU, so kernels widen the bits themselves, as they do bf16's; int16, not
                         uint16, so that a kernel compiled for each dtype tells the two apart
                         (llama_nb/ops/bf16.py: `widen`, `widen16_load`)
    f32   float32[N, K]

A weight's rows can be sliced without a copy (`weight.rows(lo, hi)`): every format here keeps a
row's blocks together, which is what tensor parallelism needs (a shard of output rows).
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from llama_nb.errors import LlamaNbError

_SLAB_ELEMENTS = 16 << 20  # float32 values a reference dequantizes at once (64 MB)


@dataclass(frozen=True)
class WeightFormat:
    """One weight format: its storage, and the NumPy reference of what the bytes mean.

    name           short name used in --impl specs and `llama-nb ops`: "bf16", "q8_0", ...
    doc            one line: x = ... in terms of the stored values
    dtype          dtype of `data`
    block          weights per block along K (1 for plain formats)
    block_bytes    bytes of `data` per block (dtype.itemsize for plain formats)
    dequantize     (weight, lo, hi) -> float32[hi - lo, K]; the definition of correct
    quantize       float32[N, K] -> Weight, or None (not a target of repacking)
    has_scales     whether a Weight of this format carries `scales`
    checkpoint_dtype  the torch dtype name (.pth) or None: tensors of that dtype load as this format
    """

    name: str
    doc: str
    dtype: np.dtype
    block: int
    block_bytes: int
    dequantize: Callable[["Weight", int, int], np.ndarray] = field(repr=False)
    quantize: Callable[[np.ndarray], "Weight"] | None = field(default=None, repr=False)
    has_scales: bool = False
    checkpoint_dtype: str | None = None

    def data_shape(self, n: int, k: int) -> tuple[int, int]:
        """The shape of `data` for a logical [n, k] weight (k a multiple of block)."""
        if k % self.block:
            raise LlamaNbError(f"weight format {self.name}: K={k} is not a multiple of its block of {self.block}")
        return n, k // self.block * self.block_bytes // self.dtype.itemsize

    def bytes_per_weight(self) -> float:
        return self.block_bytes / self.block


@dataclass(frozen=True, eq=False)
class Weight:
    """A matrix of logical shape [N, K] in a WeightFormat (see the module docstring)."""

    format: WeightFormat
    shape: tuple[int, int]
    data: np.ndarray
    scales: np.ndarray | None = None

    def __post_init__(self) -> None:
        n, k = self.shape
        fmt = self.format
        if self.data.dtype != fmt.dtype or self.data.shape != fmt.data_shape(n, k):
            raise LlamaNbError(
                f"a {fmt.name} weight of shape [{n}, {k}] needs data {fmt.dtype}{list(fmt.data_shape(n, k))}, "
                f"got {self.data.dtype}{list(self.data.shape)}"
            )
        if not self.data.flags.c_contiguous:
            raise LlamaNbError(f"a {fmt.name} weight's data must be C-contiguous (strides {self.data.strides})")
        if fmt.has_scales != (self.scales is not None) or (self.scales is not None and self.scales.shape[0] != n):
            raise LlamaNbError(f"a {fmt.name} weight {'needs' if fmt.has_scales else 'has no'} scales with {n} rows")

    @property
    def nbytes(self) -> int:
        """Bytes a pass over the whole weight reads."""
        return int(self.data.nbytes) + (int(self.scales.nbytes) if self.scales is not None else 0)

    @property
    def n_rows(self) -> int:
        return self.shape[0]

    def rows(self, lo: int, hi: int) -> "Weight":
        """Rows lo..hi-1 (a shard of output features), sharing this weight's memory."""
        if not 0 <= lo <= hi <= self.shape[0]:
            raise LlamaNbError(f"rows {lo}..{hi} outside a weight of {self.shape[0]} rows")
        scales = self.scales[lo:hi] if self.scales is not None else None
        return Weight(self.format, (hi - lo, self.shape[1]), self.data[lo:hi], scales)

    def dequantize(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """float32[hi - lo, K]: rows lo..hi by the format's NumPy reference."""
        return self.format.dequantize(self, lo, self.shape[0] if hi is None else hi)

    def __repr__(self) -> str:
        return f"Weight({self.format.name}, {list(self.shape)}, {self.nbytes} bytes)"


# --------------------------------------------------------------------------------- the registry

_FORMATS: dict[str, WeightFormat] = {}
formats = types.MappingProxyType(_FORMATS)  # public, read-only


def register_format(fmt: WeightFormat) -> WeightFormat:
    """Add a format. A name already taken is an error: two formats must not share a name."""
    if fmt.name in _FORMATS:
        raise LlamaNbError(f"weight format {fmt.name!r} is already registered")
    _FORMATS[fmt.name] = fmt
    return fmt


def snapshot() -> dict[str, WeightFormat]:
    """The registered formats, to restore() if a plugin that added some fails half-way."""
    return dict(_FORMATS)


def restore(saved: dict[str, WeightFormat]) -> None:
    _FORMATS.clear()
    _FORMATS.update(saved)


def get_format(name: str) -> WeightFormat:
    try:
        return _FORMATS[name]
    except KeyError:
        raise LlamaNbError(f"unknown weight format {name!r}; have: {', '.join(sorted(_FORMATS))}") from None


def format_of_checkpoint_dtype(dtype: str) -> WeightFormat | None:
    """The format that holds tensors of this checkpoint dtype ("bfloat16", ...) as stored, or None."""
    for fmt in _FORMATS.values():
        if fmt.checkpoint_dtype == dtype:
            return fmt
    return None


def as_weight(array: np.ndarray, fmt: WeightFormat) -> Weight:
    """Wrap a plain 2-d array of a block-1 format (as a checkpoint stores it) without copying;
    float16 values are viewed as their uint16 bits."""
    if array.dtype != fmt.dtype and array.dtype.itemsize == fmt.dtype.itemsize:
        array = array.view(fmt.dtype)
    return Weight(fmt, (int(array.shape[0]), int(array.shape[1])), array)


def repack(weight: Weight, target: WeightFormat) -> Weight:
    """`weight` converted to `target` (dequantize, then quantize) in slabs of rows; the weight
    itself when it already is in `target`."""
    if weight.format is target:
        return weight
    if target.quantize is None:
        raise LlamaNbError(f"weight format {target.name} cannot be made from other formats (it has no quantize)")
    n, k = weight.shape
    step = max(1, _SLAB_ELEMENTS // max(1, k))
    parts = [target.quantize(weight.dequantize(lo, min(lo + step, n))) for lo in range(0, n, step)]
    data = np.concatenate([p.data for p in parts]) if len(parts) > 1 else parts[0].data
    scales = None
    if target.has_scales:
        scales = np.concatenate([p.scales for p in parts]) if len(parts) > 1 else parts[0].scales
    return Weight(target, (n, k), data, scales)


# ------------------------------------------------------------------------- the built-in formats


def bf16_to_f32_np(x: np.ndarray) -> np.ndarray:
    """float32 copy of bf16 bits: the bits become the high half of each float32 (exact)."""
    return (np.asarray(x, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_np(x: np.ndarray) -> np.ndarray:
    """bf16 bits of float32 values: round to nearest, ties to even; NaN -> quiet NaN, sign kept."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    lsb = (bits >> 16) & 1
    rounded = ((bits + 0x7FFF + lsb) >> 16).astype(np.uint16)
    is_nan = (bits & 0x7FFFFFFF) > 0x7F800000
    canonical_nan = (((bits >> 16) & 0x8000) | 0x7FC0).astype(np.uint16)
    return np.where(is_nan, canonical_nan, rounded)


def _plain(name: str, doc: str, dtype, checkpoint_dtype: str, to_f32, from_f32) -> WeightFormat:
    dtype = np.dtype(dtype)

    def dequantize(weight: Weight, lo: int, hi: int) -> np.ndarray:
        return to_f32(weight.data[lo:hi])

    def quantize(values: np.ndarray) -> Weight:
        return as_weight(np.ascontiguousarray(from_f32(values)), fmt)

    fmt = WeightFormat(name, doc, dtype, 1, dtype.itemsize, dequantize, quantize, checkpoint_dtype=checkpoint_dtype)
    return fmt


BF16 = register_format(_plain(
    "bf16", "x = float32(bits << 16): bfloat16, as Meta's checkpoints store it", np.uint16, "bfloat16",
    bf16_to_f32_np, f32_to_bf16_np))
F16 = register_format(_plain(
    "f16", "x = float32(half(bits)): IEEE float16", np.int16, "float16",
    lambda a: a.view(np.float16).astype(np.float32), lambda v: np.asarray(v, np.float32).astype(np.float16).view(np.int16)))
F32 = register_format(_plain(
    "f32", "x = x: float32 as stored", np.float32, "float32",
    lambda a: np.array(a, np.float32), lambda v: np.asarray(v, np.float32)))

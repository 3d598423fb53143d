"""Read a GGUF file (llama.cpp's format) without the `gguf` package, bounds-checked, memory-mapped.

Layout (GGUF version 2 and 3, little-endian; ggml's gguf.cpp and docs/gguf.md):

    magic          b"GGUF"
    version        uint32                      2 or 3
    n_tensors      uint64
    n_kv           uint64
    n_kv x         key: string, value_type: uint32, value
    n_tensors x    name: string, n_dims: uint32, ne: uint64[n_dims], type: uint32, offset: uint64
    padding        to a multiple of `general.alignment` (uint32 key; 32 when absent)
    tensor data    each tensor at data_start + offset, offset a multiple of the alignment

    string         uint64 length, then that many UTF-8 bytes (no terminator)
    value types    0 uint8, 1 int8, 2 uint16, 3 int16, 4 uint32, 5 int32, 6 float32, 7 bool,
                   8 string, 9 array (item type: uint32, count: uint64, items), 10 uint64,
                   11 int64, 12 float64

`ne` lists dimensions innermost first (ggml's order): a matrix [N rows, K columns] is ne = [K, N],
so the NumPy shape is ne reversed. A tensor's bytes: ne[0] / block * block_bytes per row, times
the other dimensions (ggml's type traits, `GGML_TYPES` below). Rows of block formats are their
ggml blocks back to back, which is what llama_nb's block formats hold (llama_nb.formats).

`read_gguf` reads the header with pread into a buffer grown as the parser needs it (never more
than MAX_HEADER_BYTES), so a truncated file is a CheckpointError, never a SIGBUS; every count and
length is checked against the bytes left before anything is allocated (a string of 2^60 bytes, an
array of 2^40 items), arrays nest at most MAX_ARRAY_NESTING deep; tensors must lie inside the file,
aligned, without overlapping. The tensor data is then mapped once (np.memmap, mode "r") and each
tensor is a read-only view into it: F32 float32[shape], F16 float16[shape], BF16 uint16[shape]
(raw bits), block formats uint8[rows, row_bytes]. Any failure is one CheckpointError line naming
the file.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llama_nb.errors import CheckpointError, shown
from llama_nb.io.files import FileEnded, open_regular_file, pread_exactly

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_HEADER_BYTES = 256 << 20  # Llama 3's header (128k tokens + 280k merges) is ~8 MB
MAX_TENSORS = 1 << 16  # Llama 3.1 8B has 292; 405B 1,138
MAX_KV = 1 << 16
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME_BYTES = 64  # GGML_MAX_NAME, including ggml's terminating zero
MAX_ARRAY_NESTING = 4
MAX_ALIGNMENT = 1 << 20
_FIRST_READ = 1 << 20

# ggml type id -> (name, weights per block, bytes per block); every type ggml knows, so that a
# type llama_nb does not read is refused by its name. From ggml.h / ggml.c's type_traits.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8),
    28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
}
GGML_TYPE_IDS = {name: type_id for type_id, (name, _, _) in GGML_TYPES.items()}
# The types llama_nb reads -> the llama_nb weight format (llama_nb.formats) that holds their bytes.
READ_TYPES = {"F32": "f32", "F16": "f16", "BF16": "bf16", "Q8_0": "q8_0", "Q4_K": "q4_k", "Q6_K": "q6_k"}
_PLAIN_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}

# GGUF value type id -> (name, struct format or None for string/array)
VALUE_TYPES: dict[int, tuple[str, str | None]] = {
    0: ("uint8", "<B"), 1: ("int8", "<b"), 2: ("uint16", "<H"), 3: ("int16", "<h"), 4: ("uint32", "<I"),
    5: ("int32", "<i"), 6: ("float32", "<f"), 7: ("bool", "<B"), 8: ("string", None), 9: ("array", None),
    10: ("uint64", "<Q"), 11: ("int64", "<q"), 12: ("float64", "<d"),
}
STRING, ARRAY = 8, 9
_NUMPY_ITEMS = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 10: "<u8", 11: "<i8", 12: "<f8"}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry: `shape` in NumPy order (ne reversed), `offset` from the file's start."""

    name: str
    type_name: str  # ggml's: "F32", "Q4_K", ...
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def row_bytes(self) -> int:
        _, block, block_bytes = GGML_TYPES[GGML_TYPE_IDS[self.type_name]]
        return self.shape[-1] // block * block_bytes


@dataclass(frozen=True, eq=False)
class GGUFFile:
    """A checked GGUF file: its metadata, its tensor entries, and one read-only map of it."""

    path: Path
    version: int
    metadata: dict[str, Any]  # key -> int | float | bool | str | list | np.ndarray (numeric arrays)
    value_types: dict[str, str]  # key -> "uint32", "array[string]", ...
    tensors: dict[str, TensorInfo]  # in the file's order
    alignment: int
    data_start: int
    mmap: np.memmap = field(repr=False)  # uint8[file size]

    def array(self, name: str) -> np.ndarray:
        """The tensor as a read-only view of the map: float32/float16/uint16[shape] for F32/F16/BF16
        (BF16 as raw bits), uint8[rows, row_bytes] for block formats (rows = all but ne[0])."""
        info = self.tensors[name]
        raw = self.mmap[info.offset : info.offset + info.nbytes]
        if info.type_name in _PLAIN_DTYPES:
            return raw.view(_PLAIN_DTYPES[info.type_name]).reshape(info.shape)
        return raw.reshape(math.prod(info.shape[:-1]), info.row_bytes)


class _Cursor:
    """Reads the header: little-endian values at a moving position, from a buffer filled by pread
    as far as the parser asks, never past the file's size or MAX_HEADER_BYTES."""

    def __init__(self, fd: int, size: int, path: Path):
        self.fd, self.size, self.path, self.pos = fd, size, path, 0
        self.buf = b""

    def fail(self, problem: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {problem}")

    def need(self, n: int, what: str) -> None:
        """Make sure bytes pos .. pos+n are in the buffer, or say the file ends first."""
        end = self.pos + n
        if end > self.size:
            raise self.fail(f"file ends inside {what} (at byte {self.pos}, needs {n} more bytes of "
                            f"{self.size}; truncated?)")
        if end <= len(self.buf):
            return
        if end > MAX_HEADER_BYTES:
            raise self.fail(f"metadata and tensor entries pass {MAX_HEADER_BYTES >> 20} MiB (at {what}); "
                            "no model's header is that large")
        want = min(self.size, MAX_HEADER_BYTES, max(end, 2 * len(self.buf), _FIRST_READ))
        try:
            self.buf += pread_exactly(self.fd, len(self.buf), want - len(self.buf))
        except FileEnded:
            raise self.fail(f"file ended while reading {what} (was it truncated?)") from None

    def unpack(self, fmt: str, what: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def raw(self, n: int, what: str) -> bytes:
        self.need(n, what)
        data = self.buf[self.pos : self.pos + n]
        self.pos += n
        return data

    def string(self, what: str, limit: int | None = None) -> str:
        length = self.unpack("<Q", what)
        if limit is not None and length > limit:
            raise self.fail(f"{what} is {length} bytes long; at most {limit} allowed")
        data = self.raw(length, what)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"{what} is not UTF-8 (byte {exc.start}): {shown(data[:40])}") from None

    def value(self, type_id: int, what: str, depth: int = 0) -> Any:
        if type_id not in VALUE_TYPES:
            raise self.fail(f"{what} has value type {type_id}, which GGUF does not define")
        if type_id == STRING:
            return self.string(what)
        if type_id == ARRAY:
            return self.array(what, depth)
        value = self.unpack(VALUE_TYPES[type_id][1], what)
        return bool(value) if type_id == 7 else value

    def array(self, what: str, depth: int) -> Any:
        if depth >= MAX_ARRAY_NESTING:
            raise self.fail(f"{what}: arrays nested more than {MAX_ARRAY_NESTING} deep")
        item_type = self.unpack("<I", what)
        count = self.unpack("<Q", what)
        if item_type not in VALUE_TYPES:
            raise self.fail(f"{what} is an array of value type {item_type}, which GGUF does not define")
        fmt = VALUE_TYPES[item_type][1]
        least = struct.calcsize(fmt) if fmt else (8 if item_type == STRING else 12)  # bytes per item, at least
        if count > (self.size - self.pos) // least:  # before allocating anything for it
            raise self.fail(f"{what} claims {count} items, more than the {self.size - self.pos} bytes left can hold")
        if item_type in _NUMPY_ITEMS:
            data = self.raw(count * least, what)
            return np.frombuffer(data, _NUMPY_ITEMS[item_type]).copy()
        if item_type == 7:
            return [bool(b) for b in self.raw(count, what)]
        return [self.value(item_type, f"{what}[{i}]", depth + 1) for i in range(count)]


def _type_name(cur: _Cursor, type_id: int, where: str) -> str:
    """ "uint32", "string", "array[string]", ...: a value's type, read before the value (for info)."""
    if type_id != ARRAY or type_id not in VALUE_TYPES:
        return VALUE_TYPES.get(type_id, ("?", None))[0]
    cur.need(4, where)
    (item,) = struct.unpack_from("<I", cur.buf, cur.pos)
    return f"array[{VALUE_TYPES.get(item, ('?', None))[0]}]"


def read_gguf(path: str | Path) -> GGUFFile:
    """Parse and check a GGUF file's header, then map it; see the module docstring."""
    path = Path(path)
    with open_regular_file(path, "a GGUF file") as f:
        size = os.fstat(f.fileno()).st_size
        cur = _Cursor(f.fileno(), size, path)
        if size < 4 or cur.raw(4, "the magic") != MAGIC:
            raise CheckpointError(f"{path}: not a GGUF file (it does not start with b'GGUF')")
        version = cur.unpack("<I", "the version")
        if version not in VERSIONS:
            raise CheckpointError(f"{path}: GGUF version {version}; llama_nb reads versions 2 and 3")
        n_tensors, n_kv = cur.unpack("<Q", "the tensor count"), cur.unpack("<Q", "the key count")
        if n_tensors > MAX_TENSORS or n_kv > MAX_KV:
            raise CheckpointError(f"{path}: claims {n_tensors} tensors and {n_kv} metadata keys; at most "
                                  f"{MAX_TENSORS} and {MAX_KV} allowed")
        metadata: dict[str, Any] = {}
        value_types: dict[str, str] = {}
        for i in range(n_kv):
            key = cur.string(f"metadata key #{i}", limit=1 << 16)
            where = f"metadata {shown(key)}"
            if key in metadata:
                raise CheckpointError(f"{path}: {where} appears twice")
            type_id = cur.unpack("<I", where)
            value_types[key] = _type_name(cur, type_id, where)
            metadata[key] = cur.value(type_id, where)
        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if (value_types.get("general.alignment", "uint32") != "uint32" or not 0 < alignment <= MAX_ALIGNMENT
                or alignment & (alignment - 1)):
            raise CheckpointError(f"{path}: general.alignment must be a power of two up to {MAX_ALIGNMENT} "
                                  f"(a uint32), got {shown(alignment)}")
        entries = [_tensor_entry(cur, i) for i in range(n_tensors)]
        data_start = -(-cur.pos // alignment) * alignment
    tensors = _place_tensors(path, entries, data_start, alignment, size)
    try:
        mm = np.memmap(path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot map the file: {exc}") from None
    return GGUFFile(path=path, version=version, metadata=metadata, value_types=value_types, tensors=tensors,
                    alignment=alignment, data_start=data_start, mmap=mm)


def _tensor_entry(cur: _Cursor, i: int) -> tuple[str, int, tuple[int, ...], int]:
    """(name, ggml type id, NumPy shape, offset from the data start) of tensor entry #i."""
    name = cur.string(f"the name of tensor #{i}", limit=MAX_NAME_BYTES - 1)
    where = f"tensor {shown(name)}"
    n_dims = cur.unpack("<I", where)
    if not 1 <= n_dims <= MAX_DIMS:
        raise cur.fail(f"{where} has {n_dims} dimensions; ggml tensors have 1 to {MAX_DIMS}")
    ne = [cur.unpack("<Q", where) for _ in range(n_dims)]
    type_id, offset = cur.unpack("<I", where), cur.unpack("<Q", where)
    if type_id not in GGML_TYPES:
        raise cur.fail(f"{where} has ggml type {type_id}, which ggml does not define")
    if any(n == 0 for n in ne) or math.prod(ne) >= 1 << 62:
        raise cur.fail(f"{where} has dimensions {ne} (ne order); each must be at least 1, with fewer than 2^62 elements")
    return name, type_id, tuple(reversed(ne)), offset


def _place_tensors(path: Path, entries: list, data_start: int, alignment: int, size: int) -> dict[str, TensorInfo]:
    """Sizes from type and shape; every tensor aligned, inside the file, and none overlapping another."""
    tensors: dict[str, TensorInfo] = {}
    for name, type_id, shape, offset in entries:
        type_name, block, block_bytes = GGML_TYPES[type_id]
        where = f"{path}: tensor {shown(name)} ({type_name}, shape {list(shape)})"
        if name in tensors:
            raise CheckpointError(f"{path}: tensor {shown(name)} appears twice")
        if shape[-1] % block:
            raise CheckpointError(f"{where}: its rows of {shape[-1]} are not a whole number of {block}-weight blocks")
        nbytes = math.prod(shape[:-1]) * (shape[-1] // block) * block_bytes
        if offset % alignment:
            raise CheckpointError(f"{where}: offset {offset} is not a multiple of the alignment {alignment}")
        start = data_start + offset
        if start + nbytes > size:
            raise CheckpointError(f"{where}: its {nbytes} bytes at byte {start} pass the end of the file "
                                  f"({size} bytes; truncated?)")
        tensors[name] = TensorInfo(name, type_name, shape, start, nbytes)
    ordered = sorted(tensors.values(), key=lambda t: t.offset)
    for before, after in zip(ordered, ordered[1:]):
        if after.offset < before.offset + before.nbytes:
            raise CheckpointError(f"{path}: tensors {shown(before.name)} and {shown(after.name)} overlap "
                                  f"(bytes {after.offset}..{before.offset + before.nbytes})")
    return tensors

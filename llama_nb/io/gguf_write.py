"""Write a GGUF file (version 3), atomically: the layout llama_nb.io.gguf reads (see there).

    write_gguf("m.gguf", metadata, [TensorPlan("token_embd.weight", "Q8_0", (V, D), produce), ...])

Metadata values are typed by what they are, as llama.cpp's gguf-py types the keys it writes:
str -> string, bool -> bool, int -> uint32 (uint64 past 2^32; int32 if negative), float -> float32,
list of str -> array[string], NumPy 1-d integer/float arrays -> array of their dtype.

The header needs every tensor's size before any data, so tensors come as plans (name, ggml type,
NumPy shape, a function producing the bytes): the sizes follow from type and shape, the data of
one tensor at a time is produced, checked against its planned size, and written at its aligned
offset. The file is written to a temporary name beside the target and renamed over it only when
complete; on any error, a full disk or Ctrl-C the temporary file is removed, so no half-written
GGUF is ever left under the target's name.
"""

from __future__ import annotations

import errno
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from llama_nb.errors import LlamaNbError
from llama_nb.io.gguf import DEFAULT_ALIGNMENT, GGML_TYPE_IDS, GGML_TYPES, MAGIC, VALUE_TYPES

VERSION = 3
_TYPE_IDS = {name: type_id for type_id, (name, _) in VALUE_TYPES.items()}
_NUMPY_TYPES = {np.dtype(np.uint8): "uint8", np.dtype(np.int8): "int8", np.dtype(np.uint16): "uint16",
                np.dtype(np.int16): "int16", np.dtype(np.uint32): "uint32", np.dtype(np.int32): "int32",
                np.dtype(np.float32): "float32", np.dtype(np.uint64): "uint64", np.dtype(np.int64): "int64",
                np.dtype(np.float64): "float64"}


@dataclass(frozen=True)
class TensorPlan:
    """One tensor to write: `produce()` returns its bytes (any array whose buffer holds them, in
    ggml's layout: rows of blocks for block types), exactly nbytes of them."""

    name: str
    type_name: str  # ggml's: "F32", "BF16", "Q8_0", ...
    shape: tuple[int, ...]  # NumPy order (rows first); written as ne = reversed
    produce: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        _, block, block_bytes = GGML_TYPES[GGML_TYPE_IDS[self.type_name]]
        if self.shape[-1] % block:
            raise LlamaNbError(f"{self.name}: rows of {self.shape[-1]} are not whole {block}-weight blocks of {self.type_name}")
        return math.prod(self.shape[:-1]) * (self.shape[-1] // block) * block_bytes


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _value_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int32" if value < 0 else "uint32" if value < 2**32 else "uint64"
    if isinstance(value, float):
        return "float32"
    if isinstance(value, str):
        return "string"
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype in _NUMPY_TYPES:
        return "array"
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return "array"
    raise LlamaNbError(f"GGUF metadata: cannot write a value of type {type(value).__name__}")


def _value(value: Any) -> bytes:
    kind = _value_type(value)
    if kind == "string":
        return _string(value)
    if kind == "array":
        if isinstance(value, np.ndarray):
            item = _NUMPY_TYPES[value.dtype]
            return struct.pack("<IQ", _TYPE_IDS[item], len(value)) + value.astype(value.dtype.newbyteorder("<")).tobytes()
        return struct.pack("<IQ", _TYPE_IDS["string"], len(value)) + b"".join(_string(v) for v in value)
    return struct.pack(VALUE_TYPES[_TYPE_IDS[kind]][1], value)


def header_bytes(metadata: Mapping[str, Any], plans: list[TensorPlan], alignment: int) -> tuple[bytes, list[int]]:
    """The header (magic .. tensor entries, padded to the alignment) and each tensor's data offset."""
    parts = [MAGIC, struct.pack("<IQQ", VERSION, len(plans), len(metadata))]
    for key, value in metadata.items():
        parts += [_string(key), struct.pack("<I", _TYPE_IDS[_value_type(value)]), _value(value)]
    offsets, offset = [], 0
    for plan in plans:
        offsets.append(offset)
        ne = tuple(reversed(plan.shape))
        parts += [_string(plan.name), struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, GGML_TYPE_IDS[plan.type_name], offset)]
        offset += -(-plan.nbytes // alignment) * alignment
    header = b"".join(parts)
    return header + bytes(-len(header) % alignment), offsets


def write_gguf(path: str | Path, metadata: Mapping[str, Any], plans: Iterable[TensorPlan],
               on_tensor: Callable[[TensorPlan], None] | None = None) -> int:
    """Write the file (see the module docstring); return its size. `on_tensor(plan)` is called
    after each tensor is written (a progress bar). Errors: one LlamaNbError line naming `path`."""
    path = Path(path)
    plans = list(plans)
    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    header, _ = header_bytes(metadata, plans, alignment)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(header)
            for plan in plans:
                data = np.ascontiguousarray(plan.produce())
                if data.nbytes != plan.nbytes:
                    raise LlamaNbError(f"{path}: {plan.name}: produced {data.nbytes} bytes, its {plan.type_name}"
                                       f"{list(plan.shape)} takes {plan.nbytes}")
                f.write(memoryview(data.reshape(-1).view(np.uint8)))
                f.write(bytes(-plan.nbytes % alignment))
                if on_tensor is not None:
                    on_tensor(plan)
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        os.replace(tmp, path)
        return size
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise LlamaNbError(f"{path}: the disk is full (no space left to write the GGUF file); nothing was written") from None
        raise LlamaNbError(f"{path}: cannot write: {exc.strerror or exc}") from None
    except BaseException:  # Ctrl-C, a failed tensor: no half-written file is left behind
        tmp.unlink(missing_ok=True)
        raise

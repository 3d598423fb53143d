"""Read a .safetensors file (Hugging Face's weight format) without the safetensors package: mapped, zero-copy, checked.

Layout (https://github.com/huggingface/safetensors, "Format"):

    bytes 0..8          N, the header's length: uint64, little-endian
    bytes 8..8+N        the header: one JSON object, UTF-8, maybe padded with spaces
                          {"__metadata__": {"format": "pt"},                 optional, str -> str
                           "model.norm.weight": {"dtype": "BF16", "shape": [4096],
                                                 "data_offsets": [0, 8192]}, ...}
    bytes 8+N..end      the data section: each tensor's raw little-endian bytes, row-major, at
                        [begin, end) counted from the start of the data section

`load_safetensors(path)` reads the 8 bytes and the header with pread (never through the map), checks
every entry before any tensor byte is touched, maps the file once (np.memmap, mode "r") and
returns a `Checkpoint` (llama_nb.io.pth) of read-only views into that map, under the file's own
names. Checked, each a one-line CheckpointError naming the file:

    N                 at least 2 ("{}"), at most MAX_HEADER_BYTES and within the file
    header            UTF-8 JSON (llama_nb.io.jsonfile: depth, 20-digit integers, a name that
                      appears twice is refused, not silently overwritten); an object of objects
    dtype             BF16, F16, F32 (as torch's bfloat16, float16, float32); any other by name
    shape             a list of at most MAX_NDIM non-negative integers
    data_offsets      [begin, end], 0 <= begin <= end <= data section's size, and
                      end - begin == prod(shape) * itemsize; begin aligned to the itemsize
    overlap           no two tensors share a byte (gaps between them are allowed)
    __metadata__      an object of strings (kept in Checkpoint.metadata)

dtypes as NumPy sees them: BF16 -> uint16 (raw bf16 bits), F16 -> float16, F32 -> float32.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from llama_nb.errors import CheckpointError, shown
from llama_nb.io.files import FileEnded, open_regular_file, pread_exactly
from llama_nb.io.jsonfile import parse_json
from llama_nb.io.pth import Checkpoint
from llama_nb.io.unpickler import MAX_NDIM

MAX_HEADER_BYTES = 100 << 20  # the safetensors package's own limit; an 8B shard's header is ~25 KB
METADATA_KEY = "__metadata__"
# safetensors dtype -> (torch's name, as Checkpoint.dtypes says it; the NumPy dtype of the view)
DTYPES = {"BF16": ("bfloat16", np.dtype("<u2")), "F16": ("float16", np.dtype("<f2")),
          "F32": ("float32", np.dtype("<f4"))}
_LENGTH = struct.Struct("<Q")


def load_safetensors(path: str | Path) -> Checkpoint:
    """Map one .safetensors file; its tensors as read-only views under the file's names."""
    path = Path(path)
    with open_regular_file(path, "a .safetensors file") as f:
        size = os.fstat(f.fileno()).st_size
        if size < _LENGTH.size:
            raise CheckpointError(f"{path}: {size} bytes, too short for a safetensors file (8-byte header length)")
        (n,) = _LENGTH.unpack(_pread(f.fileno(), 0, _LENGTH.size, path))
        if not 2 <= n <= min(MAX_HEADER_BYTES, size - _LENGTH.size):
            raise CheckpointError(
                f"{path}: header length {n} is outside [2, {min(MAX_HEADER_BYTES, size - _LENGTH.size)}] "
                f"(a {size}-byte file; is it a safetensors file, or truncated?)")
        header = parse_json(_pread(f.fileno(), _LENGTH.size, n, path), path, "a safetensors JSON header")
        data_start = _LENGTH.size + n
        entries, metadata = _check_header(header, path, size - data_start, data_start)
        try:
            mm = np.memmap(f, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: cannot memory-map: {exc}") from None
    tensors: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for name, (dtype, shape, begin) in entries.items():
        torch_name, np_dtype = DTYPES[dtype]
        view = np.ndarray(shape, np_dtype, buffer=mm, offset=data_start + begin)
        view.flags.writeable = False
        tensors[name], dtypes[name] = view, torch_name
    return Checkpoint(path=path, tensors=tensors, dtypes=dtypes, mmap=mm, metadata=metadata)


def _pread(fd: int, offset: int, size: int, path: Path) -> bytes:
    """Exactly `size` bytes from `offset` (the file may have shrunk since fstat)."""
    try:
        return pread_exactly(fd, offset, size)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except FileEnded:
        raise CheckpointError(f"{path}: file ended while reading its header (was it truncated?)") from None


def _check_header(header: Any, path: Path, data_size: int, data_start: int
                  ) -> tuple[dict[str, tuple[str, tuple[int, ...], int]], dict[str, str]]:
    """name -> (dtype, shape, begin) for every tensor, and the metadata; all checked."""
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header must be a JSON object, got {type(header).__name__}")
    metadata = header.get(METADATA_KEY, {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: {METADATA_KEY} must be an object of strings")
    entries: dict[str, tuple[str, tuple[int, ...], int]] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == METADATA_KEY:
            continue
        where = f"{path}: tensor {shown(name)}"
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise CheckpointError(f"{where}: expected {{dtype, shape, data_offsets}}, got {shown(keys)}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPES:
            raise CheckpointError(f"{where} is {shown(dtype)}; llama_nb reads {', '.join(DTYPES)}")
        if not (isinstance(shape, list) and len(shape) <= MAX_NDIM and all(_is_size(d) for d in shape)):
            raise CheckpointError(f"{where}: shape {shown(shape)} is not a list of at most {MAX_NDIM} "
                                  f"non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_size(o) for o in offsets)
                and offsets[0] <= offsets[1] <= data_size):
            raise CheckpointError(f"{where}: data_offsets {shown(offsets)} are not [begin, end] inside the "
                                  f"{data_size}-byte data section")
        begin, end = offsets
        itemsize = DTYPES[dtype][1].itemsize
        expected = int(np.prod(shape, dtype=object)) * itemsize  # Python ints: no overflow
        if end - begin != expected:
            raise CheckpointError(f"{where}: data_offsets span {end - begin} bytes but {dtype}{shape} "
                                  f"needs {expected}")
        if (data_start + begin) % itemsize:
            raise CheckpointError(f"{where}: starts at byte {data_start + begin}, not aligned to its "
                                  f"{itemsize}-byte {dtype} elements")
        entries[name] = (dtype, tuple(shape), begin)
        if end > begin:
            spans.append((begin, end, name))
    spans.sort()
    for (_, end_a, a), (begin_b, _, b) in zip(spans, spans[1:]):
        if begin_b < end_a:
            raise CheckpointError(f"{path}: tensors {shown(a)} and {shown(b)} overlap (bytes {begin_b}..{end_a} "
                                  f"of the data section)")
    return entries, metadata


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0

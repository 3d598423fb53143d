"""Write Meta-format checkpoints without torch: `save_pth` (a torch.save zip) and `write_random_model`.

    save_pth("out/consolidated.00.pth", {"norm.weight": bf16_bits, "x": np.zeros(3, np.float32)})
    write_random_model("/tmp/m", args, seed=0)     # random bf16 weights, Meta's names, params.json
    ensure_shape_model("llama3.2-1b")              # SHAPES[name], cached in $LLAMA_NB_CACHE/shapes

The file is what torch.save writes (torch.load and llama_nb.io.pth read it back bit for bit):

    <stem>/data.pkl       protocol-2 pickle of an OrderedDict name -> tensor, each tensor being
                          torch._utils._rebuild_tensor_v2(
                              persistent_load(('storage', torch.BFloat16Storage, key, 'cpu', numel)),
                              storage_offset=0, size, stride, requires_grad=False, OrderedDict())
    <stem>/data/<key>     the tensor's raw little-endian bytes, key = "0", "1", ...
    <stem>/byteorder      "little"
    <stem>/version        "3\\n"

dtypes (the reverse of llama_nb.io.pth's mapping):
    uint16[shape]   -> torch.bfloat16 (the array holds bf16 bits)
    float16[shape]  -> torch.float16
    float32[shape]  -> torch.float32

Zip entries are STORED (uncompressed) and each one's data starts at a multiple of 64 bytes, as
torch pads them (an extra field "FB" + length + "Z" * n), so the reader can memory-map every
tensor in place. Files and offsets beyond 4 GiB use ZIP64 records (an 8B model is 16 GB).

Streaming: entries are written as the tensors arrive and data.pkl comes last (zip readers, torch's
included, look entries up in the central directory, so order does not matter), so `tensors` may
be a generator of (name, array) pairs and at most one tensor is held in memory at a time.
The pickle opcodes are emitted here by hand: pickle.Pickler would import torch to check GLOBALs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np

from llama_nb.errors import LlamaNbError
from llama_nb.io.checkpoint import CHECKPOINT_NAME, PARAMS_NAME, TOKENIZER_NAME, expected_shapes
from llama_nb.io.params import ModelArgs

ALIGNMENT = 64  # torch aligns every entry's data to 64 bytes (so do we: mmap-friendly views)
_ZIP64_LIMIT = 0xFFFFFFFF  # sizes/offsets at or above this go into ZIP64 extra fields (tests lower it)

_STORAGE = {  # numpy dtype -> torch storage class name
    np.dtype("<u2"): "BFloat16Storage",
    np.dtype("<f2"): "HalfStorage",
    np.dtype("<f4"): "FloatStorage",
}


# --- the pickle ----------------------------------------------------------------------------------


def _int(n: int) -> bytes:
    """The shortest protocol-2 opcode pushing the non-negative int n."""
    if n < 0x100:
        return b"K" + struct.pack("<B", n)  # BININT1
    if n < 0x10000:
        return b"M" + struct.pack("<H", n)  # BININT2
    if n < 0x80000000:
        return b"J" + struct.pack("<i", n)  # BININT (signed 32-bit)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + struct.pack("<B", len(raw)) + raw  # LONG1


def _str(s: str) -> bytes:
    raw = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _tuple(items: tuple[int, ...]) -> bytes:
    body = b"".join(_int(i) for i in items)
    if len(items) <= 3:
        return body + (b")", b"\x85", b"\x86", b"\x87")[len(items)]  # EMPTY_TUPLE, TUPLE1/2/3
    return b"(" + body + b"t"  # MARK ... TUPLE


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode("ascii")  # GLOBAL


_ORDERED_DICT = _global("collections", "OrderedDict") + b")R"  # OrderedDict() : EMPTY_TUPLE REDUCE


@dataclass(frozen=True)
class _Record:
    """What data.pkl says about one tensor written to <stem>/data/<key>."""

    name: str
    key: str
    storage: str  # "BFloat16Storage", ...
    shape: tuple[int, ...]

    def pickle(self) -> bytes:
        numel = int(np.prod(self.shape, dtype=np.int64))
        storage = (b"(" + _str("storage") + _global("torch", self.storage) + _str(self.key) + _str("cpu")
                   + _int(numel) + b"tQ")  # MARK ... TUPLE BINPERSID
        args = (storage + _int(0) + _tuple(self.shape) + _tuple(_contiguous_strides(self.shape))
                + b"\x89" + _ORDERED_DICT)  # NEWFALSE (requires_grad), backward_hooks
        return _str(self.name) + _global("torch._utils", "_rebuild_tensor_v2") + b"(" + args + b"tR"


def _state_dict_pickle(records: list[_Record]) -> bytes:
    body = b"".join(r.pickle() for r in records)
    return b"\x80\x02" + _ORDERED_DICT + b"(" + body + b"u."  # PROTO 2 ... MARK ... SETITEMS STOP


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """torch's strides of a contiguous tensor: a size-0 dimension counts as 1 (shape (3, 0) -> (1, 1))."""
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


# --- the zip -------------------------------------------------------------------------------------


@dataclass
class _ZipEntry:
    name: bytes
    offset: int  # of the local header
    size: int
    crc: int


class _ZipWriter:
    """A minimal STORED-only zip writer with 64-byte aligned data and ZIP64 when needed."""

    def __init__(self, f):
        self.f, self.entries = f, []

    def add(self, name: str, data) -> None:
        """Write one entry; `data` is bytes or a C-contiguous array (written without a copy)."""
        view = memoryview(data).cast("B")
        raw_name, offset, size = name.encode("utf-8"), self.f.tell(), view.nbytes
        crc = zlib.crc32(view)
        big = size >= _ZIP64_LIMIT
        zip64 = struct.pack("<HHQQ", 0x0001, 16, size, size) if big else b""
        unpadded = offset + 30 + len(raw_name) + len(zip64) + 4
        extra = zip64 + b"FB" + struct.pack("<H", -unpadded % ALIGNMENT) + b"Z" * (-unpadded % ALIGNMENT)
        size32 = 0xFFFFFFFF if big else size
        self.f.write(struct.pack("<4s5H3I2H", b"PK\x03\x04", 45 if big else 20, 0x800, 0, 0, 0, crc,
                                 size32, size32, len(raw_name), len(extra)))
        self.f.write(raw_name + extra)
        self.f.write(view)
        self.entries.append(_ZipEntry(raw_name, offset, size, crc))

    def close(self) -> None:
        start = self.f.tell()
        for e in self.entries:
            fields = [v for v in (e.size, e.size, e.offset) if v >= _ZIP64_LIMIT]  # spec's order
            big = bool(fields)
            extra = struct.pack(f"<HH{len(fields)}Q", 0x0001, 8 * len(fields), *fields) if big else b""
            size32 = 0xFFFFFFFF if e.size >= _ZIP64_LIMIT else e.size
            offset32 = 0xFFFFFFFF if e.offset >= _ZIP64_LIMIT else e.offset
            self.f.write(struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 45 if big else 20, 45 if big else 20,
                                     0x800, 0, 0, 0, e.crc, size32, size32, len(e.name), len(extra), 0, 0, 0,
                                     0, offset32))
            self.f.write(e.name + extra)
        end = self.f.tell()
        count, cd_size = len(self.entries), end - start
        if count >= 0xFFFF or start >= _ZIP64_LIMIT or cd_size >= _ZIP64_LIMIT:
            # ZIP64 end of central directory record, then its locator
            self.f.write(struct.pack("<4sQ2H2I4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, cd_size, start))
            self.f.write(struct.pack("<4sIQI", b"PK\x06\x07", 0, end, 1))
            count16, cd32, start32 = 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF
        else:
            count16, cd32, start32 = count, cd_size, start
        self.f.write(struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, count16, count16, cd32, start32, 0))


# --- public API ----------------------------------------------------------------------------------


def save_pth(path: str | Path, tensors: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
             *, stem: str | None = None) -> None:
    """Write `tensors` (name -> array, or (name, array) pairs, consumed one at a time) as torch.save would.

    uint16 arrays are saved as bf16 bits, float16/float32 as themselves; strided arrays are
    saved contiguous. `stem` names the zip's top folder (default: the file name without its
    suffix, as torch does). Raises LlamaNbError on another dtype or a repeated name.
    """
    path = Path(path)
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    stem = stem or _stem(path.name)
    records: list[_Record] = []
    seen: set[str] = set()
    with open(path, "wb") as f:
        zw = _ZipWriter(f)
        for name, array in items:
            if not isinstance(name, str) or name in seen:
                raise LlamaNbError(f"{path}: tensor name {name!r} is repeated or not a string")
            seen.add(name)
            array = np.asarray(array)
            storage = _STORAGE.get(array.dtype.newbyteorder("<"))
            if storage is None:
                raise LlamaNbError(f"{path}: tensor {name!r} is {array.dtype}; save_pth writes uint16 (bf16 bits), float16 and float32")
            data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
            key = str(len(records))
            zw.add(f"{stem}/data/{key}", data.reshape(-1))
            records.append(_Record(name, key, storage, tuple(int(n) for n in array.shape)))
        zw.add(f"{stem}/byteorder", b"little")
        zw.add(f"{stem}/version", b"3\n")
        zw.add(f"{stem}/data.pkl", _state_dict_pickle(records))
        zw.close()


def random_bf16(shape: tuple[int, ...], rng: np.random.Generator, std: float = 0.02, mean: float = 0.0,
                chunk: int = 1 << 22) -> np.ndarray:
    """uint16[shape] bf16 bits of N(mean, std^2), drawn in float32 chunks and narrowed by llama_nb's
    Numba kernel (the one module it needs, not the registry: writing needs no other op)."""
    from llama_nb.ops.bf16 import f32_to_bf16_array as narrow

    out = np.empty(shape, np.uint16)
    flat = out.reshape(-1)
    buf = np.empty(min(chunk, max(flat.size, 1)), np.float32)
    for lo in range(0, flat.size, buf.size):
        part = buf[: min(buf.size, flat.size - lo)]
        rng.standard_normal(out=part, dtype=np.float32)
        part *= np.float32(std)
        part += np.float32(mean)
        narrow(flat[lo : lo + part.size], part)
    return out


def random_weights(args: ModelArgs, seed: int, *, tied_output: bool = False) -> Iterator[tuple[str, np.ndarray]]:
    """(Meta's key, bf16 bits) for every tensor of a random model, one at a time, in state_dict order.

    Matrices ~ N(0, 0.02^2) (Llama's init); norm weights ~ N(1, 0.02^2)."""
    rng = np.random.default_rng(seed)
    for name, shape in expected_shapes(args, tied_output=tied_output).items():
        is_norm = name.endswith("norm.weight")
        yield name, random_bf16(shape, rng, std=0.02, mean=1.0 if is_norm else 0.0)


def write_random_model(folder: str | Path, args: ModelArgs, seed: int = 0, tokenizer_path: str | Path | None = None,
                       *, tied_output: bool = False) -> Path:
    """Write a random bf16 model with `args`'s shapes in Meta's layout into `folder` (created).

    consolidated.00.pth, params.json, and tokenizer.model when `tokenizer_path` is given (copied).
    Without a tokenizer, the folder loads with load_model_files(folder, require_tokenizer=False).
    The pth is written to a temporary name and renamed, so an interrupted write leaves no
    half-written checkpoint behind. Returns the folder.
    """
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PARAMS_NAME).write_text(json.dumps(args.to_dict(), indent=2) + "\n")
    if tokenizer_path is not None:
        shutil.copyfile(tokenizer_path, folder / TOKENIZER_NAME)
    partial = folder / (CHECKPOINT_NAME + ".partial")
    save_pth(partial, random_weights(args, seed, tied_output=tied_output), stem=_stem(CHECKPOINT_NAME))
    partial.replace(folder / CHECKPOINT_NAME)
    return folder


def _stem(filename: str) -> str:
    """torch.save's archive folder name: the file name up to its last dot ("consolidated.00")."""
    return filename.rsplit(".", 1)[0] if "." in filename else filename


# --- random models of the real Llama shapes, cached -----------------------------------------------

# Meta's params.json of each model (Llama 3.2 1B ties the output to the embeddings).
SHAPES: dict[str, tuple[ModelArgs, bool]] = {
    "llama3.2-1b": (ModelArgs(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, vocab_size=128256, multiple_of=256,
                              ffn_dim_multiplier=1.5, norm_eps=1e-5, rope_theta=500000.0, use_scaled_rope=True), True),
    "llama3.1-8b": (ModelArgs(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=128256, multiple_of=1024,
                              ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500000.0, use_scaled_rope=True), False),
}
SHAPES["llama3.1-8b-4layers"] = (dataclasses.replace(SHAPES["llama3.1-8b"][0], n_layers=4), False)


def shape_nbytes(name: str) -> int:
    """Bytes of the bf16 tensors of the random model `name` (the file is a few KB more)."""
    args, tied = SHAPES[name]
    return 2 * sum(math.prod(s) for s in expected_shapes(args, tied_output=tied).values())


def shape_folder(name: str) -> Path:
    """Where the random model `name` is cached: $LLAMA_NB_CACHE/shapes/<name> (default ~/.cache/llama_nb)."""
    cache = os.environ.get("LLAMA_NB_CACHE")
    if not cache:
        try:
            cache = Path.home() / ".cache" / "llama_nb"
        except RuntimeError:  # no $HOME and no password entry
            raise LlamaNbError("--shape: no home folder to cache shape models in; set LLAMA_NB_CACHE") from None
    return Path(cache).expanduser() / "shapes" / name


def check_shape(name: str) -> None:
    """LlamaNbError (one line, listing the known shapes) unless `name` is one of SHAPES."""
    if name not in SHAPES:
        raise LlamaNbError(f"--shape {name!r}: unknown; known shapes: {', '.join(SHAPES)}")


def ensure_shape_model(name: str, seed: int = 0, on_write=None) -> Path:
    """The folder of a random model of shape `name`, written once (seed 0) and reused afterwards.

    `on_write(folder, nbytes)` is called before a (possibly long) write. LlamaNbError for an unknown
    name, when the disk has not room for it, or when the cache folder cannot be written (one line
    naming the folder, e.g. a read-only home)."""
    check_shape(name)
    folder = shape_folder(name)
    if (folder / CHECKPOINT_NAME).is_file() and (folder / PARAMS_NAME).is_file():
        return folder
    nbytes = shape_nbytes(name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
        if free < nbytes * 1.05:
            raise LlamaNbError(f"--shape {name}: needs {nbytes / 1e9:.1f} GB in {folder}, only {free / 1e9:.1f} GB "
                               "free (set LLAMA_NB_CACHE to a bigger disk)")
        if on_write is not None:
            on_write(folder, nbytes)
        args, tied = SHAPES[name]
        return write_random_model(folder, args, seed=seed, tied_output=tied)
    except OSError as exc:  # read-only home, $LLAMA_NB_CACHE a file or not writable, disk full
        raise LlamaNbError(f"--shape {name}: cannot write the shape model cache in {folder}: "
                           f"{exc.strerror or exc} (set LLAMA_NB_CACHE to a writable folder)") from None

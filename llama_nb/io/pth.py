"""Read a `torch.save` checkpoint (Meta's consolidated.00.pth) without torch, without copying, safely.

A .pth file written by torch >= 1.6 is a zip archive whose entries are STORED (not compressed):

    <prefix>/data.pkl       a pickle of the state dict; each tensor is a call
                            torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride,
                                                            requires_grad, backward_hooks)
                            whose storage is a persistent id
                            ('storage', torch.BFloat16Storage, key, location, numel)
    <prefix>/data/<key>     the raw little-endian bytes of storage `key`: numel * itemsize bytes
    <prefix>/byteorder      "little" (absent in files from older torch: little)

(<prefix> is the file's stem at save time: "consolidated.00", "archive", ...)

`load_pth` maps the whole file once (np.memmap, mode "r") and returns every tensor as a read-only
NumPy view into that one map, at the storage's data offset plus storage_offset, with the saved
shape and strides; nothing is copied, so a 16 GB checkpoint "loads" in milliseconds and pages in
as the kernels touch it. `Checkpoint.read_tensors()` reads them into arrays of their own instead
(what the model does by default, for huge pages: see there). dtypes, as NumPy sees them:

    bfloat16  -> uint16[shape]   raw bf16 bits (NumPy has no bf16; the kernels widen them)
    float16   -> float16[shape]
    float32   -> float32[shape]

Non-contiguous tensors (t[:, 1] saved as is) come back as strided views, exactly as torch.load
returns them: still zero-copy. Whether a strided weight is acceptable is the model loader's call
(llama_nb.io.checkpoint refuses it: the kernels assume C order, and with --mmap they use the
views as they are); Meta's files are contiguous.

Safety. Unpickling runs code named by the file, so the pickle is read in two passes:
  1. every opcode is checked against an allowlist (pickletools parses without executing): no
     BUILD/INST/OBJ/NEWOBJ/EXT* (the opcodes that instantiate or mutate arbitrary objects). The
     same pass runs the pickle's stack machine on placeholders, so structures that would hurt
     the real unpickler or the code after it are refused before any object exists: more than
     MAX_OPCODES opcodes, nesting deeper than MAX_DEPTH (hashing a 1M-deep tuple overflows the C
     stack: a segfault, not an exception), self-containing containers, memo reads of unwritten
     slots and memo writes far beyond any real pickle (the C unpickler allocates up to the index);
  2. a pickle.Unpickler whose find_class resolves only the globals a tensor checkpoint needs, each
     to OUR OWN function or marker (torch is never imported), and whose persistent_load accepts
     only well-formed storage ids naming an existing STORED entry large enough for numel.
Anything else is a CheckpointError naming the file, and nothing from the file is ever executed.
Every walk over the unpickled objects is depth-bounded and visits a shared object once, so a
"billion laughs" of lists repeated by reference costs what its pickle costs.
"""

from __future__ import annotations

import collections
import os
import pickle
import pickletools
import re
import reprlib
import struct
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from llama_nb.errors import CheckpointError

MAX_PICKLE_BYTES = 100 * 2**20  # Meta's 8B data.pkl is ~30 KB; anything near this is not a state dict
MAX_NDIM = 32
MAX_NESTING = 32  # dicts inside dicts in a state dict (Meta's: 0)
MAX_OPCODES = 300_000  # ~32 per tensor: Meta's 8B (291 tensors) has ~9,300; pass 1 reads 300k in ~0.4 s
MAX_DEPTH = 100  # containers inside containers in the pickle (a state dict: < 16)
MAX_ELEMENTS = 2**40  # per tensor; Llama 3.1 405B's largest holds 2.1e9
READ_CHUNK = 64 << 20  # bytes per read in Checkpoint.read_tensors
READ_THREADS = 4


class MissingTensorError(CheckpointError, KeyError):
    """`checkpoint[name]` for a name the file does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """The tensors of one .pth file, each a read-only view into `mmap` (one map of the file)."""

    path: Path
    tensors: dict[str, np.ndarray]  # name -> view, in the order the file saved them
    dtypes: dict[str, str]  # name -> "bfloat16" | "float16" | "float32"
    mmap: np.memmap = field(repr=False)  # uint8[file size], mode "r"
    metadata: dict[str, Any] = field(default_factory=dict)  # non-tensor leaves (rare: "epoch": 3)

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.tensors[name]
        except KeyError:
            raise MissingTensorError(f"{self.path}: no tensor named {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def keys(self):
        return self.tensors.keys()

    def items(self):
        return self.tensors.items()

    @property
    def nbytes(self) -> int:
        """Bytes the tensors span (a storage shared by two tensors is counted twice)."""
        return sum(t.nbytes for t in self.tensors.values())

    def read_tensors(self) -> dict[str, np.ndarray]:
        """Every tensor read from the file into an array of its own (same names, dtypes, shapes).

        Why not the zero-copy views: they sit in the page cache in 4 KiB pages, while arrays this
        large get 2 MiB transparent huge pages (NumPy asks for them on allocations of 4 MiB and
        up); a decode pass streams every weight once, and on huge pages that ran 5-8% faster at
        Llama 3.1 8B widths (README, Performance). The bytes come with os.preadv, not through the
        map, so the file's pages are never mapped into this process: resident memory grows by the
        weights once, not twice. Reads of READ_CHUNK bytes run on a few threads (preadv releases
        the GIL): from the page cache, 1 thread copies ~8.7 GB/s, 2 threads ~15. Views that are not
        C-contiguous (a slice of a shared storage) are copied through the map.
        """
        base = self.mmap.ctypes.data
        out: dict[str, np.ndarray] = {}
        chunks: list[tuple[memoryview, int]] = []  # (destination bytes, file offset)
        for name, view in self.tensors.items():
            array = np.empty(view.shape, view.dtype)
            if view.flags.c_contiguous and view.nbytes:
                dest, offset = memoryview(array.reshape(-1).view(np.uint8)), view.ctypes.data - base
                chunks += [(dest[lo : lo + READ_CHUNK], offset + lo) for lo in range(0, len(dest), READ_CHUNK)]
            else:
                array[...] = view
            out[name] = array
        with open(self.path, "rb") as f:
            fd = f.fileno()
            pool = ThreadPoolExecutor(min(READ_THREADS, os.cpu_count() or 1))
            try:
                for _ in pool.map(lambda chunk: _pread_exactly(fd, chunk[0], chunk[1], self.path), chunks):
                    pass
            finally:  # on an error or Ctrl-C, the chunks not started yet are dropped, not read
                pool.shutdown(wait=True, cancel_futures=True)
        return out


def _pread_exactly(fd: int, buffer: memoryview, offset: int, path: Path) -> None:
    """Fill `buffer` with the file's bytes from `offset` (a read may return fewer bytes than asked)."""
    done = 0
    while done < len(buffer):
        n = os.preadv(fd, [buffer[done:]], offset + done)
        if n <= 0:
            raise CheckpointError(f"{path}: file ended while reading tensor data (was it truncated?)")
        done += n


def load_pth(path: str | Path) -> Checkpoint:
    """Map a torch.save zip checkpoint and return its tensors as zero-copy views."""
    path = Path(path)
    archive = _Archive.open(path)
    mm = archive.mmap
    where = f"{path} [{archive.pickle_name}]"
    pkl = archive.read(archive.pickle_name, limit=MAX_PICKLE_BYTES)
    _check_opcodes(pkl, where)
    try:
        obj = _RestrictedUnpickler(pkl, archive).load()
    except _Refused as exc:
        raise CheckpointError(exc.located(where)) from None
    except Exception as exc:  # noqa: BLE001 - nothing unsafe ran; malformed input of any kind
        detail = " ".join(str(exc).split())[:200]  # one line, whatever the exception said
        raise CheckpointError(f"{where}: corrupt or unsupported pickle ({type(exc).__name__}: {detail})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{where}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    tensors: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    metadata: dict[str, Any] = {}
    try:
        _flatten(obj, "", tensors, dtypes, metadata, mm, depth=0)
    except _Refused as exc:
        raise CheckpointError(f"{where}: {exc.args[0]}") from None
    except Exception as exc:  # noqa: BLE001 - checked above; a last guard for the unforeseen
        detail = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"{where}: unsupported tensor layout ({type(exc).__name__}: {detail})") from None
    return Checkpoint(path=path, tensors=tensors, dtypes=dtypes, mmap=mm, metadata=metadata)


# --- the zip archive -----------------------------------------------------------------------------


class _Refused(Exception):
    """Raised inside unpickling; load_pth adds the file name and turns it into CheckpointError.

    `_Refused("refusing global os.system", "why")` reads "refusing global os.system in FILE: why".
    """

    def located(self, where: str) -> str:
        head, *detail = self.args
        return f"{head} in {where}" + (f": {detail[0]}" if detail else "")


@dataclass(frozen=True)
class _Entry:
    name: str
    offset: int  # byte offset of the entry's data in the file, from its LOCAL header
    size: int


_LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # signature .. name length, extra length: 30 bytes
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"  # pickled torch magic number


class _Archive:
    """The zip directory of a .pth file and one read-only map of all of it."""

    def __init__(self, path: Path, mmap: np.memmap, infos: dict[str, zipfile.ZipInfo], pickle_name: str):
        self.path, self.mmap, self.infos, self.pickle_name = path, mmap, infos, pickle_name
        self.prefix = pickle_name[: -len("/data.pkl")]
        self._entries: dict[str, _Entry] = {}

    @classmethod
    def open(cls, path: Path) -> "_Archive":
        try:
            with open(path, "rb") as f:
                head = f.read(512)
                try:
                    zf = zipfile.ZipFile(f)
                    infolist = zf.infolist()
                except Exception as exc:  # noqa: BLE001 - BadZipFile, EOFError, struct.error, ... on garbage
                    raise CheckpointError(_not_a_zip(path, head, exc)) from None
        except FileNotFoundError:
            raise CheckpointError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise CheckpointError(f"{path}: is a folder, expected a .pth file") from None
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from None
        infos: dict[str, zipfile.ZipInfo] = {}
        for info in infolist:
            if info.filename in infos:
                raise CheckpointError(f"{path}: zip entry {info.filename!r} appears twice; refusing an ambiguous archive")
            infos[info.filename] = info
        pickles = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            found = ", ".join(sorted(infos)[:5]) or "no entries"
            raise CheckpointError(
                f"{path}: expected exactly one '<name>/data.pkl' entry as torch.save writes, found "
                f"{len(pickles)} ({found}); is this a torch checkpoint?"
            )
        try:
            mm = np.memmap(path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: cannot memory-map: {exc}") from None
        archive = cls(path, mm, infos, pickles[0])
        archive._check_byteorder()
        return archive

    def entry(self, name: str) -> _Entry:
        """Where an entry's bytes are: validated STORED, inside the file, local header consistent.

        The data offset comes from the entry's local header (30 bytes + name + extra field, which
        torch pads so data is 64-byte aligned), not the central directory, whose extra field differs.
        """
        if name in self._entries:
            return self._entries[name]
        info = self.infos.get(name)
        if info is None:
            raise _Refused(f"missing zip entry {name!r}")
        where = f"zip entry {name!r}"
        if info.flag_bits & 0x1:
            raise _Refused(f"{where} is encrypted")
        if info.compress_type != zipfile.ZIP_STORED:
            raise _Refused(
                f"{where} is compressed (zip method {info.compress_type}); torch.save stores entries "
                "uncompressed so they can be memory-mapped, and llama_nb reads only such files"
            )
        mm, end = self.mmap, len(self.mmap)
        start = info.header_offset
        if start < 0 or start + _LOCAL_HEADER.size > end:
            raise _Refused(f"{where}: local header offset {start} is outside the file ({end} bytes)")
        sig, _ver, _flags, method, _t, _d, _crc, _csize, _usize, nlen, xlen = _LOCAL_HEADER.unpack(
            bytes(mm[start : start + _LOCAL_HEADER.size])
        )
        if sig != b"PK\x03\x04":
            raise _Refused(f"{where}: no local file header at offset {start}")
        if method != zipfile.ZIP_STORED:
            raise _Refused(f"{where}: local header says compressed (method {method})")
        name_start = start + _LOCAL_HEADER.size
        local_name = bytes(mm[name_start : name_start + nlen])
        if local_name.decode("utf-8", "replace") != info.orig_filename:
            raise _Refused(f"{where}: local header names {local_name[:60]!r}; the archive is inconsistent")
        data = name_start + nlen + xlen
        if info.compress_size != info.file_size or data + info.file_size > end:
            raise _Refused(f"{where}: {info.file_size} bytes at offset {data} do not fit in the file ({end} bytes)")
        entry = _Entry(name, data, info.file_size)
        self._entries[name] = entry
        return entry

    def read(self, name: str, limit: int) -> bytes:
        try:
            entry = self.entry(name)
        except _Refused as exc:
            raise CheckpointError(f"{self.path}: {exc.args[0]}") from None
        if entry.size > limit:
            raise CheckpointError(f"{self.path}: zip entry {name!r} is {entry.size} bytes; refusing more than {limit}")
        return bytes(self.mmap[entry.offset : entry.offset + entry.size])

    def _check_byteorder(self) -> None:
        name = f"{self.prefix}/byteorder"
        if name not in self.infos:
            return  # torch before 1.13 did not write it; those files are little-endian
        order = self.read(name, limit=16)
        if order != b"little":
            raise CheckpointError(
                f"{self.path}: byteorder is {order[:16].decode('ascii', 'replace')!r}; llama_nb reads "
                "only little-endian checkpoints"
            )


def _not_a_zip(path: Path, head: bytes, exc: Exception) -> str:
    if head.startswith(_LEGACY_MAGIC) or head.startswith(b"\x80\x02"):
        return (
            f"{path}: legacy (pre-1.6, non-zip) torch format; llama_nb reads only zip checkpoints. "
            "Re-save it with a recent torch: torch.save(torch.load(f), f2)"
        )
    if head[257:262] == b"ustar":
        return f"{path}: legacy tar-format torch checkpoint; re-save it with a recent torch"
    if head.startswith(b"GGUF"):
        return f"{path}: a GGUF file (llama.cpp format), not a torch checkpoint"
    return f"{path}: not a torch.save zip archive ({' '.join(str(exc).split())[:200]})"


# --- the restricted unpickler --------------------------------------------------------------------


@dataclass(frozen=True)
class _StorageType:
    """Stands for torch.BFloat16Storage etc.: the element type of a storage."""

    torch_name: str
    dtype_name: str  # what Checkpoint.dtypes reports
    np_dtype: np.dtype  # what the NumPy views use (bf16 as its uint16 bits)


_STORAGE_TYPES = {
    "BFloat16Storage": _StorageType("torch.BFloat16Storage", "bfloat16", np.dtype("<u2")),
    "HalfStorage": _StorageType("torch.HalfStorage", "float16", np.dtype("<f2")),
    "FloatStorage": _StorageType("torch.FloatStorage", "float32", np.dtype("<f4")),
}


@dataclass(frozen=True)
class _Storage:
    """One persistent id: `numel` elements of `stype` at byte `offset` of the file."""

    key: str
    stype: _StorageType
    offset: int
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    """What _rebuild_tensor_v2 returns: a view description, turned into a NumPy view later."""

    storage: _Storage
    storage_offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride) -> _TensorRef:
    if not isinstance(storage, _Storage):
        raise _Refused("refusing a tensor", f"its storage is a {type(storage).__name__}, not a persistent storage id")
    offset = _nonneg_int(storage_offset, "storage_offset")
    shape = _int_tuple(size, "size")
    strides = _int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise _Refused("refusing a tensor", f"size {shape} but stride {strides}")
    elements = 1
    for n in shape:
        elements *= n
    if elements > MAX_ELEMENTS:  # a zero stride could otherwise map an exabyte view onto 2 bytes
        raise _Refused("refusing a tensor", f"size {shape} has {elements} elements; at most {MAX_ELEMENTS} are allowed")
    if all(n > 0 for n in shape):  # empty tensors touch no element: any offset is harmless
        last = offset + sum((n - 1) * s for n, s in zip(shape, strides))
        if last >= storage.numel:
            raise _Refused(
                "refusing a tensor",
                f"storage {storage.key!r}, offset {offset}, size {shape}, stride {strides} reaches element "
                f"{last} of a storage of {storage.numel} elements",
            )
    return _TensorRef(storage, offset, shape, strides)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    if not isinstance(requires_grad, bool):
        raise _Refused("refusing a tensor", "requires_grad is not a bool")
    if not (isinstance(backward_hooks, dict) and not backward_hooks) or metadata not in (None, {}):
        raise _Refused("refusing a tensor", "it has backward hooks or Python attributes")
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    if not isinstance(data, _TensorRef):
        raise _Refused("refusing an nn.Parameter", f"it wraps a {type(data).__name__}")
    return _rebuild_tensor_v2(data.storage, data.storage_offset, data.shape, data.stride, requires_grad, backward_hooks)


# The complete list of globals a tensor state dict needs. Each maps to our own object; torch is
# never imported, so a name here cannot reach any code of the real torch.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): stype for name, stype in _STORAGE_TYPES.items()},
}
_ALLOWED_NAMES = ", ".join(f"{m}.{n}" for m, n in _ALLOWED_GLOBALS)

# Opcodes a state dict pickle uses (protocols 2-4). Excluded on purpose: BUILD (calls
# __setstate__ or writes __dict__ of any object), INST/OBJ/NEWOBJ/NEWOBJ_EX (instantiate a class),
# EXT1/2/4 (the copyreg extension registry), and sets/bytearrays/out-of-band buffers (unused).
_ALLOWED_OPCODES = frozenset(
    """PROTO FRAME STOP MARK POP POP_MARK DUP
    GLOBAL STACK_GLOBAL REDUCE PERSID BINPERSID
    NONE NEWTRUE NEWFALSE INT BININT BININT1 BININT2 LONG LONG1 LONG4 FLOAT BINFLOAT
    STRING BINSTRING SHORT_BINSTRING UNICODE BINUNICODE SHORT_BINUNICODE BINUNICODE8
    BINBYTES SHORT_BINBYTES BINBYTES8
    EMPTY_TUPLE TUPLE TUPLE1 TUPLE2 TUPLE3 EMPTY_LIST LIST APPEND APPENDS
    EMPTY_DICT DICT SETITEM SETITEMS
    PUT BINPUT LONG_BINPUT MEMOIZE GET BINGET LONG_BINGET""".split()
)


def _check_opcodes(pkl: bytes, where: str) -> None:
    """Pass 1: parse (never execute) the pickle; refuse any opcode, GLOBAL or structure not allowed."""
    machine = _Shape(where)
    try:
        for count, (op, arg, pos) in enumerate(pickletools.genops(pkl)):
            if op.name not in _ALLOWED_OPCODES:
                raise CheckpointError(
                    f"refusing pickle opcode {op.name} (byte {pos}) in {where}: a tensor checkpoint "
                    "never needs it, and it can instantiate or modify arbitrary objects"
                )
            if count >= MAX_OPCODES:
                raise CheckpointError(
                    f"refusing a pickle of more than {MAX_OPCODES} opcodes in {where}: a state dict needs "
                    "about 32 per tensor"
                )
            if op.name == "GLOBAL":
                module, _, name = str(arg).partition(" ")
                _check_global(module, name, where)
            machine.step(op, arg, pos)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - genops raises ValueError and friends on garbage
        detail = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"{where}: corrupt pickle ({detail})") from None


class _Node:
    """A placeholder for a container the pickle would build: how deep it is, who holds it."""

    __slots__ = ("depth", "parents")

    def __init__(self, depth: int):
        self.depth = depth
        self.parents: list[_Node] = []


_MARK = object()  # a MARK on the simulated stack
_STEPS_PER_OPCODE = 4  # depth propagation budget: a real pickle needs about 1 step per opcode


class _Shape:
    """The pickle stack machine run on placeholders: nesting depth and memo use, no objects.

    Atoms (numbers, strings, globals) are None; containers are _Node. When an item goes into a
    container, the container's depth becomes at least the item's + 1, and an increase travels up
    to everything holding the container (`parents`), since pickles fill lists and dicts after
    they are referenced. A container that holds itself grows without bound and is refused too.
    """

    _MUTATORS = {"APPEND": 1, "SETITEM": 2}  # pop n items into the container below them

    def __init__(self, where: str):
        self.where = where
        self.stack: list = []
        self.memo: dict[int, Any] = {}
        self.budget = MAX_OPCODES * _STEPS_PER_OPCODE

    def _refuse(self, pos: int, problem: str) -> CheckpointError:
        return CheckpointError(f"refusing the pickle in {self.where}: {problem} (byte {pos})")

    def _pop(self, pos: int):
        if not self.stack or self.stack[-1] is _MARK:
            raise self._refuse(pos, "an opcode reads more items than the stack holds (corrupt pickle)")
        return self.stack.pop()

    def _pop_mark(self, pos: int) -> list:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i] is _MARK:
                items = self.stack[i + 1 :]
                del self.stack[i:]
                return items
        raise self._refuse(pos, "an opcode needs a MARK that is not on the stack (corrupt pickle)")

    def _top(self, pos: int):
        if not self.stack or self.stack[-1] is _MARK:
            raise self._refuse(pos, "an opcode needs an item on an empty stack (corrupt pickle)")
        return self.stack[-1]

    def _put(self, parent: Any, children: list, pos: int) -> None:
        """`children` go into `parent` (a _Node): raise its depth and its holders' depths."""
        if not isinstance(parent, _Node):
            return  # the real unpickler refuses adding to an atom
        work = []
        for child in children:
            if isinstance(child, _Node):
                if not child.parents or child.parents[-1] is not parent:
                    child.parents.append(parent)
                work.append((parent, child.depth + 1))
            else:
                work.append((parent, 1))
        while work:
            node, depth = work.pop()
            if depth <= node.depth:
                continue
            node.depth = depth
            if depth > MAX_DEPTH:
                raise self._refuse(
                    pos, f"containers nested more than {MAX_DEPTH} deep (or a container inside itself); "
                    "a state dict needs fewer than 16 levels"
                )
            self.budget -= 1 + len(node.parents)
            if self.budget < 0:
                raise self._refuse(pos, "too many references between containers for a state dict")
            work.extend((holder, depth + 1) for holder in node.parents)

    def step(self, op: pickletools.OpcodeInfo, arg: Any, pos: int) -> None:
        name, stack = op.name, self.stack
        if name in ("PROTO", "FRAME"):
            return
        if name == "MARK":
            stack.append(_MARK)
        elif name == "POP":
            if stack and stack[-1] is _MARK:
                stack.pop()
            else:
                self._pop(pos)
        elif name == "POP_MARK":
            self._pop_mark(pos)
        elif name == "DUP":
            stack.append(self._top(pos))
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            index = len(self.memo) if name == "MEMOIZE" else arg
            if not isinstance(index, int) or not 0 <= index <= len(self.memo) + MAX_OPCODES // 100:
                raise self._refuse(pos, f"memo index {_short(index)} is far beyond the {len(self.memo)} used so far")
            self.memo[index] = self._top(pos)
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if arg not in self.memo:
                raise self._refuse(pos, f"memo index {_short(arg)} is read before anything was stored there")
            stack.append(self.memo[arg])
        elif name in self._MUTATORS:
            items = [self._pop(pos) for _ in range(self._MUTATORS[name])]
            self._put(self._top(pos), items, pos)
        elif name in ("APPENDS", "SETITEMS"):
            items = self._pop_mark(pos)
            self._put(self._top(pos), items, pos)
        elif name == "STOP":
            self._pop(pos)
        else:  # everything else pops its inputs and pushes one result built from them
            inputs: list = []
            for kind in reversed(op.stack_before):
                if kind is pickletools.stackslice:
                    inputs += self._pop_mark(pos)
                elif kind is not pickletools.markobject:
                    inputs.append(self._pop(pos))
            if name in ("EMPTY_LIST", "EMPTY_DICT", "LIST", "DICT") or inputs:
                node = _Node(1)
                self._put(node, inputs, pos)
                stack.extend(node for _ in op.stack_after)
            else:
                stack.extend(None for _ in op.stack_after)


def _check_global(module: str, name: str, where: str) -> Any:
    target = _ALLOWED_GLOBALS.get((module, name))
    if target is None:
        raise CheckpointError(_refusal(module, name).located(where))
    return target


def _refusal(module: str, name: str) -> _Refused:
    head = f"refusing global {module}.{name}"
    if module == "torch" and name.endswith("Storage"):  # a real tensor, just not a float type we read
        dtype = _OTHER_DTYPES.get(name, name[: -len("Storage")] or name)
        return _Refused(head, f"unsupported tensor dtype {dtype}; llama_nb reads bfloat16, float16 and float32 tensors")
    return _Refused(head, f"a tensor checkpoint needs only {_ALLOWED_NAMES}")


# torch's storage class names for the dtypes llama_nb refuses, to name them in the error
_OTHER_DTYPES = {
    "DoubleStorage": "float64", "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16",
    "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "QInt8Storage": "qint8", "QUInt8Storage": "quint8",
    "QInt32Storage": "qint32", "ComplexHalfStorage": "complex32",
}

_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")


class _RestrictedUnpickler(pickle.Unpickler):
    """Pass 2: resolves only _ALLOWED_GLOBALS and well-formed storage persistent ids."""

    def __init__(self, pkl: bytes, archive: _Archive):
        import io

        super().__init__(io.BytesIO(pkl))
        self.archive = archive
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        target = _ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise _refusal(module, name)
        return target

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _Refused(f"refusing persistent id {_short(pid)}", "expected ('storage', type, key, location, numel)")
        _, stype, key, location, numel = pid
        if not isinstance(stype, _StorageType):
            raise _Refused(f"refusing storage type {_short(stype)}", "expected torch.BFloat16Storage, HalfStorage or FloatStorage")
        if not (isinstance(key, str) and _KEY.fullmatch(key)):
            raise _Refused(f"refusing storage key {_short(key)}", "expected a plain token like '0'")
        if not isinstance(location, str):
            raise _Refused(f"refusing storage location {_short(location)}")
        numel = _nonneg_int(numel, "storage numel")
        if key in self.storages:  # a storage shared by several tensors: same ids every time
            seen = self.storages[key]
            if (seen.stype, seen.numel) != (stype, numel):
                raise _Refused(f"refusing storage {key!r}", "declared twice with different types or sizes")
            return seen
        try:
            entry = self.archive.entry(f"{self.archive.prefix}/data/{key}")
        except _Refused as exc:
            raise _Refused(f"refusing storage {key!r}", exc.args[0]) from None
        needed = numel * stype.np_dtype.itemsize
        if needed > entry.size:
            raise _Refused(
                f"refusing storage {key!r}",
                f"{numel} x {stype.torch_name} needs {needed} bytes but zip entry {entry.name!r} holds {entry.size}",
            )
        storage = _Storage(key, stype, entry.offset, numel)
        self.storages[key] = storage
        return storage


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 50, 50


def _short(value: Any) -> str:
    """A repr of at most 60 characters that never recurses deeply (hostile values nest)."""
    text = _REPR.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _nonneg_int(value: Any, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise _Refused("refusing a tensor", f"{what} is {_short(value)}")


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or len(value) > MAX_NDIM:
        raise _Refused("refusing a tensor", f"{what} is {_short(value)}")
    return tuple(_nonneg_int(v, what) for v in value)


# --- from pickled objects to NumPy views ---------------------------------------------------------


def _view(ref: _TensorRef, mm: np.memmap) -> np.ndarray:
    """The zero-copy NumPy view `ref` describes (bounds were checked in _rebuild_tensor)."""
    dtype = ref.storage.stype.np_dtype
    if 0 in ref.shape:  # nothing to read: point at the storage start, which is inside the file
        offset = ref.storage.offset
    else:
        offset = ref.storage.offset + ref.storage_offset * dtype.itemsize
    view = np.ndarray(
        ref.shape, dtype=dtype, buffer=mm, offset=offset, strides=tuple(s * dtype.itemsize for s in ref.stride)
    )
    view.flags.writeable = False
    return view


def _flatten(obj: dict, prefix: str, tensors: dict, dtypes: dict, metadata: dict, mm: np.memmap, depth: int) -> None:
    """Nested dicts become dotted names ({"model": {"w": t}} -> "model.w"), as torch's state_dict."""
    if depth > MAX_NESTING:
        raise _Refused(f"dicts nested more than {MAX_NESTING} deep at {prefix!r}")
    for key, value in obj.items():
        if not isinstance(key, str):
            raise _Refused(f"a state dict key that is not a string: {_short(key)}")
        name = prefix + key
        if name in tensors or name in metadata:
            raise _Refused(f"two entries flatten to the same name {name!r}")
        if isinstance(value, _TensorRef):
            tensors[name] = _view(value, mm)
            dtypes[name] = value.storage.stype.dtype_name
        elif isinstance(value, dict):
            _flatten(value, name + ".", tensors, dtypes, metadata, mm, depth + 1)
        elif _holds_tensor(value, 0):
            raise _Refused(f"tensors inside a {type(value).__name__} at {name!r}; expected a (nested) dict of tensors")
        else:
            metadata[name] = value


def _holds_tensor(value: Any, depth: int, seen: set[int] | None = None) -> bool:
    """Whether a tensor hides in lists/tuples/dicts; each shared container is visited once."""
    if isinstance(value, (_TensorRef, _Storage)):
        return True
    if not isinstance(value, (list, tuple, dict)):
        return False
    if depth > MAX_NESTING:
        raise _Refused(f"containers nested more than {MAX_NESTING} deep")
    seen = set() if seen is None else seen
    if id(value) in seen:
        return False
    seen.add(id(value))
    items = value.values() if isinstance(value, dict) else value
    return any(_holds_tensor(v, depth + 1, seen) for v in items)

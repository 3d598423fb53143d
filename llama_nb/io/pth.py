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

Safety. Unpickling runs code named by the file, so the pickle is read in two passes, each in a
module of its own:
  1. llama_nb.io.pickle_safety.check_opcodes parses (never executes) the pickle: an allowlist of
     opcodes and globals, and the stack machine run on placeholders (nesting depth, memo use);
  2. llama_nb.io.unpickler.RestrictedUnpickler builds only our own stand-ins for the allowed
     globals (torch is never imported) and storages that name STORED entries of the zip, which
     llama_nb.io.zip_archive.Archive has checked against the file's size.
Anything else is a CheckpointError naming the file, and nothing from the file is ever executed.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from llama_nb.errors import CheckpointError, one_line, shown
from llama_nb.io.files import FileEnded, open_regular_file, preadv_exactly
from llama_nb.io.pickle_safety import MAX_DEPTH, MAX_OPCODES, check_opcodes
from llama_nb.io.unpickler import MAX_ELEMENTS, MAX_NDIM, MAX_NESTING, RestrictedUnpickler, flatten
from llama_nb.io.zip_archive import Archive, Refused
from llama_nb.memory import empty_at

__all__ = ["Checkpoint", "MissingTensorError", "load_pth", "CheckpointError",
           "MAX_PICKLE_BYTES", "MAX_OPCODES", "MAX_DEPTH", "MAX_NDIM", "MAX_NESTING", "MAX_ELEMENTS"]

MAX_PICKLE_BYTES = 100 * 2**20  # Meta's 8B data.pkl is ~30 KB; anything near this is not a state dict
READ_CHUNK = 64 << 20  # bytes per read in Checkpoint.read_tensors
READ_THREADS = 4


class MissingTensorError(CheckpointError, KeyError):
    """`checkpoint[name]` for a name the file does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class TensorTable:
    """Name -> array lookup over `self.tensors` (and `self.path` for the error), shared by
    Checkpoint and the checkpoints that stand in for one (io/shards.py's RankTensors)."""

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


@dataclass(frozen=True, eq=False)
class Checkpoint(TensorTable):
    """The tensors of one .pth file, each a read-only view into `mmap` (one map of the file)."""

    path: Path
    tensors: dict[str, np.ndarray]  # name -> view, in the order the file saved them
    dtypes: dict[str, str]  # name -> "bfloat16" | "float16" | "float32"
    mmap: np.memmap = field(repr=False)  # uint8[file size], mode "r"
    metadata: dict[str, Any] = field(default_factory=dict)  # non-tensor leaves (rare: "epoch": 3)

    def read_tensors(self) -> dict[str, np.ndarray]:
        """Every tensor read from the file into an array of its own (same names, dtypes, shapes).

        Why not the zero-copy views: they sit in the page cache in 4 KiB pages, while arrays this
        large get 2 MiB transparent huge pages (NumPy asks for them on allocations of 4 MiB and
        up); a decode pass streams every weight once, and on huge pages that ran 5-8% faster at
        Llama 3.1 8B widths (README, Performance). The bytes come with os.preadv, not through the
        map, so the file's pages are never mapped into this process: resident memory grows by the
        weights once, not twice. Reads of READ_CHUNK bytes run on a few threads (preadv releases
        the GIL): from the page cache, 1 thread copies ~8.7 GB/s, 2 threads ~15. A view that is not
        C-contiguous (a slice of a shared storage) has the bytes it spans read the same way, then
        copied in its order. Nothing here touches the map, so a file cut short meanwhile gives a
        CheckpointError ("file ended while reading tensor data"), never a SIGBUS.
        """
        base = self.mmap.ctypes.data
        out: dict[str, np.ndarray] = {}
        chunks: list[tuple[memoryview, int]] = []  # (destination bytes, file offset)
        strided: list[tuple[np.ndarray, np.ndarray]] = []  # (destination, view) read span by span
        for name, view in self.tensors.items():
            array = empty_at(view.shape, view.dtype)  # 64-byte aligned (llama_nb/memory.py)
            if view.flags.c_contiguous and view.nbytes:
                dest, offset = memoryview(array.reshape(-1).view(np.uint8)), view.ctypes.data - base
                chunks += [(dest[lo : lo + READ_CHUNK], offset + lo) for lo in range(0, len(dest), READ_CHUNK)]
            elif view.size:
                strided.append((array, view))
            out[name] = array
        with open_regular_file(self.path, "a .pth checkpoint") as f:
            fd = f.fileno()
            for array, view in strided:
                array[...] = _read_strided(fd, view, view.ctypes.data - base, self.path)
            workers = min(READ_THREADS, os.cpu_count() or 1)
            pool = ThreadPoolExecutor(workers)
            in_flight: deque = deque()
            try:  # at most 2 chunks per reader queued: a chunk that fails stops the read within a few chunks
                for dest, offset in chunks:
                    if len(in_flight) == 2 * workers:
                        in_flight.popleft().result()
                    in_flight.append(pool.submit(_pread_exactly, fd, dest, offset, self.path))
                while in_flight:
                    in_flight.popleft().result()
            finally:  # on an error or Ctrl-C, the chunks not started yet are dropped, not read
                pool.shutdown(wait=True, cancel_futures=True)
        return out


def _read_strided(fd: int, view: np.ndarray, offset: int, path: Path) -> np.ndarray:
    """`view` (non-empty, strides >= 0, at byte `offset` of the file) rebuilt over bytes read from
    the file: the span from its first element to its last, which lies inside its storage."""
    span = view.itemsize + sum((n - 1) * s for n, s in zip(view.shape, view.strides))
    data = np.empty(span, np.uint8)
    _pread_exactly(fd, memoryview(data), offset, path)
    return np.ndarray(view.shape, view.dtype, buffer=data, strides=view.strides)


def _pread_exactly(fd: int, buffer: memoryview, offset: int, path: Path) -> None:
    """Fill `buffer` with the file's bytes from `offset`, or one CheckpointError line."""
    try:
        preadv_exactly(fd, buffer, offset)
    except FileEnded:
        raise CheckpointError(f"{path}: file ended while reading tensor data (was it truncated?)") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read tensor data: {exc.strerror or exc}") from None


def load_pth(path: str | Path) -> Checkpoint:
    """Map a torch.save zip checkpoint and return its tensors as zero-copy views.

    The zip headers and data.pkl are read with pread, so a file cut short meanwhile is a
    CheckpointError. The views ARE the file's pages: if the file is truncated or rewritten while
    they are in use, touching a page past its new end raises SIGBUS, which kills the process
    (Python cannot resume after it, and faulthandler could only print where it happened). Callers
    that cannot rule that out use `Checkpoint.read_tensors()`, which never touches the map (the
    model's default; `--mmap` opts into the views and their risk).
    """
    path = Path(path)
    with Archive.open(path) as archive:
        return _load(path, archive)


def _load(path: Path, archive: Archive) -> Checkpoint:
    mm = archive.mmap
    where = f"{path} [{shown(archive.pickle_name, quote=False)}]"
    pkl = archive.read(archive.pickle_name, limit=MAX_PICKLE_BYTES)
    check_opcodes(pkl, where)
    try:
        obj = RestrictedUnpickler(pkl, archive).load()
    except Refused as exc:
        raise CheckpointError(exc.located(where)) from None
    except Exception as exc:  # noqa: BLE001 - nothing unsafe ran; malformed input of any kind
        detail = one_line(str(exc))  # whatever the exception said
        raise CheckpointError(f"{where}: corrupt or unsupported pickle ({type(exc).__name__}: {detail})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{where}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    tensors: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    metadata: dict[str, Any] = {}
    try:
        flatten(obj, "", tensors, dtypes, metadata, mm, depth=0)
    except Refused as exc:
        raise CheckpointError(f"{where}: {exc.args[0]}") from None
    except Exception as exc:  # noqa: BLE001 - checked above; a last guard for the unforeseen
        detail = one_line(str(exc))
        raise CheckpointError(f"{where}: unsupported tensor layout ({type(exc).__name__}: {detail})") from None
    return Checkpoint(path=path, tensors=tensors, dtypes=dtypes, mmap=mm, metadata=metadata)

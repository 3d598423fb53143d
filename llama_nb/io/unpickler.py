"""Pass 2 of reading a checkpoint's pickle: a pickle.Unpickler that builds only what a state dict holds.

Its find_class resolves only ALLOWED_GLOBALS, each to OUR OWN function or marker (torch is never
imported), and its persistent_load accepts only well-formed storage ids naming an existing STORED
zip entry large enough for numel. A tensor is the call

    torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks)

which becomes a `TensorRef` (bounds checked against the storage); `flatten` then turns the
(nested) dict into dotted names and read-only NumPy views of the file's map:

    bfloat16  -> uint16[shape]   raw bf16 bits (NumPy has no bf16; the kernels widen them)
    float16   -> float16[shape]
    float32   -> float32[shape]

Every walk over the unpickled objects is depth-bounded and visits a shared object once, so a
"billion laughs" of lists repeated by reference costs what its pickle costs. Run it only on a
pickle that llama_nb.io.pickle_safety.check_opcodes accepted.
"""

from __future__ import annotations

import collections
import io
import pickle
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from llama_nb.errors import shown
from llama_nb.io.zip_archive import Archive, Refused

MAX_NDIM = 32
MAX_NESTING = 32  # dicts inside dicts in a state dict (Meta's: 0)
MAX_ELEMENTS = 2**40  # per tensor; Llama 3.1 405B's largest holds 2.1e9


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
        raise Refused("refusing a tensor", f"its storage is a {type(storage).__name__}, not a persistent storage id")
    offset = _nonneg_int(storage_offset, "storage_offset")
    shape = _int_tuple(size, "size")
    strides = _int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise Refused("refusing a tensor", f"size {shape} but stride {strides}")
    elements = 1
    for n in shape:
        elements *= n
    if elements > MAX_ELEMENTS:  # a zero stride could otherwise map an exabyte view onto 2 bytes
        raise Refused("refusing a tensor", f"size {shape} has {elements} elements; at most {MAX_ELEMENTS} are allowed")
    if all(n > 0 for n in shape):  # empty tensors touch no element: any offset is harmless
        last = offset + sum((n - 1) * s for n, s in zip(shape, strides))
        if last >= storage.numel:
            raise Refused(
                "refusing a tensor",
                f"storage {storage.key!r}, offset {offset}, size {shape}, stride {strides} reaches element "
                f"{last} of a storage of {storage.numel} elements",
            )
    return _TensorRef(storage, offset, shape, strides)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    if not isinstance(requires_grad, bool):
        raise Refused("refusing a tensor", "requires_grad is not a bool")
    if not (isinstance(backward_hooks, dict) and not backward_hooks) or metadata not in (None, {}):
        raise Refused("refusing a tensor", "it has backward hooks or Python attributes")
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    if not isinstance(data, _TensorRef):
        raise Refused("refusing an nn.Parameter", f"it wraps a {type(data).__name__}")
    return _rebuild_tensor_v2(data.storage, data.storage_offset, data.shape, data.stride, requires_grad, backward_hooks)


def _ordered_dict(*args, **kwargs) -> collections.OrderedDict:
    """collections.OrderedDict(), empty: torch.save pickles one as OrderedDict() then SETITEMS.
    Filled from arguments (OrderedDict([(k, v), ...])), its keys would escape pass 1's rule that
    dict keys are strings (see llama_nb.io.pickle_safety), so arguments are refused."""
    if args or kwargs:
        raise TypeError("OrderedDict is called with arguments; torch.save writes OrderedDict() then its items")
    return collections.OrderedDict()


# The complete list of globals a tensor state dict needs. Each maps to our own object; torch is
# never imported, so a name here cannot reach any code of the real torch.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): stype for name, stype in _STORAGE_TYPES.items()},
}
_ALLOWED_NAMES = ", ".join(f"{m}.{n}" for m, n in ALLOWED_GLOBALS)


def refusal(module: str, name: str) -> Refused:
    head = f"refusing global {shown(f'{module}.{name}', quote=False)}"
    if module == "torch" and name.endswith("Storage") and name.isidentifier():  # a real tensor, just not a float type we read
        dtype = _OTHER_DTYPES.get(name, name[: -len("Storage")] or name)
        return Refused(head, f"unsupported tensor dtype {dtype}; llama_nb reads bfloat16, float16 and float32 tensors")
    return Refused(head, f"a tensor checkpoint needs only {_ALLOWED_NAMES}")


# torch's storage class names for the dtypes llama_nb refuses, to name them in the error
_OTHER_DTYPES = {
    "DoubleStorage": "float64", "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16",
    "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "QInt8Storage": "qint8", "QUInt8Storage": "quint8",
    "QInt32Storage": "qint32", "ComplexHalfStorage": "complex32",
}

_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")


class RestrictedUnpickler(pickle.Unpickler):
    """Pass 2: resolves only ALLOWED_GLOBALS and well-formed storage persistent ids."""

    def __init__(self, pkl: bytes, archive: Archive):
        super().__init__(io.BytesIO(pkl))
        self.archive = archive
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        target = ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise refusal(module, name)
        return target

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise Refused(f"refusing persistent id {shown(pid)}", "expected ('storage', type, key, location, numel)")
        _, stype, key, location, numel = pid
        if not isinstance(stype, _StorageType):
            raise Refused(f"refusing storage type {shown(stype)}", "expected torch.BFloat16Storage, HalfStorage or FloatStorage")
        if not (isinstance(key, str) and _KEY.fullmatch(key)):
            raise Refused(f"refusing storage key {shown(key)}", "expected a plain token like '0'")
        if not isinstance(location, str):
            raise Refused(f"refusing storage location {shown(location)}")
        numel = _nonneg_int(numel, "storage numel")
        if key in self.storages:  # a storage shared by several tensors: same ids every time
            seen = self.storages[key]
            if (seen.stype, seen.numel) != (stype, numel):
                raise Refused(f"refusing storage {key!r}", "declared twice with different types or sizes")
            return seen
        try:
            entry = self.archive.entry(f"{self.archive.prefix}/data/{key}")
        except Refused as exc:
            raise Refused(f"refusing storage {key!r}", exc.args[0]) from None
        needed = numel * stype.np_dtype.itemsize
        if needed > entry.size:
            raise Refused(
                f"refusing storage {key!r}",
                f"{numel} x {stype.torch_name} needs {needed} bytes but zip entry {shown(entry.name)} holds {entry.size}",
            )
        storage = _Storage(key, stype, entry.offset, numel)
        self.storages[key] = storage
        return storage


def _nonneg_int(value: Any, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise Refused("refusing a tensor", f"{what} is {shown(value)}")


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or len(value) > MAX_NDIM:
        raise Refused("refusing a tensor", f"{what} is {shown(value)}")
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


def flatten(obj: dict, prefix: str, tensors: dict, dtypes: dict, metadata: dict, mm: np.memmap, depth: int) -> None:
    """Nested dicts become dotted names ({"model": {"w": t}} -> "model.w"), as torch's state_dict."""
    if depth > MAX_NESTING:
        raise Refused(f"dicts nested more than {MAX_NESTING} deep at {shown(prefix)}")
    for key, value in obj.items():
        if not isinstance(key, str):
            raise Refused(f"a state dict key that is not a string: {shown(key)}")
        name = prefix + key
        if name in tensors or name in metadata:
            raise Refused(f"two entries flatten to the same name {shown(name)}")
        if isinstance(value, _TensorRef):
            tensors[name] = _view(value, mm)
            dtypes[name] = value.storage.stype.dtype_name
        elif isinstance(value, dict):
            flatten(value, name + ".", tensors, dtypes, metadata, mm, depth + 1)
        elif _holds_tensor(value, 0):
            raise Refused(f"tensors inside a {type(value).__name__} at {shown(name)}; expected a (nested) dict of tensors")
        else:
            metadata[name] = value


def _holds_tensor(value: Any, depth: int, seen: set[int] | None = None) -> bool:
    """Whether a tensor hides in lists/tuples/dicts; each shared container is visited once."""
    if isinstance(value, (_TensorRef, _Storage)):
        return True
    if not isinstance(value, (list, tuple, dict)):
        return False
    if depth > MAX_NESTING:
        raise Refused(f"containers nested more than {MAX_NESTING} deep")
    seen = set() if seen is None else seen
    if id(value) in seen:
        return False
    seen.add(id(value))
    items = value.values() if isinstance(value, dict) else value
    return any(_holds_tensor(v, depth + 1, seen) for v in items)
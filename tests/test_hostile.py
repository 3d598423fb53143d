"""Hostile .pth files: crafted pickles inside otherwise valid zips never run anything.

Each payload, if it ran, would create MARKER in tmp_path (control tests show that plain
pickle.loads does run them). load_pth must raise a one-line CheckpointError naming the file,
quickly, and MARKER must never appear.
"""

import os
import pickle
import random
import struct
import time
import zipfile

import numpy as np
import pytest
import torch

from llama_nb.errors import CheckpointError
from llama_nb.io.pth import load_pth

# --- a tiny pickle assembler (protocol 2 opcodes, plus 4's STACK_GLOBAL) --------------------------

P2, P4 = b"\x80\x02", b"\x80\x04"
MARK, TUPLE, TUPLE1, EMPTY_TUPLE, REDUCE, STOP = b"(", b"t", b"\x85", b")", b"R", b"."
BINPERSID, NEWFALSE, NEWTRUE, EMPTY_DICT, SETITEM, EMPTY_LIST, APPENDS = b"Q", b"\x89", b"\x88", b"}", b"s", b"]", b"e"


def glob(module, name):
    return b"c" + f"{module}\n{name}\n".encode()


def stack_glob(module, name):
    return s8(module) + s8(name) + b"\x93"


def s(text):  # BINUNICODE
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def s8(text):  # SHORT_BINUNICODE (protocol 4)
    data = text.encode()
    return b"\x8c" + bytes([len(data)]) + data


def i(n):  # BININT (signed 32-bit)
    return b"J" + struct.pack("<i", n)


def ints(values):
    return MARK + b"".join(i(v) for v in values) + TUPLE


def pid(key="0", numel=4, stype=glob("torch", "BFloat16Storage"), tag="storage"):
    key_op = s(key) if isinstance(key, str) else i(key)
    return MARK + s(tag) + stype + key_op + s("cpu") + i(numel) + TUPLE + BINPERSID


def tensor(storage=None, offset=0, size=(4,), stride=(1,), requires_grad=NEWFALSE, hooks=None):
    hooks = hooks if hooks is not None else glob("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE
    args = MARK + (storage or pid()) + i(offset) + ints(size) + ints(stride) + requires_grad + hooks + TUPLE
    return glob("torch._utils", "_rebuild_tensor_v2") + args + REDUCE


def state_dict(*items):
    body = b"".join(s(name) + value + SETITEM for name, value in items)
    return P2 + glob("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE + body + STOP


def write_pth(path, pkl, storages=None, prefix="archive"):
    """A zip laid out as torch.save lays it out, holding our pickle and storages."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{prefix}/data.pkl", pkl)
        z.writestr(f"{prefix}/byteorder", "little")
        z.writestr(f"{prefix}/version", "3\n")  # torch.load insists on it; load_pth ignores it
        for key, data in (storages if storages is not None else {"0": bytes(8)}).items():
            z.writestr(f"{prefix}/data/{key}", data)
    return path


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "MARKER"
    yield path
    assert not path.exists(), "a payload ran"


def refused(path, *patterns):
    """load_pth(path) raises a one-line CheckpointError naming the file and all `patterns`, fast."""
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        load_pth(path)
    assert time.perf_counter() - start < 1.0
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg, msg
    for pattern in patterns:
        assert pattern in msg, msg
    return msg


# --- controls: the assembler makes loadable files, and the payloads are live ----------------------


def test_assembled_state_dict_loads(tmp_path):
    data = np.array([1.0, -2.0, 0.5, 3.0], dtype=np.float32).view(np.uint32) >> 16
    path = write_pth(tmp_path / "ok.pth", state_dict(("w", tensor())), {"0": data.astype("<u2").tobytes()})
    ck = load_pth(path)
    np.testing.assert_array_equal(ck["w"], data)
    assert ck.dtypes["w"] == "bfloat16"
    ref = torch.load(path, weights_only=True)["w"]  # torch agrees the file is a valid checkpoint
    np.testing.assert_array_equal(ck["w"], ref.view(torch.int16).numpy().view(np.uint16))


def payloads(marker):
    """(id, pickle bytes) for each global-based attack; each creates `marker` when unpickled."""
    cmd = s(f"touch {marker}") + TUPLE1
    code = s(f"open({str(marker)!r}, 'w').close()") + TUPLE1
    popen = EMPTY_LIST + MARK + s("touch") + s(str(marker)) + APPENDS + TUPLE1
    getattr_gadget = (  # getattr(__import__('os'), 'system')('touch MARKER')
        glob("builtins", "getattr") + MARK + glob("builtins", "__import__") + s("os") + TUPLE1 + REDUCE
        + s("system") + TUPLE + REDUCE + cmd + REDUCE
    )
    import_gadget = glob("builtins", "__import__") + s("os") + TUPLE1 + REDUCE
    return {
        "GLOBAL os.system": P2 + glob("os", "system") + cmd + REDUCE + STOP,
        "GLOBAL posix.system": P2 + glob("posix", "system") + cmd + REDUCE + STOP,
        "GLOBAL builtins.eval": P2 + glob("builtins", "eval") + code + REDUCE + STOP,
        "GLOBAL builtins.exec": P2 + glob("builtins", "exec") + code + REDUCE + STOP,
        "GLOBAL __builtin__.eval": P2 + glob("__builtin__", "eval") + code + REDUCE + STOP,  # py2 name
        "GLOBAL builtins.getattr": P2 + getattr_gadget + STOP,
        "GLOBAL builtins.__import__": P2 + import_gadget + STOP,
        "GLOBAL subprocess.Popen": P2 + glob("subprocess", "Popen") + popen + REDUCE + STOP,
        "GLOBAL torch.load": P2 + glob("torch", "load") + s(str(marker)) + TUPLE1 + REDUCE + STOP,
        "STACK_GLOBAL os.system": P4 + stack_glob("os", "system") + cmd + REDUCE + STOP,
        "STACK_GLOBAL posix.system": P4 + stack_glob("posix", "system") + cmd + REDUCE + STOP,
        "STACK_GLOBAL builtins.eval": P4 + stack_glob("builtins", "eval") + code + REDUCE + STOP,
        "STACK_GLOBAL builtins.exec": P4 + stack_glob("builtins", "exec") + code + REDUCE + STOP,
        "STACK_GLOBAL subprocess.Popen": P4 + stack_glob("subprocess", "Popen") + popen + REDUCE + STOP,
        "inside a state dict": state_dict(("w", tensor()), ("x", glob("os", "system") + cmd + REDUCE)),
        "as a storage type": state_dict(("w", tensor(pid(stype=glob("os", "system"))))),
        "INST os.system": b"(S'touch " + str(marker).encode() + b"'\nios\nsystem\n.",
        "OBJ os.system": b"(cos\nsystem\nS'touch " + str(marker).encode() + b"'\no.",
    }


class Gadget:
    """The classic: unpickling calls os.system(...) via __reduce__."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("name", ["GLOBAL os.system", "STACK_GLOBAL builtins.exec", "GLOBAL builtins.getattr",
                                  "INST os.system"])
def test_control_payloads_run_under_plain_pickle(tmp_path, name):
    marker = tmp_path / "MARKER"
    pickle.loads(payloads(marker)[name])
    assert marker.exists()


def test_control_reduce_gadget_runs_under_plain_pickle(tmp_path):
    marker = tmp_path / "MARKER"
    pickle.loads(pickle.dumps({"w": Gadget(marker)}, protocol=2))
    assert marker.exists()


# --- attacks ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(payloads("M")))
def test_global_payloads_are_refused(tmp_path, marker, name):
    path = write_pth(tmp_path / "consolidated.00.pth", payloads(marker)[name])
    msg = refused(path)
    if name.startswith(("GLOBAL", "STACK_GLOBAL")):
        global_name = name.split()[1]
        assert f"refusing global {global_name}" in msg
    elif name.startswith("INST"):
        assert "refusing pickle opcode INST" in msg
    else:
        assert "refusing global os.system" in msg


def test_reduce_gadget_is_refused(tmp_path, marker):
    pkl = pickle.dumps({"w": Gadget(marker)}, protocol=2)
    refused(write_pth(tmp_path / "g.pth", pkl), "refusing global posix.system" if os.name == "posix" else "refusing global")


@pytest.mark.parametrize(
    "opcode,pkl",
    [
        ("OBJ", b"(ccollections\nOrderedDict\no."),
        ("NEWOBJ", P2 + glob("collections", "OrderedDict") + EMPTY_TUPLE + b"\x81" + STOP),
        # BUILD would call __setstate__ / write __dict__ on an allowed object: here our own rebuild
        # function, which would let a file change llama_nb's code for every later load.
        ("BUILD", P2 + glob("torch._utils", "_rebuild_tensor_v2") + EMPTY_DICT + s("__code__") + i(0) + SETITEM
         + b"b" + STOP),
        ("BUILD", P2 + glob("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE + MARK + s("a") + i(1) + b"d"
         + b"b" + STOP),
        ("EXT1", P2 + b"\x82\x01" + STOP),
        ("EMPTY_SET", P4 + b"\x8f" + STOP),
    ],
)
def test_instantiating_opcodes_are_refused(tmp_path, marker, opcode, pkl):
    refused(write_pth(tmp_path / "op.pth", pkl), f"refusing pickle opcode {opcode}")


@pytest.mark.parametrize(
    "pkl,storages,expect",
    [
        (state_dict(("w", tensor(pid(key="../x")))), None, "refusing storage key '../x' in"),
        (state_dict(("w", tensor(pid(key="data/0")))), None, "refusing storage key 'data/0'"),
        (state_dict(("w", tensor(pid(key="")))), None, "refusing storage key ''"),
        (state_dict(("w", tensor(pid(key=0)))), None, "refusing storage key 0"),
        (state_dict(("w", tensor(pid(key="missing")))), None, "missing zip entry 'archive/data/missing'"),
        (state_dict(("w", tensor())), {}, "missing zip entry 'archive/data/0'"),
        (state_dict(("w", tensor(pid(tag="module")))), None, "refusing persistent id"),
        (state_dict(("w", tensor(pid(stype=s("BFloat16Storage"))))), None, "refusing storage type 'BFloat16Storage'"),
        (P2 + b"P0\n" + STOP, None, "refusing persistent id '0'"),  # PERSID: a string id
        (state_dict(("w", tensor(pid(numel=1000)))), None, "needs 2000 bytes but zip entry 'archive/data/0' holds 8"),
        (state_dict(("w", tensor(pid(numel=-1)))), None, ("refusing a tensor in", "storage numel is -1")),
        (state_dict(("w", tensor(offset=10))), None, "reaches element 13 of a storage of 4"),
        (state_dict(("w", tensor(offset=1))), None, "reaches element 4 of a storage of 4"),
        (state_dict(("w", tensor(size=(2,), stride=(100,)))), None, "reaches element 100"),
        (state_dict(("w", tensor(size=(2,), stride=(-1,)))), None, "stride is -1"),
        (state_dict(("w", tensor(offset=-2))), None, "storage_offset is -2"),
        (state_dict(("w", tensor(size=(2, 2), stride=(1,)))), None, "size (2, 2) but stride (1,)"),
        (state_dict(("w", tensor(requires_grad=i(1)))), None, "requires_grad is not a bool"),
        (state_dict(("w", tensor(hooks=EMPTY_DICT + s("hook") + glob("torch", "BFloat16Storage") + SETITEM))), None,
         "backward hooks"),
        (state_dict(("w", tensor()), ("v", tensor(pid(stype=glob("torch", "FloatStorage"))))), None,
         ("refusing storage '0' in", "declared twice with different types or sizes")),
        (P2 + tensor() + STOP, None, "expected a state dict (name -> tensor), got _TensorRef"),
        (P2 + EMPTY_LIST + MARK + tensor() + APPENDS + STOP, None, "expected a state dict"),
        (state_dict(("w", EMPTY_LIST + MARK + tensor() + APPENDS)), None, "tensors inside a list at 'w'"),
    ],
)
def test_bad_storages_and_views_are_refused(tmp_path, marker, pkl, storages, expect):
    refused(write_pth(tmp_path / "s.pth", pkl, storages), *(expect if isinstance(expect, tuple) else (expect,)))


def patch_local_header(path, entry, offset, data):
    """Overwrite bytes of `entry`'s local file header (the central directory is left alone)."""
    with zipfile.ZipFile(path) as z:
        start = z.getinfo(entry).header_offset
    raw = bytearray(path.read_bytes())
    raw[start + offset : start + offset + len(data)] = data
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "offset,data,expect",
    [
        (28, struct.pack("<H", 65535), "do not fit in the file"),  # extra field pushes data past the end
        (8, struct.pack("<H", 8), "local header says compressed"),
        (30 + len("archive/data/"), b"9", "local header names"),
        (0, b"XXXX", "no local file header"),
    ],
)
def test_inconsistent_zip_headers_are_refused(tmp_path, marker, offset, data, expect):
    path = write_pth(tmp_path / "z.pth", state_dict(("w", tensor())))
    load_pth(path)  # valid before patching
    patch_local_header(path, "archive/data/0", offset, data)
    refused(path, expect)


def test_oversized_pickle_is_refused_before_parsing(tmp_path, monkeypatch):
    import llama_nb.io.pth as pth

    monkeypatch.setattr(pth, "MAX_PICKLE_BYTES", 64)
    refused(write_pth(tmp_path / "big.pth", state_dict(("w", tensor()), ("v", tensor()))), "refusing more than 64")


def test_fuzzed_files_fail_cleanly(tmp_path, marker):
    """Random byte flips and truncations of a real torch file: loads or CheckpointError, nothing else."""
    torch.save({"a": torch.randn(3, 5).to(torch.bfloat16), "b": torch.ones(2, dtype=torch.float16)}, tmp_path / "r.pth")
    good = (tmp_path / "r.pth").read_bytes()
    with zipfile.ZipFile(tmp_path / "r.pth") as z:
        pkl_info = z.getinfo("r/data.pkl")
    pkl_start = pkl_info.header_offset + 30 + len(pkl_info.filename)
    rng = random.Random(1234)
    path = tmp_path / "fuzz.pth"
    outcomes = {"loaded": 0, "refused": 0}
    start = time.perf_counter()
    for trial in range(400):
        raw = bytearray(good)
        if trial % 4 == 3:
            raw = raw[: rng.randrange(len(raw))]
        else:  # mostly inside data.pkl, where the unpickler is exposed; sometimes anywhere
            lo, hi = (pkl_start, pkl_start + 600) if trial % 4 else (0, len(raw))
            for _ in range(rng.randint(1, 3)):
                raw[rng.randrange(lo, min(hi, len(raw)))] = rng.randrange(256)
        path.write_bytes(bytes(raw))
        try:
            load_pth(path)
            outcomes["loaded"] += 1
        except CheckpointError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 100 and outcomes["loaded"] > 10, outcomes
    assert time.perf_counter() - start < 20

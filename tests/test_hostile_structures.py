"""Hostile structures inside and around a .pth, issue 13: colliding keys, FRAME tricks, files cut
short under the map, names that would forge lines, and an unwritable shape-model cache.

Pickles come from tests/test_hostile.py's assembler; `refused` is its check (one line naming the
file, fast). The crash-class cases also run in a child process, where a SIGSEGV or SIGBUS shows
as a signal instead of killing pytest.
"""

from __future__ import annotations

import json
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from llama_nb.errors import CheckpointError, LlamaNbError
from llama_nb.io import pth_write
from llama_nb.io.checkpoint import load_model_files
from llama_nb.io.pth import load_pth
from llama_nb.io.tokenizer import load_ranks
from tests import fuzzing
from tests.test_hostile import (
    EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE, MARK, P4, REDUCE, SETITEM, STOP, TUPLE, TUPLE1, glob, i, s, s8, state_dict,
    tensor, write_pth,
)

ROOT = Path(__file__).resolve().parents[1]
SETITEMS, DICT, NONE, BUILD, BINGET, BINPUT, APPEND = b"u", b"d", b"N", b"b", b"h", b"q", b"a"
M61 = 2**61 - 1  # hash(n) == n % M61 for ints: every multiple hashes to 0


def refused(path, *phrases, seconds=2.0) -> str:
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        load_pth(path)
    msg = str(info.value)
    assert time.perf_counter() - start < seconds, msg
    assert str(path) in msg and msg.isprintable(), msg  # one line, no escape codes
    for phrase in phrases:
        assert phrase in msg, msg
    return msg


def long1(n: int) -> bytes:
    data = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def frame(body: bytes) -> bytes:
    return b"\x95" + struct.pack("<Q", len(body)) + body


def body(pkl: bytes) -> bytes:
    """A protocol-2 pickle from the assembler without its PROTO and STOP."""
    assert pkl[:2] == b"\x80\x02" and pkl[-1:] == STOP
    return pkl[2:-1]


# --- colliding keys: dict keys must be strings (salted hashes) -----------------------------------

COLLIDING = [k * M61 for k in range(1, 50_001)]


def test_the_colliding_keys_do_collide():
    assert {hash(k) for k in COLLIDING} == {0}  # so a dict of them probes quadratically: minutes


KEYS = {
    "50k colliding int keys (SETITEMS)": state_dict(("w", tensor()), ("m", EMPTY_DICT + MARK + b"".join(
        long1(k) + NONE for k in COLLIDING) + SETITEMS)),
    "an int key (SETITEM)": state_dict(("m", EMPTY_DICT + i(0) + NONE + SETITEM)),
    "a tuple key": state_dict(("m", EMPTY_DICT + i(1) + i(2) + b"\x86" + NONE + SETITEM)),
    "a float key (DICT)": state_dict(("m", MARK + b"G" + struct.pack(">d", 0.5) + NONE + DICT)),
    "an int key from the memo": state_dict(("m", long1(M61) + BINPUT + b"\x09" + b"0" + EMPTY_DICT + BINGET + b"\x09"
                                            + NONE + SETITEM)),
    "a dict key in a list": state_dict(("w", tensor()), ("m", EMPTY_LIST + EMPTY_DICT + long1(M61) + NONE + SETITEM
                                                         + APPEND)),
    "a top-level int key": b"\x80\x02" + EMPTY_DICT + long1(M61) + tensor() + SETITEM + STOP,
}


@pytest.mark.parametrize("name", list(KEYS))
def test_non_string_dict_keys_are_refused_before_any_dict_is_built(tmp_path, name):
    refused(write_pth(tmp_path / "k.pth", KEYS[name]), "a dict key that is not a string")


def test_ordered_dict_from_arguments_is_refused(tmp_path):
    pairs = EMPTY_LIST + MARK + b"".join(MARK + long1(k) + NONE + TUPLE for k in COLLIDING[:1000]) + b"e"
    pkl = b"\x80\x02" + glob("collections", "OrderedDict") + pairs + TUPLE1 + REDUCE + STOP
    refused(write_pth(tmp_path / "od.pth", pkl), "OrderedDict is called with arguments")


def test_string_keys_through_the_memo_still_load(tmp_path):
    """torch memoizes every string it writes; keys read back with BINGET are strings too."""
    pkl = state_dict(("w", tensor()), ("meta", EMPTY_DICT + s("epoch") + BINPUT + b"\x07" + i(3) + SETITEM
                                       + s("again") + NONE + SETITEM + BINGET + b"\x07" + i(4) + SETITEM))
    ck = load_pth(write_pth(tmp_path / "ok.pth", pkl))
    assert list(ck.keys()) == ["w"] and ck.metadata == {"meta.epoch": 4, "meta.again": None}


def test_torch_protocol_4_files_with_frames_load(tmp_path):
    sd = {"a": torch.randn(3, 5).to(torch.bfloat16), "b": torch.ones(600, dtype=torch.float16)}
    torch.save(sd, tmp_path / "p4.pth", pickle_protocol=4)
    ck = load_pth(tmp_path / "p4.pth")
    np.testing.assert_array_equal(ck["a"], sd["a"].view(torch.int16).numpy().view(np.uint16))
    np.testing.assert_array_equal(ck["b"], sd["b"].numpy())


# --- FRAME: frames hold whole opcodes, and hide nothing from pass 1 ------------------------------

DEEP_KEY = EMPTY_DICT + EMPTY_TUPLE + TUPLE1 * 1_000_000 + i(1) + SETITEM  # hashing it overflows the C stack
FRAMES = {
    "a 1M-deep key behind a FRAME": (P4 + frame(DEEP_KEY) + STOP, "nested more than 100 deep"),
    "a 1M-deep key split over FRAMEs": (P4 + frame(EMPTY_DICT + EMPTY_TUPLE) + b"".join(
        frame(TUPLE1 * 1000) for _ in range(1000)) + frame(i(1) + SETITEM) + STOP, "nested more than 100 deep"),
    "BUILD behind a FRAME": (P4 + frame(body(state_dict(("w", tensor()))) + EMPTY_DICT + BUILD) + STOP,
                             "refusing pickle opcode BUILD"),
    "a huge memo index behind a FRAME": (P4 + frame(EMPTY_LIST + b"r\xff\xff\xff\x7f") + STOP, "memo index 2147483647"),
    "colliding keys behind FRAMEs": (P4 + frame(EMPTY_DICT + MARK) + b"".join(
        frame(long1(k) + NONE) for k in COLLIDING[:5000]) + frame(SETITEMS) + STOP, "a dict key that is not a string"),
    "a FRAME longer than the pickle": (P4 + b"\x95" + struct.pack("<Q", 2**62) + EMPTY_DICT + STOP,
                                       "runs past the end of the pickle"),
    "an opcode across a FRAME's end": (P4 + b"\x95" + struct.pack("<Q", 3) + s("abc") + EMPTY_DICT + STOP,
                                       "an opcode runs past the end of its FRAME"),
    "a FRAME inside a FRAME": (P4 + b"\x95" + struct.pack("<Q", 10) + frame(EMPTY_DICT) + STOP,
                               "a FRAME starts inside another FRAME"),
}


@pytest.mark.parametrize("name", list(FRAMES))
def test_frame_tricks_are_refused(tmp_path, name):
    pkl, phrase = FRAMES[name]
    refused(write_pth(tmp_path / "f.pth", pkl), phrase)


def test_frames_at_every_opcode_boundary_load(tmp_path):
    """A valid state dict with each opcode in a frame of its own is still a valid state dict."""
    import pickletools

    pkl = state_dict(("w", tensor()))
    ops = [pos for _, _, pos in pickletools.genops(pkl)] + [len(pkl)]
    framed = P4 + b"".join(frame(pkl[a:b]) for a, b in zip(ops[1:], ops[2:]))
    assert framed.endswith(frame(STOP))
    assert list(load_pth(write_pth(tmp_path / "ok.pth", framed)).keys()) == ["w"]


def in_child(script: str, *args, timeout=120) -> subprocess.CompletedProcess:
    """Run `script` in a fresh interpreter limited to 1 GiB of address space."""
    code = "import resource\nresource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))\n" + script
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_crash_class_cases_in_a_child_end_in_one_line(tmp_path):
    names = ["a 1M-deep key behind a FRAME", "a 1M-deep key split over FRAMEs", "colliding keys behind FRAMEs"]
    files = [write_pth(tmp_path / f"{k}.pth", FRAMES[n][0]) for k, n in enumerate(names)]
    files.append(write_pth(tmp_path / "keys.pth", KEYS["50k colliding int keys (SETITEMS)"]))
    proc = in_child(
        "import sys\nfrom llama_nb.io.pth import load_pth\nfrom llama_nb.errors import CheckpointError\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n        load_pth(path); print('loaded')\n"
        "    except CheckpointError as exc:\n        print('refused', exc)\n", *files)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])  # a signal would be negative
    assert [line.split()[0] for line in proc.stdout.splitlines()] == ["refused"] * 4, proc.stdout


# --- a file cut short under the map --------------------------------------------------------------

CUT_AND_READ = """
import sys
from llama_nb.io.pth import load_pth
from llama_nb.errors import CheckpointError
ck = load_pth(sys.argv[1])
with open(sys.argv[1], "r+b") as f:
    f.truncate(int(sys.argv[2]))
try:
    ck.read_tensors(); print("read")
except CheckpointError as exc:
    print("refused", exc)
"""


@pytest.mark.parametrize("strided", [False, True])
def test_read_tensors_of_a_file_cut_short_is_a_one_line_error(tmp_path, strided):
    """The default load (weights read into memory) never touches the map: no SIGBUS, a message."""
    big = torch.arange(1 << 16, dtype=torch.float32).reshape(256, 256).to(torch.bfloat16)
    torch.save({"w": big[:, 1::2] if strided else big}, tmp_path / "cut.pth")  # a strided view of its storage
    assert load_pth(tmp_path / "cut.pth")["w"].flags.c_contiguous is not strided
    proc = in_child(CUT_AND_READ, tmp_path / "cut.pth", 4096)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.startswith("refused") and "file ended while reading tensor data" in proc.stdout, proc.stdout


def test_a_file_that_shrinks_in_the_middle_of_read_tensors_is_a_one_line_error(tmp_path):
    torch.save({"w": torch.ones(1 << 18, dtype=torch.bfloat16)}, tmp_path / "mid.pth")  # 512 KiB, 128 chunks
    script = (
        "import os, sys\nimport llama_nb.io.pth as pth\nfrom llama_nb.errors import CheckpointError\n"
        "ck = pth.load_pth(sys.argv[1])\npth.READ_CHUNK, pth.READ_THREADS = 4096, 1\nreal, calls = pth._pread_exactly, []\n"
        "def shrinking(fd, buffer, offset, path):\n"
        "    calls.append(offset)\n"
        "    if len(calls) == 10:\n        os.truncate(path, 20_000)\n"
        "    real(fd, buffer, offset, path)\n"
        "pth._pread_exactly = shrinking\n"
        "try:\n    ck.read_tensors(); print('read')\n"
        "except CheckpointError as exc:\n    print('refused', exc)\n")
    proc = in_child(script, tmp_path / "mid.pth")
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.startswith("refused") and "file ended while reading tensor data" in proc.stdout, proc.stdout


def test_read_tensors_copies_strided_views_exactly(tmp_path):
    big = torch.arange(1 << 12, dtype=torch.float32).reshape(64, 64).to(torch.bfloat16)
    torch.save({"w": big[3:, 1::3], "v": big.T}, tmp_path / "s.pth")
    ck = load_pth(tmp_path / "s.pth")
    for name, array in ck.read_tensors().items():
        np.testing.assert_array_equal(array, ck[name])
        # its own memory (not the file's map), C-contiguous and 64-byte aligned (llama_nb/memory.py)
        assert array.flags.c_contiguous and not np.shares_memory(array, ck.mmap) and array.ctypes.data % 64 == 0


def test_the_pickle_of_a_file_cut_after_mapping_is_read_without_sigbus(tmp_path):
    torch.save({"w": torch.zeros(1 << 16, dtype=torch.bfloat16)}, tmp_path / "c.pth")
    script = (
        "import sys\nfrom llama_nb.io.zip_archive import Archive\nfrom llama_nb.errors import CheckpointError\n"
        "with Archive.open(__import__('pathlib').Path(sys.argv[1])) as archive:\n"
        "    open(sys.argv[1], 'r+b').truncate(64)\n"
        "    try:\n        archive.read(archive.pickle_name, 1 << 20); print('read')\n"
        "    except CheckpointError as exc:\n        print('refused', exc)\n")
    proc = in_child(script, tmp_path / "c.pth")
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.startswith("refused") and "the file ended before byte" in proc.stdout, proc.stdout


def test_mmap_views_of_a_file_cut_short_are_the_documented_sigbus_risk(tmp_path):
    """With --mmap the weights ARE the map: a page past the new end of the file is a SIGBUS, which
    Python cannot turn into an exception (README, Safety). This pins that the risk is real, so
    the documentation stays honest; the default load above does not have it."""
    torch.save({"w": torch.ones(1 << 20, dtype=torch.bfloat16)}, tmp_path / "m.pth")
    script = (
        "import sys\nfrom llama_nb.io.pth import load_pth\nck = load_pth(sys.argv[1])\n"
        "open(sys.argv[1], 'r+b').truncate(4096)\nprint(int(ck['w'][-1]))\n")
    proc = in_child(script, tmp_path / "m.pth")
    assert proc.returncode == -signal.SIGBUS, (proc.returncode, proc.stdout, proc.stderr[-500:])


# --- names from the file are printed escaped -----------------------------------------------------

FORGED = "w\nerror: all is fine\x1b[2J\x1b[32m\u202e"


def test_a_forged_tensor_name_is_escaped(tmp_path):
    folder = fuzzing.write_base_model(tmp_path / "m")
    sd = torch.load(folder / fuzzing.PTH, weights_only=True)
    sd[FORGED] = torch.zeros(2, dtype=torch.bfloat16)
    torch.save(sd, folder / fuzzing.PTH)
    with pytest.raises(CheckpointError) as info:
        load_model_files(folder)
    msg = str(info.value)
    assert msg.isprintable() and "unexpected tensor(s)" in msg and r"'w\nerror: all is fine\x1b[2J" in msg, msg
    proc = subprocess.run([sys.executable, "-m", "llama_nb", "info", "--model", str(folder)], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1 and len(lines) == 2 and lines[0].isprintable(), proc.stderr  # error + debug hint


@pytest.mark.parametrize("pkl,phrase", [
    (b"\x80\x04" + s8("os\x1b[31m") + s8("system\n") + b"\x93" + STOP, "refusing global 'os\\x1b[31m.system\\n'"),
    (state_dict((FORGED, EMPTY_DICT + s("b") + tensor() + SETITEM), (FORGED + ".b", tensor())),
     "two entries flatten to the same name 'w\\nerror"),
    (state_dict((FORGED, EMPTY_LIST + tensor() + APPEND)), "tensors inside a list at 'w\\nerror"),
])
def test_names_in_pickle_errors_are_escaped(tmp_path, pkl, phrase):
    refused(write_pth(tmp_path / "n.pth", pkl), phrase)


def test_zip_entry_names_in_errors_are_escaped(tmp_path):
    path = write_pth(tmp_path / "z.pth", state_dict(("w", glob("os", "system"))), prefix="a\x1b[31m\r")
    refused(path, "refusing global os.system in", r"['a\x1b[31m\r/data.pkl']")  # the pickle's name, escaped
    fuzzing_entries = [("x\x1b]0;title\x07/data.pickle", b"")]
    (tmp_path / "e.pth").write_bytes(fuzzing.pack_zip(fuzzing_entries))
    refused(tmp_path / "e.pth", "expected exactly one '<name>/data.pkl' entry", r"'x\x1b]0;title\x07/data.pickle'")


def test_a_forged_token_in_the_tokenizer_is_escaped(tmp_path):
    import base64

    lines = [base64.b64encode(bytes([b])) + b" %d" % b for b in range(256)]
    lines.append(base64.b64encode(b"\x1b") + b" 256")  # a duplicate of byte 0x1b
    path = tmp_path / "tokenizer.model"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(CheckpointError, match=r"duplicate token b'\\x1b'") as info:
        load_ranks(path)
    assert str(info.value).isprintable()


# --- the shape-model cache ---------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["a file", "inside a file", "in /proc"])
def test_an_unwritable_shape_cache_is_one_line(tmp_path, monkeypatch, where):
    (tmp_path / "f").write_text("")
    cache = {"a file": tmp_path / "f", "inside a file": tmp_path / "f" / "sub", "in /proc": Path("/proc/llama_nb")}
    monkeypatch.setenv("LLAMA_NB_CACHE", str(cache[where]))
    monkeypatch.setattr(pth_write, "write_random_model", lambda *a, **k: pytest.fail("nothing may be written"))
    with pytest.raises(LlamaNbError) as info:
        pth_write.ensure_shape_model("llama3.2-1b")
    msg = str(info.value)
    assert msg.isprintable() and f"cannot write the shape model cache in {cache[where]}/shapes/llama3.2-1b" in msg
    assert "set LLAMA_NB_CACHE to a writable folder" in msg, msg


def test_an_unwritable_shape_cache_through_the_cli(tmp_path, monkeypatch):
    from llama_nb.cli import app

    (tmp_path / "f").write_text("")
    monkeypatch.setenv("LLAMA_NB_CACHE", str(tmp_path / "f"))
    result = CliRunner().invoke(app, ["bench", "model", "--shape", "llama3.2-1b", "-p", "0", "-n", "1"])
    assert result.exit_code == 1 and isinstance(result.exception, (SystemExit, LlamaNbError)), result.output
    assert "cannot write the shape model cache in" in result.output + str(result.exception), result.output
    assert "Traceback" not in result.output and json.dumps(str(tmp_path / "f"))[1:-1] in result.output + str(
        result.exception)


def test_default_shape_cache_honours_home(tmp_path, monkeypatch):
    monkeypatch.delenv("LLAMA_NB_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert pth_write.shape_folder("x") == tmp_path / ".cache" / "llama_nb" / "shapes" / "x"

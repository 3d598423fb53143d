"""Hardening: hostile and broken inputs, run-time limits, interrupts and closed pipes, split characters.

What a user can throw at llama_nb (a .pth from the internet, a half-downloaded file, the wrong
folder, a prompt longer than the context, Ctrl-C, `| head -c 1`) must end in one clear line or a
quiet exit, never a traceback, a crash, a hang, or code from the file running. The hostile pickle
corpus of tests/test_hostile.py is extended here with the structural attacks (deep nesting,
reference bombs, memo abuse, absurd shapes); every refusal is checked for the file name, one line,
bounded time (< 2 s) and, where a bomb could allocate, bounded memory (tracemalloc; and one
subprocess under an address-space limit, where a C-stack overflow would show as a signal).

Folders come from tests/fuzzing.py's toy model (576-token byte-level vocabulary, dim 32) so the
CLI subprocesses stay fast; the streaming tests use a "chain" model whose weights make greedy
decoding emit chosen byte tokens (an emoji split over four tokens, an unfinished 3-byte character).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import llama_nb
from llama_nb.errors import CheckpointError, LlamaNbError
from llama_nb.io.checkpoint import load_model_files
from llama_nb.io.pth import MAX_OPCODES, load_pth
from llama_nb.model.load import check_memory, memory_need
from tests import fuzzing
from tests.test_hostile import (  # the project's pickle assembler
    APPENDS, EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE, MARK, NEWFALSE, P2, REDUCE, SETITEM, STOP, TUPLE, TUPLE1,
    glob, i, ints, pid, s, state_dict, tensor, write_pth,
)
from tests.tinymodel import tiny_params, tiny_state_dict

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A valid toy folder (see tests/fuzzing.py)."""
    return fuzzing.write_base_model(tmp_path_factory.mktemp("base") / "model")


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "MARKER"
    yield path
    assert not path.exists(), "a payload ran"


def refused(path, *patterns, seconds=2.0):
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        load_pth(path)
    elapsed = time.perf_counter() - start
    msg = str(info.value)
    assert elapsed < seconds, f"took {elapsed:.2f} s: {msg}"
    assert str(path) in msg and "\n" not in msg, msg
    for pattern in patterns:
        assert pattern in msg, msg
    return msg


def long1(n):  # LONG1: an integer of any size
    data = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def big_ints(values):
    return MARK + b"".join(long1(v) for v in values) + TUPLE


def frame(body):  # protocol 4's FRAME around opcodes
    return b"\x95" + struct.pack("<Q", len(body)) + body


def nested_bomb(levels=10, fanout=1000):
    """[[...] * 1000] 10 deep, by reference: 10 lists in the pickle, 1000**10 paths through it."""
    out = EMPTY_LIST + b"q\x00" + b"0"  # memo 0 = [], popped
    for level in range(1, levels + 1):
        out += EMPTY_LIST + MARK + (b"h" + bytes([level - 1])) * fanout + APPENDS + b"q" + bytes([level]) + b"0"
    return out + b"h" + bytes([levels])


# --- 1. hostile checkpoints -------------------------------------------------------------------------

STRUCTURAL = {
    # REDUCE on allowed callables with wrong arguments
    "rebuild with a non-storage": (state_dict(("w", tensor(storage=i(3)))), "its storage is a int"),
    "rebuild with 1 argument": (state_dict(("w", glob("torch._utils", "_rebuild_tensor_v2") + MARK + i(3) + TUPLE
                                              + REDUCE)), "corrupt or unsupported pickle (TypeError"),
    "negative size": (state_dict(("w", tensor(size=(-4,)))), "size is -4"),
    "33 dimensions": (state_dict(("w", tensor(size=(1,) * 33, stride=(1,) * 33))), "refusing a tensor"),
    "shape product overflows int64": (
        state_dict(("w", glob("torch._utils", "_rebuild_tensor_v2") + MARK + pid() + i(0) + big_ints((2**62, 2**62))
                    + big_ints((0, 0)) + NEWFALSE + EMPTY_DICT + TUPLE + REDUCE)), "elements; at most"),
    "zero strides, 4.6e18 elements": (state_dict(("w", tensor(size=(2**31 - 1, 2**31 - 1), stride=(0, 0)))),
                                      "elements; at most"),
    "stride past the storage": (state_dict(("w", tensor(size=(2, 2), stride=(2**30, 1)))), "reaches element"),
    "OrderedDict(3)": (state_dict(("w", glob("collections", "OrderedDict") + i(3) + TUPLE1 + REDUCE)),
                       "corrupt or unsupported pickle (TypeError"),
    "a storage type called": (state_dict(("w", glob("torch", "BFloat16Storage") + i(3) + TUPLE1 + REDUCE)),
                              "not callable"),
    "Parameter of a non-tensor": (state_dict(("w", glob("torch._utils", "_rebuild_parameter") + MARK + i(1) + NEWFALSE
                                              + EMPTY_DICT + TUPLE + REDUCE)), "refusing an nn.Parameter"),
    "BUILD on a tensor": (state_dict(("w", tensor() + EMPTY_DICT + s("__setstate__") + i(0) + SETITEM + b"b")),
                          "refusing pickle opcode BUILD"),
    # persistent ids
    "PERSID path": (P2 + b"P../../etc/passwd\n" + STOP, "refusing persistent id '../../etc/passwd'"),
    "BINPERSID short tuple": (P2 + s("storage") + TUPLE1 + b"Q" + STOP, "refusing persistent id ('storage',)"),
    "BINPERSID deep tuple": (P2 + EMPTY_TUPLE + TUPLE1 * 100_000 + b"Q" + STOP, "nested more than 100 deep"),
    # the memo
    "GET of an unset index": (P2 + b"h\x05" + STOP, "memo index 5 is read before anything was stored"),
    "LONG_BINPUT 2**32-1": (P2 + EMPTY_LIST + b"r\xff\xff\xff\xff" + STOP, "memo index 4294967295"),
    "PUT 10**14": (P2 + EMPTY_LIST + b"p99999999999999\n" + STOP, "memo index 99999999999999"),
    # nesting: the C unpickler builds these without recursion, but hashing, comparing or printing
    # them recurses in C (a 1M-deep tuple as a dict key is a segfault on CPython 3.11)
    "100k nested lists": (P2 + MARK * 100_000 + b"l" * 100_000 + STOP, "nested more than 100 deep"),
    "100k nested tuples": (P2 + EMPTY_TUPLE + TUPLE1 * 100_000 + STOP, "nested more than 100 deep"),
    "1M-deep dict key": (P2 + EMPTY_DICT + EMPTY_TUPLE + TUPLE1 * 1_000_000 + i(1) + SETITEM + STOP,
                         "nested more than 100 deep"),
    "a list inside itself": (P2 + EMPTY_LIST + b"q\x00h\x00a" + STOP, "or a container inside itself"),
    "too many opcodes": (P2 + EMPTY_LIST + MARK + b"N" * MAX_OPCODES + APPENDS + STOP,
                         f"more than {MAX_OPCODES} opcodes"),
    # sizes declared beyond the data
    "string longer than the pickle": (P2 + b"X" + struct.pack("<I", 2**31) + b"ab" + STOP, "corrupt pickle"),
    "bytes8 of 2**62": (b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + STOP, "corrupt pickle"),
    "storage of 2**31 elements": (state_dict(("w", tensor(pid(numel=2**31 - 1)))), "needs 4294967294 bytes"),
    # issue 13: structures behind FRAMEs, keys whose hashes collide (more in test_hostile_structures.py)
    "1M-deep dict key behind a FRAME": (b"\x80\x04" + frame(EMPTY_DICT + EMPTY_TUPLE + TUPLE1 * 1_000_000 + i(1)
                                                          + SETITEM) + STOP, "nested more than 100 deep"),
    "BUILD behind a FRAME": (b"\x80\x04" + frame(EMPTY_DICT + EMPTY_DICT + b"b") + STOP, "refusing pickle opcode BUILD"),
    "memo index behind a FRAME": (b"\x80\x04" + frame(EMPTY_LIST + b"r\xff\xff\xff\xff") + STOP, "memo index 4294967295"),
    "30k int keys hashing to 0": (P2 + EMPTY_DICT + MARK + b"".join(long1(k * (2**61 - 1)) + b"N" for k in range(1, 30_001))
                                  + b"u" + STOP, "a dict key that is not a string"),
}


@pytest.mark.parametrize("name", list(STRUCTURAL))
def test_structural_attacks_are_refused_fast(tmp_path, marker, name):
    pkl, expect = STRUCTURAL[name]
    refused(write_pth(tmp_path / "consolidated.00.pth", pkl), expect)


def test_reference_bomb_costs_what_its_pickle_costs(tmp_path):
    """1000 references x 10 levels: 10 small lists, 1000**10 paths. A walk that does not remember
    what it visited never ends; ours loads the dict (the bomb is a non-tensor leaf) fast and small."""
    path = write_pth(tmp_path / "bomb.pth", state_dict(("w", tensor()), ("bomb", nested_bomb())))
    tracemalloc.start()
    start = time.perf_counter()
    try:
        ck = load_pth(path)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.perf_counter() - start < 2.0
    assert peak < 20e6, f"peak {peak / 1e6:.1f} MB"
    assert list(ck.keys()) == ["w"] and len(ck.metadata["bomb"]) == 1000
    # the same bomb with a tensor somewhere below is still found, without walking every path
    hidden = EMPTY_LIST + MARK + nested_bomb(levels=4, fanout=50) + tensor() + APPENDS
    refused(write_pth(tmp_path / "hidden.pth", state_dict(("x", hidden))), "tensors inside a list at 'x'")


def test_memory_attacks_under_an_address_space_limit(tmp_path):
    """In a child limited to 1 GiB of address space: the memo, nesting and bomb attacks are refused
    without a MemoryError, a signal (C-stack overflow) or a traceback; nothing is allocated big."""
    names = ["LONG_BINPUT 2**32-1", "PUT 10**14", "1M-deep dict key", "100k nested lists", "BINPERSID deep tuple",
             "1M-deep dict key behind a FRAME", "30k int keys hashing to 0"]
    files = [write_pth(tmp_path / f"{k}.pth", STRUCTURAL[n][0]) for k, n in enumerate(names)]
    files.append(write_pth(tmp_path / "bomb.pth", state_dict(("w", tensor()), ("b", nested_bomb()))))
    script = (
        "import resource, sys, json\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))\n"
        "from llama_nb.io.pth import load_pth\n"
        "from llama_nb.errors import CheckpointError\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        load_pth(path); print(json.dumps(['loaded', path]))\n"
        "    except CheckpointError as exc:\n"
        "        print(json.dumps(['refused', str(exc)]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, *map(str, files)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outcomes = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o[0] for o in outcomes] == ["refused"] * len(names) + ["loaded"], outcomes
    for (_, msg), path in zip(outcomes, files):
        assert str(path) in msg and "MemoryError" not in msg and "Recursion" not in msg, msg


def patch_central_directory(path: Path, entry: str, field: int, value: bytes) -> None:
    """Overwrite a field of `entry`'s central directory record (sizes at 20/24, offset at 42)."""
    raw = bytearray(path.read_bytes())
    at = raw.rindex(b"PK\x01\x02", 0, raw.rindex(entry.encode()))
    raw[at + field : at + field + len(value)] = value
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("field,value,expect", [
    (20, struct.pack("<II", 2**31, 2**31), "do not fit in the file"),   # declared sizes of 2 GiB
    (42, struct.pack("<I", 2**31), "local header offset 2147483648 is outside the file"),
])
def test_sizes_and_offsets_beyond_the_file(tmp_path, field, value, expect):
    path = write_pth(tmp_path / "z.pth", state_dict(("w", tensor())))
    patch_central_directory(path, "archive/data/0", field, value)
    refused(path, expect)


# --- 2. broken files ---------------------------------------------------------------------------------


def test_truncated_at_many_cut_points(base, tmp_path):
    data = (base / fuzzing.PTH).read_bytes()
    with zipfile.ZipFile(base / fuzzing.PTH) as z:
        starts = [info.header_offset for info in z.infolist()]
    cuts = sorted({*range(0, len(data), max(1, len(data) // 60)), *starts, *(s + 31 for s in starts),
                   len(data) - 1, len(data) - 22, len(data) - 23})
    path = tmp_path / "consolidated.00.pth"
    for cut in cuts:
        path.write_bytes(data[:cut])
        refused(path)


def rewrite(src: Path, dst: Path, edit) -> Path:
    """Re-pack a torch zip after `edit(list of (name, bytes))` returns the new entries."""
    dst.write_bytes(fuzzing.pack_zip(edit(fuzzing.zip_entries(src.read_bytes()))))
    return dst


def test_repacked_base_still_loads(base, tmp_path):
    """The re-packer itself makes loadable, aligned files, so the refusals below are about the edits."""
    path = rewrite(base / fuzzing.PTH, tmp_path / "same.pth", lambda entries: entries)
    ck = load_pth(path)
    assert all(t.ctypes.data % 64 == 0 for t in ck.tensors.values() if t.size)
    for name, t in load_pth(base / fuzzing.PTH).items():
        np.testing.assert_array_equal(ck[name], t)


@pytest.mark.parametrize("old,new,expect", [
    ("/data.pkl", "/data.pickle", "expected exactly one '<name>/data.pkl' entry"),
    ("/data/0", "/data/00", "missing zip entry 'consolidated.00/data/0'"),
    ("consolidated.00/data/", "other/data/", "missing zip entry 'consolidated.00/data/0'"),
])
def test_wrong_zip_entry_names(base, tmp_path, old, new, expect):
    path = rewrite(base / fuzzing.PTH, tmp_path / "consolidated.00.pth",
                   lambda entries: [(n.replace(old, new) if n.endswith(old) or old.endswith("/") else n, d)
                                    for n, d in entries])
    refused(path, expect)


def test_tensor_bytes_shorter_than_declared(base, tmp_path):
    path = rewrite(base / fuzzing.PTH, tmp_path / "consolidated.00.pth",
                   lambda entries: [(n, d[: len(d) // 2] if n.endswith("/data/0") else d) for n, d in entries])
    refused(path, "refusing storage '0'", "bytes but zip entry 'consolidated.00/data/0' holds")


@pytest.mark.parametrize("dtype,name", [(torch.int64, "int64"), (torch.float64, "float64"),
                                        (torch.complex64, "complex64"), (torch.int8, "int8"), (torch.bool, "bool")])
def test_other_dtypes_are_refused_naming_the_dtype(tmp_path, dtype, name):
    torch.save({"w": torch.zeros(3, dtype=dtype)}, tmp_path / "t.pth")
    refused(tmp_path / "t.pth", f"unsupported tensor dtype {name};")


def test_absurd_params_are_refused_not_computed(base, tmp_path):
    """Two findings of the fuzzer: n_layers=1e10 listed 9e10 tensor names (a hang), and
    ffn_dim_multiplier=1e308 made the FFN size int(inf) (an OverflowError)."""
    for change, expect in [({"n_layers": 10**10}, "n_layers=10000000000 but the file holds only 12 tensors"),
                           ({"ffn_dim_multiplier": 1e308}, "makes the FFN hidden size infinite")]:
        folder = copy_folder(base, tmp_path / f"p{len(expect)}")
        params = json.loads((folder / "params.json").read_text())
        (folder / "params.json").write_text(json.dumps({**params, **change}))
        start = time.perf_counter()
        with pytest.raises(CheckpointError, match=expect):
            load_model_files(folder)
        assert time.perf_counter() - start < 2.0


def copy_folder(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in (fuzzing.PTH, fuzzing.PARAMS, fuzzing.TOKENIZER):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def save_state(folder: Path, edit) -> None:
    params = tiny_params(**fuzzing.BASE_PARAMS)
    sd = tiny_state_dict(params, seed=11, weight_std=None)
    edit(sd)
    torch.save(sd, folder / fuzzing.PTH)


def edit_file(name, transform):
    def apply(folder):
        (folder / name).write_bytes(transform((folder / name).read_bytes()))
    return apply


# category -> (how to break a copy of the base folder, the file named, a phrase of the message,
#              whether `info` fails too: it does not read tokenizer.model)
CATEGORIES = {
    "hostile pickle": (lambda f: write_pth(f / fuzzing.PTH, fuzzing.payloads(f / "MARKER")[0] + STOP),
                       fuzzing.PTH, "refusing global os.system", True),
    "truncated .pth": (edit_file(fuzzing.PTH, lambda d: d[: len(d) * 2 // 3]), fuzzing.PTH, "not a torch.save zip", True),
    "wrong entry names": (lambda f: rewrite(f / fuzzing.PTH, f / fuzzing.PTH, lambda es: [
        (n.replace("/data/1", "/data/one"), d) for n, d in es]), fuzzing.PTH, "missing zip entry", True),
    "short tensor bytes": (lambda f: rewrite(f / fuzzing.PTH, f / fuzzing.PTH, lambda es: [
        (n, d[:100] if n.endswith("/data/2") else d) for n, d in es]), fuzzing.PTH, "holds 100", True),
    "int64 tensor": (lambda f: save_state(f, lambda sd: sd.update({"norm.weight": torch.arange(32)})),
                     fuzzing.PTH, "unsupported tensor dtype int64", True),
    "shape vs params.json": (edit_file(fuzzing.PARAMS, lambda d: d.replace(b'"n_kv_heads": 2', b'"n_kv_heads": 4')),
                             fuzzing.PTH, "has shape [16, 32] but", True),
    "missing tensor": (lambda f: save_state(f, lambda sd: sd.pop("layers.0.ffn_norm.weight")), fuzzing.PTH,
                       "missing 1 tensor(s)", True),
    "extra tensor": (lambda f: save_state(f, lambda sd: sd.update({"rope.freqs": torch.ones(4).bfloat16()})),
                     fuzzing.PTH, "unexpected tensor(s) for a Llama 3.x model: rope.freqs", True),
    "params not JSON": (edit_file(fuzzing.PARAMS, lambda d: d[:-5]), fuzzing.PARAMS, "not valid JSON at line 1", True),
    "params wrong type": (edit_file(fuzzing.PARAMS, lambda d: d.replace(b'"dim": 32', b'"dim": "32"')),
                          fuzzing.PARAMS, "key 'dim' must be a positive integer, got \"32\" (string)", True),
    "tokenizer bad line": (edit_file(fuzzing.TOKENIZER, lambda d: d.replace(b"AQ== 1\n", b"AQ== one\n")),
                           fuzzing.TOKENIZER + ":2", "rank is not a non-negative integer", False),
    "Hugging Face folder": (lambda f: [(f / n).unlink() for n in (fuzzing.PTH, fuzzing.PARAMS)]
                            + [(f / "config.json").write_text("{}"), (f / "model.safetensors").write_bytes(b"{}")],
                            "config.json", "not a Llama model; llama_nb reads LlamaForCausalLM", True),
    "GGUF folder": (lambda f: [(f / fuzzing.PTH).unlink(), (f / "llama-3.2-1b.Q4_K_M.gguf").write_bytes(b"GGUF")],
                    "llama-3.2-1b.Q4_K_M.gguf", "file ends inside the version", True),
}


def cli(*args, env=None, timeout=120, **kw):
    """`python -m llama_nb ARGS`: what a user's shell runs."""
    return subprocess.run([sys.executable, "-m", "llama_nb", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})}, **kw)


def assert_one_error_line(proc, *phrases):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "Exception" not in proc.stderr, proc.stderr
    assert lines and lines[0].startswith("error: ") and len(lines) <= 2, proc.stderr  # the error + the debug hint
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


# `python -m llama_nb ARGS` for many ARGS: one warm interpreter imports llama_nb.cli once, then
# forks a child per command that runs llama_nb/__main__.py exactly as `python -m` does (runpy),
# with its own stdout/stderr files and exit code. An exception escaping main() is printed by the
# child the way the interpreter prints it ("Traceback ..."). Saves ~0.4 s of imports per command.
_FORK_CLI = r"""
import json, os, runpy, sys, traceback
import llama_nb.cli, llama_nb.model.load  # the imports every command pays for
results = []
for k, args in enumerate(json.loads(sys.argv[1])):
    out, err = f"{sys.argv[2]}/{k}.out", f"{sys.argv[2]}/{k}.err"
    pid = os.fork()
    if pid == 0:
        for fd, name in ((1, out), (2, err)):
            os.dup2(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        sys.argv = ["llama-nb", *args]
        code = 0
        try:
            runpy.run_module("llama_nb", run_name="__main__", alter_sys=True)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    results.append(os.waitstatus_to_exitcode(status))
print(json.dumps(results))
"""


def forked_cli(commands: list[list[str]], tmp: Path) -> list[subprocess.CompletedProcess]:
    tmp.mkdir(exist_ok=True)
    proc = subprocess.run([sys.executable, "-c", _FORK_CLI, json.dumps(commands), str(tmp)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    codes = json.loads(proc.stdout)
    return [subprocess.CompletedProcess(args, code, (tmp / f"{k}.out").read_text(), (tmp / f"{k}.err").read_text())
            for k, (args, code) in enumerate(zip(commands, codes))]


def test_broken_folders_through_the_cli(base, tmp_path):
    """Each category through `info --model DIR` and `run PROMPT --model DIR`: exit 1, one error
    line naming the file and the problem, no traceback, no payload run."""
    jobs = []
    for k, (name, (breaker, file, phrase, info_fails)) in enumerate(CATEGORIES.items()):
        folder = copy_folder(base, tmp_path / f"c{k}")
        breaker(folder)
        named = str(folder / file) if file else str(folder)
        jobs.append((name, folder, ["info", "--model", str(folder)], named, phrase, info_fails))
        jobs.append((name, folder, ["run", "hi", "--model", str(folder)], named, phrase, True))
    procs = forked_cli([job[2] for job in jobs], tmp_path / "out")
    for (name, folder, command, named, phrase, fails), proc in zip(jobs, procs):
        assert not (folder / "MARKER").exists(), name
        if not fails:
            assert proc.returncode == 0, (name, command, proc.stderr)
            continue
        line = assert_one_error_line(proc, named, phrase)
        assert line.startswith(f"error: {named}") or f" in {named}" in line, (name, command, line)


def test_forked_cli_is_the_real_cli(base, tmp_path):
    """The fork harness reports what `python -m llama_nb` reports (exit code, stdout, stderr)."""
    broken = copy_folder(base, tmp_path / "b")
    (broken / fuzzing.PARAMS).write_text("{")
    commands = [["info", "--model", str(base), "--json"], ["info", "--model", str(broken)], ["run", "--bogus"]]
    for forked, real in zip(forked_cli(commands, tmp_path / "out"), map(lambda c: cli(*c), commands)):
        assert (forked.returncode, forked.stdout, forked.stderr) == (real.returncode, real.stdout, real.stderr)


def test_gguf_and_pth_files_are_recognised(base, tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    with pytest.raises(CheckpointError, match=r"model\.gguf: file ends inside the tensor count"):
        load_model_files(tmp_path / "model.gguf")
    with pytest.raises(CheckpointError, match=r"consolidated\.00\.pth: a file; pass the folder that holds it"):
        load_model_files(base / fuzzing.PTH)


# --- 4. run-time limits ----------------------------------------------------------------------------


def test_memory_estimate_matches_what_the_model_allocates(base):
    llm = llama_nb.load_model(base, ctx=200, max_batch=64)
    state = llm.model.state
    allocated = sum(v.nbytes for v in vars(state).values() if isinstance(v, np.ndarray))
    allocated += llm.model.rope_cos.nbytes + llm.model.rope_sin.nbytes
    weights = sum(t.nbytes for t in load_pth(base / fuzzing.PTH).tensors.values())
    need = memory_need(llm.args, 200, weights, max_batch=64)
    assert need.kv_cache == state.cache_k.nbytes + state.cache_v.nbytes
    assert need.kv_cache + need.buffers == allocated
    assert need.weights == weights < (base / fuzzing.PTH).stat().st_size


def test_memory_check_refuses_with_the_numbers_and_a_ctx_that_fits(base):
    args = load_model_files(base).args
    need = memory_need(args, 100_000, 10**9)
    free = 10**9 + need.buffers + need.kv_cache // 2
    with pytest.raises(LlamaNbError) as info:
        check_memory(need, 100_000, "m", (free, "MemAvailable in /proc/meminfo"))
    msg = str(info.value)
    assert "at --ctx 100000" in msg and "1.00 GB of weights" in msg and f"{need.total / 1e9:.2f} GB" in msg, msg
    suggested = int(msg.split("at most ")[1].split()[0])
    assert 0 < suggested < 100_000 and memory_need(args, suggested, 10**9).total <= free
    check_memory(memory_need(args, suggested, 10**9), suggested, "m", (free, "x"))  # it does fit
    with pytest.raises(LlamaNbError, match="the weights alone do not fit"):
        check_memory(need, 100_000, "m", (10**8, "x"))


def test_not_enough_memory_through_the_cli(base):
    weights = sum(t.nbytes for t in load_pth(base / fuzzing.PTH).tensors.values())
    need = memory_need(load_model_files(base).args, 4096, weights)
    fits_half = need.total - need.kv_per_position * 2048  # what --ctx 2048 would need: room for a smaller --ctx
    proc = cli("run", "hi", "--model", base, "--ctx", 4096, env={"LLAMA_NB_MEM_AVAILABLE": str(int(fits_half))})
    assert_one_error_line(proc, "not enough memory for", "at --ctx 4096", "GB of KV cache",
                          "$LLAMA_NB_MEM_AVAILABLE", "use a smaller --ctx (at most")
    proc = cli("run", "hi", "--model", base, env={"LLAMA_NB_MEM_AVAILABLE": "lots"})
    assert_one_error_line(proc, "$LLAMA_NB_MEM_AVAILABLE='lots' is not a size")


def test_prompt_longer_than_the_context(base):
    proc = cli("run", "the cat sat on the mat and then it sat on the hat", "--model", base, "--ctx", 8)
    assert_one_error_line(proc, "tokens but --ctx is 8", "raise --ctx")
    assert proc.stdout == ""


def test_ctrl_c_while_loading_exits_130(base, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(llama_nb, "load_model", interrupted)
    from llama_nb.cli import app

    result = CliRunner().invoke(app, ["run", "hi", "--model", str(base)])
    assert result.exit_code == 130 and "interrupted while loading" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_ctrl_c_while_the_cli_starts_exits_130_without_a_traceback():
    # Deterministic stand-in for a Ctrl-C in the first ~0.3 s (Python importing typer and rich):
    # an import hook raises KeyboardInterrupt when `rich` is first imported.
    code = (
        "import sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'rich':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "sys.argv = ['llama-nb', 'ops']\n"
        "from llama_nb._entry import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr and "interrupted while starting" in proc.stderr


# --- 5. streaming text: a model that writes chosen bytes -------------------------------------------

CHAIN_A = [ord("A"), 0xF0, 0x9F, 0xA6, 0x99, 256 + fuzzing._MERGES.index(b" the")]  # "A" -> "🦙 the" -> "🦙" ...
CHAIN_B = [ord("B"), 0xE2, 0x82]  # "B" -> the first two bytes of "€" (E2 82 AC), then <|end_of_text|>


@pytest.fixture(scope="module")
def chain_model(tmp_path_factory) -> Path:
    """All layer weights zero (each sub-block adds 0), so logits depend on the current token only:
    token CHAIN[j] has embedding e_j and output row e_j selects CHAIN[j+1] (A loops, B ends)."""
    folder = tmp_path_factory.mktemp("chain")
    params = tiny_params(**fuzzing.BASE_PARAMS)
    sd = tiny_state_dict(params)
    for name, t in sd.items():
        t.zero_() if "norm" not in name else t.fill_(1.0)
    eos = params["vocab_size"] - 256 + 1  # <|end_of_text|>
    steps = list(zip(CHAIN_A, CHAIN_A[1:] + CHAIN_A[1:2])) + list(zip(CHAIN_B, CHAIN_B[1:] + [eos]))
    for j, (token, successor) in enumerate(steps):
        sd["tok_embeddings.weight"][token, j] = 1.0
        sd["output.weight"][successor, j] = 1.0
    torch.save(sd, folder / fuzzing.PTH)
    (folder / fuzzing.PARAMS).write_text(json.dumps(params))
    (folder / fuzzing.TOKENIZER).write_bytes(fuzzing.tokenizer_model_text())
    return folder


def test_split_characters_never_print_broken(chain_model):
    from llama_nb.model.generate import GenerationStats

    llm = llama_nb.load_model(chain_model, ctx=64)
    ids = llm.tokenizer.encode("A", bos=True, eos=False)
    stats = GenerationStats()
    events = list(llm.generate(ids, 10, stats=stats))
    assert [e.token for e in events] == (CHAIN_A[1:] * 2)[:10]  # the model does what it was built for
    assert [e.text for e in events] == ["", "", "", "🦙", " the", "", "", "", "🦙", " the"]
    assert stats.tail_text == "" and stats.stop_reason == "max_tokens"
    # cut inside the emoji: what was printed is whole, the unfinished tail is one U+FFFD at the end
    stats = GenerationStats()
    texts = [e.text for e in llm.generate(ids, 7, stats=stats)]
    assert "".join(texts) == "🦙 the" and stats.tail_text == "\ufffd"

    ids = llm.tokenizer.encode("B", bos=True, eos=False)
    stats = GenerationStats()
    events = list(llm.generate(ids, 10, stats=stats))
    assert [e.token for e in events] == CHAIN_B[1:] and [e.text for e in events] == ["", ""]
    assert stats.tail_text == "\ufffd" and stats.stop_reason == "stop_token"


def test_split_characters_through_run(chain_model):
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda p: cli("run", p, "--model", chain_model, "--max-tokens", 10), ["A", "B"])
    assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
    assert a.stdout == "🦙 the🦙 the\n"
    assert b.stdout == "\ufffd\n"  # E2 82 then end of text: one replacement character, once


def popen_run(folder, *args):
    """`llama-nb run` with its stdout on a pipe; SIGINT restored in case the test runner ignores it.
    Unbuffered (bufsize=0): communicate() reads the pipe's descriptor itself, so bytes a buffered
    read(4) had already pulled in would be missing from what it returns."""
    return subprocess.Popen([sys.executable, "-m", "llama_nb", "run", *map(str, args), "--model", str(folder)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, bufsize=0,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def read_exactly(stream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_ctrl_c_during_generation(chain_model):
    proc = popen_run(chain_model, "A", "--max-tokens", 50_000, "--ctx", 50_010)
    first = read_exactly(proc.stdout, 4)  # "🦙": generation has started and streams
    proc.send_signal(signal.SIGINT)
    sent = time.perf_counter()
    rest, err = proc.communicate(timeout=60)
    assert time.perf_counter() - sent < 5, "Ctrl-C did not stop generation at once"
    assert proc.returncode == 130, err.decode()
    err = err.decode()
    assert "Traceback" not in err and "stopped by: Ctrl-C" in err, err
    text = (first + rest).decode("utf-8")  # strict: no broken character printed
    assert text.endswith("\n") and text.count("\ufffd") <= 1
    body = text[:-1].removesuffix("\ufffd")  # an emoji cut by Ctrl-C ends as one U+FFFD
    assert body.startswith("🦙") and ("🦙 the" * len(body)).startswith(body), text[-40:]
    assert len(body) < 50_000  # stopped long before --max-tokens


def test_closed_pipe_is_a_quiet_exit(chain_model):
    proc = popen_run(chain_model, "A", "--max-tokens", 50_000, "--ctx", 50_010)
    assert proc.stdout.read(1) == "🦙".encode()[:1]
    proc.stdout.close()  # like `| head -c 1`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) in (0, 141, -signal.SIGPIPE), err
    assert "Traceback" not in err and "Exception ignored" not in err and "BrokenPipe" not in err, err


def test_menu_explains_a_prompt_longer_than_the_context_and_asks_again(base):
    from llama_nb.cli import app

    result = CliRunner().invoke(app, ["menu", "--model", str(base), "--ctx", "4", "--plain"], input="1\nq\n",
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "tokens but --ctx is 4" in result.output and "raise --ctx" in result.output
    assert result.output.count("Select from the predefined prompts") == 2 and result.output.rstrip().endswith("bye")

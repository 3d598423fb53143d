"""Hostile model folders, issue 13, the whole-file classes: what a file IS and how big, and its numbers.

Each class of the red-team report with our own cases, in the style of tests/test_hardening.py
(whose toy folder, tests/fuzzing.py's, these reuse); what hides inside the .pth (colliding keys,
FRAME tricks, files cut short under the map, forged names, the shape cache) is in
tests/test_hostile_structures.py.

    hangs          params.json / tokenizer.model / consolidated.00.pth as a FIFO
    memory         the same files as links to /dev/zero, /dev/urandom, /dev/null; sparse files
                   of 64 GiB and 150 MB; a file that grows while read; a tokenizer of 10M lines
    tracebacks     integers and floats of thousands of digits; a tensor name whose layer index
                   has 5000 digits
    silent         rope_theta / norm_eps / ffn_dim_multiplier that make the forward pass garbage

Every refusal is a one-line CheckpointError naming the file, in bounded time (in a thread with a
deadline, so a hang fails the test instead of blocking the suite).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from llama_nb.errors import CheckpointError, LlamaNbError
from llama_nb.io import files as io_files
from llama_nb.io import tokenizer_model
from llama_nb.io.checkpoint import load_model_files
from llama_nb.io.params import ModelArgs
from llama_nb.io.pth import load_pth
from llama_nb.io.tokenizer import Tokenizer, load_ranks
from tests import fuzzing

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return fuzzing.write_base_model(tmp_path_factory.mktemp("base") / "model")


def copy_folder(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in (fuzzing.PTH, fuzzing.PARAMS, fuzzing.TOKENIZER):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def within(seconds: float, fn, *args):
    """fn(*args) in a daemon thread; fail (instead of hanging the suite) if it takes longer."""
    result: dict = {}

    def run():
        try:
            result["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{getattr(fn, '__name__', fn)} still running after {seconds} s (a hang)"
    if "error" in result:
        raise result["error"]
    return result["value"]


def one_line_error(fn, *args, named: Path, phrases=(), seconds=2.0, kind=CheckpointError) -> str:
    """fn(*args) raises `kind` within `seconds`: one printable line naming `named` and `phrases`."""
    with pytest.raises(kind) as info:
        within(seconds, fn, *args)
    msg = str(info.value)
    assert str(named) in msg and msg.isprintable(), msg  # isprintable: no newline, no escape codes
    for phrase in phrases:
        assert phrase in msg, msg
    return msg


# --- hangs and devices: only regular files are read, and never with a blocking open ---------------

READERS = {  # file -> how a user's load reads it
    fuzzing.PARAMS: lambda path: ModelArgs.from_file(path),
    fuzzing.TOKENIZER: lambda path: Tokenizer(path),
    fuzzing.PTH: lambda path: load_pth(path),
}


@pytest.mark.parametrize("name", list(READERS))
def test_a_fifo_is_refused_without_blocking(base, tmp_path, name):
    folder = copy_folder(base, tmp_path / "m")
    (folder / name).unlink()
    os.mkfifo(folder / name)  # no writer: a plain open() for reading would wait forever
    one_line_error(READERS[name], folder / name, named=folder / name, phrases=["a FIFO (named pipe)"])
    one_line_error(load_model_files, folder, named=folder / name, phrases=["a FIFO"])


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom", "/dev/null"])
@pytest.mark.parametrize("name", list(READERS))
def test_a_link_to_a_device_is_refused_before_reading(base, tmp_path, name, device):
    folder = copy_folder(base, tmp_path / "m")
    (folder / name).unlink()
    (folder / name).symlink_to(device)
    tracemalloc.start()
    try:
        one_line_error(READERS[name], folder / name, named=folder / name, phrases=["a character device"])
        one_line_error(load_model_files, folder, named=folder / name, phrases=["a character device"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5e6, f"peak {peak / 1e6:.1f} MB"


def test_a_folder_where_a_file_should_be(base, tmp_path):
    for name, reader in READERS.items():
        one_line_error(reader, tmp_path, named=tmp_path, phrases=["cannot read: a folder"])


def test_a_link_to_a_regular_file_still_loads(base, tmp_path):
    folder = tmp_path / "links"
    folder.mkdir()
    for name in READERS:
        (folder / name).symlink_to(base / name)
    assert len(load_model_files(folder).checkpoint) == len(load_pth(base / fuzzing.PTH))


def test_a_fifo_params_json_through_the_cli(base, tmp_path):
    folder = copy_folder(base, tmp_path / "m")
    (folder / fuzzing.PARAMS).unlink()
    os.mkfifo(folder / fuzzing.PARAMS)
    proc = subprocess.run([sys.executable, "-m", "llama_nb", "info", "--model", str(folder)], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"error: {folder / fuzzing.PARAMS}: cannot read: a FIFO"), lines


# --- size bounds: checked before reading, and again while reading ------------------------------


def test_oversized_files_are_refused_by_size_before_reading(base, tmp_path):
    big = tmp_path / "params.json"
    with open(big, "wb") as f:  # sparse: 64 GiB claimed, nothing written
        f.truncate(64 << 30)
    one_line_error(ModelArgs.from_file, big, named=big, phrases=["68719476736 bytes; params.json is never more"])
    tok = tmp_path / "tokenizer.model"
    with open(tok, "wb") as f:  # what 10M lines of Meta's format would weigh (~150 MB)
        f.truncate(150 << 20)
    one_line_error(load_ranks, tok, named=tok, phrases=["bytes; a tokenizer.model is never more than"])


def test_a_file_that_grows_while_read_is_refused(tmp_path, monkeypatch):
    """fstat said small, read found more: the bound holds on the bytes read, not on the fstat."""
    path = tmp_path / "params.json"
    path.write_bytes(b" " * 5000 + b"{}")
    real_fstat = os.fstat

    def fstat_before_growth(fd):
        st = real_fstat(fd)
        return os.stat_result((st.st_mode, *st[1:6], 10, *st[7:]))  # st_size = 10

    monkeypatch.setattr(io_files.os, "fstat", fstat_before_growth)
    with pytest.raises(CheckpointError, match="grew while being read \\(past the 10 bytes it had\\)") as info:
        io_files.read_regular_file(path, 1000, "params.json")
    assert str(path) in str(info.value)


# --- the tokenizer stops at its limit, it does not parse first and compare later ---------------------


def tokenizer_lines(n: int) -> list[bytes]:
    """n distinct tokens: the 256 bytes, then 2- and 3-byte strings, with ranks 0..n-1."""
    tokens = [bytes([b]) for b in range(256)] + [bytes([a, b]) for a in range(256) for b in range(256)]
    tokens += [bytes([a, b, c]) for a in range(64) for b in range(256) for c in range(256)]
    import base64

    return [base64.b64encode(t) + b" %d" % rank for rank, t in enumerate(tokens[:n])]


def test_tokenizer_stops_at_the_vocab_size_of_params_json(tmp_path):
    lines = tokenizer_lines(2000)
    lines[1500] = b"!!not base64!! 1500"  # after the limit: never parsed
    path = tmp_path / "tokenizer.model"
    path.write_bytes(b"\n".join(lines) + b"\n")
    msg = one_line_error(Tokenizer, path, 1000 + 256, named=path,
                         phrases=[f"{path}:1001: more than 1000 tokens", "vocab_size allows 1000"])
    assert "base64" not in msg
    lines[1500] = tokenizer_lines(1501)[1500]
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert Tokenizer(path, vocab_size=2000 + 256).num_base_tokens == 2000  # exactly at the limit: loads


def test_tokenizer_without_vocab_size_stops_at_max_base_tokens(tmp_path, monkeypatch):
    monkeypatch.setattr(tokenizer_model, "MAX_BASE_TOKENS", 300)
    path = tmp_path / "tokenizer.model"
    path.write_bytes(b"\n".join(tokenizer_lines(400)) + b"\n")
    one_line_error(load_ranks, path, named=path, phrases=[":301: more than 300 tokens; no Llama tokenizer"])


def test_ten_million_lines_are_refused_at_the_limit_in_bounded_time_and_memory(tmp_path):
    """10M lines fit in 20 MB (under the size bound). Mostly blank, so the token bound alone would
    not stop them: blank lines count against the line bound (tokens + 1000)."""
    path = tmp_path / "tokenizer.model"
    path.write_bytes(b"\n".join(tokenizer_lines(300)) + b"\n" + b"\n" * 10_000_000)
    tracemalloc.start()
    try:
        one_line_error(Tokenizer, path, 128256, named=path, phrases=[":129001: more than 129000 lines for at most "
                                                                      "128000 tokens"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 25e6, f"peak {peak / 1e6:.0f} MB for a 10 MB file"


# --- numbers: bounded in digits (Python's int-to-str limit is 4300) and in range ---------------------


def test_thousands_of_digits(base, tmp_path):
    path = tmp_path / "params.json"
    path.write_text('{"dim": 1' + "0" * 5000 + ', "n_layers": 1, "n_heads": 1, "vocab_size": 1}')
    one_line_error(ModelArgs.from_file, path, named=path, phrases=["an integer of 5001 digits"])
    path.write_text('{"dim": 32, "n_layers": 1, "n_heads": 4, "vocab_size": 576, "norm_eps": 1' + "0" * 5000 + '.5}')
    one_line_error(ModelArgs.from_file, path, named=path, phrases=["key 'norm_eps' must be a positive number"])
    tok = tmp_path / "tokenizer.model"
    tok.write_bytes(b"\n".join(tokenizer_lines(300)[:299]) + b"\nAAAA " + b"9" * 5000 + b"\n")
    one_line_error(load_ranks, tok, named=tok, phrases=[":300: rank of 5000 digits"])
    tok.write_bytes(b"\n".join(tokenizer_lines(300)[:299]) + b"\nAAAA 999999999\n")  # 9 digits: beyond any limit
    one_line_error(load_ranks, tok, named=tok, phrases=[":300: rank 999999999 is beyond the 1048576 tokens"])


def test_a_huge_layer_index_in_a_tensor_name(base, tmp_path):
    folder = copy_folder(base, tmp_path / "m")
    sd = torch.load(base / fuzzing.PTH, weights_only=True)
    sd["layers." + "9" * 5000 + ".x.weight"] = torch.zeros(2, dtype=torch.bfloat16)
    torch.save(sd, folder / fuzzing.PTH)
    one_line_error(load_model_files, folder, named=folder / fuzzing.PTH,
                   phrases=["1 unexpected tensor(s) for a Llama 3.x model: 'layers.999"])


@pytest.mark.parametrize("key,value,phrase", [
    ("rope_theta", 1e-300, "rope_theta=1e-300 is outside [1, 1e+12]"),
    ("rope_theta", 0.5, "rope_theta=0.5 is outside"),
    ("rope_theta", 1e20, "rope_theta=1e+20 is outside"),
    ("norm_eps", 1e-40, "norm_eps=1e-40 is outside [1e-12, 1]"),
    ("norm_eps", 3.0, "norm_eps=3 is outside"),
    ("ffn_dim_multiplier", 1e-30, "makes the FFN hidden size 0"),
])
def test_ranges_that_would_compute_garbage(base, tmp_path, key, value, phrase):
    path = tmp_path / "params.json"
    path.write_text(json.dumps({**json.loads((base / "params.json").read_text()), key: value}))
    one_line_error(ModelArgs.from_file, path, named=path, phrases=[phrase])


def test_the_rope_theta_bound_is_where_the_frequencies_break():
    """Below the bound the frequencies are not those of any trained model: 1e-300 divides by zero."""
    from llama_nb.ops.rope_tables import rope_frequencies

    with np.errstate(divide="ignore"):
        assert not np.isfinite(rope_frequencies(64, 1e-300, None)).all()
    assert np.isfinite(rope_frequencies(64, 1.0, None)).all() and np.isfinite(rope_frequencies(64, 1e12, None)).all()

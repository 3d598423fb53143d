"""The fuzzer's hostile mutations (issue 13), used by tests/fuzzing.py: files that are not files,
files that change between two reads, and pickle structures built to hang, crash or mislead.

    files, what = mutate_files(files, rng)       # one of the folder's files becomes special
    pkl, what = mutate_pickle(pkl, rng)          # data.pkl gets a hostile structure
    write(folder / name, files[name])            # bytes, or a Special (FIFO, link, sparse file)
    change = files.get(CHANGE)                   # a Change, applied between two reads of the .pth

File mutations:
    fifo        one file is a FIFO with no writer (an open() for reading would block forever)
    device      one file is a symlink to /dev/zero, /dev/urandom or /dev/null
    sparse      one file claims gigabytes (sparse: nothing is written)
    digits      an integer of thousands of digits in params.json or as a tokenizer rank
                (Meta folders; in a Hugging Face folder this draw becomes a change)
    change      the .pth (model.safetensors) shrinks (cut at a random byte) or grows (bytes appended) after the
                folder was checked and before its tensors are read (Checkpoint.read_tensors)
Pickle mutations (each re-packed into the zip by tests/fuzzing.py):
    frame       the pickle's opcodes regrouped into FRAMEs, well-formed or not (too long, across
                an opcode, nested); protocol 4, as a FRAME needs
    hidden      a hostile structure behind a FRAME: a 1M-deep dict key, BUILD, a huge memo index
    collide     a metadata dict of up to 50k int keys whose hashes are all 0 (quadratic inserts)
    name        a tensor name turned into one with a 5000-digit layer index, or with a newline
                and terminal escape codes (which an error message must print escaped)

This module imports nothing from tests/fuzzing.py (which imports it).
"""

from __future__ import annotations

import os
import pickletools
import random
import struct
from dataclasses import dataclass
from pathlib import Path

PTH, PARAMS, TOKENIZER = "consolidated.00.pth", "params.json", "tokenizer.model"
CHANGE = "__change__"  # the key of a Change in a mutated folder's files
_M61 = 2**61 - 1  # hash(k * _M61) == 0 for every int k > 0
_FORGED = "\nerror: forged line\x1b[2J\x1b[31m"


@dataclass(frozen=True)
class Special:
    """A file that is not plain bytes: "fifo", "symlink" (to `target`) or "sparse" (`size` bytes)."""

    kind: str
    target: str = ""
    size: int = 0


@dataclass(frozen=True)
class Change:
    """The .pth changes after the folder was checked: "truncate" to `size` bytes, or "append" `data`."""

    kind: str
    size: int = 0
    data: bytes = b""

    def apply(self, path: Path) -> None:
        with open(path, "r+b") as f:
            if self.kind == "truncate":
                f.truncate(self.size)
            else:
                f.seek(0, os.SEEK_END)
                f.write(self.data)


def write(path: Path, data: bytes | Special) -> None:
    if isinstance(data, bytes):
        path.write_bytes(data)
    elif data.kind == "fifo":
        os.mkfifo(path)
    elif data.kind == "symlink":
        path.symlink_to(data.target)
    else:
        with open(path, "wb") as f:
            f.truncate(data.size)


def mutate_files(files: dict, rng: random.Random, weights: str = PTH) -> tuple[dict, str]:
    """One file-level mutation of the folder (see the module docstring); `weights` is the file
    that changes between checking and reading (a Hugging Face folder's model.safetensors)."""
    files = dict(files)
    name = rng.choice(sorted(n for n in files if n != CHANGE))
    kind = rng.choice(["fifo", "device", "sparse", "digits", "change", "change"])
    if kind == "fifo":
        files[name] = Special("fifo")
        return files, f"files: {name} is a FIFO"
    if kind == "device":
        device = rng.choice(["/dev/zero", "/dev/urandom", "/dev/null"])
        files[name] = Special("symlink", target=device)
        return files, f"files: {name} -> {device}"
    if kind == "sparse":
        size = rng.choice([33 << 20, 2 << 30, 64 << 30])
        files[name] = Special("sparse", size=size)
        return files, f"files: {name} is a sparse file of {size} bytes"
    if kind == "digits" and isinstance(files.get(PARAMS), bytes) and isinstance(files.get(TOKENIZER), bytes):
        digits = b"9" * rng.choice([4301, 5000, 100_000])
        if rng.random() < 0.5:
            files[PARAMS] = files[PARAMS].replace(b'"dim": 32', b'"dim": ' + digits)
            return files, f"files: params.json dim has {len(digits)} digits"
        files[TOKENIZER] = files[TOKENIZER].replace(b" 300\n", b" " + digits + b"\n")
        return files, f"files: tokenizer rank 300 has {len(digits)} digits"
    size = len(files[weights]) if isinstance(files[weights], bytes) else 1 << 16
    if rng.random() < 0.6:
        files[CHANGE] = Change("truncate", size=rng.randrange(size))
        return files, f"files: {weights} cut to {files[CHANGE].size} bytes between checking and reading"
    files[CHANGE] = Change("append", data=bytes(rng.randrange(256) for _ in range(rng.choice([1, 100, 70_000]))))
    return files, f"files: {weights} grows by {len(files[CHANGE].data)} bytes between checking and reading"


# --- pickles -------------------------------------------------------------------------------------


def _frame(body: bytes, length: int | None = None) -> bytes:
    return b"\x95" + struct.pack("<Q", len(body) if length is None else length) + body


def _long1(n: int) -> bytes:
    data = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def _unicode(text: str) -> bytes:
    data = text.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(data)) + data


def mutate_pickle(pkl: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One hostile change to a state-dict pickle that ends with STOP, its dict on top of the stack."""
    kind = rng.choice(["frame", "hidden", "collide", "name"])
    starts = [pos for _, _, pos in pickletools.genops(pkl)]  # opcode starts; [0] is PROTO
    body = pkl[starts[1] : -1]  # without PROTO and STOP
    if kind == "frame":
        form = rng.choice(["whole", "per opcode", "too long", "too short", "nested"])
        cuts = [p - starts[1] for p in starts[1:-1]] + [len(body)]
        if form == "whole":
            framed = _frame(body)
        elif form == "per opcode":
            framed = b"".join(_frame(body[a:b]) for a, b in zip(cuts, cuts[1:]))
        elif form == "too long":  # past STOP, which a frame may hold (+1)
            framed = _frame(body, len(body) + rng.choice([2, 2**20, 2**63]))
        elif form == "too short":  # ending inside an opcode (at a boundary it would be a valid frame)
            framed = _frame(body, rng.choice(sorted(set(range(1, len(body))) - set(cuts))))
        else:
            framed = _frame(_frame(body[: cuts[2]]) + body[cuts[2] :])
        return b"\x80\x04" + framed + b".", f"pickle: FRAME {form}"
    if kind == "hidden":
        what, hostile = rng.choice([
            ("a 1M-deep key", b"}" + b")" + b"\x85" * 1_000_000 + b"N" + b"s" + b"0"),
            ("BUILD", b"}" + b"}" + b"b" + b"0"),
            ("a memo index of 2**31-1", b"]" + b"r\xff\xff\xff\x7f" + b"0"),
        ])
        return b"\x80\x04" + _frame(body + hostile) + b".", f"pickle: {what} behind a FRAME"
    if kind == "collide":
        n = rng.choice([1000, 20_000, 50_000])
        keys = b"".join(_long1(k * _M61) + b"N" for k in range(1, n + 1))
        return pkl[:-1] + _unicode("meta") + b"}(" + keys + b"us.", f"pickle: {n} colliding int keys"
    names = [(s, e) for s, e in zip(starts, starts[1:]) if pkl[s : s + 1] == b"X" and b"layers.0." in pkl[s:e]]
    if not names:
        return pkl, "pickle: unchanged"
    s, e = rng.choice(names)
    text = pkl[s + 5 : e].decode()
    new = text.replace("layers.0.", "layers." + "9" * 5000 + ".") if rng.random() < 0.5 else text + _FORGED
    return pkl[:s] + _unicode(new) + pkl[e:], f"pickle: tensor name {new[:20]!r}..."

"""A seeded mutation fuzzer over a tiny valid model folder (used by tests/test_fuzz.py and bench/fuzz.py).

    base = base_files(tmp / "base")                # a valid folder, as {file name: bytes}
    result = run_case(base, seed=7, case=123, workdir=tmp / "w")
    result.outcome                                  # "loaded" or "refused"; anything else raises

Case `case` of seed `seed` always makes the same mutation (its own random.Random(f"{seed}:{case}")),
so a failure found by a long `bench/fuzz.py --cases 100000` run is re-run with `--case N`.

The base folder is Meta's layout at toy size: consolidated.00.pth written by torch.save
(bf16[576, 32] embeddings, 1 layer, GQA 4/2 heads), params.json, and a byte-level tokenizer.model
(256 single bytes + 64 merges; 576 ids with the 256 specials). Mutations, chosen by weight:

    pth bytes     flip bytes anywhere / inside data.pkl / set bf16 weights to NaN, Inf, huge;
                  truncate at a random point
    zip entries   drop, rename, duplicate or compress an entry, then re-pack (torch's 64-byte
                  alignment kept) so the reader sees a well-formed zip with the wrong content
    data.pkl      opcodes deleted, duplicated, swapped, replaced by others (allowed or not),
                  integer and string arguments changed, a live os.system/eval payload inserted;
                  re-packed into the zip so the pickle itself is parsed
    params.json   keys dropped, values changed to wrong types or extremes, JSON broken
    tokenizer     lines dropped, duplicated, swapped, their base64 or rank corrupted
    hostile       tests/fuzz_hostile.py's: FIFOs, links to devices, sparse giants, huge digits,
                  a .pth that shrinks or grows between reads; FRAME tricks, colliding keys,
                  names with 5000-digit layer indices or escape codes in data.pkl

A second base, a Hugging Face folder of the same toy model (tests/hfmodel.py: model.safetensors,
config.json, tokenizer.json, generation_config.json; `hf_base_files`), gets its own mutations:

    safetensors   bytes flipped anywhere / in the header, truncated, the header length changed,
                  header entries edited (dtype, shape, data_offsets, __metadata__, a name given
                  twice, an entry dropped or added), weights set to NaN/Inf
    config.json   keys dropped, values changed to wrong types or extremes, JSON broken
    tokenizer.json  merges dropped or swapped, vocab ids changed, added tokens dropped, bytes flipped
    files         as for the Meta folder (FIFOs, devices, sparse giants; model.safetensors shrinks
                  or grows between checking and reading)

GGUF cases (`run_gguf_case`) start from the same model written as a bf16 GGUF and change it with
tests/fuzz_gguf.py's mutations (every count, length, type and offset of the header; flips,
truncation, NaN data, other ggml types).

The contract each case checks: the folder either loads (load_model_files, Tokenizer, and then
llama_nb.load_model + one forward pass + a few greedy tokens, whose ids must be valid even when
the weights hold NaN) or is refused with a LlamaNbError whose message is one printable line. Any other
exception, a payload that ran (MARKER file), or a case that hangs is a bug.
"""

from __future__ import annotations

import base64
import io
import json
import pickletools
import random
import shutil
import signal
import struct
import tempfile
import traceback
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests import fuzz_gguf, fuzz_hostile

PTH, PARAMS, TOKENIZER = "consolidated.00.pth", "params.json", "tokenizer.model"
SAFETENSORS, CONFIG, TOKENIZER_JSON, GENERATION = "model.safetensors", "config.json", "tokenizer.json", \
    "generation_config.json"
HF_FILES = (SAFETENSORS, CONFIG, TOKENIZER_JSON, GENERATION)
MARKER = "MARKER"  # created by a hostile payload if it ever runs
CTX = 16
BASE_PARAMS = dict(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=256 + 64 + 256, multiple_of=32)
_MERGES = [
    b"th", b"he", b"in", b"er", b"an", b"re", b"on", b" t", b"en", b"at", b"ou", b"ed", b"ha", b"to", b"or", b"it",
    b"is", b"hi", b"es", b"ng", b" a", b" s", b" w", b"nd", b" th", b"the", b" the", b"ing", b"and", b" o", b"ll", b"le",
    b"ve", b"se", b"ar", b"al", b"me", b"de", b"co", b"ro", b"ne", b"ti", b"ra", b"st", b"io", b"ri", b"li", b"ch",
    b"\xc3\xa9", b"\xe2\x80", b"\xe2\x80\x99", b"\xf0\x9f", b"  ", b"\n\n", b"ion", b"ent", b"for", b"tha", b"ter",
    b"was", b"you", b"her", b"all", b"wit",
]


# --- the base folder -------------------------------------------------------------------------------


def tokenizer_model_text() -> bytes:
    """256 single bytes (ranks 0..255) then 64 merges: a valid byte-level BPE tokenizer.model."""
    tokens = [bytes([b]) for b in range(256)] + _MERGES
    assert len(set(tokens)) == len(tokens) == BASE_PARAMS["vocab_size"] - 256
    return b"".join(base64.b64encode(t) + b" %d\n" % rank for rank, t in enumerate(tokens))


def write_base_model(folder: Path) -> Path:
    """The valid toy folder every case starts from (needs torch: test-only)."""
    import torch

    from tests.tinymodel import tiny_params, tiny_state_dict

    folder.mkdir(parents=True, exist_ok=True)
    params = tiny_params(**BASE_PARAMS)
    torch.save(tiny_state_dict(params, seed=11, weight_std=None), folder / PTH)
    (folder / PARAMS).write_text(json.dumps(params) + "\n")
    (folder / TOKENIZER).write_bytes(tokenizer_model_text())
    return folder


def base_files(folder: Path) -> dict[str, bytes]:
    write_base_model(folder)
    return {name: (folder / name).read_bytes() for name in (PTH, PARAMS, TOKENIZER)}


def write_hf_base_model(folder: Path) -> Path:
    """The same toy model as a Hugging Face folder (needs torch, safetensors, transformers: test-only)."""
    from tests import hfmodel

    shape = dict(dim=BASE_PARAMS["dim"], n_layers=BASE_PARAMS["n_layers"], n_heads=BASE_PARAMS["n_heads"],
                 n_kv_heads=BASE_PARAMS["n_kv_heads"], rope="3.1", tied=False)
    return hfmodel.write_small_hf_folder(folder, shape, seed=11)


def hf_base_files(folder: Path) -> dict[str, bytes]:
    write_hf_base_model(folder)
    return {name: (folder / name).read_bytes() for name in HF_FILES}


def warm_up(folder: Path) -> str:
    """load_and_run on a base folder before any case is timed. For the Hugging Face base also on
    copies with every tensor stored as F16 and as F32: a case that changes one tensor's dtype loads
    (the formats mix), and must not pay for compiling that format's kernels within its time limit."""
    detail = load_and_run(folder)
    if (folder / SAFETENSORS).exists():
        import torch
        from safetensors.torch import load_file, save_file

        tensors = load_file(folder / SAFETENSORS)
        with tempfile.TemporaryDirectory() as tmp:  # this process's own: workers share the base folder
            for dtype in (torch.float16, torch.float32):
                copy = Path(tmp) / str(dtype).split(".")[-1]
                shutil.copytree(folder, copy)
                save_file({k: v.to(dtype) for k, v in tensors.items()}, copy / SAFETENSORS)
                load_and_run(copy)
    return detail


def write_gguf_base_model(folder: Path) -> Path:
    """The base folder written as a bf16 GGUF (tests/fuzz_gguf.py): folder/model.gguf, and the
    Meta folder it was made from in folder/meta (not read by the GGUF cases)."""
    fuzz_gguf.gguf_base_bytes(folder / "meta")
    return folder


# each base: its writer and its files (bench/fuzz.py --format); "gguf" cases run run_gguf_case
FORMATS = {"meta": (write_base_model, (PTH, PARAMS, TOKENIZER)), "hf": (write_hf_base_model, HF_FILES),
           "gguf": (write_gguf_base_model, (fuzz_gguf.GGUF,))}


def run_format_case(fmt: str, base: dict[str, bytes], seed: int, case: int, workdir: Path) -> "CaseResult":
    """One case of the base `fmt` (FORMATS), given its files' bytes."""
    if fmt == "gguf":
        return run_gguf_case(base[fuzz_gguf.GGUF], seed, case, workdir)
    return run_case(base, seed, case, workdir)


# --- zip and pickle surgery ------------------------------------------------------------------------


def zip_entries(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [(info.filename, z.read(info)) for info in z.infolist()]


def pack_zip(entries: list[tuple[str, bytes]], compress: set[str] = frozenset()) -> bytes:
    """A zip laid out as torch.save writes it: STORED entries whose data start 64-byte aligned
    (padding in the local header's extra field), so only the mutation differs from a real file."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name": intended by some mutations
        with zipfile.ZipFile(buf, "w") as z:
            for name, data in entries:
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                if name in compress:
                    info.compress_type = zipfile.ZIP_DEFLATED
                else:
                    start = buf.tell() + 30 + len(name.encode()) + 4
                    pad = -start % 64
                    info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad
                z.writestr(info, data)
    return buf.getvalue()


def pickle_name(entries: list[tuple[str, bytes]]) -> str | None:
    return next((n for n, _ in entries if n.endswith("/data.pkl")), None)


def pickle_ops(pkl: bytes) -> list[tuple[int, int]]:
    """(start, end) byte spans of each opcode with its argument."""
    ops = list(pickletools.genops(pkl))
    spans = []
    for k, (_, _, pos) in enumerate(ops):
        end = ops[k + 1][2] if k + 1 < len(ops) else len(pkl)
        spans.append((pos, end))
    return spans


def _glob(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def _unicode(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def payloads(marker: Path) -> list[bytes]:
    """Pickle fragments that create `marker` if executed (each leaves one object on the stack)."""
    cmd = _unicode(f"touch {marker}") + b"\x85"  # ("touch MARKER",)
    code = _unicode(f"open({str(marker)!r}, 'w').close()") + b"\x85"
    return [
        _glob("os", "system") + cmd + b"R",
        _glob("posix", "system") + cmd + b"R",
        _glob("builtins", "eval") + code + b"R",
        _glob("builtins", "exec") + code + b"R",
        b"\x8c\x02os\x8c\x06system\x93" + cmd + b"R",  # STACK_GLOBAL
        b"(" + _unicode(f"touch {marker}") + b"ios\nsystem\n",  # INST
        _glob("subprocess", "Popen") + b"](" + _unicode("touch") + _unicode(str(marker)) + b"e\x85R",
    ]


def _fragments(rng: random.Random) -> list[bytes]:
    """Single opcodes (with arguments) to splice into a pickle: legal ones in wrong places,
    forbidden ones, and arguments at the edges."""
    n = rng.choice([0, 1, 2, 3, 7, 255, 2**16 - 1, 2**31 - 1, -1, -(2**31)])
    return [
        b"(", b"0", b"1", b"2", b"N", b"\x88", b"\x89", b"]", b"}", b")", b"a", b"e", b"s", b"u", b"t", b"l", b"d",
        b"\x85", b"\x86", b"\x87", b"R", b"Q", b"b", b"o", b"\x81", b"\x82\x01", b"\x8f", b"\x94",
        b"J" + struct.pack("<i", n), b"K" + bytes([n & 0xFF]), b"M" + struct.pack("<H", n & 0xFFFF),
        b"\x8a\x08" + struct.pack("<q", n * 2**31),
        b"h" + bytes([n & 0xFF]), b"q" + bytes([n & 0xFF]), b"j" + struct.pack("<I", n & 0xFFFFFFFF),
        b"r" + struct.pack("<I", n & 0xFFFFFFFF), b"g%d\n" % n, b"p%d\n" % n,
        _unicode(rng.choice(["0", "1", "storage", "cpu", "../0", "", "x" * 70, "archive"])),
        _glob("torch._utils", "_rebuild_tensor_v2"), _glob("torch._utils", "_rebuild_parameter"),
        _glob("collections", "OrderedDict"), _glob("torch", "BFloat16Storage"), _glob("torch", "FloatStorage"),
        _glob("torch", "LongStorage"), _glob("torch", "DoubleStorage"), _glob("builtins", "getattr"),
        b"\x8c\x05torch\x8c\x0fBFloat16Storage\x93",
    ]


def mutate_pickle(pkl: bytes, rng: random.Random, marker: Path) -> tuple[bytes, str]:
    spans = pickle_ops(pkl)
    k = rng.randrange(1, len(spans) - 1)  # keep PROTO and STOP: more cases reach the unpickler
    start, end = spans[k]
    kind = rng.choice(["delete", "duplicate", "swap", "replace", "insert", "int", "string", "payload"])
    if kind == "delete":
        return pkl[:start] + pkl[end:], f"pickle: delete opcode at byte {start}"
    if kind == "duplicate":
        return pkl[:end] + pkl[start:end] + pkl[end:], f"pickle: duplicate opcode at byte {start}"
    if kind == "swap":
        s2, e2 = spans[k + 1] if k + 2 < len(spans) else spans[k - 1]
        (a0, a1), (b0, b1) = sorted([(start, end), (s2, e2)])
        return pkl[:a0] + pkl[b0:b1] + pkl[a1:b0] + pkl[a0:a1] + pkl[b1:], f"pickle: swap opcodes at {a0}, {b0}"
    if kind in ("replace", "insert"):
        frag = rng.choice(_fragments(rng))
        cut = end if kind == "replace" else start
        return pkl[:start] + frag + pkl[cut:], f"pickle: {kind} at byte {start} with {frag[:24]!r}"
    if kind == "payload":
        frag = rng.choice(payloads(marker)) + rng.choice([b"0", b"", b"a", b"s"])
        return pkl[:start] + frag + pkl[start:], f"pickle: payload at byte {start}: {frag[:32]!r}"
    # arguments: change an integer or a string in place (same opcode, new value)
    ints = [(s, e) for s, e in spans if pkl[s : s + 1] in (b"K", b"M", b"J")]
    strs = [(s, e) for s, e in spans if pkl[s : s + 1] == b"X"]
    pool = ints if kind == "int" and ints else strs
    if not pool:
        return pkl, "pickle: unchanged"
    s, e = rng.choice(pool)
    if pkl[s : s + 1] == b"X":
        text = rng.choice(["0", "1", "99", "storage", "cpu", "module", "../data.pkl", "", "é", "layers.0.x"])
        return pkl[:s] + _unicode(text) + pkl[e:], f"pickle: string at byte {s} -> {text!r}"
    value = rng.choice([0, 1, 2, 3, 31, 32, 33, 63, 64, 575, 576, 4096, 2**20, 2**31 - 1, -1, -(2**31)])
    return pkl[:s] + b"J" + struct.pack("<i", value) + pkl[e:], f"pickle: int at byte {s} -> {value}"


# --- mutations of each file ------------------------------------------------------------------------


def _flip(data: bytes, rng: random.Random, lo: int = 0, hi: int | None = None) -> bytes:
    raw = bytearray(data)
    hi = len(raw) if hi is None else hi
    for _ in range(rng.randint(1, 8)):
        raw[rng.randrange(lo, hi)] = rng.randrange(256)
    return bytes(raw)


def mutate_pth(data: bytes, rng: random.Random, marker: Path) -> tuple[bytes, str]:
    kind = rng.choice(["flip", "flip_pickle", "weights", "truncate", "drop", "rename", "duplicate", "compress",
                       "pickle", "pickle", "pickle", "pickle", "hostile"])
    try:
        entries = zip_entries(data)
        pkl_name = pickle_name(entries)
        pickle_ops(dict(entries)[pkl_name])
    except Exception:  # noqa: BLE001 - a second mutation of an already broken file: bytes only
        entries, pkl_name, kind = [], None, rng.choice(["flip", "truncate"])
    names = [n for n, _ in entries]
    if kind == "flip":
        return _flip(data, rng), "pth: bytes flipped anywhere"
    if kind == "truncate":
        cut = rng.randrange(len(data))
        return data[:cut], f"pth: truncated at byte {cut} of {len(data)}"
    if kind == "flip_pickle":
        start = data.find(b"\x80\x02")  # data.pkl comes first in a torch zip
        return _flip(data, rng, start, start + 700), "pth: bytes flipped inside data.pkl"
    if kind == "weights":  # a different (maybe NaN/Inf) weight: still a loadable file
        k = rng.choice([i for i, n in enumerate(names) if "/data/" in n])
        raw = bytearray(entries[k][1])
        special = rng.choice([0x7FC0, 0x7F80, 0xFF80, 0x7F7F, 0x0001, rng.randrange(65536)])
        for _ in range(rng.randint(1, 16)):
            i = rng.randrange(len(raw) // 2)
            raw[2 * i : 2 * i + 2] = struct.pack("<H", special)
        entries[k] = (names[k], bytes(raw))
        return pack_zip(entries), f"pth: weights in {names[k]} set to bf16 0x{special:04x}"
    if kind == "drop":
        k = rng.randrange(len(entries))
        return pack_zip(entries[:k] + entries[k + 1 :]), f"zip: entry {names[k]} dropped"
    if kind == "rename":
        k = rng.randrange(len(entries))
        name = names[k]
        new = rng.choice([name + "x", name.upper(), name.replace("/", "/../", 1), name.rsplit("/", 1)[0] + "/1",
                          "other/" + name.split("/", 1)[-1], name.replace("data.pkl", "data.pickle")])
        entries[k] = (new, entries[k][1])
        return pack_zip(entries), f"zip: entry {name} renamed {new}"
    if kind == "duplicate":
        k = rng.randrange(len(entries))
        j = rng.randrange(len(entries) + 1)
        return pack_zip(entries[:j] + [entries[k]] + entries[j:]), f"zip: entry {names[k]} duplicated"
    if kind == "compress":
        k = rng.randrange(len(entries))
        return pack_zip(entries, compress={names[k]}), f"zip: entry {names[k]} deflated"
    pkl = dict(entries)[pkl_name]
    new_pkl, what = fuzz_hostile.mutate_pickle(pkl, rng) if kind == "hostile" else mutate_pickle(pkl, rng, marker)
    return pack_zip([(n, new_pkl if n == pkl_name else d) for n, d in entries]), what


def mutate_params(data: bytes, rng: random.Random, name: str = PARAMS,
                  optional: tuple[str, ...] = ("ffn_dim_multiplier", "n_kv_heads", "use_scaled_rope")) -> tuple[bytes, str]:
    """A JSON object of hyperparameters (params.json, config.json, generation_config.json) mutated;
    `optional`: keys the file may lack, which a mutation may add."""
    kind = rng.choice(["value", "value", "drop", "break", "bytes", "top"])
    if kind == "break":
        cut = rng.randrange(len(data))
        return data[:cut], f"{name}: truncated at {cut}"
    if kind == "bytes":
        return _flip(data, rng), f"{name}: bytes flipped"
    if kind == "top":
        text = rng.choice(["[]", "null", "3", '"dim"', "[" * 100_000, '{"dim": ' * 50_000])
        return text.encode(), f"{name}: {text[:12]}..."
    try:
        params = json.loads(data)
        assert isinstance(params, dict)
    except Exception:  # noqa: BLE001 - a second mutation of an already broken file: bytes only
        return _flip(data, rng), f"{name}: bytes flipped"
    key = rng.choice(sorted(params) + list(optional))
    if kind == "drop":
        params.pop(key, None)
        return json.dumps(params).encode(), f"{name}: {key} dropped"
    value = rng.choice([0, -1, 1, 2, 3, 7, 64, 2**31, 2**64, 10**400 // 10**390, 0.5, 1e-30, 1e30, 1e308, -2.5, True,
                        False, None, "4", [], {}, params.get(key, 1) * 2 if isinstance(params.get(key), int) else 2])
    params[key] = value
    return json.dumps(params).encode(), f"{name}: {key} = {value!r}"


def mutate_tokenizer(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    try:
        return _mutate_lines(data, rng)
    except (ValueError, IndexError):  # a second mutation of an already broken file: bytes only
        return (_flip(data, rng) if data else b"\x00"), "tokenizer.model: bytes flipped"


def _mutate_lines(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    lines = data.split(b"\n")
    k = rng.randrange(len(lines) - 1)  # the last element is the "" after the final newline
    kind = rng.choice(["drop", "duplicate", "swap_ranks", "base64", "rank", "fields", "bytes", "empty"])
    if kind == "drop":
        del lines[k]
    elif kind == "duplicate":
        lines.insert(k, lines[k])
    elif kind == "swap_ranks":  # a permuted vocabulary: still valid, different ids
        j = rng.randrange(len(lines) - 1)
        (a, ra), (b, rb) = lines[k].split(), lines[j].split()
        lines[k], lines[j] = a + b" " + rb, b + b" " + ra
    elif kind == "base64":
        lines[k] = rng.choice([b"@@@@", b"", b"QQ=", b"QUJD" * 40]) + b" " + lines[k].split()[-1]
    elif kind == "rank":
        lines[k] = lines[k].split()[0] + b" " + rng.choice([b"-1", b"x", b"999999", b"+3", b"1_0", b"0", b"576"])
    elif kind == "fields":
        lines[k] += rng.choice([b" 7", b"\t", b" x y"])
    elif kind == "bytes":
        return _flip(data, rng), "tokenizer.model: bytes flipped"
    else:
        return b"", "tokenizer.model: empty"
    return b"\n".join(lines), f"tokenizer.model: line {k + 1} {kind}"


def mutate(files: dict[str, bytes], rng: random.Random, marker: Path) -> tuple[dict[str, bytes], list[str]]:
    """One or two mutations of the folder's files; returns the new files and what was done."""
    if CONFIG in files:
        return mutate_hf(files, rng)
    files = dict(files)
    done = []
    for _ in range(1 if rng.random() < 0.85 else 2):
        target = rng.choices([PTH, PARAMS, TOKENIZER, "files"], weights=[70, 15, 15, 10])[0]
        if target == "files" or not isinstance(files[target], bytes):  # a FIFO or a link has no bytes to mutate
            files, what = fuzz_hostile.mutate_files(files, rng)
        elif target == PTH:
            files[PTH], what = mutate_pth(files[PTH], rng, marker)
        elif target == PARAMS:
            files[PARAMS], what = mutate_params(files[PARAMS], rng)
        else:
            files[TOKENIZER], what = mutate_tokenizer(files[TOKENIZER], rng)
        done.append(what)
    return files, done


# --- mutations of a Hugging Face folder -------------------------------------------------------------


def _header(data: bytes) -> tuple[dict, bytes]:
    """A safetensors file's header (parsed) and its data section."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _pack_header(header: dict | bytes, body: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def mutate_safetensors(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    kind = rng.choice(["flip", "flip_header", "truncate", "length", "weights", "entry", "entry", "entry",
                       "duplicate", "drop", "add", "metadata"])
    try:
        header, body = _header(data)
        names = sorted(k for k in header if k != "__metadata__")
        assert names
    except Exception:  # noqa: BLE001 - a second mutation of an already broken file: bytes only
        header, body, names, kind = {}, b"", [], rng.choice(["flip", "truncate"])
    if kind == "flip":
        return _flip(data, rng), "safetensors: bytes flipped anywhere"
    if kind == "truncate":
        cut = rng.randrange(len(data))
        return data[:cut], f"safetensors: truncated at byte {cut} of {len(data)}"
    if kind == "flip_header":
        return _flip(data, rng, 0, min(len(data), 8 + len(json.dumps(header)))), "safetensors: header bytes flipped"
    if kind == "length":
        n = rng.choice([0, 1, 7, len(data), len(data) - 8, 2**31, 2**63, 2**64 - 1])
        return struct.pack("<Q", n) + data[8:], f"safetensors: header length set to {n}"
    name = rng.choice(names)
    if kind == "weights":
        offsets = header[name].get("data_offsets") if isinstance(header[name], dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] < offsets[1] - 1 < len(body)):  # an entry a first mutation broke
            return _flip(data, rng), "safetensors: bytes flipped anywhere"
        begin, end = offsets
        raw = bytearray(body)
        special = rng.choice([0x7FC0, 0x7F80, 0xFF80, 0x7F7F, 0x0001, rng.randrange(65536)])
        for _ in range(rng.randint(1, 16)):
            i = rng.randrange(begin, end, 2)
            raw[i : i + 2] = struct.pack("<H", special)
        return _pack_header(header, bytes(raw)), f"safetensors: weights of {name} set to bf16 0x{special:04x}"
    if not isinstance(header[name], dict):
        return _flip(data, rng), "safetensors: bytes flipped anywhere"
    if kind == "entry":
        field = rng.choice(["dtype", "shape", "data_offsets"])
        value = {"dtype": lambda: rng.choice(["F16", "F32", "F64", "I8", "U8", "BOOL", "F8_E4M3", "bf16", 3, None]),
                 "shape": lambda: rng.choice([[], [0], [-1, 32], [32], [32, 32, 1], [2**40, 2**40], [True], "32",
                                              list(header[name].get("shape") or [])[::-1]]),
                 "data_offsets": lambda: rng.choice([[0, 0], [0, 64], [1, 2**63], [-2, 0], [2, 1], [0],
                                                     [len(body) - 64, len(body)], [len(body), len(body) + 64]])}[field]()
        header[name][field] = value
        return _pack_header(header, body), f"safetensors: {name}.{field} = {value!r}"
    if kind == "duplicate":  # the same name twice in the JSON text: the second entry another tensor's
        other = header[rng.choice(names)]
        text = json.dumps(header)[:-1] + f", {json.dumps(name)}: {json.dumps(other)}}}"
        return _pack_header(text.encode(), body), f"safetensors: {name} appears twice"
    if kind == "drop":
        del header[name]
        return _pack_header(header, body), f"safetensors: entry {name} dropped"
    if kind == "add":
        new = rng.choice(["model.layers.1.mlp.up_proj.weight", "model.rotary_emb.inv_freq", name + "x", "lm_head.bias"])
        header[new] = dict(header[name])
        return _pack_header(header, body), f"safetensors: entry {new} added as a copy of {name}"
    header["__metadata__"] = rng.choice([{"format": 3}, [], "pt", {"format": "pt", "x": None}])
    return _pack_header(header, body), f"safetensors: __metadata__ = {header['__metadata__']!r}"


def mutate_tokenizer_json(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    kind = rng.choice(["merge_drop", "merge_swap", "vocab_id", "added_drop", "added_id", "bytes", "truncate"])
    try:
        tok = json.loads(data)
        merges, vocab, added = tok["model"]["merges"], tok["model"]["vocab"], tok["added_tokens"]
        assert merges and vocab and added
    except Exception:  # noqa: BLE001 - a second mutation of an already broken file: bytes only
        kind = rng.choice(["bytes", "truncate"])
    if kind == "bytes":
        return _flip(data, rng), "tokenizer.json: bytes flipped"
    if kind == "truncate":
        cut = rng.randrange(len(data))
        return data[:cut], f"tokenizer.json: truncated at {cut}"
    if kind == "merge_drop":
        k = rng.randrange(len(merges))
        del merges[k]
        what = f"merge {k} dropped"
    elif kind == "merge_swap":
        i, j = rng.randrange(len(merges)), rng.randrange(len(merges))
        merges[i], merges[j] = merges[j], merges[i]
        what = f"merges {i} and {j} swapped"
    elif kind == "vocab_id":
        token = rng.choice(sorted(vocab))
        vocab[token] = rng.choice([0, 255, 319, 320, 575, 10**6, -1, "7", None])
        what = f"vocab id of {token!r} = {vocab[token]!r}"
    elif kind == "added_drop":
        k = rng.randrange(len(added))
        what = f"added token {added.pop(k)['content']} dropped"
    else:
        k = rng.randrange(len(added))
        added[k]["id"] = rng.choice([0, 319, 575, 576, 2**40, "x"])
        what = f"added token {added[k]['content']} id = {added[k]['id']!r}"
    return json.dumps(tok).encode(), f"tokenizer.json: {what}"


def mutate_hf(files: dict, rng: random.Random) -> tuple[dict, list[str]]:
    """One or two mutations of a Hugging Face folder's files."""
    files = dict(files)
    done = []
    for _ in range(1 if rng.random() < 0.85 else 2):
        target = rng.choices([SAFETENSORS, CONFIG, TOKENIZER_JSON, GENERATION, "files"], weights=[55, 15, 12, 8, 10])[0]
        if target == "files" or not isinstance(files[target], bytes):
            files, what = fuzz_hostile.mutate_files(files, rng, weights=SAFETENSORS)
        elif target == SAFETENSORS:
            files[target], what = mutate_safetensors(files[target], rng)
        elif target == TOKENIZER_JSON:
            files[target], what = mutate_tokenizer_json(files[target], rng)
        else:
            optional = ("num_key_value_heads", "head_dim", "rope_parameters", "tie_word_embeddings", "attention_bias") \
                if target == CONFIG else ("bos_token_id",)
            files[target], what = mutate_params(files[target], rng, target, optional)
        done.append(what)
    return files, done


# --- one case --------------------------------------------------------------------------------------


@dataclass
class CaseResult:
    case: int
    outcome: str  # "loaded" | "refused"
    mutations: list[str]
    detail: str  # the error line, or what the forward pass produced
    seconds: float


class FuzzFailure(AssertionError):
    """A case broke the contract: another exception type, a multi-line message, or a payload ran."""


class CaseTimeout(Exception):
    pass


@contextmanager
def time_limit(seconds: float):
    """Raise CaseTimeout in the main thread after `seconds` (POSIX; the kernels return often)."""
    def on_alarm(signum, frame):
        raise CaseTimeout(f"case took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_gguf_case(base_gguf: bytes, seed: int, case: int, workdir: Path) -> CaseResult:
    """A GGUF case: the base folder as a GGUF (tests/fuzz_gguf.py), mutated once or twice, alone in
    its folder (which loads as that GGUF); the same contract as the folder's cases."""
    rng = random.Random(f"gguf:{seed}:{case}")
    data, mutations = base_gguf, []
    for _ in range(1 if rng.random() < 0.85 else 2):
        data, what = fuzz_gguf.mutate_gguf(data, rng) if len(data) > 24 else (data, "gguf: too short to mutate")
        mutations.append(what)
    return check_case({fuzz_gguf.GGUF: data}, mutations, workdir / f"gguf{case}", case)


def run_case(base: dict[str, bytes], seed: int, case: int, workdir: Path) -> CaseResult:
    """Mutate `base`, write it to workdir/case, load it; raise FuzzFailure if the contract breaks."""
    folder = workdir / f"case{case}"
    files, mutations = mutate(base, random.Random(f"{seed}:{case}"), folder / MARKER)
    return check_case(files, mutations, folder, case)


def check_case(files: dict, mutations: list[str], folder: Path, case: int = -1) -> CaseResult:
    """Write `files` to `folder` (emptied first), load it; raise FuzzFailure if the contract breaks."""
    import time

    from llama_nb.errors import LlamaNbError

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    marker = folder / MARKER
    write_folder(folder, files)
    t0 = time.perf_counter()
    try:
        detail = load_and_run(folder, files.get(fuzz_hostile.CHANGE))
        outcome = "loaded"
    except LlamaNbError as exc:
        detail, outcome = str(exc), "refused"
        if not detail.isprintable() or not detail:  # a newline or an escape code from a file's name
            raise FuzzFailure(f"case {case} ({'; '.join(mutations)}): error message is not one line: {detail!r}")
    except Exception as exc:  # noqa: BLE001 - the point: nothing else may escape
        tb = traceback.format_exc(limit=-6)
        raise FuzzFailure(f"case {case} ({'; '.join(mutations)}): {type(exc).__name__}: {exc}\n{tb}") from exc
    finally:
        if marker.exists():
            raise FuzzFailure(f"case {case} ({'; '.join(mutations)}): a payload RAN (marker file created)")
    shutil.rmtree(folder, ignore_errors=True)
    return CaseResult(case, outcome, mutations, detail, time.perf_counter() - t0)


def write_folder(folder: Path, files: dict) -> None:
    """The mutated files on disk (FIFOs, links and sparse files too); a Change is not a file."""
    for name, data in files.items():
        if name != fuzz_hostile.CHANGE:
            fuzz_hostile.write(folder / name, data)


def load_and_run(folder: Path, change: fuzz_hostile.Change | None = None) -> str:
    """What a user does with a folder: read it, then load the model and generate a few tokens.
    A `change` to the .pth is made after the folder was checked, before its tensors are read."""
    import llama_nb
    from llama_nb.io.checkpoint import load_model_files

    files = load_model_files(folder)
    if change is not None:
        change.apply(folder / (SAFETENSORS if (folder / CONFIG).exists() else PTH))
        files.checkpoint.read_tensors()  # a file cut short: a CheckpointError, never a SIGBUS
    tokenizer = files.load_tokenizer()  # tokenizer.model, or a GGUF's tokenizer.ggml.* metadata
    llm = llama_nb.load_model(folder, ctx=CTX)
    ids = tokenizer.encode("the cat", bos=True, eos=False)
    logits = llm.forward(ids, 0)
    vocab = llm.args.vocab_size
    if logits.shape != (vocab,) or logits.dtype != np.float32:
        raise FuzzFailure(f"logits are {logits.dtype}{list(logits.shape)}, expected float32[{vocab}]")
    tokens = [event.token for event in llm.generate(ids, 3)]
    if not all(0 <= t < vocab for t in tokens):
        raise FuzzFailure(f"generated ids {tokens} outside [0, {vocab})")
    finite = bool(np.isfinite(logits).all())
    return f"tokens {tokens}, logits {'finite' if finite else 'with NaN/Inf'}"

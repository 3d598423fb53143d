"""GGUF mutations for the fuzzer (tests/fuzzing.py): a valid tiny GGUF, changed field by field.

    base = gguf_base_bytes(tmp / "base")      # the fuzz base folder written as a bf16 GGUF by llama_nb
    data, what = mutate_gguf(base, rng)

`fields(data)` walks the file's header with its own parser (not llama_nb's) and lists every
number the reader must distrust: the counts, each string's length, each value type, each array's
item type and count, each tensor's n_dims, dimensions, ggml type and offset. Mutations, by weight:

    field      one of those set to an extreme (0, 1, 2^31, 2^32 - 1, 2^63, 2^64 - 1, ...) or +-1
    flip       bytes flipped in the header, or anywhere
    truncate   the file cut at a random point (inside the header, or the tensor data)
    data       a tensor's values set to NaN, Inf or the largest bf16
    type       a tensor's ggml type set to another type (Q4_0, Q8_0, IQ2_XXS, ...): sizes change
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

GGUF = "model.gguf"
_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_EXTREMES = [0, 1, 2, 3, 5, 31, 32, 33, 255, 256, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63, 2**64 - 1]


def gguf_base_bytes(folder: Path) -> bytes:
    """The fuzz base folder (tests/fuzzing.py) as a bf16 GGUF written by llama_nb's quantize."""
    from llama_nb.model.quantize import quantize_model
    from tests import fuzzing

    fuzzing.write_base_model(folder)
    quantize_model(folder, "bf16", folder.parent / GGUF)
    return (folder.parent / GGUF).read_bytes()


def fields(data: bytes) -> list[tuple[int, int, str]]:
    """(byte offset, width in bytes, what) of every count, length, type and offset in the header."""
    out: list[tuple[int, int, str]] = [(8, 8, "n_tensors"), (16, 8, "n_kv")]
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    pos = 24

    def string(what: str) -> None:
        nonlocal pos
        out.append((pos, 8, f"{what} length"))
        (n,) = struct.unpack_from("<Q", data, pos)
        pos += 8 + n

    def value(kind: int, what: str) -> None:
        nonlocal pos
        if kind == 8:
            string(what)
        elif kind == 9:
            out.append((pos, 4, f"{what} item type"))
            out.append((pos + 4, 8, f"{what} count"))
            item, count = struct.unpack_from("<IQ", data, pos)
            if count > len(data):  # mutated already: nothing sensible follows
                raise struct.error("count past the file")
            pos += 12
            if item in _SIZES:
                pos += _SIZES[item] * count
            else:
                for i in range(count):
                    value(item, f"{what}[{i}]" if i < 3 else what)
        else:
            pos += _SIZES[kind]

    try:  # a file mutated once already may not parse to its end: keep the fields found so far
        for k in range(n_kv):
            string(f"key {k}")
            out.append((pos, 4, f"key {k} value type"))
            (kind,) = struct.unpack_from("<I", data, pos)
            pos += 4
            value(kind, f"key {k} value")
        for t in range(n_tensors):
            string(f"tensor {t} name")
            out.append((pos, 4, f"tensor {t} n_dims"))
            (n_dims,) = struct.unpack_from("<I", data, pos)
            if n_dims > 4:  # mutated already: nothing sensible follows
                break
            pos += 4
            out += [(pos + 8 * d, 8, f"tensor {t} ne[{d}]") for d in range(n_dims)]
            pos += 8 * n_dims
            out += [(pos, 4, f"tensor {t} type"), (pos + 4, 8, f"tensor {t} offset")]
            pos += 12
    except (struct.error, KeyError, RecursionError, OverflowError):
        pass
    out = [(o, w, what) for o, w, what in out if o + w <= len(data)]
    out.append((min(pos, len(data)), 0, "end of header"))
    return out


def _set(data: bytes, offset: int, width: int, value: int) -> bytes:
    value %= 1 << (8 * width)
    return data[:offset] + value.to_bytes(width, "little") + data[offset + width:]


def mutate_gguf(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One mutation of a valid GGUF file (see the module docstring)."""
    table = fields(data)
    header_end = max(1, min(table[-1][0], len(data) - 1))  # a mutated file's "header" may be all of it
    kind = rng.choices(["field", "flip", "truncate", "data", "type"], weights=[45, 20, 15, 10, 10])[0]
    if kind == "field":  # a kind of field first (576 token lengths are one kind), then one of them
        what = rng.choice(sorted({what for _, _, what in table[:-1]}))
        offset, width, what = rng.choice([f for f in table[:-1] if f[2] == what])
        old = int.from_bytes(data[offset:offset + width], "little")
        new = rng.choice(_EXTREMES + [old + 1, old - 1, old * 2, rng.randrange(1 << (8 * width))])
        return _set(data, offset, width, new), f"gguf: {what} {old} -> {new % (1 << (8 * width))}"
    if kind == "flip":
        hi = header_end if rng.random() < 0.7 else len(data)
        out = bytearray(data)
        for _ in range(rng.choice([1, 1, 2, 8])):
            out[rng.randrange(hi)] ^= 1 << rng.randrange(8)
        return bytes(out), f"gguf: bytes flipped below {hi}"
    if kind == "truncate":
        cut = rng.randrange(header_end) if rng.random() < 0.6 else rng.randrange(header_end, len(data))
        return data[:cut], f"gguf: truncated at {cut} of {len(data)}"
    tensors = [(o, w, what) for o, w, what in table if what.endswith(" offset") and o >= 4]
    if not tensors:
        return data[:-1], "gguf: truncated by one byte (no tensor entry left to change)"
    offset, width, what = rng.choice(tensors)
    if kind == "type":
        new = rng.choice([0, 2, 8, 12, 14, 16, 30, 39, 99])  # not F16: a bf16 matrix as F16 is a valid model
        # whose f16 kernels would compile inside the case's time limit
        return _set(data, offset - 4, 4, new), f"gguf: {what.replace('offset', 'type')} -> {new}"
    start = (header_end + 31) // 32 * 32 + int.from_bytes(data[offset:offset + 8], "little")
    bits = rng.choice([b"\xc0\x7f", b"\x80\x7f", b"\x7f\x7f", b"\x80\xff"])
    out = bytearray(data)
    for i in range(start, min(len(data) - 1, start + 64), 2):
        out[i:i + 2] = bits
    return bytes(out), f"gguf: {what.replace(' offset', '')} data set to {bits.hex()}"

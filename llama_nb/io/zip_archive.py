"""The zip layer of a torch.save checkpoint: the central directory, local headers, one read-only map.

A .pth file written by torch >= 1.6 is a zip archive whose entries are STORED (not compressed):

    <prefix>/data.pkl       the pickle of the state dict (read by llama_nb.io.pth)
    <prefix>/data/<key>     the raw little-endian bytes of storage `key`
    <prefix>/byteorder      "little" (absent in files from older torch: little)

`Archive.open` reads the central directory with zipfile (refusing duplicate names and anything but
one `<prefix>/data.pkl`) and maps the whole file once (np.memmap, mode "r"); `Archive.entry` finds
where an entry's bytes are from its LOCAL header, checking that they are STORED, unencrypted,
consistent with the central directory and inside the file, so a view at that offset never
reaches past the end of the map.
"""

from __future__ import annotations

import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llama_nb.errors import CheckpointError


class Refused(Exception):
    """Raised inside unpickling; load_pth adds the file name and turns it into CheckpointError.

    `Refused("refusing global os.system", "why")` reads "refusing global os.system in FILE: why".
    """

    def located(self, where: str) -> str:
        head, *detail = self.args
        return f"{head} in {where}" + (f": {detail[0]}" if detail else "")


@dataclass(frozen=True)
class Entry:
    name: str
    offset: int  # byte offset of the entry's data in the file, from its LOCAL header
    size: int


_LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # signature .. name length, extra length: 30 bytes
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"  # pickled torch magic number


class Archive:
    """The zip directory of a .pth file and one read-only map of all of it."""

    def __init__(self, path: Path, mmap: np.memmap, infos: dict[str, zipfile.ZipInfo], pickle_name: str):
        self.path, self.mmap, self.infos, self.pickle_name = path, mmap, infos, pickle_name
        self.prefix = pickle_name[: -len("/data.pkl")]
        self._entries: dict[str, Entry] = {}

    @classmethod
    def open(cls, path: Path) -> "Archive":
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

    def entry(self, name: str) -> Entry:
        """Where an entry's bytes are: validated STORED, inside the file, local header consistent.

        The data offset comes from the entry's local header (30 bytes + name + extra field, which
        torch pads so data is 64-byte aligned), not the central directory, whose extra field differs.
        """
        if name in self._entries:
            return self._entries[name]
        info = self.infos.get(name)
        if info is None:
            raise Refused(f"missing zip entry {name!r}")
        where = f"zip entry {name!r}"
        if info.flag_bits & 0x1:
            raise Refused(f"{where} is encrypted")
        if info.compress_type != zipfile.ZIP_STORED:
            raise Refused(
                f"{where} is compressed (zip method {info.compress_type}); torch.save stores entries "
                "uncompressed so they can be memory-mapped, and llama_nb reads only such files"
            )
        mm, end = self.mmap, len(self.mmap)
        start = info.header_offset
        if start < 0 or start + _LOCAL_HEADER.size > end:
            raise Refused(f"{where}: local header offset {start} is outside the file ({end} bytes)")
        sig, _ver, _flags, method, _t, _d, _crc, _csize, _usize, nlen, xlen = _LOCAL_HEADER.unpack(
            bytes(mm[start : start + _LOCAL_HEADER.size])
        )
        if sig != b"PK\x03\x04":
            raise Refused(f"{where}: no local file header at offset {start}")
        if method != zipfile.ZIP_STORED:
            raise Refused(f"{where}: local header says compressed (method {method})")
        name_start = start + _LOCAL_HEADER.size
        local_name = bytes(mm[name_start : name_start + nlen])
        if local_name.decode("utf-8", "replace") != info.orig_filename:
            raise Refused(f"{where}: local header names {local_name[:60]!r}; the archive is inconsistent")
        data = name_start + nlen + xlen
        if info.compress_size != info.file_size or data + info.file_size > end:
            raise Refused(f"{where}: {info.file_size} bytes at offset {data} do not fit in the file ({end} bytes)")
        entry = Entry(name, data, info.file_size)
        self._entries[name] = entry
        return entry

    def read(self, name: str, limit: int) -> bytes:
        try:
            entry = self.entry(name)
        except Refused as exc:
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

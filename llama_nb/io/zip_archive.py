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
from typing import BinaryIO

import numpy as np

from llama_nb.errors import CheckpointError, one_line, shown
from llama_nb.io.files import FileEnded, open_regular_file, pread_exactly


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
    """The zip directory of a .pth file, the open file, and one read-only map of all of it.

    Headers and data.pkl are read with os.pread from the open file, never through the map: a file
    cut short while it is read gives a CheckpointError, where touching a map past the file's new
    end is a SIGBUS that kills the process. Use it as a context manager (it closes the file; the
    map stays valid on its own).
    """

    def __init__(self, path: Path, file: BinaryIO, mmap: np.memmap, infos: dict[str, zipfile.ZipInfo], pickle_name: str):
        self.path, self.file, self.mmap, self.infos, self.pickle_name = path, file, mmap, infos, pickle_name
        self.prefix = pickle_name[: -len("/data.pkl")]
        self._entries: dict[str, Entry] = {}

    def __enter__(self) -> "Archive":
        return self

    def __exit__(self, *exc_info) -> None:
        self.file.close()

    @classmethod
    def open(cls, path: Path) -> "Archive":
        file = open_regular_file(path, "a .pth checkpoint")  # no FIFO, device or folder
        try:
            archive = cls._from_file(path, file)
            archive._check_byteorder()
            return archive
        except BaseException:
            file.close()
            raise

    @classmethod
    def _from_file(cls, path: Path, file: BinaryIO) -> "Archive":
        try:
            head = file.read(512)
            try:
                infolist = zipfile.ZipFile(file).infolist()
            except Exception as exc:  # noqa: BLE001 - BadZipFile, EOFError, struct.error, ... on garbage
                raise CheckpointError(_not_a_zip(path, head, exc)) from None
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from None
        infos: dict[str, zipfile.ZipInfo] = {}
        for info in infolist:
            if info.filename in infos:
                raise CheckpointError(f"{path}: zip entry {shown(info.filename)} appears twice; refusing an ambiguous archive")
            infos[info.filename] = info
        pickles = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            found = ", ".join(shown(name) for name in sorted(infos)[:5]) or "no entries"
            raise CheckpointError(
                f"{path}: expected exactly one '<name>/data.pkl' entry as torch.save writes, found "
                f"{len(pickles)} ({found}); is this a torch checkpoint?"
            )
        try:
            mm = np.memmap(file, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: cannot memory-map: {exc}") from None
        return cls(path, file, mm, infos, pickles[0])

    def pread(self, offset: int, size: int) -> bytes:
        """`size` bytes of the file from `offset`; Refused when the file ends before them."""
        try:
            return pread_exactly(self.file.fileno(), offset, size)
        except OSError as exc:
            raise Refused(f"cannot read {size} bytes at offset {offset}: {exc.strerror or exc}") from None
        except FileEnded:
            raise Refused(f"the file ended before byte {offset + size} (was it truncated while being read?)") from None

    def entry(self, name: str) -> Entry:
        """Where an entry's bytes are: validated STORED, inside the file, local header consistent.

        The data offset comes from the entry's local header (30 bytes + name + extra field, which
        torch pads so data is 64-byte aligned), not the central directory, whose extra field differs.
        """
        if name in self._entries:
            return self._entries[name]
        info = self.infos.get(name)
        if info is None:
            raise Refused(f"missing zip entry {shown(name)}")
        where = f"zip entry {shown(name)}"
        if info.flag_bits & 0x1:
            raise Refused(f"{where} is encrypted")
        if info.compress_type != zipfile.ZIP_STORED:
            raise Refused(
                f"{where} is compressed (zip method {info.compress_type}); torch.save stores entries "
                "uncompressed so they can be memory-mapped, and llama_nb reads only such files"
            )
        end = len(self.mmap)
        start = info.header_offset
        if start < 0 or start + _LOCAL_HEADER.size > end:
            raise Refused(f"{where}: local header offset {start} is outside the file ({end} bytes)")
        sig, _ver, _flags, method, _t, _d, _crc, _csize, _usize, nlen, xlen = _LOCAL_HEADER.unpack(
            self.pread(start, _LOCAL_HEADER.size)
        )
        if sig != b"PK\x03\x04":
            raise Refused(f"{where}: no local file header at offset {start}")
        if method != zipfile.ZIP_STORED:
            raise Refused(f"{where}: local header says compressed (method {method})")
        name_start = start + _LOCAL_HEADER.size
        local_name = self.pread(name_start, nlen)
        if local_name.decode("utf-8", "replace") != info.orig_filename:
            raise Refused(f"{where}: local header names {shown(local_name)}; the archive is inconsistent")
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
            raise CheckpointError(f"{self.path}: zip entry {shown(name)} is {entry.size} bytes; refusing more than {limit}")
        try:
            return self.pread(entry.offset, entry.size)
        except Refused as exc:
            raise CheckpointError(f"{self.path}: zip entry {shown(name)}: {exc.args[0]}") from None

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
    return f"{path}: not a torch.save zip archive ({one_line(str(exc))})"

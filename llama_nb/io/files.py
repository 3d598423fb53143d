"""Opening the files of a model folder: regular files only, never blocking, read with a size bound.

Every reader of a file that comes with a model (params.json, tokenizer.model, consolidated.00.pth)
goes through `open_regular_file` or `read_regular_file`, so these hold for all of them:

  - The path is opened with O_NONBLOCK and then fstat-ed: a FIFO opens at once (no writer needed)
    and is refused, where a plain open() would wait forever for a writer. The check is on the
    opened descriptor, so a file swapped for something else between a check and the open is
    still seen for what it is.
  - Only regular files are read (symlinks are followed, to a regular file only): /dev/zero,
    /dev/urandom, a terminal, a socket or a folder is refused with what it is.
  - read_regular_file refuses a file larger than `limit` before reading it, and reads at most
    one byte more than its size, so a file that grows while it is read is refused too (a reader
    never follows a growing file, nor allocates for more than the size it checked).

Every failure is one CheckpointError line naming the file: "<path>: <problem>".

The readers that take parts of a large file by offset (headers, tensors) read them with
`pread_exactly` / `preadv_exactly`: a pread may return fewer bytes than asked (a signal, a file
shrunk since fstat), so they loop until done and raise FileEnded when the file ends first; each
reader words that in its own error (the file, and what it was reading).
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

from llama_nb.errors import CheckpointError

_KINDS = (  # st_mode test -> what to call it in the message
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular_file(path: str | Path, what: str, missing: str = "no such file") -> io.BufferedReader:
    """`path` opened for binary reading, after checking (on the open descriptor) that it is a
    regular file. `what` says what was expected ("params.json", "a .pth checkpoint") and
    `missing` is the message for a path that does not exist."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {missing}") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise CheckpointError(f"{path}: cannot read: {_kind(mode)}, expected {what} (a regular file)")
        os.set_blocking(fd, True)  # no effect on regular files, but reads should not see EAGAIN
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_file(path: str | Path, limit: int, what: str, missing: str = "no such file") -> bytes:
    """The bytes of the regular file `path`, refused when it holds more than `limit` bytes."""
    path = Path(path)
    with open_regular_file(path, what, missing) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise CheckpointError(f"{path}: {size} bytes; {what} is never more than {limit}, refusing to read it")
        try:
            data = f.read(size + 1)  # one byte more than fstat said: a file that grows is seen
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > size:
        raise CheckpointError(f"{path}: grew while being read (past the {size} bytes it had); is it still being written?")
    return data


class FileEnded(Exception):
    """The file ended before the bytes asked for (it was truncated, or is shrinking)."""


def pread_exactly(fd: int, offset: int, size: int) -> bytes:
    """Exactly `size` bytes of the open file `fd` from `offset`. FileEnded if the file ends first;
    OSError as os.pread raises it."""
    parts, done = [], 0
    while done < size:
        part = os.pread(fd, size - done, offset + done)
        if not part:
            raise FileEnded(offset + done)
        parts.append(part)
        done += len(part)
    return b"".join(parts)


def preadv_exactly(fd: int, buffer: memoryview, offset: int) -> None:
    """Fill `buffer` with the file's bytes from `offset` (into it: no copy). FileEnded, OSError as above."""
    done = 0
    while done < len(buffer):
        n = os.preadv(fd, [buffer[done:]], offset + done)
        if n <= 0:
            raise FileEnded(offset + done)
        done += n

"""Run `python -m llama_nb ...` on a pseudo-terminal of a given size, and read its screen.

    session = PtySession(["run", "Hi"], columns=80, rows=24)
    session.expect(rb">>> ")         # wait for output (a regex), with a timeout
    session.send(b"hello\\r")         # type
    output = session.wait()           # everything it wrote, once it exits; .code is its exit code
    rows = screen_rows(output, 80, 24)   # scrollback + screen as a terminal emulator (pyte) shows them
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import sys
import termios
import time
from pathlib import Path

import pyte

ROOT = Path(__file__).resolve().parents[1]


class PtySession:
    def __init__(self, args: list[str], columns: int = 80, rows: int = 24, env: dict | None = None, cwd: Path | None = None):
        child_env = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color", "COLUMNS": str(columns),
                     "LINES": str(rows), **(env or {})}
        pid, fd = pty.fork()
        if pid == 0:  # the child: its stdin/stdout/stderr are the terminal
            try:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                if cwd is not None:
                    os.chdir(cwd)
                os.execve(sys.executable, [sys.executable, "-m", "llama_nb", *args], child_env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.output = bytearray()
        self.code: int | None = None

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        if not data:
            return False
        self.output += data
        return True

    def expect(self, pattern: bytes, timeout: float = 60.0, since: int = 0) -> int:
        """Read until `pattern` appears in the output after offset `since`; return the end offset."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            m = regex.search(bytes(self.output), since)
            if m:
                return m.end()
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {pattern!r}; output ends {bytes(self.output[-400:])!r}")
            if not self._read(0.2):
                m = regex.search(bytes(self.output), since)
                if m:
                    return m.end()
                raise AssertionError(f"the program ended before {pattern!r}; output ends {bytes(self.output[-400:])!r}")

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait(self, timeout: float = 60.0) -> bytes:
        deadline = time.monotonic() + timeout
        while self._read(0.2):
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                raise AssertionError("the program did not end")
        _, status = os.waitpid(self.pid, 0)
        self.code = os.waitstatus_to_exitcode(status)
        os.close(self.fd)
        return bytes(self.output)


def screen_rows(output: bytes, columns: int, rows: int) -> list[str]:
    """Every row a terminal of that size holds after `output`: scrollback first, then the screen,
    trailing spaces and trailing empty rows removed."""
    screen = pyte.HistoryScreen(columns, rows, history=100_000, ratio=0.5)
    stream = pyte.ByteStream(screen)
    stream.feed(output)
    history = ["".join(line[x].data for x in range(columns)) for line in screen.history.top]
    lines = [line.rstrip() for line in history + screen.display]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def wrap(text: str, columns: int) -> list[str]:
    """The rows a terminal shows `text` in, wrapping at `columns` (ASCII and wide characters)."""
    from wcwidth import wcwidth

    out, col = [[]], 0
    for ch in text:
        if ch == "\n":
            out.append([])
            col = 0
            continue
        w = max(0, wcwidth(ch))
        if col + w > columns:
            out.append([])
            col = 0
        out[-1].append(ch)
        col += w
    return ["".join(r).rstrip() for r in out]

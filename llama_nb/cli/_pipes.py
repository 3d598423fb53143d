"""stdout and stderr for every command, in one place: closed, full, broken or not UTF-8.

    stdout   the command's product. A reader that left (`| head -1`: EPIPE) ends the command
             quietly with exit 0: it had what it wanted. Any other failure to write (a full disk:
             ENOSPC, a closed descriptor: EBADF, EIO) is an error: one line on stderr, exit 1.
    stderr   notes, summaries and error lines: best effort. If it cannot be written, it is
             pointed at /dev/null and the command goes on; its exit code still says how it went.
    both     encoded with errors="replace" (PYTHONIOENCODING=ascii prints "?", never raises).

`guard_streams()` (called by `llama_nb.cli.main` before any command runs) wraps sys.stdout so
that every failed write or flush raises `OutputError`, which main() turns into the exit code;
`say()` is how commands write to stderr.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import signal
import sys

from rich.console import Console  # imported with the CLI (during start-up), not at the first message


class OutputError(Exception):
    """stdout cannot be written: `reader_left` for EPIPE, else why in `reason`."""

    def __init__(self, reason: str, reader_left: bool = False):
        super().__init__(reason)
        self.reason, self.reader_left = reason, reader_left


def silence(stream) -> None:
    """Point a stream's file descriptor at /dev/null, so the interpreter's flush at exit does
    not raise again (and print "Exception ignored ...")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _describe(exc: OSError) -> str:
    if exc.errno == errno.EBADF:
        return "stdout is closed"
    return f"cannot write to stdout: {exc.strerror or exc}"


class GuardedStdout(io.TextIOBase):
    """sys.stdout whose write/flush failures raise OutputError (one message, one exit code)."""

    def __init__(self, inner):
        self._inner = inner
        self.failed: OutputError | None = None

    def _fail(self, exc: OSError) -> OutputError:
        self.failed = OutputError(_describe(exc), reader_left=exc.errno == errno.EPIPE)
        silence(self._inner)  # what is still buffered goes to /dev/null at exit, not to an error
        try:
            self._inner.flush()
        except (OSError, ValueError):
            pass
        return self.failed

    def write(self, text: str) -> int:
        if self.failed:
            raise self.failed
        try:
            return self._inner.write(text)
        except OSError as exc:
            raise self._fail(exc) from None

    def flush(self) -> None:
        if self.failed:
            raise self.failed
        try:
            self._inner.flush()
        except OSError as exc:
            raise self._fail(exc) from None

    def isatty(self) -> bool:
        try:
            return self._inner.isatty()
        except (OSError, ValueError):
            return False

    def fileno(self) -> int:
        return self._inner.fileno()

    def writable(self) -> bool:
        return True

    def release(self):
        """The wrapped stream, for the interpreter's last flush at exit (after a failure it
        writes to /dev/null, so that flush says nothing)."""
        return self._inner

    @property
    def encoding(self) -> str:
        return self._inner.encoding

    @property
    def errors(self):
        return self._inner.errors

    def __getattr__(self, name):
        return getattr(self._inner, name)


class _ClosedStdout:
    """Stands in for a stdout whose descriptor was closed before Python started."""

    encoding, errors = "utf-8", "replace"

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "Bad file descriptor")

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise OSError(errno.EBADF, "Bad file descriptor")


class _BestEffortStderr(io.TextIOBase):
    """sys.stderr that never raises: once a write fails, the rest goes to /dev/null."""

    def __init__(self, inner):
        self._inner = inner

    def write(self, text: str) -> int:
        try:
            return self._inner.write(text)
        except (OSError, ValueError, AttributeError):
            self._give_up()
            return len(text)

    def flush(self) -> None:
        try:
            self._inner.flush()
        except (OSError, ValueError, AttributeError):
            self._give_up()

    def _give_up(self) -> None:
        silence(self._inner)
        self._inner = open(os.devnull, "w", encoding="utf-8")

    def isatty(self) -> bool:
        try:
            return self._inner.isatty()
        except (OSError, ValueError, AttributeError):
            return False

    def fileno(self) -> int:
        return self._inner.fileno()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:
        return getattr(self._inner, "encoding", "utf-8")

    @property
    def errors(self):
        return "replace"


def stdout_closed() -> bool:
    """Whether stdout's descriptor was closed when the program started (`llama-nb ... >&-`)."""
    return isinstance(sys.stdout, GuardedStdout) and isinstance(sys.stdout._inner, _ClosedStdout)


def guard_streams() -> None:
    """Install the stdout/stderr described in the module docstring (idempotent)."""
    for fd in (0, 1, 2):  # a descriptor closed at start: hold it with /dev/null, or the next
        try:              # open() (a model file) would get it and our output would go there
            os.fstat(fd)
        except OSError:
            try:
                os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
            except OSError:
                pass
    if sys.stdin is None:  # closed at start (`<&-`): reading finds the end of input at once
        sys.stdin = open(os.devnull, encoding="utf-8")
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError, io.UnsupportedOperation):
            stream.reconfigure(errors="replace")
    if not isinstance(sys.stdout, GuardedStdout):
        sys.stdout = GuardedStdout(sys.stdout) if sys.stdout is not None else GuardedStdout(_ClosedStdout())
    if not isinstance(sys.stderr, _BestEffortStderr):
        sys.stderr = _BestEffortStderr(sys.stderr if sys.stderr is not None else open(os.devnull, "w"))


def say(message, style: str | None = None) -> None:
    """One message (text or a Rich renderable) on stderr, best effort: never raises."""
    try:
        Console(stderr=True, highlight=False, soft_wrap=isinstance(message, str)).print(
            message, style=style, markup=False)
    except (OSError, ValueError, UnicodeError):
        pass


@contextlib.contextmanager
def interruptible():
    """Within: a Ctrl-C raises KeyboardInterrupt as usual, and one that some library swallowed
    (caught and ignored while loading or compiling) is raised again when the block ends."""
    seen = []

    def on_sigint(signum, frame):
        seen.append(signum)
        raise KeyboardInterrupt

    previous = None
    try:
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # `nohup`, a background job: keep it so
            previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread (a test runner's worker): nothing to install
        pass
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if seen:
        raise KeyboardInterrupt


class DeferredInterrupt:
    """`with guard:` a Ctrl-C raises KeyboardInterrupt at once, as usual, except inside `with
    guard.held():`, where it waits until that block is done. The streaming loop holds it while it
    records a token's text and writes it: a Ctrl-C can then never land between the two and lose a
    word (measured: about one run in three of tests/test_hardening.py's Ctrl-C test did)."""

    def __init__(self):
        self.depth, self.pending, self._previous = 0, False, None

    def _on_sigint(self, signum, frame):
        if self.depth:
            self.pending = True
        else:
            raise KeyboardInterrupt

    def __enter__(self):
        try:
            if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # `nohup`: keep ignoring
                self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread: nothing to install
            pass
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False

    @contextlib.contextmanager
    def held(self):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if self.pending and not self.depth:
            self.pending = False
            raise KeyboardInterrupt

"""How many threads a pass should use: all our cores, less those another process keeps busy.

A Numba parallel region ends when its slowest thread does. When another process runs on one of
our cores, the thread sharing that core gets half of it, and the whole region waits: measured on
this 2-core machine (bench/threads.py, a busy-loop on one core), the Llama 3.2 1B shape decoded
at 0.52x the speed of `--threads 1` with two threads. So by default (no `--threads`) a model asks
`CoreWatch.threads(most)` before each pass, which counts the cores that *other* processes used
over the last window:

    others = (busy time of our CPUs, from /proc/stat) - (our own CPU time, time.process_time())
             ---------------------------------------------------------------------------------
                                          wall time of the window

    threads = most - floor(others + 1 - DOWN_AT)     while using all `most` threads
              most - floor(others + 1 - UP_BELOW)    once reduced (hysteresis)
    (DOWN_AT = 0.5: a process spinning on one of 2 cores gets 2/3 of a core against our two
    threads; UP_BELOW = 0.3: an idle machine's own noise stays below it)
    clamped to [1, most].

"Our CPUs" are those of our affinity mask (os.sched_getaffinity), so a container on a large host
looks at its own cores only; steal time counts as busy (a hypervisor taking the core stalls a
region just the same). The window is at least WINDOW_SECONDS long, so /proc/stat (in units of
1/100 s) is read a few times a second whatever the token rate; the first window uses all
threads. Where /proc/stat is missing or unreadable, every pass uses `most`.
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable

WINDOW_SECONDS = 0.25
DOWN_AT, UP_BELOW = 0.5, 0.3  # other processes' cores at which a thread is dropped / given back
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user nice system irq softirq steal (idle=3, iowait=4 are not busy)


_STAT_BUFFER = bytearray(1 << 18)  # /proc/stat is ~150 bytes a CPU: 1,500 CPUs; read into, not allocated


def read_busy_seconds(cpus: frozenset[int], path: str = "/proc/stat") -> float | None:
    """Seconds the CPUs in `cpus` have been busy since boot (all processes), or None if unknown.

    Reads into a buffer kept for the purpose and parses only the per-CPU lines ("cpuN user nice
    system idle iowait irq softirq steal ..."), so a decode step that calls it allocates a few
    hundred bytes, transiently (tests/test_alloc.py holds forward() to that)."""
    try:
        with open(path, "rb", buffering=0) as f:
            size = f.readinto(_STAT_BUFFER)
    except OSError:
        return None
    text, ticks, start = _STAT_BUFFER, 0, 0  # start: of a line that begins with "cpu"
    while 0 <= start < size:
        end = text.find(b"\n", start, size)
        fields = text[start : end if end >= 0 else size].split()
        next_cpu_line = text.find(b"\ncpu", end, size) if end >= 0 else -1
        start = next_cpu_line + 1 if next_cpu_line >= 0 else -1
        name = fields[0][3:] if fields else b""
        if name.isdigit() and int(name) in cpus and len(fields) >= 9:
            ticks += sum(int(fields[1 + i]) for i in _BUSY_FIELDS)
    return ticks / os.sysconf("SC_CLK_TCK") if ticks else None


def _our_cpus() -> frozenset[int]:
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return frozenset(range(os.cpu_count() or 1))


class CoreWatch:
    """The thread count for the next pass (see the module docstring). One per process: the
    window's readings are shared by every model in it."""

    def __init__(self, read_busy: Callable[[], float | None] | None = None,
                 own_cpu: Callable[[], float] = time.process_time, clock: Callable[[], float] = time.monotonic,
                 window: float = WINDOW_SECONDS):
        cpus = _our_cpus()
        self._read_busy = read_busy or (lambda: read_busy_seconds(cpus))
        self._own_cpu, self._clock, self._window = own_cpu, clock, window
        self._start = self._sample()
        self._reduced_by = 0  # threads given up to other processes, as of the last window
        self.others = 0.0  # cores other processes used in the last window

    def _sample(self) -> tuple[float, float, float | None]:
        return self._clock(), self._own_cpu(), self._read_busy()

    def threads(self, most: int) -> int:
        """Threads to use now, at most `most`; reads /proc/stat only when a window has passed."""
        if most > 1 and self._clock() - self._start[0] >= self._window:
            now = self._sample()
            (t0, own0, busy0), (t1, own1, busy1) = self._start, now
            self._start = now
            if busy0 is None or busy1 is None:
                self._reduced_by = 0
            else:
                self.others = max(0.0, ((busy1 - busy0) - (own1 - own0)) / (t1 - t0))
                slack = 1.0 - (UP_BELOW if self._reduced_by else DOWN_AT)
                self._reduced_by = math.floor(self.others + slack)
        return max(1, min(most, most - self._reduced_by))


_watch: CoreWatch | None = None


def auto_threads(most: int) -> int:
    """The process-wide CoreWatch's answer (created at first use)."""
    global _watch
    if _watch is None:
        _watch = CoreWatch()
    return _watch.threads(most)

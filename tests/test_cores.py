"""ops/cores.py: the thread count follows the cores other processes keep busy (fake clocks here;
bench/threads.py measures the effect on decode speed with a real competing process)."""

import pytest

from llama_nb.ops import cores
from llama_nb.ops.cores import CoreWatch, read_busy_seconds


class FakeMachine:
    """A clock, our CPU time and the busy seconds of our CPUs, advanced by `run`."""

    def __init__(self):
        self.now = self.ours = self.busy = 0.0
        self.stat_ok = True

    def run(self, seconds: float, our_cores: float, other_cores: float):
        self.now += seconds
        self.ours += our_cores * seconds
        self.busy += (our_cores + other_cores) * seconds

    def watch(self) -> CoreWatch:
        return CoreWatch(read_busy=lambda: self.busy if self.stat_ok else None,
                         own_cpu=lambda: self.ours, clock=lambda: self.now, window=0.25)


def test_all_threads_while_no_other_process_runs():
    m = FakeMachine()
    w = m.watch()
    for _ in range(20):
        m.run(0.1, our_cores=2.0, other_cores=0.05)
        assert w.threads(2) == 2


def test_a_busy_core_is_given_up_and_taken_back_when_it_frees():
    m = FakeMachine()
    w = m.watch()
    m.run(0.3, our_cores=1.33, other_cores=0.67)  # a spinner shares the cores with our 2 threads
    assert w.threads(2) == 1 and w.others == pytest.approx(0.67)
    m.run(0.3, our_cores=1.0, other_cores=0.35)  # between the two thresholds: stays reduced
    assert w.threads(2) == 1
    m.run(0.3, our_cores=1.0, other_cores=0.1)  # the other process stopped
    assert w.threads(2) == 2
    m.run(0.3, our_cores=1.6, other_cores=0.4)  # below DOWN_AT while using both: keeps both
    assert w.threads(2) == 2


def test_many_cores_give_up_what_others_use():
    m = FakeMachine()
    w = m.watch()
    m.run(0.5, our_cores=5.0, other_cores=3.0)
    assert w.threads(8) == 5
    assert w.threads(1) == 1  # never below one, never above the most asked for


def test_within_a_window_the_answer_is_kept_and_stat_not_read():
    m = FakeMachine()
    reads = []
    w = CoreWatch(read_busy=lambda: reads.append(1) or m.busy, own_cpu=lambda: m.ours, clock=lambda: m.now)
    assert len(reads) == 1  # the window's start
    for _ in range(10):
        m.run(0.01, our_cores=2.0, other_cores=1.0)
        w.threads(2)
    assert len(reads) == 1  # 0.1 s: still the first window
    m.run(0.2, our_cores=2.0, other_cores=1.0)
    assert w.threads(2) == 1 and len(reads) == 2


def test_no_proc_stat_means_all_threads():
    m = FakeMachine()
    m.stat_ok = False
    w = m.watch()
    m.run(1.0, our_cores=1.0, other_cores=1.0)
    assert w.threads(2) == 2


def test_reads_this_machine(tmp_path):
    """The real /proc/stat parses; a file without per-CPU lines, or none at all, says None."""
    import os

    busy = read_busy_seconds(frozenset(os.sched_getaffinity(0)))
    assert busy is not None and busy > 0
    assert 1 <= cores.auto_threads(2) <= 2
    (tmp_path / "stat").write_text("cpu  1 2 3 4 5 6 7 8 9 10\nintr 5\n")
    assert read_busy_seconds(frozenset({0}), str(tmp_path / "stat")) is None
    assert read_busy_seconds(frozenset({0}), str(tmp_path / "missing")) is None
    (tmp_path / "stat").write_text("cpu0 100 0 100 999 5 0 0 0 0 0\ncpu1 300 0 0 0 0 0 0 0 0 0\n")
    assert read_busy_seconds(frozenset({0}), str(tmp_path / "stat")) == pytest.approx(200 / os.sysconf("SC_CLK_TCK"))

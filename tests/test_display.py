"""The live display on a real pseudo-terminal, read back through a terminal emulator (pyte): at
any size and length, the screen plus scrollback hold the generated text exactly once, then the
one summary line, and nothing else (the status line is gone, no panel, no repeated rows)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import pytest

from llama_nb.cli._display import TerminalStream, printable
from llama_nb.demo import demo_model_dir
from tests.ptyrun import ROOT, PtySession, screen_rows, wrap

DEMO = str(demo_model_dir())
SUMMARY = re.compile(r"^\d+ tokens at [\d.]+ tok/s, prompt \d+ tokens at [\d.]+ tok/s; stopped by reaching --max-tokens$")


def generated_text(args: list[str]) -> str:
    proc = subprocess.run([sys.executable, "-m", "llama_nb", "run", *args, "--json"], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["text"]


@pytest.mark.parametrize("columns, rows, n", [(80, 24, 300), (40, 10, 300), (40, 10, 12)])
def test_text_once_then_one_summary_line(columns, rows, n):
    args = ["And the LORD spake unto Moses, saying,", "--model", DEMO, "-n", str(n), "--temperature", "0.9",
            "--seed", "5"]
    want = generated_text(args)
    session = PtySession(["run", *args], columns=columns, rows=rows)
    output = session.wait()
    assert session.code == 0, output[-500:]
    got = screen_rows(output, columns, rows)
    text_rows = wrap(want, columns)
    assert got[: len(text_rows)] == text_rows, "\n".join(got)
    summary = "".join(row.ljust(columns) for row in got[len(text_rows):]).rstrip()  # soft-wrapped rows
    assert SUMMARY.match(summary), got[len(text_rows):]
    assert f"{n} tokens at" in summary
    assert "\n" in want or n < 50  # the long runs cross newlines as well as wrapped rows


def test_status_line_is_shown_while_generating():
    session = PtySession(["run", "In the beginning", "--model", DEMO, "-n", "200"], columns=60, rows=12)
    output = session.wait()
    assert session.code == 0
    assert re.search(rb"\[\d+/200 tokens  [\d.]+ tok/s  [\d.]+ s  Ctrl-C stops\]", output)
    assert "Ctrl-C stops" not in "\n".join(screen_rows(output, 60, 12))  # erased at the end


def feed(writes: list[str], columns: int, rows: int = 6) -> list[str]:
    """TerminalStream's bytes for a sequence of writes (each followed by a status), on pyte."""
    out = io.StringIO()
    view = TerminalStream(out, columns, interval=0.0)
    for i, text in enumerate(writes):
        view.write(text)
        view.status(f"[status {i}]" * 10)
    view.close()
    from tests.ptyrun import screen_rows as rows_of

    return rows_of(out.getvalue().replace("\n", "\r\n").replace("\r\r\n", "\r\n").encode(), columns, rows)


@pytest.mark.parametrize("columns", [10, 11, 17])
def test_rows_that_end_exactly_at_the_margin_lose_nothing(columns):
    # pieces that land exactly on the right margin (the terminal's pending wrap), also with a wide
    # character, and newlines right after a full row (pyte, unlike xterm, draws a wide character
    # that does not fit the last cell there: that case is left out)
    pieces = ["x" * columns, "y" * (columns - 1), "z", "\n", "a" * (2 * columns), "\n\n", "b" * (columns - 2),
              "日本", "end", "\n", "c" * columns, "\nd"]
    text = "".join(pieces)
    assert feed(pieces, columns) == wrap(text, columns)


def test_control_characters_cannot_move_the_cursor():
    assert printable("a\x1b[2Jb\rc\x07\x7f\x9b") == "a^[[2Jb^Mc^G^?^[["
    assert feed(["a\x1b[2J", "b\rc"], 20) == ["a^[[2Jb^Mc"]


def test_the_terminal_width_wins_over_a_stale_columns_variable():
    # the spinners (loading, kernels) shown at once: they too must fit the real width and leave nothing
    args = ["In the beginning", "--model", DEMO, "-n", "60", "--quiet"]
    want = generated_text(args)
    session = PtySession(["run", *args], columns=40, rows=10, env={"COLUMNS": "200", "LLAMA_NB_SPINNER_DELAY": "0"})
    output = session.wait()
    assert session.code == 0
    assert screen_rows(output, 40, 10) == wrap(want, 40)
    assert "loading".encode() in output  # the spinner did show

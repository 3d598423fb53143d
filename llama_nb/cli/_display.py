"""Streaming text on a terminal with one status line under it, never repeating or losing a word.

Rich's `Live` redraws its whole renderable: once text plus panel is taller than the terminal it
cannot move the cursor back over the rows that scrolled away, and those rows stay in the
scrollback a second time. Here the generated text is written exactly once, where the cursor is,
and the terminal wraps and scrolls it as it wraps and scrolls anything. Only the status line, the
row below the text's end, is ever rewritten, with cursor moves that work at any size:

    ESC D, ESC M      index then reverse index: make sure a row exists below the text's end
                      (scrolling the screen by one if the text ends on the last row), come back
    ESC 7 ... ESC 8   save the cursor (the text's end), go down, rewrite the status, restore
    CR ESC [2K        go to column 0 and erase the whole row (the old status)

The status is cut to width - 1 cells so it never wraps. The one thing to know about the text is
whether it ends exactly at the right margin (the terminal's "pending wrap": the next character
goes to a new row): moving the cursor there would drop that state and the next character would
overwrite the last one, so the view ends such a row with CR LF first. It tracks the column with
Rich's cell widths for that. Control characters a model may emit (ESC, CR, BEL, ...) are shown in
caret notation (^[, ^M, ^G) and tabs as spaces: generated text can never move the cursor.
"""

from __future__ import annotations

import re
import time
from typing import TextIO

from rich.cells import cell_len

_SAVE, _RESTORE, _INDEX, _REVERSE_INDEX, _ERASE_ROW = "\x1b7", "\x1b8", "\x1bD", "\x1bM", "\r\x1b[2K"
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
TAB = 8


def printable(text: str) -> str:
    """`text` with every control character except newline and tab in caret notation (ESC -> ^[,
    DEL -> ^?, C1 codes -> ^[ + letter): what reaches the terminal can move no cursor."""
    def caret(m: re.Match) -> str:
        code = ord(m.group())
        if code < 0x20:
            return "^" + chr(code + 64)
        return "^?" if code == 0x7F else "^[" + chr(code - 64)

    return _CONTROL.sub(caret, text)


def clip(line: str, cells: int) -> str:
    """The longest prefix of `line` that fits in `cells` terminal cells."""
    out, used = [], 0
    for ch in line:
        w = cell_len(ch)
        if used + w > cells:
            break
        out.append(ch)
        used += w
    return "".join(out)


class TerminalStream:
    """Generated text written once at the cursor, plus an optional status line under it.

    out       the terminal's text stream (sys.stdout)
    columns   the terminal's width in cells
    interval  least seconds between two redraws of an unchanged-row status (the text itself is
              never delayed)
    """

    def __init__(self, out: TextIO, columns: int, interval: float = 0.1):
        self.out, self.columns, self.interval = out, max(2, columns), interval
        self.col = 0  # cells used on the text's last row; == columns: pending wrap
        self.broke_row = False  # the view ended a full row with CR LF: a newline next is that break
        self.status_shown = False
        self.status_text = ""
        self.last_draw = 0.0

    def _advance(self, text: str) -> None:
        for ch in text:
            if ch == "\n":
                self.col = 0
                continue
            w = cell_len(ch)
            if self.col + w > self.columns:  # the terminal wraps before this character
                self.col = 0
            self.col += w

    def _visible(self, text: str) -> str:
        text = printable(text)
        if "\t" not in text:
            return text
        parts = []
        col = self.col
        for ch in text:  # tabs to spaces up to the next stop, as the terminal would show them
            if ch == "\t":
                n = TAB - (col % self.columns) % TAB
                parts.append(" " * n)
                col += n
            else:
                parts.append(ch)
                col = 0 if ch == "\n" else col + cell_len(ch)
        return "".join(parts)

    def write(self, text: str) -> None:
        """Append generated text; the status line moves down with it."""
        text = self._visible(text)
        if self.broke_row and text:
            self.broke_row = False
            if text.startswith("\n"):  # on a terminal a full row and a newline make one break
                text = text[1:]
        if not text:
            return
        touches_next_row = "\n" in text or self.col + cell_len(text) >= self.columns
        pieces = []
        if self.status_shown and touches_next_row:
            pieces.append(_SAVE + _INDEX + _ERASE_ROW + _RESTORE)
            self.status_shown = False
        pieces.append(text)
        self._advance(text)
        if not self.status_shown and self.status_text:
            pieces.append(self._draw())
        self.out.write("".join(pieces))
        self.out.flush()

    def status(self, line: str, force: bool = False) -> None:
        """Show `line` under the text (redrawn at most every `interval` seconds unless forced)."""
        self.status_text = clip(printable(line).replace("\t", " ").replace("\n", " "), self.columns - 1)
        now = time.perf_counter()
        if self.status_shown and not force and now - self.last_draw < self.interval:
            return
        self.out.write(self._draw())
        self.out.flush()

    def _draw(self) -> str:
        self.last_draw = time.perf_counter()
        self.status_shown = True
        lead = ""
        if self.col >= self.columns:  # pending wrap: end the row for real before moving the cursor
            lead, self.col, self.broke_row = "\r\n", 0, True
        return lead + _INDEX + _REVERSE_INDEX + _SAVE + _INDEX + _ERASE_ROW + self.status_text + _RESTORE

    def close(self) -> None:
        """Erase the status line and end the text's last row: what follows starts on a new row."""
        pieces = []
        if self.status_shown:
            pieces.append(_SAVE + _INDEX + _ERASE_ROW + _RESTORE)
            self.status_shown = False
        if self.col:
            pieces.append("\r\n")
            self.col = 0
        self.status_text, self.broke_row = "", False
        self.out.write("".join(pieces))
        self.out.flush()


class PlainStream:
    """The same interface for a pipe or a file: text as is, no status line."""

    def __init__(self, out: TextIO):
        self.out = out
        self.ends_with_newline = True

    def write(self, text: str) -> None:
        if text:
            self.out.write(text)
            self.out.flush()
            self.ends_with_newline = text.endswith("\n")

    def status(self, line: str, force: bool = False) -> None:
        pass

    def close(self) -> None:
        self.out.flush()

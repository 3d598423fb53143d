"""Write (or check) the README's demo-model transcripts: what each command really prints.

    python tools/readme_transcripts.py            # rewrite the block in README.md
    python tools/readme_transcripts.py --check    # exit 1 and show the difference if it is stale

The block sits between the `<!-- transcripts: begin ... -->` and `<!-- transcripts: end -->`
lines of README.md. `run` transcripts are the command's stdout (the continuation; the note and
summary go to stderr). The `chat` transcript is a session on a pseudo-terminal, read back through
a terminal emulator (pyte, a test dependency), as a person would see it; the numbers of its
summary lines (speeds) change from run to run, so `--check` compares them as "N".
Run after changing the kernels, the sampler or the demo model, and commit the README.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BEGIN, END = "<!-- transcripts: begin", "<!-- transcripts: end -->"

RUNS = [
    ["run", "In the beginning God created", "--max-tokens", "60"],
    ["run", "And the LORD spake unto Moses, saying,", "--max-tokens", "60", "--temperature", "0.8", "--top-p", "0.9",
     "--seed", "1"],
    ["run", "Blessed are the", "--max-tokens", "60", "--temperature", "0.7", "--top-p", "0.9", "--seed", "7"],
    ["run", "And it came to pass, when", "--max-tokens", "48", "--temperature", "0.7", "--seed", "3"],
]
CHAT = ["chat", "--system", "Answer as the scripture would", "-n", "24"]
CHAT_INPUT = ["Who made the heaven and the earth?", "/set temperature 0.7", "/set seed 1", "And what of the sea?",
              "/bye"]
NUMBER = re.compile(r"\d+(\.\d+)?")


def llama_nb(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("LLAMA_NB_MODEL", None)
    return subprocess.run([sys.executable, "-m", "llama_nb", *args], capture_output=True, text=True, timeout=600,
                          cwd=ROOT, env=env, **kw)


def run_transcript(args: list[str]) -> str:
    from llama_nb.demo import demo_model_dir

    proc = llama_nb([*args, "--model", str(demo_model_dir())])
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(args)} failed: {proc.stderr.strip()}")
    return f"$ llama-nb {shlex.join(args)}\n{proc.stdout.rstrip()}\n"


def chat_transcript(columns: int = 120, rows: int = 40) -> str:
    """A chat session on a pseudo-terminal: the screen a person sees, prompts and answers."""
    sys.path.insert(0, str(ROOT))
    from llama_nb.demo import demo_model_dir
    from tests.ptyrun import PtySession, screen_rows

    session = PtySession([*CHAT, "--model", str(demo_model_dir())], columns=columns, rows=rows,
                         env={"LLAMA_NB_HISTORY": os.devnull})
    at = session.expect(rb">>> ")
    for line in CHAT_INPUT:
        session.send(line.encode() + b"\r")
        if line != "/bye":
            at = session.expect(rb"\n>>> ", since=at)
    session.wait()
    shown = screen_rows(bytes(session.output), columns, rows)
    shown = shown[next(i for i, row in enumerate(shown) if row.startswith(">>> ")):]  # after the greeting
    return f"$ llama-nb {shlex.join(CHAT)}\n" + "\n".join(shown) + "\n"


def block() -> str:
    parts = [run_transcript(args) for args in RUNS] + [chat_transcript()]
    return "```\n" + "\n".join(parts) + "```\n"


def masked(text: str) -> str:
    """Speeds and timings as N (they vary from run to run); the generated text stays exact."""
    return "\n".join(NUMBER.sub("N", line) if " tok/s" in line else line for line in text.splitlines())


def split_readme(text: str) -> tuple[str, str, str]:
    start = text.index(BEGIN)
    start = text.index("\n", start) + 1
    end = text.index(END)
    return text[:start], text[start:end], text[end:]


def main(argv: list[str]) -> int:
    text = README.read_text(encoding="utf-8")
    head, old, tail = split_readme(text)
    new = block()
    if "--check" in argv:
        if masked(old) == masked(new):
            return 0
        sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True), "README.md", "now"))
        print("\nthe README's transcripts are stale: run python tools/readme_transcripts.py", file=sys.stderr)
        return 1
    README.write_text(head + new + tail, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

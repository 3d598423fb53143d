"""The journey (docs/) runs as printed: every quote equals the source it names, every command and
every chapter's Python blocks run on the demo model, and `mkdocs build --strict` passes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.ptyrun import ROOT
from tests.test_readme import shell

sys.path.insert(0, str(ROOT / "tools"))
import docs  # noqa: E402  (tools/docs.py)

CHAPTERS = docs.chapters()


def test_every_quote_equals_the_source():
    stale = [(chapter.name, path, symbol) for chapter in CHAPTERS
             for path, symbol, _ in docs.stale_quotes(chapter.read_text())]
    assert stale == [], "quotes that differ from the code (run python tools/docs.py --write): " + repr(stale)


def test_a_changed_or_vanished_symbol_is_caught():
    text = ("<!-- quote: llama_nb/io/params.py ModelArgs.head_dim -->\n```python\nold text\n```\n")
    assert [q[:2] for q in docs.stale_quotes(text)] == [("llama_nb/io/params.py", "ModelArgs.head_dim")]
    assert docs.stale_quotes(docs.refresh(text)) == []
    with pytest.raises(LookupError, match="no 'gone'"):
        docs.stale_quotes(text.replace("ModelArgs.head_dim", "ModelArgs.gone"))


@pytest.mark.parametrize("command", [b.body.strip() for c in CHAPTERS for b in docs.blocks(c)
                                     if b.lang == "sh" and b.run])
def test_command_runs(command, tmp_path):
    """In a folder of its own: what a command writes (a broken copy of the demo model) stays there."""
    result = shell(command, tmp_path, cwd=tmp_path)
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"


@pytest.mark.parametrize("chapter", [c for c in CHAPTERS if any(b.lang == "python" and b.run for b in docs.blocks(c))],
                         ids=lambda c: c.stem)
def test_python_blocks_run_in_order(chapter, tmp_path):
    """A chapter's Python blocks are one session, as a reader pastes them one after another."""
    code = "\n".join(b.body for b in docs.blocks(chapter) if b.lang == "python" and b.run)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={"PYTHONPATH": str(ROOT), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]


def test_every_chapter_is_in_the_site_and_it_builds(tmp_path):
    nav = (ROOT / "mkdocs.yml").read_text()
    assert [c.name for c in CHAPTERS if c.name not in nav] == []
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", sorted((ROOT / "docs" / "figures").glob("*.py")), ids=lambda p: p.stem)
def test_figure_scripts_run_and_their_figures_are_committed(script, tmp_path):
    result = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                            timeout=300, env={"PYTHONPATH": str(ROOT), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    made = sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".svg", ".png"))
    assert made and all((script.parent / name).is_file() for name in made), made

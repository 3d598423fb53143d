"""The model side of the hardening pass (issue 13): garbage weights stop with the layer named, the
memory override and the kernel cache fail in one line or not at all, and the cold-start compile
helper never outlives its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import llama_nb
from llama_nb.errors import LlamaNbError
from llama_nb.model.load import available_memory
from llama_nb.model.transformer import NonFiniteError
from tests.tinymodel import write_tiny_model


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny"), n_layers=3, seed=4)


def _poisoned(folder, tmp_path, name, rows=None, value=float("nan")):
    tensors = torch.load(folder / "consolidated.00.pth", weights_only=True)
    t = tensors[name].clone()
    if rows is None:
        t.fill_(value)
    else:
        t[rows] = value
    tensors[name] = t
    out = tmp_path / "poisoned"
    out.mkdir()
    torch.save(tensors, out / "consolidated.00.pth")
    for f in ("params.json", "tokenizer.model"):
        (out / f).write_bytes((folder / f).read_bytes())
    return out


@pytest.mark.parametrize("name,rows,value,where", [
    ("layers.1.feed_forward.w2.weight", None, float("nan"), "layer 1's feed-forward"),
    ("layers.2.attention.wv.weight", slice(0, 4), float("inf"), "layer 2's attention"),
    ("output.weight", slice(7, 8), float("nan"), "the output projection"),
    ("layers.0.feed_forward.w3.weight", None, 3e38, "layer 0's feed-forward"),  # huge, finite: the product overflows
])
def test_non_finite_logits_stop_with_the_first_bad_layer_named(folder, tmp_path, name, rows, value, where):
    llm = llama_nb.load_model(_poisoned(folder, tmp_path, name, rows, value), ctx=64)
    ids = llm.tokenizer.encode("Hello there", bos=True, eos=False)
    with pytest.raises(NonFiniteError, match=f"first went non-finite in {where}"):
        list(llm.generate(ids, 4))
    assert isinstance(NonFiniteError("x"), LlamaNbError)  # so the CLI shows it as one line, exit 1


def test_non_finite_weights_through_the_cli_are_one_line(folder, tmp_path):
    bad = _poisoned(folder, tmp_path, "layers.0.feed_forward.w1.weight")
    proc = subprocess.run([sys.executable, "-m", "llama_nb", "run", "hi", "--model", str(bad), "-n", "3"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "not finite" in proc.stderr and "layer 0's feed-forward" in proc.stderr


@pytest.mark.parametrize("value", ["inf", "1e400", "", "nan", "-5", "1e20G", "12 apples"])
def test_memory_override_that_is_not_a_size_is_one_line(monkeypatch, value):
    monkeypatch.setenv("LLAMA_NB_MEM_AVAILABLE", value)
    with pytest.raises(LlamaNbError, match="LLAMA_NB_MEM_AVAILABLE=.* is not a size"):
        available_memory()


def test_no_writable_kernel_cache_still_runs():
    # As on a read-only install with a read-only home: Numba finds no folder to cache kernels in
    # (simulated by giving it no cache locators, which is what it concludes then). Kernels must
    # still compile, uncached (llama_nb/ops/jit.py: CACHE False, CACHE_NOTE says why), instead of
    # every @njit(cache=True) failing at import.
    code = textwrap.dedent("""
        from numba.core import caching
        caching.CacheImpl._locator_classes = []
        from llama_nb.ops import jit
        import llama_nb
        from llama_nb.demo import demo_model_dir
        llm = llama_nb.load_model(demo_model_dir(), ctx=64)
        ids = llm.tokenizer.encode("And", bos=True, eos=False)
        print(len(list(llm.generate(ids, 3))), jit.CACHE, "|", jit.CACHE_NOTE)
        from llama_nb.cli.run import _note_uncached
        _note_uncached(quiet=False)  # what `llama-nb run` says after compiling
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    generated, cache, note = proc.stdout.strip().replace(" | ", " ", 1).split(" ", 2)
    assert generated == "3" and cache == "False" and "NUMBA_CACHE_DIR" in note
    assert "note: kernels are compiled on every run: no writable cache folder" in proc.stderr


def test_the_compile_helper_dies_with_its_parent(tmp_path):
    # A cold cache makes warm-up start the helper; the parent is then killed by SIGTERM (as a
    # user's `kill` or a supervisor would) while both compile. The helper must not live on.
    code = textwrap.dedent("""
        import sys, time, llama_nb
        from llama_nb.demo import demo_model_dir
        from llama_nb.ops import jit
        start = jit._start_helper
        def announce(job):
            helper = start(job)
            print(helper.pid, flush=True)
            return helper
        jit._start_helper = announce
        llama_nb.load_model(demo_model_dir(), ctx=64).compile()
        time.sleep(600)
    """)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        helper_pid = int(parent.stdout.readline())
        assert _alive(helper_pid)
        parent.send_signal(signal.SIGTERM)
        parent.wait(timeout=60)
        deadline = time.monotonic() + 30
        while _alive(helper_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(helper_pid), "the compile helper outlived its parent"
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie is dead, only not yet reaped
    except FileNotFoundError:
        return False

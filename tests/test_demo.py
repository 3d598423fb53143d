"""The built-in demo model (llama_nb/demo) and the tools that made it (tools/train_*.py).

Oracles: the training framework's own forward pass (tools/train_demo.py's torch Transformer, fed
the shipped bf16 weights) for llama_nb's logits and greedy tokens; a naive BPE trainer (recount
every pair after every merge) for tools/train_bpe.py's incremental one.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import llama_nb
from llama_nb.demo import demo_description, demo_model_dir
from llama_nb.io.tokenizer import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/ is not a package that gets installed
from tools.train_bpe import count_pieces, train_bpe, write_tokenizer_model  # noqa: E402
from tools.train_demo import load_demo  # noqa: E402

PROMPTS = ["In the beginning God created", "And the LORD spake unto Moses, saying,", "Blessed are the"]


@pytest.fixture(scope="module")
def llm():
    return llama_nb.load_model(demo_model_dir(), ctx=128, precision="float32")


@pytest.fixture(scope="module")
def llm_bf16():
    return llama_nb.load_model(demo_model_dir(), ctx=128)  # the default precision


@pytest.fixture(scope="module")
def torch_model():
    torch.set_num_threads(2)
    return load_demo(demo_model_dir())


def test_shipped_files_fit_the_budget_and_load_as_a_meta_folder(llm):
    files = {p.name: p.stat().st_size for p in demo_model_dir().iterdir() if p.is_file()}
    assert {"consolidated.00.pth", "params.json", "tokenizer.model", "README.md"} <= set(files)
    assert sum(files.values()) <= 20_000_000
    tok = llm.tokenizer
    assert tok.num_base_tokens == 4096 and tok.bos_id == 4096 and tok.n_words == llm.args.vocab_size == 4352
    assert demo_description().startswith("King James Bible, ")
    for text in ["And God said, Let there be light: and there was light.\n", "naïve café 🦙 <|eot_id|> 1611"]:
        ids = tok.encode(text, bos=True, eos=True)
        assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
        assert tok.decode(ids[1:-1]) == text
    # the corpus' words are single tokens: the vocabulary was trained on it, not random
    assert len(tok.encode(" LORD", bos=False, eos=False)) == 1


def test_logits_match_the_training_framework(llm, torch_model):
    for prompt in PROMPTS:
        ids = llm.tokenizer.encode(prompt, bos=True, eos=False)
        with torch.no_grad():
            want = torch_model(torch.tensor([ids]))[0, -1].numpy()
        got = llm.forward(ids, 0)
        np.testing.assert_allclose(got, want, atol=1e-3, rtol=0, err_msg=prompt)


def test_bf16_precision_errs_less_than_the_training_model_run_in_bf16(llm_bf16, torch_model):
    # On this trained model (logits -10..+9.4) precision bf16 moves logits by 0.010-0.017 (float32:
    # 4e-6-8e-6); the same torch model run in bf16 (weights, activations, everything): 0.031-0.079.
    torch_bf16 = copy.deepcopy(torch_model).to(torch.bfloat16)
    for prompt in PROMPTS:
        ids = llm_bf16.tokenizer.encode(prompt, bos=True, eos=False)
        with torch.no_grad():
            want = torch_model(torch.tensor([ids]))[0, -1].double().numpy()
            theirs = torch_bf16(torch.tensor([ids]))[0, -1].double().numpy()
        ours = llm_bf16.forward(ids, 0).astype(np.float64)
        assert np.abs(ours - want).max() <= np.abs(theirs - want).max(), prompt
        assert int(np.argmax(ours)) == int(np.argmax(want)), prompt


def test_greedy_tokens_match_the_training_framework(llm, torch_model):
    ids = llm.tokenizer.encode(PROMPTS[0], bos=True, eos=False)
    got = [e.token for e in llm.generate(ids, 8)]
    seq = list(ids)
    with torch.no_grad():
        for _ in range(8):  # the whole window each time: the training model has no KV cache
            seq.append(int(torch_model(torch.tensor([seq]))[0, -1].argmax()))
    assert got == seq[len(ids):]


def test_run_without_model_uses_the_demo_and_says_so(tmp_path, llm):
    prompt = "And God said,"
    proc = subprocess.run([sys.executable, "-m", "llama_nb", "run", prompt, "--max-tokens", "20"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)  # no models-original/ here
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if "using the built-in demo model" in line]
    assert len(notes) == 1 and "King James Bible" in notes[0]
    ids = llm.tokenizer.encode(prompt, bos=True, eos=False)
    want = llm.tokenizer.decode([e.token for e in llm.generate(ids, 20)])
    assert proc.stdout.strip() == want.strip() and len(want.split()) >= 5


def _naive_bpe(pieces: Counter[str], vocab_size: int) -> list[bytes]:
    """The textbook trainer: recount every adjacent pair after each merge; same tie rule."""
    vocab = [bytes([b]) for b in range(256)]
    words = {p: list(p.encode()) for p in pieces}
    while len(vocab) < vocab_size:
        counts: Counter[tuple[int, int]] = Counter()
        for p, w in words.items():
            for pair in zip(w, w[1:]):
                counts[pair] += pieces[p]
        if not counts:
            break
        best = max(counts.values())
        a, b = min(pair for pair, c in counts.items() if c == best)
        vocab.append(vocab[a] + vocab[b])
        for p, w in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == (a, b):
                    out.append(len(vocab) - 1)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[p] = out
    return vocab


def test_bpe_trainer_equals_the_naive_one_and_loads(tmp_path):
    text = Path(__file__).read_text() + Path(llama_nb.__file__).read_text()  # code and English, some repeats
    pieces = count_pieces(text)
    vocab = train_bpe(pieces, 256 + 300)
    assert vocab == _naive_bpe(pieces, 256 + 300)
    write_tokenizer_model(vocab, tmp_path / "tokenizer.model")
    tok = Tokenizer(tmp_path / "tokenizer.model")
    assert tok.num_base_tokens == 556 and tok.special_tokens["<|begin_of_text|>"] == 556
    assert tok.decode(tok.encode(text, bos=False, eos=False)) == text
    # the most frequent piece is short enough to have been merged whole
    assert len(tok.encode(" the", bos=False, eos=False)) == 1

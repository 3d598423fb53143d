"""The built-in demo model: a 6.7M-parameter Llama 3 trained on the King James Bible.

This folder is an ordinary model in Meta's format (consolidated.00.pth, params.json,
tokenizer.model), shipped as package data so `llama-nb run "..."` prints real text the minute
llama_nb is installed, before anyone has Meta's gated 16 GB download. The engine has no special
case for it: the CLI falls back to this folder when no --model is given and no Meta model is in
./models-original/ (llama_nb/cli/_options.py). How it was trained, on what, and how well it does:
README.md beside this file, written by tools/train_demo.py.
"""

from __future__ import annotations

from pathlib import Path


def demo_model_dir() -> Path:
    """The folder of the demo model (inside the installed package)."""
    return Path(__file__).resolve().parent


def demo_description() -> str:
    """'King James Bible, 6.7M params': what the one-line CLI note says about the demo."""
    from llama_nb.io.params import ModelArgs

    a = ModelArgs.from_file(demo_model_dir() / "params.json")
    kv_dim = a.n_kv_heads * a.head_dim
    per_layer = 2 * a.dim * a.dim + 2 * a.dim * kv_dim + 3 * a.dim * a.hidden_dim + 2 * a.dim
    n_params = 2 * a.vocab_size * a.dim + a.n_layers * per_layer + a.dim  # untied output
    return f"King James Bible, {n_params / 1e6:.1f}M params"

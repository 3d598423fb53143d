"""Meta's reference Llama 3 `Transformer` (llama_models/llama3/model.py) as a test oracle.

It runs in float32 on the same bf16 weights (widened exactly), with fairscale's model parallelism
at size 1 on the gloo backend, exactly as Meta's own generation code sets it up on one process.
Test-only: imports torch and fairscale.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path

import numpy as np
import torch

_initialised = False


def _init_model_parallel() -> None:
    global _initialised
    if _initialised:
        return
    import fairscale.nn.model_parallel.initialize as fs_init
    import torch.distributed as dist

    if not dist.is_initialized():
        with socket.socket() as s:  # a free loopback port for the one-process group
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(port))
        dist.init_process_group("gloo", rank=0, world_size=1)
    if not fs_init.model_parallel_is_initialized():
        fs_init.initialize_model_parallel(1)
    _initialised = True


@contextlib.contextmanager
def bf16_linear_inputs():
    """Within: Meta's model rounds the input of every weight product to bf16 first (products and
    sums stay float32): the numerics of llama_nb's precision "bf16" and of llama.cpp's bf16 path.

    fairscale's Column/RowParallelLinear call `F.linear` through their module's `F`, which is
    swapped for the duration; nothing else in Meta's model changes."""
    import fairscale.nn.model_parallel.layers as layers
    import torch.nn.functional as F

    class RoundingF:
        def __getattr__(self, name):
            return getattr(F, name)

        @staticmethod
        def linear(x, weight, bias=None):
            return F.linear(x.to(torch.bfloat16).float(), weight, bias)

    layers.F = RoundingF()
    try:
        yield
    finally:
        layers.F = F


@contextlib.contextmanager
def bf16_kv_cache():
    """Within: Meta's model rounds its cached keys and values to bf16 (nearest even, torch's
    rounding), as llama_nb's bf16 KV cache stores them. Meta's Attention.forward reads both from
    its cache through `repeat_kv` only, and rounding on the way out equals rounding on the way in
    (the same values, rounded once), so `repeat_kv` is swapped for the duration."""
    import llama_models.llama3.model as meta_model

    repeat_kv = meta_model.repeat_kv
    meta_model.repeat_kv = lambda x, n_rep: repeat_kv(x.to(torch.bfloat16).to(x.dtype), n_rep)
    try:
        yield
    finally:
        meta_model.repeat_kv = repeat_kv


class MetaReference:
    """Meta's Transformer loaded from a model folder in Meta's format, in float32 (or, with
    dtype=torch.bfloat16, entirely in bf16: weights, activations and KV cache, as Meta's own
    generation code runs it)."""

    def __init__(self, folder: Path, max_seq_len: int = 256, dtype: torch.dtype = torch.float32):
        from llama_models.llama3.args import ModelArgs
        from llama_models.llama3.model import Transformer

        _init_model_parallel()
        torch.set_num_threads(2)
        params = json.loads((Path(folder) / "params.json").read_text())
        args = ModelArgs(max_seq_len=max_seq_len, max_batch_size=1, **params)
        state = torch.load(Path(folder) / "consolidated.00.pth", map_location="cpu", weights_only=True)
        if "output.weight" not in state:  # Llama 3.2 1B/3B tie the output to the embeddings
            state["output.weight"] = state["tok_embeddings.weight"]
        torch.set_default_dtype(torch.float32)
        self.model = Transformer(args).eval()
        self.model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        if dtype != torch.float32:
            self.model = self.model.to(dtype)  # the bf16 weights exactly; freqs_cis (not a parameter) stays complex64
            for layer in self.model.layers:
                layer.attention.cache_k = layer.attention.cache_k.to(dtype)
                layer.attention.cache_v = layer.attention.cache_v.to(dtype)
        self.args = args

    def forward(self, tokens, start_pos: int) -> np.ndarray:
        """float32[T, V] logits for `tokens` at positions start_pos.. (uses Meta's KV cache)."""
        with torch.inference_mode():
            t = torch.tensor([list(tokens)], dtype=torch.long)
            return self.model.forward(t, start_pos)[0].float().numpy()

    def greedy(self, prompt: list[int], n: int) -> list[int]:
        """n greedy tokens after `prompt`: one prefill pass, then one decode pass per token."""
        logits = self.forward(prompt, 0)[-1]
        out = []
        for _ in range(n):
            token = int(np.argmax(logits))
            out.append(token)
            logits = self.forward([token], len(prompt) + len(out) - 1)[-1]
        return out

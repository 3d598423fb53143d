"""Write tiny random Llama 3.x models in Meta's on-disk format, with torch.save (test-only helper).

    folder = write_tiny_model(tmp_path / "tiny")                  # 2 layers, dim 64, real tokenizer
    folder = write_tiny_model(tmp_path / "t", vocab_size=300, tokenizer=None)   # tensors only

A folder holds exactly what Meta's download.sh writes for a single-file model:

    consolidated.00.pth   bf16 tensors under Meta's names, in the order Meta's Transformer
                          .state_dict() lists them:
                            tok_embeddings.weight                 [vocab_size, dim]
                            layers.N.attention.wq.weight          [n_heads * head_dim, dim]
                            layers.N.attention.wk.weight          [n_kv_heads * head_dim, dim]
                            layers.N.attention.wv.weight          [n_kv_heads * head_dim, dim]
                            layers.N.attention.wo.weight          [dim, n_heads * head_dim]
                            layers.N.feed_forward.w1.weight       [hidden_dim, dim]
                            layers.N.feed_forward.w2.weight       [dim, hidden_dim]
                            layers.N.feed_forward.w3.weight       [hidden_dim, dim]
                            layers.N.attention_norm.weight        [dim]
                            layers.N.ffn_norm.weight              [dim]
                            norm.weight                           [dim]
                            output.weight                         [vocab_size, dim]  (not when tie_output)
    params.json           the hyperparameters, with Meta's key names
    tokenizer.model       a copy of Meta's real Llama 3 tokenizer (llama_models package), when
                          tokenizer="llama3"; its 128256 ids fix vocab_size

Shapes are computed here independently of llama_nb (hidden_dim with Meta's FeedForward formula);
tests/test_pth.py checks them against Meta's own Transformer.state_dict(). Weights are random
normal: matrices std 0.02 (as in GPT-2/Llama init), norms 1.0 +- 0.1, so logits are neither
constant nor saturated. The same seed writes the same bytes. At dim 64, std 0.02 makes each layer's
contribution small next to the embedding, so a TIED model tends to repeat its input token under
greedy decoding; weight_std=None scales each matrix by 1/sqrt(fan_in) instead (unit-size
activations at any dim, which is what std 0.02 is for dim ~2500) when varied tokens matter.
"""

from __future__ import annotations

import collections
import json
import shutil
from pathlib import Path

import torch

LLAMA3_VOCAB_SIZE = 128256


def llama3_tokenizer_path() -> Path:
    """Meta's tokenizer.model as installed with the llama-models test dependency."""
    import llama_models.llama3

    return Path(llama_models.llama3.__file__).parent / "tokenizer.model"


def ffn_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """Meta's FeedForward width (llama_models/llama3/model.py), restated for the test side."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def tiny_params(
    *,
    dim: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    vocab_size: int = LLAMA3_VOCAB_SIZE,
    multiple_of: int = 32,
    ffn_dim_multiplier: float | None = None,
    norm_eps: float = 1e-5,
    rope_theta: float = 500000.0,
    use_scaled_rope: bool = True,
) -> dict:
    """A params.json dict with Meta's keys and key order."""
    params = {
        "dim": dim,
        "n_layers": n_layers,
        "n_heads": n_heads,
        "n_kv_heads": n_kv_heads,
        "vocab_size": vocab_size,
        "multiple_of": multiple_of,
        "ffn_dim_multiplier": ffn_dim_multiplier,
        "norm_eps": norm_eps,
        "rope_theta": rope_theta,
        "use_scaled_rope": use_scaled_rope,
    }
    if ffn_dim_multiplier is None:  # Meta's files omit it rather than write null
        del params["ffn_dim_multiplier"]
    return params


def tiny_state_dict(
    params: dict, *, tie_output: bool = False, seed: int = 0, weight_std: float | None = 0.02
) -> "collections.OrderedDict[str, torch.Tensor]":
    """Random bf16 weights with Meta's names and shapes for `params` (a params.json dict)."""
    dim, n_heads = params["dim"], params["n_heads"]
    n_kv_heads = params.get("n_kv_heads") or n_heads
    head_dim = dim // n_heads
    hidden = ffn_hidden_dim(dim, params.get("multiple_of", 256), params.get("ffn_dim_multiplier"))
    vocab = params["vocab_size"]
    gen = torch.Generator().manual_seed(seed)

    def matrix(rows: int, cols: int) -> torch.Tensor:  # cols = fan_in (nn.Linear layout); embeddings: dim
        std = weight_std if weight_std is not None else cols**-0.5
        return (torch.randn(rows, cols, generator=gen) * std).to(torch.bfloat16)

    def norm() -> torch.Tensor:
        return (1.0 + 0.1 * torch.randn(dim, generator=gen)).to(torch.bfloat16)

    sd: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
    sd["tok_embeddings.weight"] = matrix(vocab, dim)
    for i in range(params["n_layers"]):
        p = f"layers.{i}."
        sd[p + "attention.wq.weight"] = matrix(n_heads * head_dim, dim)
        sd[p + "attention.wk.weight"] = matrix(n_kv_heads * head_dim, dim)
        sd[p + "attention.wv.weight"] = matrix(n_kv_heads * head_dim, dim)
        sd[p + "attention.wo.weight"] = matrix(dim, n_heads * head_dim)
        sd[p + "feed_forward.w1.weight"] = matrix(hidden, dim)
        sd[p + "feed_forward.w2.weight"] = matrix(dim, hidden)
        sd[p + "feed_forward.w3.weight"] = matrix(hidden, dim)
        sd[p + "attention_norm.weight"] = norm()
        sd[p + "ffn_norm.weight"] = norm()
    sd["norm.weight"] = norm()
    if not tie_output:
        sd["output.weight"] = matrix(vocab, dim)
    return sd


def write_tiny_model(
    dir: str | Path,
    *,
    dim: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    vocab_size: int | None = None,
    multiple_of: int = 32,
    ffn_dim_multiplier: float | None = None,
    norm_eps: float = 1e-5,
    rope_theta: float = 500000.0,
    use_scaled_rope: bool = True,
    tie_output: bool = False,
    seed: int = 0,
    tokenizer: str | None = "llama3",
    weight_std: float | None = 0.02,
) -> Path:
    """Write consolidated.00.pth, params.json (and tokenizer.model) into `dir`; return `dir`.

    vocab_size defaults to 128256 with tokenizer="llama3" (the only size that tokenizer fits) and
    to 512 with tokenizer=None.
    """
    if tokenizer not in ("llama3", None):
        raise ValueError(f"tokenizer must be 'llama3' or None, got {tokenizer!r}")
    if vocab_size is None:
        vocab_size = LLAMA3_VOCAB_SIZE if tokenizer == "llama3" else 512
    if tokenizer == "llama3" and vocab_size != LLAMA3_VOCAB_SIZE:
        raise ValueError(f"the Llama 3 tokenizer has {LLAMA3_VOCAB_SIZE} ids; use tokenizer=None for vocab_size={vocab_size}")
    folder = Path(dir)
    folder.mkdir(parents=True, exist_ok=True)
    params = tiny_params(
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        vocab_size=vocab_size,
        multiple_of=multiple_of,
        ffn_dim_multiplier=ffn_dim_multiplier,
        norm_eps=norm_eps,
        rope_theta=rope_theta,
        use_scaled_rope=use_scaled_rope,
    )
    state = tiny_state_dict(params, tie_output=tie_output, seed=seed, weight_std=weight_std)
    torch.save(state, folder / "consolidated.00.pth")
    (folder / "params.json").write_text(json.dumps(params) + "\n")
    if tokenizer == "llama3":
        shutil.copyfile(llama3_tokenizer_path(), folder / "tokenizer.model")
    return folder


def meta_transformer(params: dict, *, max_seq_len: int = 64, max_batch_size: int = 1):
    """Meta's own llama_models Transformer for a params.json dict (random init, float32, CPU).

    Meta's layers are fairscale model-parallel layers, which need a process group even for one
    process: a single-rank gloo group is started once per test process, on first use.
    """
    _init_model_parallel()
    from llama_models.llama3.args import ModelArgs as MetaArgs
    from llama_models.llama3.model import Transformer

    return Transformer(MetaArgs(**params, max_seq_len=max_seq_len, max_batch_size=max_batch_size))


def _init_model_parallel() -> None:
    import contextlib
    import io
    import os
    import tempfile

    import torch.distributed as dist
    from fairscale.nn.model_parallel import initialize as fs_init

    if not dist.is_initialized():
        store = Path(tempfile.gettempdir()) / f"llama_nb_tests_pg_{os.getpid()}"
        store.unlink(missing_ok=True)
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    if not fs_init.model_parallel_is_initialized():
        with contextlib.redirect_stdout(io.StringIO()):  # fairscale prints three banner lines
            fs_init.initialize_model_parallel(1)

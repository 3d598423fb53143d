"""A Hugging Face Llama folder (`huggingface-cli download meta-llama/Llama-3.1-8B-Instruct`), read as Meta's.

    Llama-3.1-8B-Instruct/
        config.json                         hyperparameters (llama_nb.io.hf_config)
        model.safetensors                   the weights in one file (1B, 3B), or
        model-00001-of-00004.safetensors    ... in shards, with
        model.safetensors.index.json        {"weight_map": {tensor name: shard file name}}
        tokenizer.json                      byte-level BPE (llama_nb.io.hf_tokenizer)
        generation_config.json              eos_token_id: the stop tokens
        original/                           Meta's own files (consolidated.00.pth, params.json,
                                            tokenizer.model), when downloaded too

`read_hf_folder` reads it under Meta's tensor names; llama_nb.io.checkpoint.load_model_files checks
those as it checks a .pth's and returns the same `ModelFiles` as for a Meta folder (with
`HFFolder.checkpoint()`), so everything downstream is unchanged:

    model.embed_tokens.weight                          tok_embeddings.weight
    model.layers.{i}.self_attn.{q,k,v,o}_proj.weight   layers.{i}.attention.w{q,k,v,o}.weight
    model.layers.{i}.mlp.gate_proj.weight              layers.{i}.feed_forward.w1.weight
    model.layers.{i}.mlp.down_proj.weight              layers.{i}.feed_forward.w2.weight
    model.layers.{i}.mlp.up_proj.weight                layers.{i}.feed_forward.w3.weight
    model.layers.{i}.input_layernorm.weight            layers.{i}.attention_norm.weight
    model.layers.{i}.post_attention_layernorm.weight   layers.{i}.ffn_norm.weight
    model.norm.weight                                  norm.weight
    lm_head.weight                                     output.weight (absent when tie_word_embeddings)

The q and k rows. Meta's RoPE rotates the interleaved pairs (x[2i], x[2i+1]) of each head; HF's
`rotate_half` rotates (x[i], x[i + d/2]), so HF's conversion script stored each head's rows of wq
and wk permuted: HF row j*(d/2) + i is Meta's row 2i + j (i < d/2, j in {0, 1}, d = head_dim):

    w_hf   = w_meta.reshape(H, d/2, 2, D).transpose(0, 2, 1, 3).reshape(H*d, D)    (their permute)
    w_meta = w_hf.reshape(H, 2, d/2, D).transpose(0, 2, 1, 3).reshape(H*d, D)      (`unpermute`)

with H = num_attention_heads for q_proj and num_key_value_heads for k_proj. That is the one copy
made at load: wq and wk (about 8% of an 8B's weights), read with pread (never through the map)
and un-permuted; every other tensor stays a zero-copy view of its shard's map, read into memory
(or used as is with --mmap) by `HFCheckpoint.read_tensors` exactly like a .pth's.

The index is checked against the shards: every tensor in exactly one shard, the one the
weight_map names; shard names are plain file names in the folder (no "/", no "..").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

import numpy as np

from llama_nb.errors import CheckpointError, shown
from llama_nb.io.files import open_regular_file
from llama_nb.io.hf_config import CONFIG_NAME, read_config
from llama_nb.io.hf_tokenizer import GENERATION_CONFIG, TOKENIZER_JSON, read_hf_tokenizer
from llama_nb.io.jsonfile import read_json
from llama_nb.io.model_files import expected_shapes
from llama_nb.io.params import ModelArgs
from llama_nb.io.pth import Checkpoint
from llama_nb.io.safetensors import load_safetensors
from llama_nb.io.tokenizer import Tokenizer
from llama_nb.memory import empty_at

SINGLE_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
MAX_INDEX_BYTES = 16 << 20  # the 405B's index is ~100 KB

# Meta's name -> Hugging Face's: the model's own tensors, and those of each layer
_HF_TOP = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
_HF_LAYER = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_META_TOP = {hf: meta for meta, hf in _HF_TOP.items()}
_META_LAYER = {hf: meta for meta, hf in _HF_LAYER.items()}
_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_PERMUTED = ("attention.wq.weight", "attention.wk.weight")


def hf_name(meta: str) -> str:
    """Hugging Face's name of one of Meta's tensors."""
    if meta.startswith("layers."):
        _, i, rest = meta.split(".", 2)
        return f"model.layers.{i}.{_HF_LAYER[rest]}"
    return _HF_TOP[meta]


def meta_name(hf: str) -> str | None:
    """Meta's name of one of Hugging Face's tensors; None for a name a Llama does not have.
    (The layer index stays text: int() of a 5000-digit index would be a ValueError.)"""
    m = _LAYER.fullmatch(hf)
    if m is None:
        return _META_TOP.get(hf)
    rest = _META_LAYER.get(m.group(2))
    return None if rest is None else f"layers.{m.group(1)}.{rest}"


def unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Meta's row order of HF's q_proj / k_proj (module docstring): a new C-contiguous array.

    w: [n_heads * head_dim, dim], any dtype (raw bf16 bits included)."""
    rows, dim = w.shape
    half = rows // n_heads // 2
    out = empty_at(w.shape, w.dtype)  # 64-byte aligned, as every weight read into memory (memory.py)
    out.reshape(n_heads, half, 2, dim)[...] = w.reshape(n_heads, 2, half, dim).transpose(0, 2, 1, 3)
    return out


@dataclass(frozen=True, eq=False)
class HFCheckpoint(Checkpoint):
    """The tensors of a Hugging Face folder under Meta's names: wq and wk un-permuted copies, the
    rest views of their shard's map. `path` is the index (or the single file); `mmap` the first
    shard's; `shards` one Checkpoint per file holding the views that are read from it."""

    shards: tuple[Checkpoint, ...] = ()

    def read_tensors(self) -> dict[str, np.ndarray]:
        """Every tensor in memory of its own: the views read with pread, shard by shard (see
        Checkpoint.read_tensors); wq and wk are copies already."""
        read: dict[str, np.ndarray] = {}
        for shard in self.shards:
            read.update(shard.read_tensors())
        return {name: read.get(name, tensor) for name, tensor in self.tensors.items()}


@dataclass(frozen=True)
class HFFolder:
    """A Hugging Face folder read and renamed, before its q/k rows are un-permuted: `renamed` holds
    every tensor as a view under Meta's name, in Meta's order (llama_nb.io.checkpoint checks it
    like a .pth's; then `checkpoint()` makes the un-permuted HFCheckpoint)."""

    args: ModelArgs
    config_path: Path
    renamed: Checkpoint
    tokenizer_path: Path | None
    read_tokenizer: Callable[[], Tokenizer]
    shards: tuple[Checkpoint, ...]
    source: dict[str, Checkpoint]  # Meta name -> the shard that holds it

    def checkpoint(self) -> HFCheckpoint:
        """wq and wk read with pread and un-permuted (the only copies); the rest stays views."""
        order, dtypes = self.renamed.tensors, self.renamed.dtypes
        tensors = dict(order)
        for name in order:
            if name.endswith(_PERMUTED):
                shard = self.source[name]
                one = Checkpoint(shard.path, {name: order[name]}, {name: dtypes[name]}, shard.mmap)
                heads = self.args.n_heads if name.endswith("wq.weight") else self.args.n_kv_heads
                tensors[name] = unpermute(one.read_tensors()[name], heads)
        viewed = [name for name in order if not name.endswith(_PERMUTED)]
        per_shard = [Checkpoint(shard.path, {n: order[n] for n in viewed if self.source[n] is shard}, dtypes,
                                shard.mmap, shard.metadata) for shard in self.shards]
        return HFCheckpoint(path=self.renamed.path, tensors=tensors, dtypes=dtypes, mmap=self.shards[0].mmap,
                            metadata=dict(self.shards[0].metadata), shards=tuple(per_shard))


def is_hf_folder(folder: Path) -> bool:
    """config.json beside safetensors weights: a Hugging Face folder. exists(), not is_file(): a
    FIFO there is refused by its reader, naming it."""
    return (folder / CONFIG_NAME).exists() and (
        (folder / INDEX_NAME).exists() or any(folder.glob("*.safetensors")))


def load_hf_tokenizer(folder: Path) -> Tokenizer:
    """tokenizer.json, with generation_config.json's stop tokens."""
    return read_hf_tokenizer(folder / TOKENIZER_JSON, folder / GENERATION_CONFIG)


def read_hf_folder(folder: Path, *, require_tokenizer: bool = True) -> HFFolder:
    """Read config.json, the safetensors (checked against the index) and find tokenizer.json; one
    CheckpointError line on any problem."""
    config = read_config(folder / CONFIG_NAME)
    tokenizer_path: Path | None = folder / TOKENIZER_JSON
    if tokenizer_path.exists():  # a FIFO or /dev/zero there is refused now, not when it is read
        open_regular_file(tokenizer_path, TOKENIZER_JSON).close()
    elif require_tokenizer:
        raise CheckpointError(f"{tokenizer_path}: no such file (a Hugging Face folder has tokenizer.json)")
    else:
        tokenizer_path = None

    def read_tokenizer() -> Tokenizer:
        if tokenizer_path is None:
            raise CheckpointError(f"{folder / TOKENIZER_JSON}: no such file (a Hugging Face folder has tokenizer.json)")
        return load_hf_tokenizer(folder)

    shards, path = _shards(folder)
    renamed, source = _renamed(path, shards, config.args, config.tied, folder / CONFIG_NAME)
    return HFFolder(args=config.args, config_path=folder / CONFIG_NAME, renamed=renamed,
                    tokenizer_path=tokenizer_path, read_tokenizer=read_tokenizer,
                    shards=tuple(shard for shard, _ in shards), source=source)


def _shards(folder: Path) -> tuple[list[tuple[Checkpoint, set[str] | None]], Path]:
    """Each shard with the names the index assigns it (None for a single file), and the path that
    stands for the whole (model.safetensors or the index). As transformers does, a single
    model.safetensors is preferred to an index."""
    if (folder / SINGLE_NAME).exists() or not (folder / INDEX_NAME).exists():
        if not (folder / SINGLE_NAME).exists():
            found = sorted(shown(p.name, quote=False) for p in folder.glob("*.safetensors"))
            raise CheckpointError(f"{folder}: no {SINGLE_NAME} and no {INDEX_NAME} (found {', '.join(found[:3])})")
        return [(load_safetensors(folder / SINGLE_NAME), None)], folder / SINGLE_NAME
    index_path = folder / INDEX_NAME
    index = read_json(index_path, MAX_INDEX_BYTES, "a safetensors index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path}: no \"weight_map\" object (tensor name -> shard file)")
    by_shard: dict[str, set[str]] = {}
    for name, shard in weight_map.items():
        if not (isinstance(shard, str) and shard.endswith(".safetensors") and "/" not in shard
                and "\\" not in shard and "\0" not in shard and not shard.startswith(".")):
            raise CheckpointError(f"{index_path}: tensor {shown(name)} is in {shown(shard)}, not a .safetensors "
                                  f"file name in this folder")
        by_shard.setdefault(shard, set()).add(name)
    return [(load_safetensors(folder / shard), names) for shard, names in by_shard.items()], index_path


def meta_names(args: ModelArgs, tied: bool) -> list[str]:
    """Every tensor a Llama of `args` has, by Meta's name, in Meta's state_dict order."""
    return list(expected_shapes(args, tied_output=tied))


def _names(names: list[str]) -> str:
    """The first name (from a file: escaped) and how many more."""
    return shown(names[0], quote=False) + (f" and {len(names) - 1} more" if len(names) > 1 else "")


def _renamed(path: Path, shards: list[tuple[Checkpoint, set[str] | None]], args: ModelArgs,
             tied: bool, config_path: Path) -> tuple[Checkpoint, dict[str, Checkpoint]]:
    """Every shard's tensors under Meta's names (a view each), checked: the index agrees with the
    shards, and the names are exactly those `args` implies (said in Hugging Face's names)."""
    views: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    source: dict[str, Checkpoint] = {}
    for shard, names in shards:
        if names is not None and set(shard.keys()) != names:
            stray = sorted(set(shard.keys()) - names)
            if stray:
                raise CheckpointError(f"{shard.path}: holds {_names(stray)}, which the index does not put there")
            raise CheckpointError(f"{shard.path}: lacks {_names(sorted(names - set(shard.keys())))}, which the "
                                  f"index puts there")
        for hf in shard.keys():
            meta = meta_name(hf)
            if meta is None:
                raise CheckpointError(f"{shard.path}: tensor {shown(hf)} is not part of a Llama 3.x model")
            if meta == "output.weight" and tied:
                continue  # tied: lm_head, when saved, is the embedding table; transformers ignores it too
            views[meta], dtypes[meta], source[meta] = shard.tensors[hf], shard.dtypes[hf], shard
    if args.n_layers > len(views):  # each layer is 9 tensors: listing 2**31 layers' names would hang
        raise CheckpointError(f"{path}: {config_path.name} says num_hidden_layers={args.n_layers} but the file(s) "
                              f"hold only {len(views)} tensors")
    expected = meta_names(args, tied)
    missing = [hf_name(name) for name in expected if name not in views]
    if missing:
        raise CheckpointError(f"{path}: missing {len(missing)} tensor(s) that {config_path.name} implies: "
                              f"{_names(missing)}")
    unexpected = sorted(set(views) - set(expected))
    if unexpected:
        raise CheckpointError(f"{path}: {len(unexpected)} unexpected tensor(s) for the model {config_path.name} "
                              f"describes: {_names([hf_name(name) for name in unexpected])}")
    order = {name: views[name] for name in expected}
    return Checkpoint(path=path, tensors=order, dtypes=dtypes, mmap=shards[0][0].mmap), source

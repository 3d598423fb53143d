"""Which reader a model path needs, and Meta's own folder: params.json + consolidated.00.pth
(or its model-parallel shards consolidated.00..NN.pth) + tokenizer.model.

    Meta-Llama-3.1-8B-Instruct/
        consolidated.00.pth    bf16 weights, read by llama_nb.io.pth (zero-copy views)
        params.json            hyperparameters, read by llama_nb.io.params
        tokenizer.model        tiktoken BPE ranks

`load_model_files(path)` reads, whatever the path is, a ModelFiles (io/model_files.py: Meta's
tensor names, checked against params.json by `check_tensors`):

    a .gguf file, or a folder holding one      llama_nb.io.gguf_model (llama.cpp's format)
    config.json beside *.safetensors           llama_nb.io.hf (a Hugging Face folder; preferred
                                               over Meta's files when a folder has both)
    consolidated.00.pth .. consolidated.NN.pth llama_nb.io.shards: each MPI rank its shards (70B, 405B)
    consolidated.00.pth                        this module

Anything else is one line saying what the path is and what llama_nb expects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llama_nb.errors import CheckpointError, shown
from llama_nb.io import gguf_model, hf
from llama_nb.io.files import open_regular_file
from llama_nb.io.model_files import (CHECKPOINT_NAME, EXPECTS, PARAMS_NAME, TOKENIZER_NAME, ModelFiles,
                                     check_tensors, expected_shapes)
from llama_nb.io.params import ModelArgs
from llama_nb.io.pth import load_pth
from llama_nb.io.shards import join_rank, rank_shards, shard_paths, shard_shapes
from llama_nb.io.tokenizer import Tokenizer

__all__ = ["CHECKPOINT_NAME", "PARAMS_NAME", "TOKENIZER_NAME", "ModelFiles", "expected_shapes", "check_tensors",
           "load_model_files", "load_tokenizer", "describe", "check_folder"]


def load_model_files(folder: str | Path, *, require_tokenizer: bool = True, rank: int = 0, ranks: int = 1) -> ModelFiles:
    """Find, read and cross-check a model (see the module docstring); a one-line CheckpointError
    on any problem. rank, ranks: which of several processes this is (model/parallel.py); a
    model-parallel folder gives each rank the tensors of its shards (io/shards.py); every other
    kind runs in one process."""
    folder = Path(folder)
    if (gguf := gguf_model.gguf_in(folder)) is not None:
        _one_process(folder, "a GGUF file", ranks)
        return gguf_model.load_gguf_files(gguf, require_tokenizer=require_tokenizer)
    check_folder(folder)
    if hf.is_hf_folder(folder):
        _one_process(folder, "a Hugging Face folder", ranks)
        return _load_hf_folder(folder, require_tokenizer)
    args = ModelArgs.from_file(folder / PARAMS_NAME)
    tokenizer_path: Path | None = folder / TOKENIZER_NAME
    if not tokenizer_path.exists():
        if require_tokenizer:
            raise CheckpointError(f"{tokenizer_path}: no such file; {EXPECTS}")
        tokenizer_path = None
    else:  # a FIFO or /dev/zero there is refused now, not when the tokenizer is read
        open_regular_file(tokenizer_path, TOKENIZER_NAME).close()
    shards = shard_paths(folder)
    if len(shards) > 1:
        checkpoint = _load_rank(folder, shards, args, rank, ranks)
        return ModelFiles(folder=folder, args=args, checkpoint=checkpoint, tokenizer_path=tokenizer_path)
    _one_process(folder, "a single-file checkpoint", ranks)
    checkpoint = load_pth(folder / CHECKPOINT_NAME)
    check_tensors(checkpoint, args, source=folder / PARAMS_NAME)
    return ModelFiles(folder=folder, args=args, checkpoint=checkpoint, tokenizer_path=tokenizer_path)


def _one_process(path: Path, what: str, ranks: int) -> None:
    if ranks > 1:
        raise CheckpointError(f"{path}: {what} runs in one process, not on {ranks} MPI ranks (those need "
                              f"Meta's model-parallel shards, consolidated.00..NN.pth)")


def _load_rank(folder: Path, paths: list[Path], args: ModelArgs, rank: int, ranks: int):
    """This rank's shards of a model-parallel folder, each checked against its part of params.json."""
    source = folder / PARAMS_NAME
    mine = rank_shards(folder, len(paths), args, rank, ranks, source)
    shards = []
    for s in mine:
        shard = load_pth(paths[s])
        whole = expected_shapes(args, tied_output="output.weight" not in shard)
        check_tensors(shard, args, source, expected=shard_shapes(args, len(paths), whole),
                      what=f"shard {s} of {len(paths)}")
        if shards and shard.dtypes != shards[0].dtypes:
            raise CheckpointError(f"{paths[s]}: its dtypes differ from those of {paths[mine[0]].name}")
        shards.append(shard)
    return join_rank(paths, mine, shards, args)


def _load_hf_folder(folder: Path, require_tokenizer: bool) -> ModelFiles:
    """A Hugging Face folder (llama_nb.io.hf), its tensors renamed to Meta's and checked as a .pth's
    are, then wq/wk un-permuted. When refused and Meta's files are in original/, the error says so."""
    try:
        read = hf.read_hf_folder(folder, require_tokenizer=require_tokenizer)
        check_tensors(read.renamed, read.args, source=read.config_path)
        return ModelFiles(folder=folder, args=read.args, checkpoint=read.checkpoint(),
                          tokenizer_path=read.tokenizer_path, read_tokenizer=read.read_tokenizer)
    except CheckpointError as exc:
        if (folder / "original" / CHECKPOINT_NAME).is_file():
            raise CheckpointError(f"{exc}; Meta's files are in its original/ subfolder: use --model "
                                  f"{folder / 'original'}") from None
        raise


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer of a model, without reading its weights (`llama-nb tokenize`): a GGUF's
    metadata, a Hugging Face folder's tokenizer.json, or Meta's tokenizer.model."""
    path = Path(path)
    if (gguf := gguf_model.gguf_in(path)) is not None:
        return gguf_model.load_gguf_tokenizer(gguf)
    if not (path / TOKENIZER_NAME).exists() and (path / hf.TOKENIZER_JSON).exists():
        return hf.load_hf_tokenizer(path)
    return Tokenizer(path / TOKENIZER_NAME)


def describe(model_files: ModelFiles) -> dict[str, Any]:
    """Everything `llama-nb info` shows, as plain JSON-ready data."""
    ck, args = model_files.checkpoint, model_files.args
    if model_files.gguf is not None:  # GGUF names, ggml types, logical shapes, and the metadata
        tensors, extra = gguf_model.gguf_description(model_files.gguf)
    else:
        tensors = [
            {"name": name, "dtype": ck.dtypes[name], "shape": list(t.shape), "elements": int(t.size)}
            for name, t in ck.items()
        ]
        extra = {}
    n_elements = sum(t["elements"] for t in tensors)
    size_bytes = sum(int(t.nbytes) for t in ck.tensors.values())
    return extra | {
        "folder": str(model_files.folder),
        "checkpoint": str(ck.path),
        "tokenizer": str(model_files.tokenizer_path) if model_files.tokenizer_path else None,
        "params": args.to_dict(),
        "head_dim": args.head_dim,
        "ffn_hidden_dim": args.hidden_dim,
        "rope_scaling": None if args.rope_scaling is None
        else dict(args.rope_scaling.to_dict(), source=args.rope_scaling.source),
        "tied_output": model_files.tied_output,
        "n_tensors": len(tensors),
        "n_elements": n_elements,
        "size_bytes": size_bytes,
        "size_gb": size_bytes / 1e9,
        "tensors": tensors,
    }


def check_folder(folder: Path) -> None:
    """Say what a path is when it is not a model llama_nb reads: missing, a file of another kind,
    a folder without a checkpoint (several GGUFs in one folder are refused by gguf_in)."""
    if not folder.exists():
        raise CheckpointError(f"{folder}: no such folder; {EXPECTS}")
    if folder.is_file():
        if gguf_model.is_gguf(folder):  # a .gguf file, or one that starts with GGUF's magic
            return
        if folder.suffix == ".pth":
            raise CheckpointError(f"{folder}: a file; pass the folder that holds it ({folder.parent}); {EXPECTS}")
        raise CheckpointError(f"{folder}: a file, not a folder; {EXPECTS}")
    if len(shard_paths(folder)) > 1:  # model parallel (70B/405B): io/shards.py; a missing shard is named
        return
    if (folder / CHECKPOINT_NAME).exists():  # not is_file(): a FIFO there is refused by load_pth, naming it
        return
    if hf.is_hf_folder(folder):  # read by llama_nb.io.hf (_load_hf_folder hints at original/ when it is refused)
        return
    if any(folder.glob("*.gguf")):  # read by llama_nb.io.gguf_model (one GGUF; several are refused there)
        gguf_model.gguf_in(folder)
        return
    others = sorted(shown(p.name, quote=False) for p in folder.glob("*.pth"))
    if others:
        raise CheckpointError(f"{folder}: no {CHECKPOINT_NAME} (found {', '.join(others[:3])}); {EXPECTS}")
    raise CheckpointError(f"{folder / CHECKPOINT_NAME}: no such file; {EXPECTS}")

"""A Meta model folder: params.json + consolidated.00.pth + tokenizer.model, checked against each other.

    Meta-Llama-3.1-8B-Instruct/
        consolidated.00.pth    bf16 weights, read by llama_nb.io.pth (zero-copy views)
        params.json            hyperparameters, read by llama_nb.io.params
        tokenizer.model        tiktoken BPE ranks

`load_model_files` checks that the checkpoint holds exactly the tensors Meta's model.py builds from
params.json, each with the exact shape, a dtype some weight format reads (llama_nb/formats.py:
bf16 as Meta stores it, f16, f32), and C-contiguous (the kernels read raw rows, and
with --mmap they read them straight from the file's map; Meta's files are contiguous). Expected
tensors:

    tok_embeddings.weight               bf16[vocab_size, dim]
    layers.{i}.attention.wq.weight      bf16[n_heads * head_dim, dim]
    layers.{i}.attention.wk.weight      bf16[n_kv_heads * head_dim, dim]
    layers.{i}.attention.wv.weight      bf16[n_kv_heads * head_dim, dim]
    layers.{i}.attention.wo.weight      bf16[dim, n_heads * head_dim]
    layers.{i}.feed_forward.w1.weight   bf16[hidden_dim, dim]
    layers.{i}.feed_forward.w2.weight   bf16[dim, hidden_dim]
    layers.{i}.feed_forward.w3.weight   bf16[hidden_dim, dim]
    layers.{i}.attention_norm.weight    bf16[dim]
    layers.{i}.ffn_norm.weight          bf16[dim]
    norm.weight                         bf16[dim]
    output.weight                       bf16[vocab_size, dim]   optional: absent = tied to
                                                                tok_embeddings (Llama 3.2 1B/3B)

A GGUF file (or a folder holding one) is read by llama_nb.io.gguf_model instead. Folders in other
formats (Hugging Face safetensors, sharded 70B/405B) are recognised and refused with a message
saying what they are and what llama_nb expects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from llama_nb.errors import CheckpointError, shown
from llama_nb.formats import format_of_checkpoint_dtype
from llama_nb.io.files import open_regular_file
from llama_nb.io.params import ModelArgs
from llama_nb.io.pth import Checkpoint, load_pth
from llama_nb.io.tokenizer import Tokenizer

CHECKPOINT_NAME = "consolidated.00.pth"
PARAMS_NAME = "params.json"
TOKENIZER_NAME = "tokenizer.model"

_EXPECTS = f"llama_nb expects Meta's original folder ({CHECKPOINT_NAME}, {PARAMS_NAME}, {TOKENIZER_NAME})"
_SHARD = re.compile(r"consolidated\.(\d+)\.pth")


@dataclass(frozen=True)
class ModelFiles:
    """A validated model folder: hyperparameters, mapped tensors, where the tokenizer is."""

    folder: Path
    args: ModelArgs
    checkpoint: Checkpoint
    tokenizer_path: Path | None  # None only with load_model_files(..., require_tokenizer=False)
    # How to build the tokenizer when it is not a tokenizer.model at tokenizer_path: a GGUF's or
    # a Hugging Face folder's loader passes its own reader (tokenizer.ggml.* metadata, tokenizer.json).
    read_tokenizer: Callable[[], Tokenizer] | None = None
    gguf: Any = None  # the llama_nb.io.gguf.GGUFFile when the model is a GGUF file (metadata, ggml types)

    def load_tokenizer(self) -> Tokenizer:
        """The model's tokenizer, refused when it has more tokens than the model's vocab_size."""
        if self.read_tokenizer is not None:
            tokenizer = self.read_tokenizer()
        elif self.tokenizer_path is None:
            raise CheckpointError(f"{self.folder / TOKENIZER_NAME}: no such file; {_EXPECTS}")
        else:
            tokenizer = Tokenizer(self.tokenizer_path, vocab_size=self.args.vocab_size)  # stops reading past it
        if tokenizer.n_words > self.args.vocab_size:
            raise CheckpointError(f"{tokenizer.model_path}: the tokenizer has {tokenizer.n_words} tokens but "
                                  f"the model's vocab_size is {self.args.vocab_size}")
        return tokenizer

    @property
    def tied_output(self) -> bool:
        """True when the file has no output.weight: logits use tok_embeddings (Llama 3.2 1B/3B)."""
        return "output.weight" not in self.checkpoint


def expected_shapes(args: ModelArgs, *, tied_output: bool = False) -> dict[str, tuple[int, ...]]:
    """Every tensor Meta's Transformer(args) has, in its state_dict order, with its shape."""
    dim, hd, hidden, vocab = args.dim, args.head_dim, args.hidden_dim, args.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"tok_embeddings.weight": (vocab, dim)}
    for i in range(args.n_layers):
        p = f"layers.{i}."
        shapes[p + "attention.wq.weight"] = (args.n_heads * hd, dim)
        shapes[p + "attention.wk.weight"] = (args.n_kv_heads * hd, dim)
        shapes[p + "attention.wv.weight"] = (args.n_kv_heads * hd, dim)
        shapes[p + "attention.wo.weight"] = (dim, args.n_heads * hd)
        shapes[p + "feed_forward.w1.weight"] = (hidden, dim)
        shapes[p + "feed_forward.w2.weight"] = (dim, hidden)
        shapes[p + "feed_forward.w3.weight"] = (hidden, dim)
        shapes[p + "attention_norm.weight"] = (dim,)
        shapes[p + "ffn_norm.weight"] = (dim,)
    shapes["norm.weight"] = (dim,)
    if not tied_output:
        shapes["output.weight"] = (vocab, dim)
    return shapes


def load_model_files(folder: str | Path, *, require_tokenizer: bool = True) -> ModelFiles:
    """Find, read and cross-check a Meta model folder (or a GGUF file, or a folder holding one:
    llama_nb.io.gguf_model); a one-line CheckpointError on any problem."""
    folder = Path(folder)
    from llama_nb.io import gguf_model

    if (gguf := gguf_model.gguf_in(folder)) is not None:
        return ModelFiles(**gguf_model.load_gguf_files(gguf, expected_shapes, require_tokenizer=require_tokenizer))
    check_folder(folder)
    args = ModelArgs.from_file(folder / PARAMS_NAME)
    tokenizer_path: Path | None = folder / TOKENIZER_NAME
    if not tokenizer_path.exists():
        if require_tokenizer:
            raise CheckpointError(f"{tokenizer_path}: no such file; {_EXPECTS}")
        tokenizer_path = None
    else:  # a FIFO or /dev/zero there is refused now, not when the tokenizer is read
        open_regular_file(tokenizer_path, TOKENIZER_NAME).close()
    checkpoint = load_pth(folder / CHECKPOINT_NAME)
    check_tensors(checkpoint, args, source=folder / PARAMS_NAME)
    return ModelFiles(folder=folder, args=args, checkpoint=checkpoint, tokenizer_path=tokenizer_path)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer of a model, without reading its weights (`llama-nb tokenize`)."""
    from llama_nb.io import gguf_model

    if (gguf := gguf_model.gguf_in(Path(path))) is not None:
        return gguf_model.load_gguf_tokenizer(gguf)
    return Tokenizer(Path(path) / TOKENIZER_NAME)


def check_tensors(checkpoint: Checkpoint, args: ModelArgs, source: str | Path = PARAMS_NAME) -> None:
    """The checkpoint holds exactly the tensors `args` implies: names, shapes, bf16, C order."""
    path = checkpoint.path
    if args.n_layers > len(checkpoint):  # each layer is 9 tensors: listing 10^10 names would hang
        raise CheckpointError(
            f"{path}: {source} says n_layers={args.n_layers} but the file holds only {len(checkpoint)} tensors"
            + _layer_hint(checkpoint, args)
        )
    expected = expected_shapes(args, tied_output="output.weight" not in checkpoint)
    missing = [name for name in expected if name not in checkpoint]
    if missing:
        raise CheckpointError(
            f"{path}: missing {len(missing)} tensor(s) that {source} implies: {_first(missing)}"
            + _layer_hint(checkpoint, args)
        )
    unexpected = [name for name in checkpoint.keys() if name not in expected]
    if unexpected:
        raise CheckpointError(
            f"{path}: {len(unexpected)} unexpected tensor(s) for a Llama 3.x model: {_first(unexpected)}"
            + _layer_hint(checkpoint, args)
        )
    for name, shape in expected.items():
        tensor, dtype = checkpoint.tensors[name], checkpoint.dtypes[name]
        if tuple(tensor.shape) != shape:
            raise CheckpointError(
                f"{path}: {name} has shape {list(tensor.shape)} but {source} implies {list(shape)} "
                f"({_formula(name, args)})"
            )
        if format_of_checkpoint_dtype(dtype) is None:
            raise CheckpointError(f"{path}: {name} is {dtype}; no weight format reads it (llama_nb.formats)")
        if not tensor.flags.c_contiguous:
            raise CheckpointError(
                f"{path}: {name} is stored non-contiguous (strides {tensor.strides}); the kernels need "
                "row-major weights and llama_nb never copies weights. Re-save it contiguous."
            )


def describe(model_files: ModelFiles) -> dict[str, Any]:
    """Everything `llama-nb info` shows, as plain JSON-ready data."""
    ck, args = model_files.checkpoint, model_files.args
    if model_files.gguf is not None:  # GGUF names, ggml types, logical shapes, and the metadata
        from llama_nb.io.gguf_model import gguf_description

        tensors, extra = gguf_description(model_files.gguf)
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
    """Say what a path is when it is not a Meta folder: missing, a GGUF, Hugging Face, sharded."""
    if not folder.exists():
        raise CheckpointError(f"{folder}: no such folder; {_EXPECTS}")
    if folder.is_file():
        from llama_nb.io.gguf_model import is_gguf

        if is_gguf(folder):  # a .gguf file, or one that starts with GGUF's magic: llama_nb.io.gguf_model reads it
            return
        if folder.suffix == ".pth":
            raise CheckpointError(f"{folder}: a file; pass the folder that holds it ({folder.parent}); {_EXPECTS}")
        raise CheckpointError(f"{folder}: a file, not a folder; {_EXPECTS}")
    shards = sorted(p.name for p in folder.glob("consolidated.*.pth") if _SHARD.fullmatch(p.name))  # digits only: no escaping needed
    if len(shards) > 1:
        raise CheckpointError(
            f"{folder}: a checkpoint sharded into {len(shards)} files ({', '.join(shards[:3])}"
            f"{', ...' if len(shards) > 3 else ''}) for model parallelism (70B/405B); llama_nb reads "
            f"single-file checkpoints only (Llama 3.x 1B/3B/8B)"
        )
    if (folder / CHECKPOINT_NAME).exists():  # not is_file(): a FIFO there is refused by load_pth, naming it
        return
    if (folder / "config.json").is_file() and (
        any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").is_file()
    ):
        hint = ""
        if (folder / "original" / CHECKPOINT_NAME).is_file():
            hint = f"; Meta's files are in its original/ subfolder: use --model {folder / 'original'}"
        raise CheckpointError(f"{folder}: a Hugging Face transformers folder (config.json + safetensors){hint}; {_EXPECTS}")
    if any(folder.glob("*.gguf")):  # read by llama_nb.io.gguf_model (one GGUF; several are refused there)
        from llama_nb.io.gguf_model import gguf_in

        gguf_in(folder)
        return
    others = sorted(shown(p.name, quote=False) for p in folder.glob("*.pth"))
    if others:
        raise CheckpointError(f"{folder}: no {CHECKPOINT_NAME} (found {', '.join(others[:3])}); {_EXPECTS}")
    raise CheckpointError(f"{folder / CHECKPOINT_NAME}: no such file; {_EXPECTS}")


def _first(names: list[str], n: int = 4) -> str:
    """The first n names (from the file: escaped, so a name cannot forge a line) and how many more."""
    more = f", ... ({len(names) - n} more)" if len(names) > n else ""
    return ", ".join(shown(name, quote=False) for name in names[:n]) + more


def _layer_hint(checkpoint: Checkpoint, args: ModelArgs) -> str:
    """When the layer count disagrees with params.json, say so: it explains a long missing list."""
    # indices kept as text: int() of a 5000-digit index (a hostile name) is a ValueError
    layers = {m.group(1) for name in checkpoint.keys() if (m := re.match(r"layers\.(\d+)\.", name))}
    if layers and len(layers) != args.n_layers:
        return f" (the file has {len(layers)} layers, params.json says n_layers={args.n_layers})"
    return ""


def _formula(name: str, args: ModelArgs) -> str:
    """Which params.json keys a tensor's expected shape comes from."""
    if "feed_forward" in name:
        return (
            f"dim={args.dim}, FFN hidden size {args.hidden_dim} from multiple_of={args.multiple_of}, "
            f"ffn_dim_multiplier={args.ffn_dim_multiplier}"
        )
    if name.endswith(("wk.weight", "wv.weight")):
        return f"n_kv_heads={args.n_kv_heads} x head_dim={args.head_dim}, dim={args.dim}"
    if name.endswith(("wq.weight", "wo.weight")):
        return f"n_heads={args.n_heads} x head_dim={args.head_dim}, dim={args.dim}"
    if name in ("tok_embeddings.weight", "output.weight"):
        return f"vocab_size={args.vocab_size}, dim={args.dim}"
    return f"dim={args.dim}"

"""What every model reader produces: `ModelFiles` (hyperparameters, tensors under Meta's names,
the tokenizer), and the check that the tensors are exactly those Meta's model.py builds.

`check_tensors` checks that the checkpoint holds exactly the tensors Meta's model.py builds from
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

The readers (io/checkpoint.py for Meta's folders and their model-parallel shards, io/hf.py,
io/gguf_model.py) each build a ModelFiles under these names; io/checkpoint.py's
`load_model_files` picks the reader by what the path holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from llama_nb.errors import CheckpointError, shown
from llama_nb.formats import format_of_checkpoint_dtype
from llama_nb.io.params import ModelArgs
from llama_nb.io.pth import Checkpoint
from llama_nb.io.tokenizer import Tokenizer

CHECKPOINT_NAME = "consolidated.00.pth"
PARAMS_NAME = "params.json"
TOKENIZER_NAME = "tokenizer.model"

EXPECTS = f"llama_nb expects Meta's original folder ({CHECKPOINT_NAME}, {PARAMS_NAME}, {TOKENIZER_NAME})"


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
            raise CheckpointError(f"{self.folder / TOKENIZER_NAME}: no such file; {EXPECTS}")
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


def check_tensors(checkpoint: Checkpoint, args: ModelArgs, source: str | Path = PARAMS_NAME,
                  expected: dict[str, tuple[int, ...]] | None = None, what: str | None = None) -> None:
    """The checkpoint holds exactly the tensors `args` implies: names, shapes, bf16, C order.
    `expected`: other shapes than the whole model's (one shard's: io/shards.py), `what` says whose."""
    path = checkpoint.path
    if args.n_layers > len(checkpoint):  # each layer is 9 tensors: listing 10^10 names would hang
        raise CheckpointError(
            f"{path}: {source} says n_layers={args.n_layers} but the file holds only {len(checkpoint)} tensors"
            + _layer_hint(checkpoint, args)
        )
    if expected is None:
        expected = expected_shapes(args, tied_output="output.weight" not in checkpoint)
    missing = [name for name in expected if name not in checkpoint]
    if missing:
        raise CheckpointError(
            f"{path}: missing {len(missing)} tensor(s) that {source} implies: {first_names(missing)}"
            + _layer_hint(checkpoint, args)
        )
    unexpected = [name for name in checkpoint.keys() if name not in expected]
    if unexpected:
        raise CheckpointError(
            f"{path}: {len(unexpected)} unexpected tensor(s) for a Llama 3.x model: {first_names(unexpected)}"
            + _layer_hint(checkpoint, args)
        )
    for name, shape in expected.items():
        tensor, dtype = checkpoint.tensors[name], checkpoint.dtypes[name]
        if tuple(tensor.shape) != shape:
            raise CheckpointError(
                f"{path}: {name} has shape {list(tensor.shape)} but {source} implies {list(shape)}"
                f"{f' for {what}' if what else ''} ({_formula(name, args)})"
            )
        if format_of_checkpoint_dtype(dtype) is None:
            raise CheckpointError(f"{path}: {name} is {dtype}; no weight format reads it (llama_nb.formats)")
        if not tensor.flags.c_contiguous:
            raise CheckpointError(
                f"{path}: {name} is stored non-contiguous (strides {tensor.strides}); the kernels need "
                "row-major weights and llama_nb never copies weights. Re-save it contiguous."
            )


def first_names(names: list[str], n: int = 4) -> str:
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

"""The model's weights as Meta's model.py names them: `Weights.from_tensors` turns a checkpoint's
tensors (Meta's names) into `Weight`s (llama_nb/formats.py) of the stored format, or repacked into
another one; norm weights are widened to float32 (exact). Attribute names mirror Meta's keys:
`layers.3.attention.wq.weight` is `weights.layers[3].attention.wq`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from llama_nb.errors import CheckpointError
from llama_nb.formats import Weight, WeightFormat, as_weight, format_of_checkpoint_dtype, formats, repack
from llama_nb.io.params import ModelArgs


@dataclass
class Attention:
    wq: Weight  # [H*Dh, D]
    wk: Weight  # [KVH*Dh, D]
    wv: Weight  # [KVH*Dh, D]
    wo: Weight  # [D, H*Dh]


@dataclass
class FeedForward:
    w1: Weight  # [F, D]  gate
    w2: Weight  # [D, F]  down
    w3: Weight  # [F, D]  up


@dataclass
class TransformerBlock:
    attention: Attention
    feed_forward: FeedForward
    attention_norm: np.ndarray  # float32[D]
    ffn_norm: np.ndarray  # float32[D]


def stored_format(dtype: str) -> WeightFormat | None:
    """The format of a checkpoint tensor's dtype: a .pth dtype ("bfloat16"), or a weight format's
    own name for the block formats a GGUF stores ("q8_0"); None when no format reads it."""
    return format_of_checkpoint_dtype(dtype) or formats.get(dtype)


def stored_weight(array: np.ndarray, fmt: WeightFormat) -> Weight:
    """A checkpoint's 2-d tensor as a Weight of its stored format, without copying: a plain array
    (as_weight), or a block format's raw blocks uint8[N, row bytes] (a GGUF's Q8_0, ...)."""
    if fmt.block == 1:
        return as_weight(array, fmt)
    k = array.shape[1] * array.itemsize // fmt.block_bytes * fmt.block
    return Weight(fmt, (int(array.shape[0]), k), array.view(fmt.dtype))


@dataclass
class Weights:
    tok_embeddings: Weight  # [V, D]
    layers: list[TransformerBlock]
    norm: np.ndarray  # float32[D]
    output: Weight  # [V, D]; the embedding table itself when tied (Llama 3.2 1B/3B) and not repacked

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, np.ndarray], dtypes: Mapping[str, str], args: ModelArgs,
                     weight_format: WeightFormat | None = None) -> "Weights":
        """Pick Meta's tensors by key, as Weights of their stored format (no copy), or repacked
        into `weight_format` (every matrix but the embedding table, which stays as stored)."""

        def raw(key: str) -> tuple[np.ndarray, WeightFormat]:
            try:
                array, dtype = np.asarray(tensors[key]), dtypes[key]
            except KeyError:
                raise CheckpointError(f"checkpoint has no tensor {key!r}") from None
            fmt = stored_format(dtype)
            if fmt is None:
                raise CheckpointError(f"tensor {key!r} is {dtype}: no weight format reads it")
            return array, fmt

        def matrix(key: str) -> Weight:
            weight = stored_weight(*raw(key))
            return weight if weight_format is None else repack(weight, weight_format)

        def vector(key: str) -> np.ndarray:  # norms: float32, widened exactly
            array, fmt = raw(key)
            return np.ascontiguousarray(as_weight(array.reshape(1, -1), fmt).dequantize()[0])

        layers = [
            TransformerBlock(
                attention=Attention(*(matrix(f"layers.{i}.attention.{n}.weight") for n in ("wq", "wk", "wv", "wo"))),
                feed_forward=FeedForward(*(matrix(f"layers.{i}.feed_forward.{n}.weight") for n in ("w1", "w2", "w3"))),
                attention_norm=vector(f"layers.{i}.attention_norm.weight"),
                ffn_norm=vector(f"layers.{i}.ffn_norm.weight"),
            )
            for i in range(args.n_layers)
        ]
        embeddings = stored_weight(*raw("tok_embeddings.weight"))
        if "output.weight" in tensors:
            output = matrix("output.weight")
        else:
            output = embeddings if weight_format is None else repack(embeddings, weight_format)
        return cls(embeddings, layers, vector("norm.weight"), output)

    def matrices(self) -> list[Weight]:
        """Every weight a decode pass streams, once each, in order (the output last)."""
        out = []
        for layer in self.layers:
            a, f = layer.attention, layer.feed_forward
            out += [a.wq, a.wk, a.wv, a.wo, f.w1, f.w2, f.w3]
        return out + [self.output]

    def formats(self) -> set[str]:
        return {w.format.name for w in self.matrices() + [self.tok_embeddings]}

    @property
    def decode_bytes(self) -> int:
        """Bytes one decode pass must read: every matrix and norm once (one row of the embedding)."""
        norms = sum(l.attention_norm.nbytes + l.ffn_norm.nbytes for l in self.layers) + self.norm.nbytes
        return sum(w.nbytes for w in self.matrices()) + norms

    @property
    def nbytes(self) -> int:
        """Bytes the weights occupy (a tied output is the embedding table: counted once)."""
        tied = self.output is self.tok_embeddings
        return self.decode_bytes + (0 if tied else self.tok_embeddings.nbytes)

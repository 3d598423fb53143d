"""Meta's model-parallel checkpoints: consolidated.00.pth .. consolidated.{M-1}.pth, one per rank.

    Meta-Llama-3.1-70B-Instruct/         M = 8 shards (405B: 8, 405B-MP16: 16)
        consolidated.00.pth .. consolidated.07.pth
        params.json  tokenizer.model

Shard s holds the s-th of M equal parts of every split tensor (fairscale's layout, weights [out, in]):

    split on dim 0 (rows)      wq, wk, wv, w1, w3, output, tok_embeddings (the vocab)
    split on dim 1 (columns)   wo, w2
    replicated                 the norms (not bit-equal across shards: shard 0's are used)

When M > n_kv_heads, each kv head is repeated on rep = M / n_kv_heads consecutive shards (one kv
head per shard: the one its query heads use), as Meta's reshard_mp writes them.

Rank r of N (N divides M) takes shards r*k .. r*k + k - 1, k = M / N (Meta's map_mp_rank), and
joins them along the split dims; N = 1 joins all of them (a sharded checkpoint on one machine).
Every shard is checked against the shapes params.json implies for one of M parts.

Memory per rank: with k = 1 (the usual N = M) the shard's tensors are used as they are, as for a
single-file model: zero-copy views with --mmap, else read into memory once. With k > 1 each joined
tensor is built once, in an array of its own, from the views of the shards' maps (also with
--mmap: a joined tensor is in no file), after the memory check: the rank holds its weights once
and nothing else (the maps are page cache, which the kernel can drop). Joining
wo and w2 on dim 1 copies rows apart; keeping the k pieces instead would save that copy only with
--mmap, at the price of k products and k - 1 sums per matrix in every pass, and the other matrices
(dim 0) would still need joining; so every matrix is joined.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from llama_nb.errors import CheckpointError, LlamaNbError, shown
from llama_nb.io.params import ModelArgs
from llama_nb.io.pth import Checkpoint, TensorTable
from llama_nb.memory import empty_at

SHARD_NAME = re.compile(r"consolidated\.(\d+)\.pth")
DIM0 = ("wq", "wk", "wv", "w1", "w3", "output", "tok_embeddings")
DIM1 = ("wo", "w2")


def shard_paths(folder: Path) -> list[Path]:
    """consolidated.NN.pth of `folder` in shard order; a missing one in 00..M-1 is an error."""
    found: dict[int, Path] = {}
    for path in folder.glob("consolidated.*.pth"):
        m = SHARD_NAME.fullmatch(path.name)
        if not m:
            continue
        index = int(m.group(1)) if len(m.group(1)) <= 4 else -1  # 10^5000 shards: a hostile name, not a model
        if index < 0 or path.name != f"consolidated.{index:02d}.pth":  # 1 and 01 would be one shard twice
            raise CheckpointError(f"{folder}: {shown(path.name, quote=False)} is not a shard name "
                                  f"(Meta's are consolidated.00.pth, consolidated.01.pth, ...)")
        found[index] = path
    if not found:
        return []
    count = max(found) + 1
    missing = [f"consolidated.{i:02d}.pth" for i in range(count) if i not in found]
    if missing:
        raise CheckpointError(f"{folder}: a model-parallel checkpoint of {count} shards is missing "
                              f"{', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}")
    return [found[i] for i in range(count)]


def split_dim(name: str) -> int | None:
    """0 or 1: the dim a tensor is split on across shards; None: replicated (the norms)."""
    key = name.split(".")[-2]
    return 0 if key in DIM0 else 1 if key in DIM1 else None


def shard_shapes(args: ModelArgs, n_shards: int, whole: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor in one of `n_shards` shards, from the `whole` model's shapes."""
    from llama_nb.model.parallel import part_of

    part = part_of(args, 0, n_shards)
    shapes = {}
    for name, shape in whole.items():
        dim = split_dim(name)
        if name.endswith(("wk.weight", "wv.weight")):
            shape = (part.n_kv_heads * args.head_dim, shape[1])
        elif dim is not None:
            shape = tuple(n // n_shards if d == dim else n for d, n in enumerate(shape))
        shapes[name] = shape
    return shapes


def rank_shards(folder: Path, n_shards: int, args: ModelArgs, rank: int, ranks: int, source: str | Path) -> list[int]:
    """The shards rank `rank` of `ranks` takes (Meta's map_mp_rank), once the split is checked."""
    from llama_nb.model.parallel import split_sizes

    if n_shards % ranks:
        fits = [n for n in range(1, n_shards + 1) if n_shards % n == 0]
        raise CheckpointError(f"{folder}: a checkpoint of {n_shards} shards cannot be run on {ranks} ranks: "
                              f"the number of ranks must divide it ({', '.join(map(str, fits))})")
    try:
        split_sizes(args, n_shards)
    except LlamaNbError as exc:
        raise CheckpointError(f"{folder}: {n_shards} shards, but {source}: {exc}") from None
    k = n_shards // ranks
    return list(range(rank * k, (rank + 1) * k))


class RankTensors(TensorTable):
    """The tensors of one rank, to be joined from its k > 1 shards (a TensorTable, as io.pth.Checkpoint).

    `tensors` are stand-ins of the joined tensors' shapes and dtypes (broadcast zeros: no memory),
    what the memory check and `llama-nb info` need; `read_tensors()` joins them, each into an
    array of its own, from the views of the shards' maps."""

    def __init__(self, path: Path, shards: list[Checkpoint], distinct_kv: list[Checkpoint]):
        self.path, self.shards, self.distinct_kv, self.metadata = path, shards, distinct_kv, {}
        self.dtypes = dict(shards[0].dtypes)
        self.tensors = {}
        for name, first in shards[0].tensors.items():
            dim, pieces = split_dim(name), self._pieces(name)
            shape = list(first.shape)
            if dim is not None:
                shape[dim] = sum(sh.tensors[name].shape[dim] for sh in pieces)
            self.tensors[name] = np.broadcast_to(np.zeros((), first.dtype), tuple(shape))

    def _pieces(self, name: str) -> list[Checkpoint]:
        return self.distinct_kv if name.endswith(("wk.weight", "wv.weight")) else self.shards

    def read_tensors(self) -> dict[str, np.ndarray]:
        joined = {}
        for name in self.tensors:
            dim = split_dim(name)
            pieces = [self.shards[0].tensors[name]] if dim is None else [sh.tensors[name] for sh in self._pieces(name)]
            # replicated: shard 0's; else joined along the split dim; into 64-byte aligned memory (memory.py)
            out = empty_at(self.tensors[name].shape, pieces[0].dtype)
            np.concatenate(pieces, axis=dim or 0, out=out)
            joined[name] = out
        return joined


def join_rank(paths: list[Path], mine: list[int], shards: list[Checkpoint], args: ModelArgs) -> Checkpoint | RankTensors:
    """A rank's checked shards (`mine`, of all `paths`) as one checkpoint: the shard itself when
    it is one, else the RankTensors that join them."""
    if len(shards) == 1:
        return shards[0]
    rep = max(len(paths) // args.n_kv_heads, 1)  # shards that repeat one kv head
    distinct_kv = [sh for s, sh in zip(mine, shards) if s % rep == 0] or shards[:1]
    return RankTensors(Path(f"{paths[mine[0]]} .. {paths[mine[-1]].name}"), shards, distinct_kv)  # for messages

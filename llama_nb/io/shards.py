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
tensor is built once, in an array of its own, from the views of the shards' maps: the rank holds
its weights once and nothing else (the maps are page cache, which the kernel can drop). Joining
wo and w2 on dim 1 copies rows apart; keeping the k pieces instead would save that copy only with
--mmap, at the price of k products and k - 1 sums per matrix in every pass, and the other matrices
(dim 0) would still need joining; so every matrix is joined.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from llama_nb.errors import CheckpointError, LlamaNbError
from llama_nb.io.params import ModelArgs
from llama_nb.io.pth import Checkpoint, load_pth

SHARD_NAME = re.compile(r"consolidated\.(\d+)\.pth")
DIM0 = ("wq", "wk", "wv", "w1", "w3", "output", "tok_embeddings")
DIM1 = ("wo", "w2")


def shard_paths(folder: Path) -> list[Path]:
    """consolidated.NN.pth of `folder` in shard order; a missing one in 00..M-1 is an error."""
    found: dict[int, Path] = {}
    for path in folder.glob("consolidated.*.pth"):
        m = SHARD_NAME.fullmatch(path.name)
        if m and len(m.group(1)) <= 4:  # digits only; 10^5000 shards is a hostile name, not a model
            found[int(m.group(1))] = path
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


def shard_shapes(args: ModelArgs, n_shards: int, *, tied_output: bool) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor in one of `n_shards` shards."""
    from llama_nb.io.checkpoint import expected_shapes
    from llama_nb.model.parallel import part_of

    part = part_of(args, 0, n_shards)
    shapes = {}
    for name, shape in expected_shapes(args, tied_output=tied_output).items():
        dim = split_dim(name)
        if name.endswith(("wk.weight", "wv.weight")):
            shape = (part.n_kv_heads * args.head_dim, shape[1])
        elif dim is not None:
            shape = tuple(n // n_shards if d == dim else n for d, n in enumerate(shape))
        shapes[name] = shape
    return shapes


class RankTensors:
    """The tensors of one rank, joined from its k shards (quacks like io.pth.Checkpoint)."""

    def __init__(self, path: Path, tensors: dict[str, np.ndarray], dtypes: dict[str, str]):
        self.path, self.tensors, self.dtypes, self.metadata = path, tensors, dtypes, {}

    def read_tensors(self) -> dict[str, np.ndarray]:
        return self.tensors  # already arrays of their own

    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def __len__(self) -> int:
        return len(self.tensors)

    def keys(self):
        return self.tensors.keys()

    def items(self):
        return self.tensors.items()

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def load_rank(folder: Path, paths: list[Path], args: ModelArgs, rank: int, ranks: int,
              source: str | Path) -> Checkpoint | RankTensors:
    """Rank `rank` of `ranks`' tensors from the shards `paths`, each shard checked (see the module
    docstring); a one-line CheckpointError on any problem."""
    from llama_nb.io.checkpoint import check_tensors
    from llama_nb.model.parallel import split_sizes

    n_shards = len(paths)
    if n_shards % ranks:
        fits = [n for n in range(1, n_shards + 1) if n_shards % n == 0]
        raise CheckpointError(f"{folder}: a checkpoint of {n_shards} shards cannot be run on {ranks} ranks: "
                              f"the number of ranks must divide it ({', '.join(map(str, fits))})")
    try:
        split_sizes(args, n_shards)
    except LlamaNbError as exc:
        raise CheckpointError(f"{folder}: {n_shards} shards, but {source}: {exc}") from None
    k = n_shards // ranks
    mine = list(range(rank * k, (rank + 1) * k))
    shards = []
    for s in mine:
        shard = load_pth(paths[s])
        tied = "output.weight" not in shard
        expected = shard_shapes(args, n_shards, tied_output=tied)
        check_tensors(shard, args, source=source, expected=expected, what=f"shard {s} of {n_shards}")
        if shards and shard.dtypes != shards[0].dtypes:
            raise CheckpointError(f"{paths[s]}: its dtypes differ from {paths[mine[0]].name}'s")
        shards.append(shard)
    if k == 1:
        return shards[0]
    rep = max(n_shards // args.n_kv_heads, 1)  # shards that repeat one kv head
    distinct_kv = [sh for s, sh in zip(mine, shards) if s % rep == 0] or shards[:1]
    joined: dict[str, np.ndarray] = {}
    for name in shards[0].keys():
        dim = split_dim(name)
        if dim is None:
            joined[name] = np.array(shards[0].tensors[name])
            continue
        pieces = distinct_kv if name.endswith(("wk.weight", "wv.weight")) else shards
        joined[name] = np.concatenate([sh.tensors[name] for sh in pieces], axis=dim)
    return RankTensors(paths[mine[0]], joined, dict(shards[0].dtypes))

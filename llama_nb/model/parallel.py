"""Tensor parallelism over processes (Meta's model-parallel layout), behind one small object.

Rank r of N holds one N-th of every split matrix (fairscale's Column/RowParallelLinear and
VocabParallelEmbedding, weights [out, in]):

    wq, wk, wv      rows of its heads [h0, h1) (and their kv heads)      -> q, k, v of its heads only
    wo              columns of its heads                                 -> a partial sum of xb2
    w1, w3          rows of its FFN columns [f0, f1)
    w2              columns of its FFN columns                           -> a partial sum of xb2
    tok_embeddings  rows of its vocab slice [v0, v1); zeros for the other tokens -> a partial sum of x
    output          rows of its vocab slice                              -> logits[v0:v1]
    norms           replicated

so a pass needs, per chunk of tokens: one all-reduce of x after the embedding, one of xb2 after
wo and one after w2 in every layer (2 * n_layers + 1 all-reduces of T * dim float32), and one
all-gather of the logits. Every collective runs in place on the model's own float32 buffers
(mpi4py's buffer interface: no pickling, no allocation). Sampling happens on rank 0 and the token
is broadcast, so a seed gives the same tokens as one process.

    Single     one process: every collective is a no-op (the transformer's single path unchanged)
    MpiGroup   mpi4py's COMM_WORLD; `group_from_environment()` makes one only when the process was
               started by an MPI launcher (PMI_SIZE / OMPI_COMM_WORLD_SIZE > 1): llama_nb never
               imports mpi4py otherwise, and runs without it installed.

When n_kv_heads < N (405B on 16 ranks: 8 kv heads), Meta's shards repeat each kv head on
N / n_kv_heads consecutive ranks, so a rank holds 1 kv head, the one its query heads use.

Serving (`mpirun -n N llama-nb serve`, model/follow.py): rank 0 alone schedules and samples, and
sends each pass's plan, int64 buffers, with `broadcast` (blocking, while a pass is going on) and
`broadcast_idle` (for the ranks that wait for the next request: a nonblocking broadcast tested
between short sleeps, since MPICH's blocking one keeps a core at 100% while it waits).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import numpy as np

from llama_nb.errors import LlamaNbError
from llama_nb.io.params import ModelArgs

# Environment variables MPI launchers set in every process they start: MPICH/Intel MPI's hydra
# (PMI_SIZE), Open MPI (OMPI_COMM_WORLD_SIZE), Slurm's PMI2/PMIx (PMIX_SIZE is not set: PMI_SIZE is).
T = TypeVar("T")
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
# broadcast_idle: a waiting rank tests for rank 0's message after sleeps that double from the first
# to the longest (seconds): it answers within about its last sleep, and an idle wait costs ~50
# wake-ups a second (under 1% of a core: bench/serve.py prints it); the first pass after an idle
# spell waits up to 20 ms for the others.
IDLE_SLEEP_FIRST, IDLE_SLEEP_LONGEST = 50e-6, 0.02


class AgreedError(LlamaNbError):
    """An error every rank raised together (Single.first_error): each can exit on its own."""


@dataclass(frozen=True)
class Part:
    """What one rank of `size` holds of a model: local counts and its vocab slice."""

    rank: int
    size: int
    n_heads: int  # query heads of this rank
    n_kv_heads: int  # kv heads of this rank (1 when n_kv_heads < size: repeated across ranks)
    hidden_dim: int  # FFN columns of this rank
    vocab_lo: int
    vocab_hi: int

    @property
    def vocab_size(self) -> int:
        return self.vocab_hi - self.vocab_lo


def split_sizes(args: ModelArgs, size: int) -> None:
    """Refuse a model that `size` ranks cannot split evenly (a one-line LlamaNbError)."""
    H, KVH = args.n_heads, args.n_kv_heads
    problems = [f"{name}={value}" for name, value in
                (("n_heads", H), ("hidden_dim", args.hidden_dim), ("vocab_size", args.vocab_size)) if value % size]
    if KVH % size and size % KVH:
        problems.append(f"n_kv_heads={KVH}")
    if problems:
        raise LlamaNbError(f"the model cannot be split across {size} ranks: {', '.join(problems)} "
                           f"{'is' if len(problems) == 1 else 'are'} not divisible by {size}")


def part_of(args: ModelArgs, rank: int, size: int) -> Part:
    """Rank `rank` of `size`'s share of `args` (see the module docstring)."""
    split_sizes(args, size)
    vocab = args.vocab_size // size
    return Part(rank, size, args.n_heads // size, max(args.n_kv_heads // size, 1), args.hidden_dim // size,
                rank * vocab, (rank + 1) * vocab)


class Single:
    """One process: the whole model, no communication."""

    rank, size = 0, 1
    local_size = 1  # ranks on this machine: they share its cores
    collective_seconds = 0.0  # summed over the collectives since the last reset_timings()

    def part(self, args: ModelArgs) -> Part:
        return part_of(args, 0, 1)

    def embedding(self, ops, x: np.ndarray, table, tokens: np.ndarray, part: Part) -> None:
        """x float32[T, D] = the rows of `tokens` (int64[T]) in the embedding table."""
        ops.embedding(x, table, tokens)

    def allreduce(self, buffer: np.ndarray) -> None:
        """buffer (float32, C-contiguous) = its sum over the ranks, in place."""

    def allgather(self, part: np.ndarray, whole: np.ndarray) -> None:
        """whole = the ranks' `part`s, concatenated in rank order (float32[1, V/N] -> [1, V])."""

    def broadcast_token(self, token: int) -> int:
        """Rank 0's token on every rank."""
        return token

    def share(self, value):
        """Rank 0's `value` (a line typed in chat: small, picklable) on every rank."""
        return value

    def broadcast(self, buffer: np.ndarray) -> None:
        """buffer (int64 or float32, C-contiguous) = rank 0's buffer, in place on every rank."""

    def broadcast_idle(self, buffer: np.ndarray) -> None:
        """broadcast(buffer), for ranks that may wait long for it (a server's other ranks between
        requests): waiting costs no CPU. Every rank must call this one, not broadcast, for the
        same message (MPI matches nonblocking collectives only with nonblocking ones)."""

    def first_error(self, error: str | None) -> str | None:
        """Collective: the first rank's error (prefixed by its rank when there are several)."""
        return error

    def reset_timings(self) -> None:
        self.collective_seconds = 0.0


class MpiGroup(Single):
    """The processes of an MPI job (mpi4py's COMM_WORLD), one rank each."""

    def __init__(self, comm=None):
        from mpi4py import MPI  # only here: llama_nb runs without mpi4py

        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.local_size = self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()
        self.collective_seconds = 0.0
        self._token = np.zeros(1, np.int64)
        self._local_ids = np.zeros(0, np.int64)

    def part(self, args: ModelArgs) -> Part:
        return part_of(args, self.rank, self.size)

    def embedding(self, ops, x: np.ndarray, table, tokens: np.ndarray, part: Part) -> None:
        """x = the rows of `tokens` in this rank's vocab slice of the table (`table` holds rows
        vocab_lo..vocab_hi-1), zeros for the others, summed over the ranks: exactly one rank
        holds each token, so x is the row itself, bit for bit."""
        T = len(tokens)
        if len(self._local_ids) < T:
            self._local_ids = np.zeros(T, np.int64)
        local = self._local_ids[:T]
        np.subtract(tokens, part.vocab_lo, out=local)
        np.clip(local, 0, part.vocab_size - 1, out=local)
        ops.embedding(x, table, local)
        for i in range(T):
            if not part.vocab_lo <= tokens[i] < part.vocab_hi:
                x[i] = 0.0
        self.allreduce(x)

    def allreduce(self, buffer: np.ndarray) -> None:
        t0 = time.perf_counter()
        self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM)
        self.collective_seconds += time.perf_counter() - t0

    def allgather(self, part: np.ndarray, whole: np.ndarray) -> None:
        t0 = time.perf_counter()
        self.comm.Allgather(part, whole)  # [1, V/N] each -> [1, V] in rank order: the vocab slices
        self.collective_seconds += time.perf_counter() - t0

    def broadcast_token(self, token: int) -> int:
        t0 = time.perf_counter()
        self._token[0] = token
        self.comm.Bcast(self._token, root=0)
        self.collective_seconds += time.perf_counter() - t0
        return int(self._token[0])

    def share(self, value):
        return self.comm.bcast(value, root=0)  # once per chat line, not per token: pickled

    def broadcast(self, buffer: np.ndarray) -> None:
        t0 = time.perf_counter()
        self.comm.Bcast(buffer, root=0)
        self.collective_seconds += time.perf_counter() - t0

    def broadcast_idle(self, buffer: np.ndarray) -> None:
        request = self.comm.Ibcast(buffer, root=0)
        if self.rank == 0:
            request.Wait()  # rank 0 only sends: done as soon as the message is on its way
            return
        sleep = IDLE_SLEEP_FIRST
        while not request.Test():  # each Test also makes MPI's progress (forwards it to other ranks)
            time.sleep(sleep)
            sleep = min(2 * sleep, IDLE_SLEEP_LONGEST)

    def first_error(self, error: str | None) -> str | None:
        # once per load, not per token: a pickled string is fine here
        errors = self.comm.allgather(error)
        for rank, message in enumerate(errors):
            if message is not None:
                return message if all(e == message for e in errors) else f"rank {rank}: {message}"
        return None

    def abort(self, code: int) -> None:
        """End every rank of the job now (the MPI launcher kills the others)."""
        sys.stdout.flush()
        self.comm.Abort(code)


def together(group: Single, build: Callable[[], T]) -> T:
    """build() on every rank of `group` (loading: each its own shards); an error on any rank is
    raised on every rank as one AgreedError, so that all stop (none waits for the failed one)."""
    value, error = None, None
    try:
        value = build()
    except Exception as exc:  # noqa: BLE001 - on one rank of several: said once, every rank stops
        if group.size == 1:
            raise
        error = str(exc) if isinstance(exc, LlamaNbError) else f"{type(exc).__name__}: {exc}"
    error = group.first_error(error)  # collective: every rank learns whether any failed
    if error is not None:
        raise AgreedError(error)
    return value


def default_threads(group: Single, threads: int | None) -> int | None:
    """--threads as given, else the machine's cores shared among the ranks it runs (None: all)."""
    if threads is not None or group.local_size == 1:
        return threads
    import numba

    return max(1, numba.config.NUMBA_NUM_THREADS // group.local_size)


def mpi_size_from_environment() -> int:
    """The number of processes an MPI launcher started this one among (1 when none did)."""
    for name in SIZE_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value:
            try:
                return max(1, int(value))
            except ValueError:
                raise LlamaNbError(f"${name}={value!r} is not a number of processes") from None
    return 1


def group_from_environment() -> Single:
    """MpiGroup when started by mpirun/mpiexec with more than one process, else Single."""
    if mpi_size_from_environment() == 1:
        return Single()
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise LlamaNbError("started by an MPI launcher with several processes, but mpi4py is not installed: "
                           "pip install 'llama-nb[mpi]'") from None
    return MpiGroup()

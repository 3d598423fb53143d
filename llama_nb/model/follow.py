"""Rank 0 serves, the other ranks follow its passes: `mpirun -n N llama-nb serve`.

Under mpirun only rank 0 runs the HTTP server and the BatchGenerator (model/batch.py: the
requests, the scheduling, the sampling). Each pass it runs, `Transformer.forward_batch(sequences)`,
needs every rank (the collectives of model/parallel.py), so rank 0's model is wrapped in a Leader,
which first sends the pass's plan to the others; each other rank, in `follow`, runs the same
forward_batch on the same spans. A rank's KV cache slots are a function of the passes run on
them, so every rank's slots hold what rank 0's hold (prefix reuse included) without the other
ranks knowing about requests, sequences or samplers.

The plan of a pass: two messages of int64 from rank 0, through the group (nothing pickled):

    header  int64[3]                          (PASS, n_spans, n_tokens), or (STOP, 0, 0) at the end
    body    int64[3 * n_spans + n_tokens]     (slot, len(tokens), start_pos) of each span, then
                                              the spans' tokens one after the other

The header goes by `group.broadcast_idle` (a rank waiting for the next request uses no CPU), the
body by `group.broadcast`. Both buffers (Plan) are allocated once, for the largest pass: `slots`
spans, `max_batch` tokens; both ends check a plan by the same rule (Plan.fits).

Failures. A pass that fails with a LlamaNbError (a span the context cannot hold, non-finite
logits) fails alike on every rank: the same plan is checked the same way, and the logits are the
all-gathered ones. Rank 0's engine reports it to the requests; the others wait for the next
pass. Any other failure of a pass, on any rank, is said in one line by its rank and ends the job
(MPI_Abort): the other ranks may be waiting for it in a collective. The other ranks ignore SIGINT
and SIGTERM while they follow (mpirun sends them to every rank): rank 0 stops the server, ends
its passes (the in-flight requests get their last chunk) and then sends STOP. A rank that dies
is seen by mpirun, which ends the others.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator

import numpy as np

from llama_nb.errors import LlamaNbError

PASS, STOP = 1, 0
SPAN = 3  # int64 values per span in the body: slot, len(tokens), start_pos


class Plan:
    """The buffers of a pass's plan, allocated once, for `model`'s largest pass (slots spans,
    max_batch tokens), and the rule both ends check it by."""

    def __init__(self, model):
        self.slots, self.max_batch = model.slots, model.max_batch
        self.header = np.zeros(3, np.int64)
        self.body = np.zeros(SPAN * self.slots + self.max_batch, np.int64)

    def fits(self, n_spans: int, n_tokens: int) -> bool:
        return 0 < n_spans <= self.slots and 0 < n_tokens <= self.max_batch

    def write(self, sequences) -> np.ndarray:
        """Write forward_batch's `sequences` ((slot, tokens, start_pos) each) into the header and
        body; return the part of the body to send. A pass the plan cannot hold (nor forward_batch
        run) is refused here, before anything is sent."""
        n_spans, n_tokens = len(sequences), sum(len(tokens) for _, tokens, _ in sequences)
        if not self.fits(n_spans, n_tokens):
            raise LlamaNbError(f"a pass of {n_spans} sequences and {n_tokens} tokens does not fit the plan "
                               f"(1..{self.slots} sequences, 1..{self.max_batch} tokens)")
        at = SPAN * n_spans
        for i, (slot, tokens, start_pos) in enumerate(sequences):
            self.body[SPAN * i : SPAN * i + SPAN] = (slot, len(tokens), start_pos)
            self.body[at : at + len(tokens)] = tokens
            at += len(tokens)
        self.header[:] = (PASS, n_spans, n_tokens)
        return self.body[:at]

    def read(self) -> list[tuple[int, np.ndarray, int]]:
        """The `sequences` of the header and body rank 0 wrote (the tokens as views of the body)."""
        n_spans = int(self.header[1])
        sequences, at = [], SPAN * n_spans
        for slot, n, start_pos in self.body[:at].reshape(n_spans, SPAN):
            sequences.append((int(slot), self.body[at : at + n], int(start_pos)))
            at += int(n)
        return sequences


class Leader:
    """Rank 0's model for the BatchGenerator: each forward_batch is first sent to the other ranks.

    Every other attribute (slots, max_batch, ctx, args, ops, ...) is the model's own. Thread-safe
    between the engine thread (forward_batch) and the one that ends the server (stop).
    """

    def __init__(self, model):
        self.model, self.group = model, model.group
        self.plan = Plan(model)
        self.stopped = False
        self._lock = threading.Lock()  # stop() waits for the pass in flight

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def forward_batch(self, sequences) -> np.ndarray:
        with self._lock:
            if self.stopped:
                raise LlamaNbError("the model's other ranks have stopped")
            body = self.plan.write(sequences)
            self.group.broadcast_idle(self.plan.header)
            self.group.broadcast(body)
            try:
                return self.model.forward_batch(sequences)
            except LlamaNbError:
                raise  # every rank met it, from the same plan
            except Exception as exc:  # noqa: BLE001 - this rank's alone: the others may wait for it forever
                abort_job(self.group, exc)

    def stop(self) -> None:
        """Tell the other ranks to return from `follow` (once, after the pass in flight)."""
        with self._lock:
            if not self.stopped:
                self.stopped = True
                self.plan.header[:] = (STOP, 0, 0)
                self.group.broadcast_idle(self.plan.header)


@contextlib.contextmanager
def leading(model) -> Iterator:
    """Rank 0's block of `serve`: yields the model its BatchGenerator must run (a Leader under
    MPI, the model itself in one process); when the block ends, however, the others stop."""
    if model.group.size == 1:
        yield model
        return
    leader = Leader(model)
    try:
        yield leader
    finally:
        leader.stop()


def follow(model) -> None:
    """Every rank but 0: run rank 0's passes on `model` (this rank's part) until it sends STOP."""
    group, plan = model.group, Plan(model)
    with deferred_signals():
        while True:
            group.broadcast_idle(plan.header)
            verb, n_spans, n_tokens = (int(v) for v in plan.header)
            if verb == STOP:
                return
            if verb != PASS or not plan.fits(n_spans, n_tokens):
                raise LlamaNbError(f"rank 0 sent a plan this rank cannot read: header {plan.header.tolist()}")
            group.broadcast(plan.body[: SPAN * n_spans + n_tokens])
            try:
                model.forward_batch(plan.read())
            except LlamaNbError:
                pass  # rank 0 met it too: its engine says it to the requests
            except Exception as exc:  # noqa: BLE001 - this rank's alone: cli/_ranks.end says it, MPI_Abort
                raise LlamaNbError(f"a pass failed: {type(exc).__name__}: {exc}") from exc


@contextlib.contextmanager
def stop_signals_to(handler) -> Iterator[None]:
    """SIGINT and SIGTERM go to `handler` in the block (main thread only), restored after it."""
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def deferred_signals():
    """SIGINT and SIGTERM ignored in the block (the main thread's): mpirun sends them to every
    rank, and a rank other than 0 must go on with the passes until rank 0 ends them (STOP)."""
    return stop_signals_to(signal.SIG_IGN)


def abort_job(group, exc: BaseException) -> None:
    """One line on this rank's stderr, then MPI_Abort: every rank of the job ends."""
    message = " ".join(str(exc).split())
    sys.stderr.write(f"error: rank {group.rank}: a pass failed: {type(exc).__name__}: {message}\n")
    sys.stderr.flush()
    group.abort(1)

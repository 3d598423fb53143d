"""Several sequences generated together: one forward pass per step over every active sequence.

    batch = BatchGenerator(model, tokenizer)            # model: a Transformer with slots >= 1
    seq = batch.submit(prompt_ids, 32, temperature=0)   # any number; they wait for a free slot
    while batch.busy:
        for event in batch.step():                      # one forward pass
            ...                                         # BatchEvent: event.seq is seq.id

    for event in generate_batch(model, tokenizer, [ids_a, ids_b], 32):   # the same, as an iterator
        ...

On a CPU a decode pass reads every weight once whatever the number of rows, so a pass over the
next token of 4 sequences costs little more than a pass over one. Each step is one
`Transformer.forward_batch` over:
- one row per decoding sequence (the token it sampled last, at its next position), and
- one prefill chunk (at most `prefill_chunk` tokens) of the oldest sequence still prefilling, so a
  new prompt delays the others by at most one chunk per step, never by its whole length.
Each sequence owns a KV cache slot while it runs; a finished (or cancelled) sequence frees it for
the next one waiting. A slot remembers the tokens its cache holds: a new sequence takes the free
slot whose cached tokens share the longest prefix with its prompt and prefills only the rest
(prefix reuse: a chat client's next turn re-sends the whole conversation; only the new message
and the header are run). At least the prompt's last token is always run, for its logits.

Sampling is per sequence (its own temperature, top-k, top-p and seeded generator: the Sampler of
model/generate.py). Events come out in the order of the pass's rows; each sequence's last event
has `finished` set to its stop reason ("stop_token", "max_tokens", "context" or "cancelled") and
its `text` holds what the streaming decoder held back (an incomplete UTF-8 tail, as U+FFFD).

Numerics: a sequence's rows go through the same kernels with the same inputs whether or not other
rows share the pass (every op but attention works row by row, and attention runs per sequence).
The products choose their kernel by the pass's row count: one row the decode matrix-vector
kernel; a few (a decode step of several sequences, ops/matvec.py FEW_TOKENS) a kernel that sums
each row as that one does (at bf16 on AVX512_BF16: bit-identical logits); more (a prefill chunk
in the pass) the prefill tiles, which sum long rows (K above the tile's reduction block,
ops/matmul_tiles.py) in another order. The tests hold the cases to bit-identical logits where the
kernels agree and to the same greedy tokens otherwise (tests/test_batch.py).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, Sequence as SequenceOf

from llama_nb.errors import LlamaNbError
from llama_nb.io.tokenizer import StreamDecoder, Tokenizer
from llama_nb.model.generate import RANDOM_SEED, GenerationStats, Sampler
from llama_nb.model.transformer import Transformer

DEFAULT_PREFILL_CHUNK = 64  # tokens of a new prompt per step: how long the other sequences wait


@dataclass
class BatchEvent:
    """One generated token of one sequence, or (token None) the end of that sequence.

    seq       the sequence's id (generate_batch: the index of its prompt)
    token     the generated id; None on the final event
    text      the text this token completes; on the final event, the held-back tail ("" mostly)
    pos       the token's position in its sequence
    index     0 for a sequence's first generated token, 1 for the next, ...
    seconds   wall time of the forward pass (and sampling) that produced it
    finished  on the final event only: the stop reason
    """

    seq: int
    token: int | None
    text: str
    pos: int
    index: int
    seconds: float
    finished: str | None = None


@dataclass
class Sequence:
    """A submitted prompt and its progress (returned by BatchGenerator.submit)."""

    id: int
    prompt: list[int]
    max_new_tokens: int
    sampler: Sampler
    stop: frozenset
    decoder: StreamDecoder
    stats: GenerationStats = field(default_factory=GenerationStats)  # stats.start_pos: tokens reused from the cache
    slot: int | None = None
    fed: int = 0  # prompt tokens in the cache (reused or prefilled)
    pos: int = 0  # position of the next token to run
    next_token: int | None = None  # sampled, runs in the next decode pass
    cancelled: bool = False
    done: bool = False

    @property
    def prefilling(self) -> bool:
        return self.fed < len(self.prompt)


class BatchGenerator:
    """Schedules submitted sequences over `model.slots` KV cache slots (see the module docstring).

    prefill_chunk  tokens of a prompt per step (at most model.max_batch - model.slots, so a chunk
                   always fits beside one decode row per slot)
    """

    def __init__(self, model: Transformer, tokenizer: Tokenizer, prefill_chunk: int = DEFAULT_PREFILL_CHUNK):
        if model.max_batch <= model.slots:
            raise LlamaNbError(f"{model.slots} slots (--parallel) need passes of more than {model.slots} tokens, but "
                               f"this model's passes hold {model.max_batch} (max_batch, at most --ctx)")
        self.model, self.tokenizer = model, tokenizer
        self.prefill_chunk = max(1, min(prefill_chunk, model.max_batch - model.slots))
        self.cached: list[list[int]] = [[] for _ in range(model.slots)]  # the ids each slot's cache holds
        self.owner: list[Sequence | None] = [None] * model.slots
        self.last_used = [0] * model.slots  # step count when each slot was last freed (LRU among equals)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order
        self.steps = 0
        self._next_id = 0

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    def submit(self, prompt: SequenceOf[int], max_new_tokens: int, *, temperature: float = 0.0,
               top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
               stop_tokens: SequenceOf[int] | None = None, seq_id: int | None = None) -> Sequence:
        """Queue a prompt; it starts when a slot is free. Checked as generate() checks it."""
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise LlamaNbError("the prompt is empty: give at least one token (a BOS token counts)")
        if max_new_tokens < 1:
            raise LlamaNbError(f"--max-tokens must be >= 1, got {max_new_tokens}")
        if len(prompt) >= self.model.ctx:
            raise LlamaNbError(f"the prompt has {len(prompt)} tokens but the context holds {self.model.ctx}: "
                               f"shorten the prompt or raise --ctx")
        if max(prompt) >= self.model.args.vocab_size or min(prompt) < 0:
            raise LlamaNbError(f"token ids must be in [0, {self.model.args.vocab_size})")
        sampler = Sampler(self.model.ops, temperature, top_k, top_p, seed)
        stop = frozenset(self.tokenizer.stop_tokens if stop_tokens is None else stop_tokens)
        if seq_id is None:
            seq_id, self._next_id = self._next_id, self._next_id + 1
        seq = Sequence(seq_id, prompt, max_new_tokens, sampler, stop, StreamDecoder(self.tokenizer))
        seq.stats.prompt_tokens = len(prompt)
        self.waiting.append(seq)
        return seq

    def cancel(self, seq: Sequence) -> None:
        """Stop a sequence at the next step (its final event says "cancelled"); frees its slot."""
        seq.cancelled = True

    def step(self) -> list[BatchEvent]:
        """One forward pass over the active sequences (after retiring cancelled ones and admitting
        waiting ones into free slots); the events it produced."""
        self.steps += 1
        events: list[BatchEvent] = []
        for seq in [s for s in self.running if s.cancelled] + [s for s in self.waiting if s.cancelled]:
            self._finish(seq, "cancelled", events, 0.0)
        self._admit()
        rows, fed = [], []
        for seq in self.running:
            if seq.next_token is not None:
                rows.append((seq.slot, [seq.next_token], seq.pos))
                fed.append((seq, 1))
        prefilling = next((s for s in self.running if s.prefilling), None)
        if prefilling is not None:
            n = min(self.prefill_chunk, len(prefilling.prompt) - prefilling.fed)
            rows.append((prefilling.slot, prefilling.prompt[prefilling.fed : prefilling.fed + n], prefilling.pos))
            fed.append((prefilling, n))
        if not rows:
            return events
        t0 = time.perf_counter()
        logits = self.model.forward_batch(rows)
        seconds = time.perf_counter() - t0
        for i, (seq, n) in enumerate(fed):
            slot_tokens = self.cached[seq.slot]
            if seq.prefilling:
                slot_tokens.extend(seq.prompt[seq.fed : seq.fed + n])
                seq.fed += n
                seq.stats.prefill_seconds += seconds
                if seq.prefilling:
                    seq.pos += n
                    continue
            else:
                slot_tokens.append(seq.next_token)
                seq.stats.decode_passes += 1
                seq.stats.decode_seconds += seconds
            seq.pos += n
            seq.stats.cache_end = seq.pos
            self._sample(seq, logits[i], seconds, events)
        return events

    def _sample(self, seq: Sequence, logits, seconds: float, events: list[BatchEvent]) -> None:
        t0 = time.perf_counter()
        token = seq.sampler(logits)
        seq.stats.sampling_seconds += time.perf_counter() - t0
        if token in seq.stop:
            seq.stats.stop_token = token
            self._finish(seq, "stop_token", events, seconds)
            return
        index = seq.stats.generated_tokens
        seq.stats.generated_tokens += 1
        text = seq.decoder.push(token)
        seq.stats.tokens.append(token)
        seq.stats.texts.append(text)
        events.append(BatchEvent(seq.id, token, text, seq.pos, index, seconds))
        if seq.stats.generated_tokens == seq.max_new_tokens:
            self._finish(seq, "max_tokens", events, 0.0)
        elif seq.pos >= self.model.ctx:
            self._finish(seq, "context", events, 0.0)
        else:
            seq.next_token = token

    def _finish(self, seq: Sequence, reason: str, events: list[BatchEvent], seconds: float) -> None:
        seq.done, seq.next_token = True, None
        seq.stats.stop_reason = reason
        seq.stats.tail_text = seq.decoder.flush()
        if seq in self.waiting:
            self.waiting.remove(seq)
        if seq in self.running:
            self.running.remove(seq)
            self.owner[seq.slot] = None
            self.last_used[seq.slot] = self.steps
            if seq.prefilling:  # cancelled mid-prompt: the slot holds only what was run
                del self.cached[seq.slot][seq.pos :]
        events.append(BatchEvent(seq.id, None, seq.stats.tail_text, seq.pos, seq.stats.generated_tokens, seconds, reason))

    def _admit(self) -> None:
        """Waiting sequences into free slots (first come, first served), each into the free slot whose
        cache shares most of its prompt: those that share most choose first, so a conversation's
        next turn finds its slot even when another request arrived before it."""
        free = [slot for slot, owner in enumerate(self.owner) if owner is None]
        admitted = [self.waiting.popleft() for _ in range(min(len(free), len(self.waiting)))]
        shared = {(seq.id, slot): common_prefix(self.cached[slot], seq.prompt) for seq in admitted for slot in free}
        admitted.sort(key=lambda seq: -max(shared[seq.id, slot] for slot in free))
        for seq in admitted:
            slot = max(free, key=lambda s: (shared[seq.id, s], -self.last_used[s]))
            free.remove(slot)
            reuse = min(shared[seq.id, slot], len(seq.prompt) - 1)  # the last prompt token runs, for its logits
            del self.cached[slot][reuse:]
            seq.slot, seq.fed, seq.pos = slot, reuse, reuse
            seq.stats.start_pos = seq.stats.cache_end = reuse
            self.owner[slot] = seq
            self.running.append(seq)


def common_prefix(a: SequenceOf[int], b: SequenceOf[int]) -> int:
    """How many leading ids a and b share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def generate_batch(model: Transformer, tokenizer: Tokenizer, prompts: SequenceOf[SequenceOf[int]],
                   max_new_tokens: int, *, prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
                   stats: list[GenerationStats] | None = None, **sampling) -> Iterator[BatchEvent]:
    """Generate a continuation of every prompt, model.slots of them at a time, in one pass per step.

    Yields BatchEvents interleaved across prompts (event.seq is the prompt's index); each prompt's
    last event has `finished` set. `sampling`: temperature, top_k, top_p, seed, stop_tokens, the
    same for every prompt (a seed gives each prompt its own generator from seed + index). `stats`,
    a list, receives one GenerationStats per prompt (complete when the iterator is exhausted).
    """
    batch = BatchGenerator(model, tokenizer, prefill_chunk)
    seed = sampling.pop("seed", None)
    fresh = seed is None or seed == RANDOM_SEED
    seqs = [batch.submit(p, max_new_tokens, seed=None if fresh else seed + i, **sampling) for i, p in enumerate(prompts)]
    if stats is not None:
        stats.extend(s.stats for s in seqs)
    try:
        while batch.busy:
            yield from batch.step()
    finally:
        for seq in seqs:
            if not seq.done:
                seq.stats.stop_reason = "interrupted"

"""Token generation: prefill the prompt once, then decode one token at a time, streaming events.

    generate(model, tokenizer, prompt, n)   the prompt in one batched forward pass (its last
                                            token's logits), then one pass per generated token
    Sampler(ops, temperature, top_k, top_p, seed)   greedy (argmax) or temperature / top-k /
                                            top-p, seeded; called on each pass's logits

`generate()` yields a `TokenEvent` per generated token (its id, the text it completes, its
position, how long it took, the per-layer timings of its forward pass) and records totals in a
`GenerationStats`. Nothing here prints.

A conversation continues from the KV cache: `generate(..., start_pos=P)` places the new tokens
at positions P.. and attends to the P positions an earlier call left in the cache, so each chat
turn prefills only its own tokens. `stats.cache_end` says how many positions are filled when a
call ends: the prompt and every generated token that went through a forward pass (the last
generated or the stop token is sampled from the logits but not itself run).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from llama_nb.errors import LlamaNbError
from llama_nb.io.tokenizer import StreamDecoder, Tokenizer
from llama_nb.model.transformer import Transformer


@dataclass
class TokenEvent:
    """One generated token.

    token          the id
    text           the text this token completes (may be "" while a UTF-8 character is split
                   over byte tokens; the held-back bytes arrive with a later event)
    pos            its position in the sequence (prompt tokens are 0..len(prompt)-1)
    index          0 for the first generated token, 1 for the next, ...
    seconds        wall time of the forward pass and sampling that produced it (the first one
                   includes the whole prefill)
    layer_seconds  float64[n_layers, 2]: attention and feed-forward time per layer of that pass
    """

    token: int
    text: str
    pos: int
    index: int
    seconds: float
    layer_seconds: np.ndarray


@dataclass
class GenerationStats:
    """Totals of one generate() call; complete once the iterator is exhausted or closed."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_passes: int = 0  # single-token forward passes after the prefill
    decode_seconds: float = 0.0
    sampling_seconds: float = 0.0
    stop_reason: str = ""  # "stop_token", "max_tokens", "context" or "interrupted"
    stop_token: int | None = None
    tail_text: str = ""  # text held back at the end (an incomplete UTF-8 tail, as U+FFFD)
    op_seconds: dict[str, float] = field(default_factory=dict)
    start_pos: int = 0  # where the prompt was placed: positions before it came from the cache
    cache_end: int = 0  # positions 0..cache_end-1 of the KV cache hold this call's sequence
    layer_seconds: np.ndarray | None = None  # float64[n_layers, 2]: summed over the decode passes
    # every generated token and its text, recorded before it is yielded: a consumer interrupted
    # (Ctrl-C) between receiving an event and showing it catches up from here, and loses nothing
    tokens: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        # the first generated token comes out of the prefill pass; each later one from a decode pass
        return self.decode_passes / self.decode_seconds if self.decode_seconds else 0.0


RANDOM_SEED = -1  # llama.cpp's habit: --seed -1 draws a fresh seed


def seed_sequence(seed: int | None) -> np.random.SeedSequence:
    """Any integer is a seed: None or -1 draw a fresh one; every other integer (negative or larger
    than 64 bits too) is taken modulo 2**128, so the same seed gives the same text."""
    if seed is None or seed == RANDOM_SEED:
        return np.random.SeedSequence()
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise LlamaNbError(f"--seed must be an integer, got {seed!r}")
    return np.random.SeedSequence(int(seed) % 2**128)


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Reject sampling settings outside their valid ranges, naming the option."""
    if not (temperature >= 0.0 and np.isfinite(temperature)):
        raise LlamaNbError(f"--temperature must be a finite number >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise LlamaNbError(f"--top-k must be >= 1, got {top_k}")
    if top_p is not None and not (0.0 < top_p <= 1.0):
        raise LlamaNbError(f"--top-p must be in (0, 1], got {top_p}")


class Sampler:
    """Greedy when temperature == 0, else softmax(logits / temperature) restricted to the top-k
    tokens and then to the smallest set whose probability reaches top_p (Meta's sample_top_p),
    drawn with a seeded NumPy generator: the same seed gives the same tokens."""

    def __init__(self, ops, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None, seed: int | None = None):
        check_sampling(temperature, top_k, top_p)
        self.ops, self.temperature, self.top_k, self.top_p = ops, temperature, top_k, top_p
        self.rng = np.random.default_rng(seed_sequence(seed))

    def __call__(self, logits: np.ndarray) -> int:
        if self.temperature == 0.0:
            return self.ops.argmax(logits)
        # (logits - max) / T in float64, floored: a tiny T (1e-40) or huge logits (1e38) would
        # overflow float32 to inf and softmax to NaN; this way the top token gets exp(0) = 1.
        top = float(np.max(logits))
        with np.errstate(over="ignore", divide="ignore", invalid="ignore", under="ignore"):
            shifted = (logits.astype(np.float64) - top) / self.temperature
        shifted = np.nan_to_num(shifted, nan=-1e30, neginf=-1e30, posinf=0.0)
        scaled = np.maximum(shifted, -1e30).astype(np.float32).reshape(1, -1)
        probs = np.empty_like(scaled)
        self.ops.softmax(probs, scaled)
        probs = probs[0].astype(np.float64)
        order = np.argsort(-probs, kind="stable")
        if self.top_k is not None:
            order = order[: self.top_k]
        p = probs[order]
        if self.top_p is not None:
            # keep tokens whose preceding cumulative probability is below top_p (Meta's rule)
            keep = (np.cumsum(p) - p) <= self.top_p
            order, p = order[keep], p[keep]
        p = p / p.sum()
        return int(order[self.rng.choice(len(p), p=p)])


def generate(
    model: Transformer,
    tokenizer: Tokenizer,
    prompt_tokens: Sequence[int],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_tokens: Sequence[int] | None = None,
    stats: GenerationStats | None = None,
    start_pos: int = 0,
) -> Iterator[TokenEvent]:
    """Yield one TokenEvent per generated token; stop tokens end generation and are not yielded.

    prompt_tokens  the new tokens, placed at positions start_pos..; positions 0..start_pos-1
                   must already be in the model's KV cache (an earlier call's stats.cache_end)
    Stops on a stop token (default: the tokenizer's <|end_of_text|>, <|eom_id|>, <|eot_id|>),
    after `max_new_tokens`, or when the context is full (stats.stop_reason says which).
    """
    prompt = [int(t) for t in prompt_tokens]
    if not prompt:
        raise LlamaNbError("the prompt is empty: give at least one token (a BOS token counts)")
    if max_new_tokens < 0:
        raise LlamaNbError(f"--max-tokens must be >= 0, got {max_new_tokens}")
    if start_pos < 0:
        raise LlamaNbError(f"start_pos must be >= 0, got {start_pos}")
    if start_pos + len(prompt) >= model.ctx:
        raise LlamaNbError(
            f"the prompt has {start_pos + len(prompt)} tokens but the context holds {model.ctx}: "
            f"shorten the prompt or raise --ctx"
        )
    sampler = Sampler(model.ops, temperature, top_k, top_p, seed)
    stop = set(tokenizer.stop_tokens if stop_tokens is None else stop_tokens)
    stats = stats if stats is not None else GenerationStats()
    stats.prompt_tokens, stats.start_pos, stats.cache_end = len(prompt), start_pos, start_pos
    decoder = StreamDecoder(tokenizer)
    pos = start_pos + len(prompt)  # position of the next token to generate
    if max_new_tokens == 0:
        stats.stop_reason = "max_tokens"
        return
    model.ops.reset_timings()

    t0 = time.perf_counter()
    logits = model.forward(prompt, start_pos)
    stats.prefill_seconds = time.perf_counter() - t0
    stats.cache_end = pos
    layer_seconds = model.layer_seconds.copy()
    stats.layer_seconds = np.zeros_like(layer_seconds)
    forward_seconds = stats.prefill_seconds
    try:
        for index in range(max_new_tokens):
            t1 = time.perf_counter()
            token = model.group.broadcast_token(sampler(logits) if model.group.rank == 0 else 0)  # rank 0 samples
            sample_seconds = time.perf_counter() - t1
            stats.sampling_seconds += sample_seconds
            if token in stop:
                stats.stop_reason, stats.stop_token = "stop_token", token
                break
            stats.generated_tokens += 1
            event = TokenEvent(token, decoder.push(token), pos, index, forward_seconds + sample_seconds, layer_seconds)
            stats.tokens.append(token)
            stats.texts.append(event.text)
            yield event
            pos += 1
            if index + 1 == max_new_tokens:
                stats.stop_reason = "max_tokens"
                break
            if pos >= model.ctx:
                stats.stop_reason = "context"
                break
            t2 = time.perf_counter()
            logits = model.forward([token], pos - 1)
            forward_seconds = time.perf_counter() - t2
            stats.cache_end = pos
            stats.decode_seconds += forward_seconds
            stats.decode_passes += 1
            layer_seconds = model.layer_seconds.copy()
            stats.layer_seconds += layer_seconds
    except GeneratorExit:
        stats.stop_reason = stats.stop_reason or "interrupted"
        raise
    finally:
        stats.tail_text = decoder.flush()
        stats.op_seconds = dict(getattr(model.ops, "op_seconds", {}))

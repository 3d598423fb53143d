"""`load_model(path)`: Meta's model folder -> a ready `Llama` (weights memory-mapped, not copied).

    llm = llama_nb.load_model("models-original/Meta-Llama-3.1-8B-Instruct")
    ids = llm.tokenizer.encode("The capital of France is", bos=True, eos=False)
    for event in llm.generate(ids, max_new_tokens=16):
        print(event.text, end="", flush=True)
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from llama_nb.errors import CheckpointError, LlamaNbError
from llama_nb.io.chat import ChatFormat
from llama_nb.io.checkpoint import load_model_files
from llama_nb.io.tokenizer import Tokenizer
from llama_nb.model.generate import GenerationStats, TokenEvent, generate
from llama_nb.model.transformer import Transformer, Weights
from llama_nb.ops.registry import OpSet


def set_threads(threads: int | None) -> int:
    """Use `threads` Numba threads (None: all available); return the number in use."""
    import numba

    available = numba.config.NUMBA_NUM_THREADS
    if threads is not None:
        if threads < 1:
            raise LlamaNbError(f"--threads must be >= 1, got {threads}")
        if threads > available:
            raise LlamaNbError(
                f"--threads {threads} is more than the {available} threads Numba can use on this "
                f"machine ({os.cpu_count()} cores); use at most {available}"
            )
        numba.set_num_threads(threads)
    return numba.get_num_threads()


class Llama:
    """A loaded model: `.args`, `.tokenizer`, `.chat_format`, `.forward()`, `.generate()`.

    `load_seconds` is the time to map the weights and read the tokenizer; `compile_seconds` the
    time to compile (or load from Numba's on-disk cache) every kernel, spent on first use.
    """

    def __init__(self, model: Transformer, tokenizer: Tokenizer, folder: Path, load_seconds: float, dtypes: Mapping[str, str] | None = None):
        self.model, self.tokenizer, self.folder = model, tokenizer, folder
        self.args = model.args
        self.ops = model.ops
        self.chat_format = ChatFormat(tokenizer)
        self.load_seconds = load_seconds
        self.compile_seconds: float | None = None
        self.dtypes = dict(dtypes or {})

    @property
    def ctx(self) -> int:
        return self.model.ctx

    def compile(self) -> float:
        """Compile every kernel now (idempotent); return the seconds it took the first time."""
        if self.compile_seconds is None:
            self.compile_seconds = self.model.warmup()
        return self.compile_seconds

    def forward(self, tokens: Sequence[int], start_pos: int) -> np.ndarray:
        """float32[vocab_size] logits of the last of `tokens`, placed at positions start_pos..

        Earlier positions must have been run before (they live in the KV cache). The result is
        a new array (the model's own logits buffer is overwritten by the next pass)."""
        self.compile()
        return self.model.forward(tokens, start_pos).copy()

    def generate(
        self,
        prompt_tokens: Sequence[int],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop_tokens: Sequence[int] | None = None,
        stats: GenerationStats | None = None,
    ) -> Iterator[TokenEvent]:
        """Stream TokenEvents for the continuation of `prompt_tokens` (see model.generate)."""
        self.compile()
        return generate(
            self.model, self.tokenizer, prompt_tokens, max_new_tokens,
            temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
            stop_tokens=stop_tokens, stats=stats,
        )

    def encode_prompt(self, text: str, *, chat: bool = False, system: str | None = None) -> list[int]:
        """Token ids for a text completion (BOS once) or, with chat/system, Meta's chat template."""
        if chat or system is not None:
            messages = ([{"role": "system", "content": system}] if system is not None else [])
            messages.append({"role": "user", "content": text})
            return self.chat_format.encode_dialog_prompt(messages)
        return self.tokenizer.encode(text, bos=True, eos=False)


def load_model(
    path: str | os.PathLike,
    impl: str | Mapping[str, str] | OpSet | None = None,
    *,
    ctx: int = 4096,
    threads: int | None = None,
    max_batch: int = 256,
) -> Llama:
    """Load Meta's model folder (consolidated.00.pth, params.json, tokenizer.model).

    impl       an op spec such as "matmul=reference" or an OpSet (default: $LLAMA_NB_IMPL, else
               each op's default implementation)
    ctx        context length (KV cache size)
    threads    Numba threads (default: all cores)
    """
    t0 = time.perf_counter()
    set_threads(threads)
    ops = impl if isinstance(impl, OpSet) else OpSet.from_spec(impl, timed=True)
    files = load_model_files(Path(path))
    tokenizer = Tokenizer(files.tokenizer_path)
    if tokenizer.n_words > files.args.vocab_size:
        raise CheckpointError(
            f"{files.tokenizer_path}: the tokenizer has {tokenizer.n_words} tokens but params.json "
            f"says vocab_size {files.args.vocab_size}"
        )
    weights = Weights.from_tensors(files.checkpoint.tensors, files.args)
    model = Transformer(files.args, weights, ops, ctx=ctx, max_batch=max_batch)
    return Llama(model, tokenizer, Path(path), time.perf_counter() - t0, files.checkpoint.dtypes)

"""Quality of quantized weights, measured as llama.cpp's llama-perplexity measures it.

    results = measure_quality(model_path, text, types=["q8_0", "q4_k_m"], ctx=512)

The text is tokenized once (no BOS) and cut into chunks of `ctx` tokens (as many whole chunks as
fit, at most `max_chunks`); each chunk's first token is replaced by <|begin_of_text|>, and only the
second half of each chunk is scored, so every scored token has at least ctx/2 tokens of context
(llama-perplexity's defaults). At each scored position j (first = ctx/2 <= j < ctx - 1) the logits
after tokens 0..j predict token j + 1:

    perplexity      exp(mean over scored tokens of -log p(next token)), with its standard error
                    exp(mean) * stderr(nll) (the delta method, as llama-perplexity reports it)
    KL divergence   mean over positions of sum_v p_bf16(v) (log p_bf16(v) - log p_q(v)): how far
                    each format's next-token distribution is from the bf16 model's
    top-1           the fraction of positions where the format's argmax is the bf16 model's

"bf16" is the model with every matrix in bf16 (a Meta folder as stored); each other type is the
model made by `llama-nb quantize --type T` (llama_nb/model/quantize.py, the same per-tensor
choices), built in memory without writing a file. One model is resident at a time: the bf16
log-probabilities of the scored positions are kept (float32[positions, vocab]) to compare with.
The logits of each scored position come from a decode pass after a prefill of the first half
(the forward pass returns the last position's logits only).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from llama_nb.errors import LlamaNbError
from llama_nb.io.checkpoint import ModelFiles, load_model_files
from llama_nb.io.gguf import READ_TYPES
from llama_nb.io.gguf_model import gguf_name
from llama_nb.io.pth import Checkpoint
from llama_nb.model.load import build_transformer, opset_for
from llama_nb.model.quantize import FILE_TYPES, gguf_plans
from llama_nb.model.transformer import Transformer

_PLAIN = {"F32": ("float32", np.float32), "F16": ("float16", np.float16), "BF16": ("bfloat16", np.uint16)}


@dataclass
class QualityResult:
    type: str
    bits_per_weight: float  # of the matrices (norms excluded)
    n_tokens: int  # scored
    perplexity: float
    perplexity_stderr: float
    kl_mean: float  # 0 for bf16
    kl_stderr: float
    top1: float  # fraction, 1 for bf16
    seconds: float

    def to_json(self) -> dict:
        return asdict(self)


def in_memory_files(files: ModelFiles, ftype: str) -> tuple[ModelFiles, float]:
    """The model with its tensors converted as `llama-nb quantize --type ftype` would write them,
    held in memory (no file), and the matrices' bits per weight."""
    tensors, dtypes, bits, weights = {}, {}, 0, 0
    names = {gguf_name(meta): meta for meta in files.checkpoint.tensors}
    for plan in gguf_plans(files, ftype):
        if plan.name not in names:  # rope_freqs: the args carry the scaling already
            continue
        meta, data = names[plan.name], np.ascontiguousarray(plan.produce())
        if plan.type_name in _PLAIN:
            dtypes[meta], dtype = _PLAIN[plan.type_name]
            tensors[meta] = data.view(dtype).reshape(plan.shape)
        else:
            dtypes[meta] = READ_TYPES[plan.type_name]
            tensors[meta] = data.reshape(plan.shape[0], -1).view(np.uint8)
        if len(plan.shape) == 2:
            bits, weights = bits + 8 * plan.nbytes, weights + math.prod(plan.shape)
    checkpoint = Checkpoint(path=files.checkpoint.path, tensors=tensors, dtypes=dtypes, mmap=np.zeros(0, np.uint8))
    return ModelFiles(folder=files.folder, args=files.args, checkpoint=checkpoint, tokenizer_path=None), bits / weights


def chunks_of(tokens: list[int], ctx: int, bos: int, max_chunks: int | None) -> list[list[int]]:
    n = len(tokens) // ctx if max_chunks is None else min(len(tokens) // ctx, max_chunks)
    return [[bos] + tokens[i * ctx + 1 : (i + 1) * ctx] for i in range(n)]


def scored_log_probs(model: Transformer, chunk: list[int]) -> Iterator[np.ndarray]:
    """float32[V] log-softmax of the logits at each scored position of `chunk` (see the module docstring)."""
    first = len(chunk) // 2
    logits = model.forward(chunk[: first + 1], 0)
    for j in range(first, len(chunk) - 1):
        if j > first:
            logits = model.forward(chunk[j : j + 1], j)
        yield log_softmax(logits)


def measure_quality(path: str | Path, text: str, types: list[str], *, ctx: int = 512, max_chunks: int | None = None,
                    threads: int | None = None, progress: Callable[[str], None] | None = None) -> list[QualityResult]:
    """bf16 then each of `types`: perplexity, KL divergence and top-1 agreement against bf16."""
    bad = [t for t in types if t not in FILE_TYPES]
    if bad:
        raise LlamaNbError(f"--types {','.join(types)}: unknown type {bad[0]!r}; have {', '.join(FILE_TYPES)}")
    if ctx < 4 or ctx % 2:
        raise LlamaNbError(f"--ctx {ctx}: give an even number of at least 4 (half of each chunk is scored)")
    files = load_model_files(Path(path))
    tokenizer = files.load_tokenizer()
    tokens = tokenizer.encode(text, bos=False, eos=False)
    chunks = chunks_of(tokens, ctx, tokenizer.bos_id, max_chunks)
    if not chunks:
        raise LlamaNbError(f"the text is {len(tokens)} tokens; --ctx {ctx} needs at least {ctx} (one chunk)")
    ops = opset_for(None, None, timed=False)
    base: list[np.ndarray] = []
    results = []
    for ftype in ["bf16"] + [t for t in types if t != "bf16"]:
        t0 = time.perf_counter()
        model_files, bpw = in_memory_files(files, ftype)
        model = build_transformer(model_files, ops, ctx=ctx, max_batch=ctx, mmap=True, threads=threads)
        tally = Tally(base if ftype != "bf16" else None)
        for c, chunk in enumerate(chunks):
            for j, log_p in enumerate(scored_log_probs(model, chunk), start=len(chunk) // 2):
                tally.add(log_p, chunk[j + 1])
                if ftype == "bf16":
                    base.append(log_p)
            if progress is not None:
                progress(f"{ftype}: chunk {c + 1}/{len(chunks)}")
        del model
        results.append(tally.result(ftype, bpw, time.perf_counter() - t0))
    return results


class Tally:
    """The statistics of one format over the scored positions, in order: negative log-likelihoods,
    and, given the bf16 model's log-probabilities of the same positions (`base`), KL divergences
    and top-1 agreement (see the module docstring)."""

    def __init__(self, base: list[np.ndarray] | None):
        self.base, self.nll, self.kl, self.same = base, [], [], 0

    def add(self, log_p: np.ndarray, next_token: int) -> None:
        """log_p float32[V]: the log-softmax at the next scored position; next_token: the text's."""
        self.nll.append(-float(log_p[next_token]))
        if self.base is not None:
            ref = self.base[len(self.nll) - 1]
            self.kl.append(float(np.sum(np.exp(ref.astype(np.float64)) * (ref - log_p))))
            self.same += int(np.argmax(log_p) == np.argmax(ref))

    def result(self, ftype: str, bits_per_weight: float, seconds: float) -> QualityResult:
        nll, kl = self.nll, self.kl
        mean_nll, n = float(np.mean(nll)), len(nll)
        return QualityResult(
            type=ftype, bits_per_weight=bits_per_weight, n_tokens=n, perplexity=math.exp(mean_nll),
            perplexity_stderr=math.exp(mean_nll) * float(np.std(nll, ddof=1)) / math.sqrt(n) if n > 1 else 0.0,
            kl_mean=float(np.mean(kl)) if kl else 0.0,
            kl_stderr=float(np.std(kl, ddof=1)) / math.sqrt(len(kl)) if len(kl) > 1 else 0.0,
            top1=self.same / n if kl else 1.0, seconds=seconds)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float32[V] log-softmax of float32[V] logits, computed in float64."""
    x = logits.astype(np.float64)
    x -= x.max()
    return (x - math.log(np.exp(x).sum())).astype(np.float32)

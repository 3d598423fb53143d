"""`load_model(path)`: Meta's model folder -> a ready `Llama` (weights read into memory, or mapped).

    llm = llama_nb.load_model("models-original/Meta-Llama-3.1-8B-Instruct")
    ids = llm.tokenizer.encode("The capital of France is", bos=True, eos=False)
    for event in llm.generate(ids, max_new_tokens=16):
        print(event.text, end="", flush=True)

Before anything large is allocated, `check_memory` compares what the model will use with the
memory the system says is available (MemAvailable in /proc/meminfo, or $LLAMA_NB_MEM_AVAILABLE):

    weights    the tensors, in their stored format or the one they are repacked into: read into
               memory by default; with --mmap the file's pages, which every decode step reads
               all of (if they do not fit in RAM they are re-read from disk each step)
    KV cache   n_layers * 2 * n_kv_heads * ctx * head_dim * 2 bytes  (bf16, precision bf16's default:
               0.54 GB for the 8B at --ctx 4096, 17.2 GB at 131072; the 1B 4.3 GB at 131072), or
               * 4 bytes with --kv-cache f32 (precision float32's default: 34.4 GB for the 8B at 131072);
               once per sequence slot (`slots`: `serve --parallel`)
    buffers    everything else RunState allocates (activations for one prefill chunk, the logits,
               the ops' scratch, none of which grows with --ctx) and the RoPE tables (ctx * head_dim
               * 4 bytes): RunState.shapes says what, in one place

NumPy's zeros() only reserves the KV cache: without this check a too-large --ctx would "load" and
then be killed by the OOM killer mid-answer.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from llama_nb.errors import LlamaNbError
from llama_nb.formats import get_format
from llama_nb.io.chat import ChatFormat
from llama_nb.io.checkpoint import ModelFiles, load_model_files
from llama_nb.io.params import ModelArgs
from llama_nb.io.shards import RankTensors
from llama_nb.io.tokenizer import Tokenizer
from llama_nb.model.batch import BatchEvent, generate_batch
from llama_nb.model.generate import GenerationStats, TokenEvent, generate
from llama_nb.model.parallel import Single, default_threads, group_from_environment, together
from llama_nb.model.state import RunState, kv_cache_type
from llama_nb.model.transformer import Transformer, check_ctx, check_slots, check_threads
from llama_nb.model.weights import Weights, stored_format, stored_weight
from llama_nb.ops.opset import OpSet


MEM_ENV = "LLAMA_NB_MEM_AVAILABLE"  # bytes, or with a k/M/G suffix (powers of 1000): "8G"
_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


@dataclass(frozen=True)
class MemoryNeed:
    """Bytes a model will use at a given context length (see the module docstring)."""

    weights: int
    kv_cache: int
    buffers: int
    kv_per_position: int  # bytes the KV cache and RoPE tables grow by per unit of ctx

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.buffers


def memory_need(args: ModelArgs, ctx: int, weight_bytes: int, max_batch: int = 256, slots: int = 1,
                part=None, kv_cache: str = "bf16") -> MemoryNeed:
    """What Transformer(args, ctx=ctx, max_batch=max_batch, slots=slots, kv_cache=kv_cache)
    allocates (RunState.shapes, and the RoPE tables cos/sin float32[ctx, Dh/2]), plus the weights;
    `part`: one rank's share (model/parallel.py)."""

    def allocated(n_ctx: int) -> tuple[int, int]:
        shapes = RunState.shapes(args, max(1, min(max_batch, n_ctx)), n_ctx, slots, part, kv_cache)
        size = {name: int(np.prod(shape)) * dtype.itemsize for name, (shape, dtype) in shapes.items()}
        cache = size.pop("cache_k") + size.pop("cache_v")
        return cache, sum(size.values()) + 2 * 4 * (args.head_dim // 2) * n_ctx

    cache_bytes, buffers = allocated(ctx)
    far = sum(allocated(ctx + 1024))  # what one more position costs, on average (the RoPE tables grow too)
    return MemoryNeed(weights=int(weight_bytes), kv_cache=cache_bytes, buffers=buffers,
                      kv_per_position=max(1, (far - cache_bytes - buffers) // 1024))


def weight_bytes(files: ModelFiles, weight_format: str | None = None) -> int:
    """Bytes the model's weights take once loaded: as stored, or with the matrices repacked into
    `weight_format` (the embedding table stays as stored); norms are widened to float32."""
    target = get_format(weight_format) if weight_format is not None else None
    total = 0
    for name, tensor in files.checkpoint.tensors.items():
        if tensor.ndim == 1:
            total += 4 * tensor.size
        elif target is not None and name != "tok_embeddings.weight":
            total += int(_n_weights(files, name) * target.bytes_per_weight())
        else:
            total += int(tensor.nbytes)
    if target is not None and files.tied_output:  # the output is a repacked copy of the embedding table
        total += int(_n_weights(files, "tok_embeddings.weight") * target.bytes_per_weight())
    return total


def _n_weights(files: ModelFiles, name: str) -> int:
    """The weights a stored matrix holds (a GGUF block tensor's array counts bytes, not weights)."""
    n, k = stored_weight(files.checkpoint.tensors[name], stored_format(files.checkpoint.dtypes[name])).shape
    return n * k


def available_memory() -> tuple[int, str] | None:
    """(bytes, where the number came from): $LLAMA_NB_MEM_AVAILABLE, else /proc/meminfo's
    MemAvailable; None where neither exists (macOS, Windows: the check is skipped)."""
    override = os.environ.get(MEM_ENV)
    if override is not None:
        text = override.strip().upper().removesuffix("B")
        number, suffix = (text[:-1], text[-1]) if text[-1:] and text[-1] in _SUFFIX else (text, "")
        try:
            value = float(number) * _SUFFIX[suffix]
        except ValueError:
            raise LlamaNbError(f"${MEM_ENV}={override!r} is not a size; use bytes or e.g. 8G, 512M") from None
        if not 0 <= value < 2**63:  # NaN, inf and 1e400 (= inf) included
            raise LlamaNbError(f"${MEM_ENV}={override!r} is not a size; use bytes or e.g. 8G, 512M")
        return int(value), f"${MEM_ENV}"
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(need: MemoryNeed, ctx: int, what: str, available: tuple[int, str] | None = None) -> None:
    """Refuse (LlamaNbError with the numbers and a --ctx that fits) when `need` exceeds what is
    available; `available` defaults to available_memory()."""
    available = available if available is not None else available_memory()
    if available is None:
        return
    free, source = available
    if need.total <= free:
        return
    gb = lambda n: f"{n / 1e9:.2f} GB"  # noqa: E731
    fixed = need.total - need.kv_per_position * ctx  # what does not shrink with --ctx
    fitting_ctx = (free - fixed) // need.kv_per_position if free > fixed else 0
    if fitting_ctx >= 1:
        hint = f"use a smaller --ctx (at most {_round_down(fitting_ctx)} fits)"
    else:
        hint = "the weights alone do not fit: close other programs or use a machine with more memory"
    raise LlamaNbError(
        f"not enough memory for {what} at --ctx {ctx}: it needs {gb(need.weights)} of weights + "
        f"{gb(need.kv_cache)} of KV cache + {gb(need.buffers)} of buffers = {gb(need.total)}, but only "
        f"{gb(free)} is available ({source}); {hint}"
    )


def _round_down(n: int) -> int:
    """A friendly context length: a multiple of 1024 (or 64, for small ones) not above n."""
    step = 1024 if n >= 2048 else 64 if n >= 128 else 1
    return n // step * step


class Llama:
    """A loaded model: `.args`, `.tokenizer`, `.chat_format`, `.forward()`, `.generate()`.

    `load_seconds` is the time to map the weights and read the tokenizer; `compile_seconds` the
    time to compile (or load from Numba's on-disk cache) every kernel, spent on first use.
    """

    def __init__(self, model: Transformer, tokenizer: Tokenizer, folder: Path, load_seconds: float,
                 dtypes: Mapping[str, str] | None = None):
        self.model, self.tokenizer, self.folder = model, tokenizer, folder
        self.args = model.args
        self.ops = model.ops
        self.chat_format = ChatFormat(tokenizer, llama31=self.args.use_scaled_rope)  # 3.1+: Meta's 3.1 system prompt
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

    def generate_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, **sampling) -> Iterator[BatchEvent]:
        """Stream BatchEvents for every prompt, `slots` of them decoded together (see model.batch)."""
        self.compile()
        return generate_batch(self.model, self.tokenizer, prompts, max_new_tokens, **sampling)

    def encode_prompt(self, text: str, *, chat: bool = False, system: str | None = None, tools=(),
                      date=None, tool_format: str = "json") -> list[int]:
        """Token ids for a text completion (BOS once) or, with chat/system/tools/date, Meta's chat
        template (with the Llama 3.1 system prompt for 3.1+ models, or tools or a date: io/chat.py)."""
        if chat or system is not None or tools or date is not None:
            messages = ([{"role": "system", "content": system}] if system is not None else [])
            messages.append({"role": "user", "content": text})
            return self.chat_format.encode_chat(messages, tools=tools, date=date, tool_format=tool_format)
        return self.tokenizer.encode(text, bos=True, eos=False)


def load_model(
    path: str | os.PathLike,
    impl: str | Mapping[str, str] | OpSet | None = None,
    *,
    ctx: int = 4096,
    threads: int | None = None,
    max_batch: int = 256,
    mmap: bool = False,
    precision: str | None = None,
    weight_format: str | None = None,
    slots: int = 1,
    group: Single | None = None,
    kv_cache: str | None = None,
) -> Llama:
    """Load Meta's model folder (consolidated.00.pth, params.json, tokenizer.model).

    impl       an op spec such as "linear=reference" or an OpSet (default: $LLAMA_NB_IMPL, else
               each op's default implementation)
    ctx        context length (KV cache size)
    threads    Numba threads for this model's passes (default: all cores; other models and the
               rest of the process keep theirs)
    precision  "bf16" (default): activations rounded to bf16 before each weight product, like
               llama.cpp (prefill ~1.6x faster on CPUs with AVX512_BF16); "float32": Meta's float32
               model to within 1e-6 (see llama_nb/model/transformer.py). The activation type of the
               linear implementations the OpSet chooses.
    mmap       False (default): read the weights into memory, where they get huge pages (decode
               5-8% faster at 8B widths; reading copies ~15 GB/s from the page cache, else goes
               at the disk's speed). True: use views of the memory-mapped file: instant, and pages
               come in from the page cache (or the disk) as the first pass touches them.
    weight_format  None (default): the weights in the format the checkpoint stores; or the name of
               a registered format (llama_nb.formats) to repack every matrix into at load time.
    slots      sequences decoded together (generate_batch, `serve --parallel`): one KV cache each
    group      model/parallel.py: the ranks that share the model (default: the MPI job this process
               is a rank of, when an MPI launcher started it, else Single: this process alone).
               Each rank loads its shards of a model-parallel folder; an error on any rank is
               raised on every rank (AgreedError), so that all of them stop.
    kv_cache   "bf16" or "f32": the KV cache's element type (None: bf16 at precision bf16, f32 at
               precision float32). bf16 halves the cache (and the bytes decode attention reads).
    """
    t0 = time.perf_counter()
    ops = opset_for(impl, precision, timed=True)  # before reading anything: a typo fails at once
    check_threads(threads)
    if weight_format is not None:
        get_format(weight_format)
    check_ctx(ctx)
    check_slots(slots)
    kv_cache = kv_cache_type(kv_cache, ops.precision)
    group = group if group is not None else group_from_environment()
    threads = default_threads(group, threads)

    def build():
        files = load_model_files(Path(path), rank=group.rank, ranks=group.size)
        tokenizer = files.load_tokenizer()
        what = str(path) if group.size == 1 else f"rank {group.rank} of {group.size} of {path}"
        check_memory(memory_need(files.args, ctx, weight_bytes(files, weight_format), max_batch, slots,
                                 group.part(files.args), kv_cache), ctx, f"{what} (KV cache {kv_cache})")
        model = build_transformer(files, ops, ctx=ctx, max_batch=max_batch, mmap=mmap, threads=threads,
                                  weight_format=weight_format, slots=slots, group=group, kv_cache=kv_cache)
        return files, tokenizer, model

    files, tokenizer, model = together(group, build)
    return Llama(model, tokenizer, Path(path), time.perf_counter() - t0, files.checkpoint.dtypes)


def opset_for(impl: str | Mapping[str, str] | OpSet | None, precision: str | None, *, timed: bool) -> OpSet:
    """The OpSet of a spec (or the one given), at `precision` (None: the OpSet's or the default)."""
    if isinstance(impl, OpSet):
        if precision is not None and precision != impl.precision:
            raise LlamaNbError(f"precision {precision!r} differs from the OpSet's ({impl.precision!r})")
        return impl
    return OpSet.from_spec(impl, precision=precision, timed=timed)


def build_transformer(files: ModelFiles, ops: OpSet, *, ctx: int, max_batch: int, mmap: bool,
                      threads: int | None = None, weight_format: str | None = None, slots: int = 1,
                      group: Single | None = None, kv_cache: str | None = None) -> Transformer:
    """The Transformer over a checked folder's weights: read into memory, or with mmap=True the
    views of the file's map (see load_model), repacked into `weight_format` if one is given."""
    joined = isinstance(files.checkpoint, RankTensors)  # several shards of a rank: joined, in memory
    tensors = files.checkpoint.tensors if mmap and not joined else files.checkpoint.read_tensors()
    target = get_format(weight_format) if weight_format is not None else None
    weights = Weights.from_tensors(tensors, files.checkpoint.dtypes, files.args, target)
    return Transformer(files.args, weights, ops, ctx=ctx, max_batch=max_batch, threads=threads, slots=slots,
                       group=group, kv_cache=kv_cache)

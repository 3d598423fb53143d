"""llama_nb vs llama.cpp on the same random weights (bf16, or quantized: --type), alternating in one run.

    /work/benchenv/bin/python bench/compare.py                     # 1B and 8B-width-4-layer shapes
    python bench/compare.py --shape llama3.2-1b -p 128 -n 64 -r 5 --threads 2
    python bench/compare.py --shape llama3.2-1b --type q8_0        # or q4_k_m: GGUF's block formats

Needs llama-cpp-python (built with CMAKE_ARGS="-DGGML_NATIVE=ON") and gguf: see bench/README.md.

For each shape, the random model of `llama-nb bench model --shape` (Meta's format, cached) is
also written as a bf16 GGUF beside it, tensor for tensor the same bits:
    wq, wk      as they are: Meta's checkpoint already has the interleaved-pair RoPE layout that
                llama.cpp's LLAMA architecture uses (its converter's `permute` only undoes the
                Hugging Face rotate_half permutation; the greedy-token check below confirms it)
    norms       float32 (exact widening of the bf16 bits; ggml multiplies norms in f32)
    rope_freqs  float32[head_dim/2]: llama.cpp divides each rotary frequency by this factor; the
                factors are llama_nb's unscaled / scaled frequencies (Llama 3.1's rope scaling)
    tokenizer   a stand-in "gpt2" BPE vocabulary of vocab_size tokens: llama.cpp insists on one,
                but both engines are fed token ids only

With --type q8_0 or q4_k_m, llama.cpp's own quantizer (llama_model_quantize, the binding of
llama-quantize) makes model-<type>.gguf from the bf16 GGUF, and both engines run that file:
llama_nb reads it with its GGUF reader (llama_nb/io/gguf_model.py) where it has one. Without
it, q8_0 is the Meta folder repacked at load (formats.repack): ggml's Q8_0 quantizer is
deterministic and llama_nb's equals it bit for bit, which the script checks on a tensor of the
file before timing; q4_k_m then needs the reader (its per-tensor types are llama.cpp's choice).
A third engine joins the rounds then: llama_nb on the bf16 weights (the Meta folder), so the
table's last column, the quantized decode over llama_nb's own bf16 decode, comes from the same spells.

Then, per round, each engine (order alternating between rounds, A B, B A, ...) runs:
    ppN   N prompt token ids at positions 0..N-1, one batched pass, logits of the last only
    tgM   M greedy decode passes continuing after the prompt (argmax included on both sides), the
          two engines taking turns of TG_CHUNK tokens
The host's memory bandwidth changes from one spell of seconds to the next, so only ratios within
a round are compared (each round prints the plain-read probe's GB/s measured just before and just
after it, to show the spell it ran in), and decode, the part that follows the bandwidth, is interleaved finely
enough that a spell covers both engines; the table shows each round and the mean ± standard
deviation.

Agreement: before timing, llama.cpp is fed llama_nb's prompt and llama_nb's greedy tokens
(teacher forcing, so one near-tie does not derail the rest) and its argmax is compared with
llama_nb's at each of the M + 1 positions. Both round activations to bf16 before each matrix
product at llama_nb's default precision (--precision float32 keeps them float32); with quantized
weights both round them to int8 blocks (llama.cpp's Q8_0/Q8_K with half or float scales, llama_nb's
blocks of 32 with float32 scales: llama_nb/quant/activations.py), but the two
engines differ in other float32 details (summation order, rmsnorm, attention), so where llama_nb's
top-2 logit margin is tiny they may legitimately differ: a disagreement is called a near-tie when
that margin is no larger than the largest logit difference between the two engines at that
position; each is listed.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from llama_nb.model.bench import decode, load_transformer, prompt_ids
from llama_nb.io.checkpoint import load_model_files
from llama_nb.io.pth_write import SHAPES, ensure_shape_model
from llama_nb.ops.reference import bf16_to_f32_np
from llama_nb.ops.rope_tables import rope_frequencies

GGUF_NAME = "model-bf16.gguf"
# --type -> llama.cpp's file type (llama_ftype) and, where llama_nb can repack to it, its format
TYPES = {"bf16": (None, None), "q8_0": (7, "q8_0"), "q4_k_m": (15, None)}  # LLAMA_FTYPE_MOSTLY_Q8_0, _Q4_K_M
TRAIN_CONTEXT = 131072  # Llama 3.1 / 3.2's context length (metadata only; the run uses -p + -n)
BOS, EOS = 128000, 128001


# --- the GGUF ------------------------------------------------------------------------------------


def _gguf_name(meta: str) -> str:
    """Meta's key -> llama.cpp's tensor name."""
    if meta == "tok_embeddings.weight":
        return "token_embd.weight"
    if meta == "norm.weight":
        return "output_norm.weight"
    if meta == "output.weight":
        return "output.weight"
    _, i, rest = meta.split(".", 2)
    return f"blk.{i}." + {
        "attention.wq.weight": "attn_q.weight", "attention.wk.weight": "attn_k.weight",
        "attention.wv.weight": "attn_v.weight", "attention.wo.weight": "attn_output.weight",
        "feed_forward.w1.weight": "ffn_gate.weight", "feed_forward.w2.weight": "ffn_down.weight",
        "feed_forward.w3.weight": "ffn_up.weight", "attention_norm.weight": "attn_norm.weight",
        "ffn_norm.weight": "ffn_norm.weight",
    }[rest]


def _vocab(vocab_size: int):
    """A stand-in byte-level BPE vocabulary: the 256 GPT-2 byte characters, one merge, fillers,
    and Llama 3's special-token range marked as control tokens."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    tokens = [chr(c) for c in cs] + ["ĠĠ"]
    tokens += [f"[tok{i}]" for i in range(len(tokens), min(vocab_size, BOS))]
    tokens += [f"<|reserved_special_token_{i - BOS}|>" for i in range(len(tokens), vocab_size)]
    types = [1 if i < BOS else 3 for i in range(vocab_size)]  # NORMAL, CONTROL
    return tokens, types, ["Ġ Ġ"]


def write_gguf(folder: Path, path: Path) -> None:
    """The folder's Meta checkpoint as a llama.cpp bf16 GGUF (see the module docstring)."""
    import gguf

    files = load_model_files(folder, require_tokenizer=False)
    a = files.args
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(f"llama_nb random {folder.name}")
    w.add_context_length(TRAIN_CONTEXT)
    w.add_embedding_length(a.dim)
    w.add_block_count(a.n_layers)
    w.add_feed_forward_length(a.hidden_dim)
    w.add_head_count(a.n_heads)
    w.add_head_count_kv(a.n_kv_heads)
    w.add_rope_dimension_count(a.head_dim)
    w.add_rope_freq_base(a.rope_theta)
    w.add_layer_norm_rms_eps(a.norm_eps)
    w.add_vocab_size(a.vocab_size)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
    tokens, types, merges = _vocab(a.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    if a.vocab_size > EOS:
        w.add_bos_token_id(BOS)
        w.add_eos_token_id(EOS)
    for name, t in files.checkpoint.items():
        if t.ndim == 1:  # norms: f32
            w.add_tensor(_gguf_name(name), bf16_to_f32_np(t))
        else:  # bf16 bits, untouched; the mapped view is only read while the file is written
            w.add_tensor(_gguf_name(name), t, raw_dtype=gguf.GGMLQuantizationType.BF16)
    if a.use_scaled_rope:
        factors = rope_frequencies(a.head_dim, a.rope_theta, None) / rope_frequencies(a.head_dim, a.rope_theta, a.rope_scaling)
        w.add_tensor("rope_freqs.weight", factors.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def quantize_gguf(bf16_path: Path, qtype: str, threads: int, log) -> Path:
    """model-<qtype>.gguf beside the bf16 GGUF, made once by llama.cpp's quantizer."""
    import ctypes

    import llama_cpp

    path = bf16_path.with_name(f"model-{qtype}.gguf")
    if not path.is_file():
        log(f"quantizing {bf16_path.name} to {path.name} with llama.cpp")
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.nthread = TYPES[qtype][0], threads
        partial = path.with_suffix(".partial")
        if llama_cpp.llama_model_quantize(str(bf16_path).encode(), str(partial).encode(), ctypes.byref(params)) != 0:
            raise SystemExit(f"llama.cpp could not quantize {bf16_path} to {qtype}")
        partial.replace(path)
    return path


def llama_nb_source(folder: Path, gguf_path: Path, qtype: str) -> tuple[Path, str | None]:
    """(what llama_nb loads, the format to repack into): the same GGUF file where llama_nb reads
    GGUF; else the Meta folder, repacked to q8_0 (checked to be the same bytes: same_q8_0_bytes)."""
    import importlib.util

    if qtype == "bf16":
        return folder, None
    if importlib.util.find_spec("llama_nb.io.gguf_model") is not None:
        return gguf_path, None
    if TYPES[qtype][1] is not None:
        return folder, TYPES[qtype][1]
    raise SystemExit(f"--type {qtype}: llama_nb needs its GGUF reader (llama_nb/io/gguf_model.py) to run llama.cpp's file")


def same_q8_0_bytes(folder: Path, gguf_path: Path) -> bool:
    """Whether llama.cpp's Q8_0 blocks of layer 0's wq equal llama_nb's repack of the bf16 tensor."""
    import gguf

    from llama_nb.formats import get_format

    theirs = next(t for t in gguf.GGUFReader(str(gguf_path)).tensors if t.name == _gguf_name("layers.0.attention.wq.weight"))
    wq = load_model_files(folder, require_tokenizer=False).checkpoint.tensors["layers.0.attention.wq.weight"]
    ours = get_format("q8_0").quantize(bf16_to_f32_np(wq)).data
    return np.array_equal(np.asarray(theirs.data).reshape(ours.shape), ours)


# --- the two engines -----------------------------------------------------------------------------


BASE = "llama_nb bf16"  # with --type q8_0 / q4_k_m: llama_nb on the bf16 weights, the same rounds


class LlamaNb:
    def __init__(self, folder: Path, ctx: int, threads: int, impl: str | None = None, precision: str = "bf16",
                 weight_format: str | None = None, name: str = "llama_nb"):
        self.name = name
        self.model = load_transformer(folder, impl, ctx=ctx, max_batch=512, threads=threads, precision=precision,
                                      weight_format=weight_format)
        self.model.warmup()

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        return self.model.forward(ids, 0).copy()

    def step(self, token: int, pos: int) -> np.ndarray:
        return self.model.forward([token], pos)

    def decode(self, first: int, n: int, start_pos: int) -> list[int]:
        return decode(self.model, first, n, start_pos)


_PROBE_EXTRA_BUFFERS = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=64, n_batch=512, n_ubatch=512, n_threads=1, verbose=False)
llm.eval(list(range(100, 132)))
llm.eval([5])
"""


@functools.lru_cache(maxsize=None)  # once per file: spells.py makes an engine per thread count
def extra_buffers_work(gguf_path: Path) -> tuple[bool, str]:
    """Whether llama.cpp survives a prompt and a decode step on gguf_path with its extra weight
    buffers (repacked layouts; AMX tiles on CPUs with AMX), tried in a child process because
    a crash there is a segmentation fault, not an exception. Seen on 2026-12-02: an Intel Xeon with
    AMX_INT8, llama-cpp-python 0.3.36, Q8_0 and Q4_K_M files: SIGSEGV in the first prefill; bf16
    runs. Returns (works, why not)."""
    import subprocess

    try:
        done = subprocess.run([sys.executable, "-c", _PROBE_EXTRA_BUFFERS, str(gguf_path)], capture_output=True,
                              timeout=600)
    except subprocess.TimeoutExpired:
        return False, "its extra weight buffers hung on a 32-token prompt"
    if done.returncode == 0:
        return True, ""
    how = f"signal {-done.returncode}" if done.returncode < 0 else f"exit status {done.returncode}"
    return False, f"its extra weight buffers (repacked/AMX layouts) crash on this file ({how}), so they are off"


class LlamaCpp:
    name = "llama.cpp"

    def __init__(self, gguf_path: Path, ctx: int, threads: int):
        """llama.cpp on gguf_path as its users run it, extra weight buffers included, unless
        they crash on this host (extra_buffers_work): then without them, said in `self.note`."""
        import llama_cpp.llama as binding
        from llama_cpp import Llama

        works, self.note = extra_buffers_work(gguf_path)
        default_params = binding.llama_cpp.llama_model_default_params

        def without_extra_buffers():
            params = default_params()
            params.use_extra_bufts = False
            return params

        if not works:  # Llama() has no argument for it: it reads llama_model_default_params()
            binding.llama_cpp.llama_model_default_params = without_extra_buffers
        try:
            self.llm = Llama(model_path=str(gguf_path), n_ctx=ctx, n_batch=512, n_ubatch=512, n_threads=threads,
                             n_threads_batch=threads, logits_all=False, verbose=False)
        finally:
            binding.llama_cpp.llama_model_default_params = default_params

    def _logits(self) -> np.ndarray:
        """float32[vocab] of the batch's last token, a view into llama.cpp's buffer (Llama.eval
        no longer copies logits unless logits_all)."""
        import llama_cpp

        ptr = llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.llm.n_vocab(),))

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        self.llm.reset()  # n_tokens = 0; eval() then drops cached positions >= 0
        self.llm.eval([int(t) for t in ids])
        return self._logits().copy()

    def step(self, token: int, pos: int) -> np.ndarray:
        assert self.llm.n_tokens == pos
        self.llm.eval([token])
        return self._logits()

    def decode(self, first: int, n: int, start_pos: int) -> list[int]:
        out, token = [], first
        for i in range(n):
            token = int(np.argmax(self.step(token, start_pos + i)))
            out.append(token)
        return out


# --- the comparison ------------------------------------------------------------------------------


def agreement(nb: LlamaNb, cpp: LlamaCpp, ids: np.ndarray, n_gen: int):
    """Teacher-forced top-1 agreement over n_gen + 1 positions:
    [(pos, nb_top, cpp_top, nb_top2_margin, max|logit diff| / max|logit|, max|logit diff|)]."""
    rows = []
    a, b = nb.prefill(ids), cpp.prefill(ids)
    for i in range(n_gen + 1):
        top2 = np.argsort(a)[-2:]
        margin = float(a[top2[1]] - a[top2[0]])
        diff = float(np.abs(a - b).max())
        rows.append((len(ids) + i, int(top2[1]), int(np.argmax(b)), margin, diff / float(np.abs(a).max()), diff))
        if i == n_gen:
            break
        token = int(top2[1])
        a, b = nb.step(token, len(ids) + i).copy(), cpp.step(token, len(ids) + i)
    return rows


TG_CHUNK = 8  # decode tokens per turn when the engines take turns within a round


def timed_round(engines, ids: np.ndarray, n_gen: int, chunk: int = TG_CHUNK) -> dict[str, tuple[float, float]]:
    """One round: {engine name: (ppN tokens/s, tgM tokens/s)}.

    Each engine's prompt pass, in the order given; then their tgM in turns of `chunk` tokens (A's
    first 8, B's first 8, A's next 8, ...), each continuing its own sequence, so that a change of
    the host's memory bandwidth in the middle of a round (they last 10-40 s) slows both alike.
    A short pause before each turn lets the other engine's worker threads go idle; it is not timed.
    """
    pp, tg_seconds, state = {}, {}, {}
    for engine in engines:
        time.sleep(0.3)
        t0 = time.perf_counter()
        logits = engine.prefill(ids)
        pp[engine.name] = len(ids) / (time.perf_counter() - t0)
        state[engine.name] = (int(np.argmax(logits)), len(ids))
        tg_seconds[engine.name] = 0.0
    for done in range(0, n_gen, chunk):
        n = min(chunk, n_gen - done)
        for engine in engines:
            time.sleep(0.005)
            token, pos = state[engine.name]
            t0 = time.perf_counter()
            out = engine.decode(token, n, pos)
            tg_seconds[engine.name] += time.perf_counter() - t0
            state[engine.name] = (out[-1], pos + n)
    return {e.name: (pp[e.name], n_gen / tg_seconds[e.name]) for e in engines}


class PlainRead:
    """The plain-read probe of `llama-nb bench` (ops/benchmark.py: a parallel Numba sum of 512 MB),
    measured before and after each round, so a ratio shows which spell of the host's bandwidth it
    came from."""

    def __init__(self, threads: int):
        from llama_nb.ops.benchmark import _READ_BYTES

        self.threads, self.array = threads, np.ones((_READ_BYTES // 2 // 8192, 8192), np.uint16)

    def gbps(self) -> float:
        from llama_nb.ops.benchmark import _sum_rows
        from llama_nb.ops.jit import threads as using_threads

        with using_threads(self.threads):
            _sum_rows(self.array)
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                _sum_rows(self.array)
                best = min(best, time.perf_counter() - t0)
        return self.array.nbytes / best / 1e9


def compare_shape(shape: str, n_prompt: int, n_gen: int, rounds: int, threads: int, log, impl: str | None = None,
                  precision: str = "bf16", qtype: str = "bf16") -> dict:
    folder = ensure_shape_model(shape, on_write=lambda f, n: log(f"writing random {shape} ({n / 1e9:.1f} GB) to {f}"))
    gguf_path = folder / GGUF_NAME
    if not gguf_path.is_file():
        log(f"writing {gguf_path}")
        write_gguf(folder, gguf_path.with_suffix(".partial"))
        gguf_path.with_suffix(".partial").replace(gguf_path)
    if qtype != "bf16":
        gguf_path = quantize_gguf(gguf_path, qtype, threads, log)
    source, weight_format = llama_nb_source(folder, gguf_path, qtype)
    if weight_format == "q8_0" and not same_q8_0_bytes(folder, gguf_path):
        raise SystemExit(f"llama.cpp's Q8_0 blocks in {gguf_path} differ from llama_nb's repack: not the same weights")
    log(f"llama_nb runs {source.name}" + (f" repacked to {weight_format} (the same bytes as {gguf_path.name})"
                                          if weight_format else "") + f", llama.cpp {gguf_path.name}")
    ctx = n_prompt + n_gen + 1
    nb, cpp = LlamaNb(source, ctx, threads, impl, precision, weight_format), LlamaCpp(gguf_path, ctx, threads)
    engines = (nb, cpp)
    if cpp.note:
        log(f"llama.cpp: {cpp.note}")
    if qtype != "bf16":  # the quantized decode's gain over llama_nb's own bf16, in the same rounds
        engines += (LlamaNb(folder, ctx, threads, impl, precision, None, name=BASE),)
    ids = prompt_ids(n_prompt, SHAPES[shape][0].vocab_size)
    timed_round(engines, ids[: min(n_prompt, 32)], 2)  # warm-up: page the weights in, first-call costs
    check = agreement(nb, cpp, ids, n_gen)
    results = []
    probe = PlainRead(threads)
    for r in range(rounds):
        before = probe.gbps()
        pair = timed_round(engines if r % 2 == 0 else engines[::-1], ids, n_gen)
        pair["read"] = (before, probe.gbps())
        results.append(pair)
        log(f"{shape} round {r + 1}: " + ", ".join(f"{k} pp {v[0]:.1f} tg {v[1]:.2f}" for k, v in pair.items()
                                                    if k != "read") + f", plain read {pair['read'][0]:.1f}/{pair['read'][1]:.1f} GB/s")
    return {"shape": shape, "n_prompt": n_prompt, "n_gen": n_gen, "check": check, "rounds": results, "type": qtype,
            "llama_cpp_note": cpp.note}


def _ms(xs) -> str:
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{xs[0]:.2f}"


def render(results: list[dict], threads: int, impl: str | None = None, precision: str = "bf16") -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    import llama_cpp

    lines = [f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {cpu}, {threads} threads, "
             f"llama-cpp-python {llama_cpp.__version__}, {results[0]['type'] if results else 'bf16'} weights, random values, "
             f"llama_nb precision {precision}, kernels: {impl or 'defaults'}", ""]
    based = any(BASE in p for res in results for p in res["rounds"])
    lines += ["| shape | test | llama_nb tok/s | llama.cpp tok/s | llama_nb / llama.cpp |"
              + (" llama_nb bf16 tok/s | llama_nb / its bf16 |" if based else ""),
              "| --- | --- | ---: | ---: | ---: |" + (" ---: | ---: |" if based else "")]
    for res in results:
        for k, test in ((0, f"pp{res['n_prompt']}"), (1, f"tg{res['n_gen']}")):
            nb = [p["llama_nb"][k] for p in res["rounds"]]
            cpp = [p["llama.cpp"][k] for p in res["rounds"]]
            ratio = [a / b for a, b in zip(nb, cpp)]
            row = f"| {res['shape']} | {test} | {_ms(nb)} | {_ms(cpp)} | {_ms(ratio)} |"
            if based:
                base = [p[BASE][k] for p in res["rounds"]]
                row += f" {_ms(base)} | {_ms([a / b for a, b in zip(nb, base)])} |"
            lines.append(row)
    lines.append("")
    lines += [f"{res['shape']}: llama.cpp: {res['llama_cpp_note']}" for res in results if res.get("llama_cpp_note")]
    for res in results:
        lines.append(f"per round, {res['shape']} (ratio llama_nb / llama.cpp):")
        for i, p in enumerate(res["rounds"]):
            (nbp, nbt), (cp, ct) = p["llama_nb"], p["llama.cpp"]
            read = p.get("read", (float("nan"),) * 2)
            own = f"   bf16 tg {p[BASE][1]:6.2f}, x{nbt / p[BASE][1]:.2f}" if BASE in p else ""
            lines.append(f"  round {i + 1}: pp {nbp:7.1f} vs {cp:7.1f} = {nbp / cp:.2f}   tg {nbt:6.2f} vs {ct:6.2f} = {nbt / ct:.2f}"
                         f"{own}   plain read {read[0]:.1f} / {read[1]:.1f} GB/s (before / after)")
        check = res["check"]
        agree = sum(row[1] == row[2] for row in check)
        # a disagreement is a near-tie when llama_nb's top-2 margin is within the largest logit
        # difference between the engines at that position
        ties = sum(row[1] != row[2] and row[3] <= row[5] for row in check)
        lines.append(f"  greedy top-1 agreement (teacher-forced): {agree} of {len(check)} positions; "
                     f"{len(check) - agree - ties} disagreements where the margin is clear, {ties} at near-ties; "
                     f"max |logit diff| / max |logit| = {max(row[4] for row in check):.4f}")
        for pos, nb, cp, margin, _, diff in check:
            if nb != cp:
                lines.append(f"    pos {pos}: llama_nb {nb}, llama.cpp {cp}, llama_nb's top-2 margin {margin:.4f}, "
                             f"max |logit diff| {diff:.4f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", action="append", choices=sorted(SHAPES),
                        help="model shape (repeatable) [default: llama3.2-1b and llama3.1-8b-4layers]")
    parser.add_argument("-p", "--n-prompt", type=int, default=128)
    parser.add_argument("-n", "--n-gen", type=int, default=64)
    parser.add_argument("-r", "--rounds", type=int, default=5)
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("--impl", default=None, help="llama_nb kernel spec, e.g. linear=numba_fma")
    parser.add_argument("--precision", choices=("bf16", "float32"), default="bf16", help="llama_nb's precision")
    parser.add_argument("--type", choices=sorted(TYPES), default="bf16",
                        help="weights of both engines: bf16, or llama.cpp's quantization of them (q8_0, q4_k_m)")
    args = parser.parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    results = [compare_shape(s, args.n_prompt, args.n_gen, args.rounds, args.threads, log, args.impl, args.precision,
                             args.type) for s in args.shape or ["llama3.2-1b", "llama3.1-8b-4layers"]]
    print(render(results, args.threads, args.impl, args.precision))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Quality of each GGUF format as llama_nb measures it and as llama.cpp does, on the same files.

    PYTHONPATH=.:/work/benchenv/lib/python3.11/site-packages python bench/quality_llama_cpp.py \
        --text held-out.txt --types q8_0,q4_k_m --ctx 256
    bible -f 2jo1:1-rev22:21 | sed 's/^[^ ]* //' > held-out.txt   # the demo model's held-out books

Needs llama-cpp-python (bench/README.md). For MODEL (default: the demo model), `llama-nb quantize`
writes model-bf16.gguf and one file per type into a temporary folder. Then:
    llama_nb   `llama-nb bench quality` (llama_nb/model/quality.py): the same conversions, in memory
    llama.cpp  each file through llama-cpp-python, every chunk evaluated in one batch with the
               logits of every position kept; the same chunks, scored positions and statistics
               (quality.py's Tally): perplexity, and against llama.cpp's own bf16 run of the bf16
               file, mean KL divergence and top-1 agreement
So each engine's quantized formats are compared with that engine's bf16 model.
llama.cpp rounds activations to its own int8 blocks (Q8_0 / Q8_K), llama_nb to blocks of 32 with
float32 scales (llama_nb/quant/activations.py): the two columns need not agree to the last digit.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from llama_nb.io.checkpoint import load_model_files
from llama_nb.model.quality import Tally, chunks_of, log_softmax, measure_quality
from llama_nb.model.quantize import quantize_model

DEMO = Path(__file__).resolve().parent.parent / "llama_nb" / "demo"


def llama_cpp_log_probs(path: Path, chunks: list[list[int]], ctx: int, threads: int):
    """Yield (float32[V] log-softmax, the next token) at each scored position of each chunk, as
    llama.cpp computes it."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=ctx, n_batch=ctx, n_ubatch=ctx, n_threads=threads,
                n_threads_batch=threads, logits_all=True, verbose=False)
    for chunk in chunks:
        llm.reset()
        llm.eval(chunk)
        scores = np.asarray(llm.scores[: len(chunk)], np.float32)
        for j in range(len(chunk) // 2, len(chunk) - 1):
            yield log_softmax(scores[j]), chunk[j + 1]
    del llm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEMO, help="a Meta folder (default: the demo model)")
    parser.add_argument("--text", type=Path, required=True)
    parser.add_argument("--types", default="q8_0,q4_k_m")
    parser.add_argument("--ctx", type=int, default=256)
    parser.add_argument("--chunks", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    types = [t for t in args.types.split(",") if t and t != "bf16"]
    text = args.text.read_text(encoding="utf-8")

    ours = {r.type: r for r in measure_quality(args.model, text, types, ctx=args.ctx, max_chunks=args.chunks,
                                                threads=args.threads)}
    tokenizer = load_model_files(args.model).load_tokenizer()
    chunks = chunks_of(tokenizer.encode(text, bos=False, eos=False), args.ctx, tokenizer.bos_id, args.chunks)

    theirs, base = {}, []
    with tempfile.TemporaryDirectory(prefix="quality_gguf_") as tmp:
        for ftype in ["bf16"] + types:
            path = Path(tmp) / f"model-{ftype}.gguf"
            quantize_model(args.model, ftype, path)
            t0 = time.perf_counter()
            tally = Tally(base if ftype != "bf16" else None)
            for log_p, next_token in llama_cpp_log_probs(path, chunks, args.ctx, args.threads):
                tally.add(log_p, next_token)
                if ftype == "bf16":
                    base.append(log_p)
            theirs[ftype] = tally.result(ftype, ours[ftype].bits_per_weight, time.perf_counter() - t0)

    print(f"{args.model.name}: {ours['bf16'].n_tokens} tokens scored at --ctx {args.ctx}, {len(chunks)} chunks")
    print("| format | bits/weight | perplexity llama_nb | perplexity llama.cpp | mean KL vs bf16 llama_nb | "
          "mean KL vs bf16 llama.cpp | top-1 = bf16 llama_nb | top-1 = bf16 llama.cpp |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for ftype in ["bf16"] + types:
        a, b = ours[ftype], theirs[ftype]
        print(f"| {ftype} | {a.bits_per_weight:.2f} | {a.perplexity:.2f} ± {a.perplexity_stderr:.2f} | "
              f"{b.perplexity:.2f} ± {b.perplexity_stderr:.2f} | {a.kl_mean:.5f} | {b.kl_mean:.5f} | "
              f"{a.top1:.2%} | {b.top1:.2%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

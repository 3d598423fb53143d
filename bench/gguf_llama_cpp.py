"""GGUF files between llama_nb and llama.cpp, both ways, on a real text (default: the demo model).

    PYTHONPATH=$PWD:/work/benchenv/lib/python3.11/site-packages python bench/gguf_llama_cpp.py
    python bench/gguf_llama_cpp.py --model DIR --types q8_0,q4_k_m,bf16 -n 64 --text FILE

Needs llama-cpp-python (see bench/README.md) besides llama_nb's own dependencies. For each type:

  1. ours -> llama.cpp: `llama-nb quantize MODEL --type T` writes the file; llama.cpp loads it,
     tokenizes the prompt to the same ids as llama_nb (its tokenizer runs on our tokenizer.ggml.*
     metadata and merges), and, teacher-forced on llama_nb's greedy tokens, picks the same next
     token at each of n + 1 positions except at near-ties (bench/compare.py's `agreement`: a
     disagreement is a near-tie when llama_nb's top-2 margin is within the largest logit difference
     between the engines at that position; each one is listed with its margin).
  2. llama.cpp -> ours (q8_0, q4_k_m): llama.cpp's own quantizer (llama_model_quantize) makes the
     type from our bf16 file; llama_nb loads that file, and the same agreement check runs on it;
     its per-tensor types are compared with the ones `llama-nb quantize` chose.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from compare import LlamaCpp, LlamaNb, agreement  # noqa: E402

LLAMA_FTYPES = {"q8_0": 7, "q4_k_m": 15}  # llama_ftype: LLAMA_FTYPE_MOSTLY_Q8_0, _Q4_K_M
DEFAULT_PROMPT = "And God said unto Moses, I AM THAT I AM: and he said, Thus shalt thou say unto"


def llama_cpp_quantize(source: Path, out: Path, ftype: str, threads: int) -> Path:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = LLAMA_FTYPES[ftype], threads
    if llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama.cpp could not quantize {source} to {ftype}")
    return out


def tensor_types(path: Path) -> dict[str, str]:
    from llama_nb.io.gguf import read_gguf

    return {name: t.type_name for name, t in read_gguf(path).tensors.items()}


def check(path: Path, prompt: str, n_gen: int, ctx: int, threads: int, label: str) -> bool:
    """Tokenization and teacher-forced greedy agreement of the two engines on one file."""
    import llama_nb
    from llama_nb.errors import LlamaNbError

    try:
        llm = llama_nb.load_model(path, ctx=ctx)
    except LlamaNbError as exc:  # e.g. llama.cpp's Q5_0 fallback for rows that are no whole Q4_K blocks
        print(f"{label}: {path.name}: llama_nb refuses it: {exc}")
        return False
    ids = llm.tokenizer.encode(prompt, bos=True, eos=False)
    nb, cpp = LlamaNb(path, ctx, threads), LlamaCpp(path, ctx, threads)
    theirs = cpp.llm.tokenize(prompt.encode(), add_bos=True, special=False)
    rows = agreement(nb, cpp, ids, n_gen)
    agree = sum(nb_top == cpp_top for _, nb_top, cpp_top, *_ in rows)
    ties = [r for r in rows if r[1] != r[2] and r[3] <= r[5]]
    clear = [r for r in rows if r[1] != r[2] and r[3] > r[5]]
    print(f"{label}: {path.name}: tokens {'identical' if theirs == ids else f'DIFFER: {theirs} vs {ids}'}; "
          f"greedy agreement {agree}/{len(rows)}, {len(ties)} near-ties, {len(clear)} clear disagreements; "
          f"largest logit difference {max(r[5] for r in rows):.4f} ({max(r[4] for r in rows):.2%} of max |logit|)")
    for pos, a, b, margin, _, diff in ties + clear:
        print(f"    pos {pos}: llama_nb {a}, llama.cpp {b}, llama_nb's top-2 margin {margin:.4f}, logit diff {diff:.4f}")
    return theirs == ids and not clear


def main(argv=None) -> int:
    from llama_nb.demo import demo_model_dir
    from llama_nb.model.quantize import quantize_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model folder or GGUF [default: the demo model]; "
                        "'wide': a random model whose rows are whole Q4_K blocks (dim 256, FFN 768), demo tokenizer")
    parser.add_argument("--types", default="bf16,q8_0,q4_k_m")
    parser.add_argument("--text", type=Path, help="prompt text file [default: a verse]")
    parser.add_argument("-n", "--n-gen", type=int, default=64, help="teacher-forced positions after the prompt")
    parser.add_argument("--ctx", type=int, default=256)
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="folder for the GGUF files [default: a temporary one]")
    args = parser.parse_args(argv)
    prompt = args.text.read_text()[:2000] if args.text else DEFAULT_PROMPT
    out = args.out or Path(tempfile.mkdtemp(prefix="llama_nb_gguf_"))
    out.mkdir(parents=True, exist_ok=True)
    model = args.model or demo_model_dir()
    if str(model) == "wide":  # the demo's FFN (704) makes llama.cpp fall back to Q5_0, which llama_nb does not read
        from llama_nb.io.params import ModelArgs
        from llama_nb.io.pth_write import write_random_model

        model = write_random_model(out / "wide", ModelArgs(dim=256, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=4352,
                                                           multiple_of=256), tokenizer_path=demo_model_dir() / "tokenizer.model")
    ok = True
    types = [t for t in args.types.split(",") if t]
    bf16 = out / "model-bf16.gguf"
    quantize_model(model, "bf16", bf16)
    for ftype in types:
        ours = bf16 if ftype == "bf16" else out / f"model-{ftype}.gguf"
        if ftype != "bf16":
            quantize_model(model, ftype, ours)
        ok &= check(ours, prompt, args.n_gen, args.ctx, args.threads, f"ours -> llama.cpp [{ftype}]")
        if ftype in LLAMA_FTYPES:
            theirs = llama_cpp_quantize(bf16, out / f"llama-cpp-{ftype}.gguf", ftype, args.threads)
            ok &= check(theirs, prompt, args.n_gen, args.ctx, args.threads, f"llama.cpp -> ours [{ftype}]")
            a, b = tensor_types(ours), tensor_types(theirs)
            differ = {name: (a[name], b.get(name)) for name in a if a[name] != b.get(name)}
            print(f"    per-tensor types, ours vs llama.cpp's quantizer: "
                  + ("identical" if not differ else ", ".join(f"{n}: {x} vs {y}" for n, x, y in
                                                              ((n, *v) for n, v in sorted(differ.items())))))
    print(f"files in {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

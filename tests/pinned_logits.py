"""Logits pinned bit for bit across a refactoring: the fingerprints of the logits of the tiny test
models and the demo model, at both precisions, as the commit before the weight-format redesign
computed them (tests/data/pinned_logits.json). The precision-bf16 entries were re-recorded, on
purpose, when precision bf16 got its bf16 KV cache (keys and values rounded to bf16 as stored:
the logits move, as tests/test_model.py's test_bf16_kv_cache_bound states); the float32 entries
stayed bit for bit.

    python -m tests.pinned_logits --write     record the fingerprints (done once, on purpose)
    python -m tests.pinned_logits --print     print them as JSON (the test runs this too)

tests/test_pinned_logits.py recomputes them and asserts equality. Each fingerprint is the
SHA-256 of the float32 logits' bytes after a prompt pass and after each of 4 greedy decode
steps, so a change in any bit of any logit, in prefill or decode, is caught; once with the
CPU's default kernels and once with LLAMA_NB_NO_BF16DOT=1 (the portable float32-FMA path). The numbers depend
on the kernels the CPU gets (vdpbf16ps or not; AVX-512 or AVX2 summation lanes), so the file
records the CPU features it was made on and the test compares only on a CPU with the same ones
(it asserts within the model tolerances elsewhere: tests/test_model.py).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

PINS = Path(__file__).parent / "data" / "pinned_logits.json"
CONFIGS = {  # name: write_tiny_model keyword arguments (a subset of tests/test_model.py's)
    "gqa-scaled-untied": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, use_scaled_rope=True, tie_output=False),
    "mqa-unscaled-tied": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=1, use_scaled_rope=False, tie_output=True),
    "gqa-odd-ffn": dict(dim=128, n_layers=2, n_heads=8, n_kv_heads=2, multiple_of=48, ffn_dim_multiplier=1.3,
                        rope_theta=10000.0, use_scaled_rope=False, tie_output=False),
}
PROMPT = "The quick brown fox jumps over the lazy dog, and then"
DEMO_PROMPT = "And it came to pass, when the"
N_DECODE = 4


def cpu_features() -> str:
    from llama_nb.ops.jit import cpu_features as features

    return features()


def fingerprints(llm, prompt: str) -> list[str]:
    """SHA-256 of the logits after the prompt pass and after each greedy decode step."""
    ids = llm.tokenizer.encode(prompt, bos=True, eos=False)
    logits = llm.forward(ids, 0)
    out = [hashlib.sha256(np.ascontiguousarray(logits, np.float32).tobytes()).hexdigest()]
    pos = len(ids)
    for _ in range(N_DECODE):
        token = int(np.argmax(logits))
        logits = llm.forward([token], pos)
        pos += 1
        out.append(hashlib.sha256(np.ascontiguousarray(logits, np.float32).tobytes()).hexdigest())
    return out


def compute(tmp: Path) -> dict[str, list[str]]:
    import llama_nb
    from llama_nb.demo import demo_model_dir
    from tests.tinymodel import write_tiny_model

    result: dict[str, list[str]] = {}
    folders = {name: write_tiny_model(tmp / name, seed=len(name), **kw) for name, kw in CONFIGS.items()}
    folders["demo"] = demo_model_dir()
    for name, folder in folders.items():
        for precision in ("float32", "bf16"):
            llm = llama_nb.load_model(folder, ctx=128, precision=precision)
            result[f"{name}/{precision}"] = fingerprints(llm, DEMO_PROMPT if name == "demo" else PROMPT)
    return result


def compute_in_subprocess(env_update: dict[str, str]) -> dict[str, list[str]]:
    """compute() in a fresh interpreter with `env_update` applied (e.g. LLAMA_NB_NO_BF16DOT=1,
    read once at import time)."""
    import os
    import subprocess

    env = dict(os.environ, **env_update)
    proc = subprocess.run([sys.executable, "-m", "tests.pinned_logits", "--print"], capture_output=True, text=True,
                          env=env, cwd=Path(__file__).parent.parent, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    import tempfile

    if argv not in (["--write"], ["--print"]):
        print(__doc__)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        logits = compute(Path(tmp))
    if argv == ["--print"]:
        print(json.dumps(logits))
        return 0
    pins = {"cpu_features": cpu_features(), "logits": logits,
            "logits_no_bf16dot": compute_in_subprocess({"LLAMA_NB_NO_BF16DOT": "1"})}
    PINS.write_text(json.dumps(pins, indent=1) + "\n")
    print(f"wrote {PINS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""forward() allocates nothing after warm-up, for decode and for prefill, at both precisions; nor
does forward_batch() (several sequences per pass, a prefill beside decode rows).

Three measurements, in a fresh interpreter with Numba's allocation statistics on (NUMBA_NRT_STATS=1,
read at import), on a 1-layer model of Llama 3.1 8B's width (dim 4096, so every array worth
allocating, a row of activations or of converted activations, is 8 KB or more):
- the kernels: no compiled function a forward pass ran holds a call that allocates an array
  (NRT_MemInfo_alloc*, what np.empty inside @njit becomes), read from their LLVM IR;
- Numba's runtime: the same number of NRT events in every decode step (passing an array to a
  kernel adapts it, one event each, freed on return), so nothing grows per token;
- Python and NumPy (tracemalloc): over a second round of a prefill and 16 decode steps, at most
  KEPT_SLACK bytes kept (no growth per token) and a peak above the start of at most PEAK_SLACK
  bytes: the small Python objects of the views a pass makes, never an array's data.
A control run with one deliberate allocation per product shows the measurements catch one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.tinymodel import write_tiny_model

PEAK_SLACK = 6 << 10  # measured 2-3 KiB of Python objects; the smallest avoidable array is 8 KiB
KEPT_SLACK = 256  # measured 0-32 bytes: a float or tuple CPython happens to keep; any array is 8 KiB

PROBE = textwrap.dedent(r"""
    import json, re, sys, tracemalloc
    import numba, numpy as np
    from numba.core.runtime import rtsys
    from llama_nb.model.bench import load_transformer
    import llama_nb.ops as ops_pkg, importlib, pkgutil

    folder, precision, control, batched = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4] == "1"
    model = load_transformer(folder, ctx=128, max_batch=64, precision=precision)
    if batched:  # three sequences per pass (forward_batch), each in its own KV cache slot
        from llama_nb.model.transformer import Transformer
        model = Transformer(model.args, model.weights, model.ops, ctx=128, max_batch=64, slots=3)
    model.warmup()
    if control:  # one deliberate allocation per product: the checks must see it
        linear = model.ops.linear
        model.ops.linear = lambda out, x, w, xq: (linear(out, x, w, xq), x.copy())[0]
    ids = np.arange(40, dtype=np.int64) * 7 + 3

    events = np.zeros(16, np.int64)  # made before tracing starts: the bookkeeping keeps nothing

    def run(steps):
        if batched:
            return run_batched(steps)
        logits = model.forward(ids, 0)
        token, pos = int(model.ops.argmax(logits)), len(ids)
        for i in range(steps):
            before = rtsys.get_allocation_stats().alloc
            logits = model.forward([token], pos)
            events[i] = rtsys.get_allocation_stats().alloc - before
            token, pos = int(model.ops.argmax(logits)), pos + 1

    def run_batched(steps):  # a prompt prefilled beside two decoding sequences, then 3 rows per step
        model.forward_batch([(0, ids[:20], 0), (1, ids[:12], 0)])
        logits = model.forward_batch([(0, [5], 20), (1, [6], 12), (2, ids, 0)])
        rows = [(slot, [int(model.ops.argmax(logits[r]))], start) for r, (slot, start) in enumerate(((0, 21), (1, 13), (2, 40)))]
        for i in range(steps):
            before = rtsys.get_allocation_stats().alloc
            logits = model.forward_batch(rows)
            events[i] = rtsys.get_allocation_stats().alloc - before
            rows = [(slot, [int(model.ops.argmax(logits[r]))], start + len(tokens))
                    for r, (slot, tokens, start) in enumerate(rows)]

    run(2)  # first calls: Python-level caches of each dispatcher
    tracemalloc.start()
    run(16)  # caches of Python and NumPy that fill once (tens of bytes, measured) fill here
    start, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    run(16)
    now, peak = tracemalloc.get_traced_memory()
    events = events.tolist()
    allocating = []
    for info in pkgutil.iter_modules(ops_pkg.__path__):
        module = importlib.import_module(f"llama_nb.ops.{info.name}")
        for name, value in vars(module).items():
            if isinstance(value, numba.core.registry.CPUDispatcher) and value.signatures:
                ir = "\n".join(value.inspect_llvm().values())
                if re.search(r"call [^\n]*@NRT_MemInfo_alloc", ir):
                    allocating.append(f"{info.name}.{name}")
    print(json.dumps(dict(events=events, kept=now - start, peak=peak - start, allocating=sorted(allocating))))
""")


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("wide"), dim=4096, n_layers=1, n_heads=32, n_kv_heads=8,
                            ffn_dim_multiplier=0.3, multiple_of=256, vocab_size=2048, tokenizer=None, weight_std=None)


def measure(folder, precision: str, control: bool = False, batched: bool = False) -> dict:
    env = dict(os.environ, NUMBA_NRT_STATS="1")
    proc = subprocess.run([sys.executable, "-c", PROBE, str(folder), precision, "1" if control else "0",
                           "1" if batched else "0"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("precision,batched", [("bf16", False), ("float32", False), ("bf16", True)])
def test_forward_allocates_nothing_after_warmup(wide_model, precision, batched):
    result = measure(wide_model, precision, batched=batched)
    assert result["allocating"] == [], f"kernels that allocate: {result['allocating']}"
    assert len(set(result["events"])) == 1, f"NRT events per decode step grow: {result['events']}"
    assert result["kept"] <= KEPT_SLACK, f"{result['kept']} bytes kept after a prefill and 16 decode steps"
    assert result["peak"] <= PEAK_SLACK, f"a transient allocation of {result['peak']} bytes"


def test_the_measurement_sees_an_allocation(wide_model):
    result = measure(wide_model, "bf16", control=True)
    assert result["peak"] > PEAK_SLACK  # a copy of x in every product

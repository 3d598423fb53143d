"""Run under mpirun: llama_nb's logits and greedy tokens for model-parallel folders (test-only).

    mpirun -n N python -m tests.mpi_runner OUT.npz FOLDER...

For each folder and precision (float32, bf16): the last-position logits of the prompt and of 8
decode steps, and 12 greedy tokens, with the prompt and steps of tests/meta_shards.py. Rank 0
writes them to OUT.npz as "<folder index>.<precision>.logits" / ".greedy".
"""

from __future__ import annotations

import sys

import numpy as np

import llama_nb
from tests.meta_shards import N_GREEDY, N_STEPS, PROMPT


def results_for(folder: str) -> dict[str, np.ndarray]:
    out = {}
    for precision in ("float32", "bf16"):
        # a float32 KV cache at both precisions: these tests hold the sharded products to Meta's
        # rounding; the bf16 cache's own bound is tests/test_model.py's, on one process
        llm = llama_nb.load_model(folder, ctx=128, precision=precision, kv_cache="f32")
        ids = llm.tokenizer.encode(PROMPT, bos=True, eos=False)
        steps = [int(t) for t in np.random.default_rng(1).integers(0, 128000, size=N_STEPS)]
        logits = [llm.forward(ids, 0)] + [llm.forward([t], len(ids) + i) for i, t in enumerate(steps)]
        out[f"{precision}.logits"] = np.array(logits)
        out[f"{precision}.greedy"] = np.array([e.token for e in llm.generate(ids, N_GREEDY, stop_tokens=[])])
        out[f"{precision}.ranks"] = np.array(llm.model.group.size)
    return out


def main(out: str, folders: list[str]) -> None:
    results = {}
    for i, folder in enumerate(folders):
        results.update({f"{i}.{k}": v for k, v in results_for(folder).items()})
    from llama_nb.model.parallel import group_from_environment

    if group_from_environment().rank == 0:
        np.savez(out, **results)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

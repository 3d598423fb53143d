"""Tiny models cut into model-parallel shards by Meta's own reference model, and its sharded logits.

    make_sharded_model(folder, params, mp=2, seed=0)   -> dict of Meta's reference results

Runs Meta's llama_models Transformer at model-parallel size `mp` (fairscale on torch.distributed's
gloo backend), one process per rank, as Meta's generation code does. The random weights are the
master tensors of tests/tinymodel.tiny_state_dict; fairscale's own `_initialize_affine_weight`
cuts each one into the rank's part (its init_method fills the master weight), so the cut is
fairscale's, not ours. Each rank saves its `state_dict()` as consolidated.0r.pth (bf16, as Meta
ships), and rank 0 saves the reference: the prompt's last logits and 8 decode steps, in float32
and with every linear input rounded to bf16, and greedy tokens (results.npz).

    reshard_with_metas_code(src, dst, mp)   Meta's llama_models.checkpoint.reshard_mp from `src`'s
                                            shards to `mp` of them (mp > n_kv_heads: kv heads repeated)

Test-only (torch, fairscale, llama_models). Run as a script: python -m tests.meta_shards FOLDER MP RANK.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

N_STEPS = 8
N_GREEDY = 12
PROMPT = "The quick brown fox jumps over the lazy dog, and then"


def make_sharded_model(folder: Path, params: dict, mp: int, seed: int = 0) -> dict:
    """Write folder/{params.json, tokenizer.model, consolidated.0r.pth}; return rank 0's results."""
    import shutil

    from tests.tinymodel import llama3_tokenizer_path

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.json").write_text(json.dumps(params) + "\n")
    shutil.copyfile(llama3_tokenizer_path(), folder / "tokenizer.model")
    (folder / "seed").write_text(str(seed))
    store = folder / "pg_store"
    store.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-m", "tests.meta_shards", str(folder), str(mp), str(r)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(mp)]
    outputs = [p.communicate(timeout=600)[0].decode(errors="replace") for p in procs]
    store.unlink(missing_ok=True)
    (folder / "seed").unlink()
    for p, out in zip(procs, outputs):
        if p.returncode != 0:
            raise RuntimeError(f"Meta's model at MP {mp} failed:\n{out[-3000:]}")
    with np.load(folder / "results.npz") as data:
        results = dict(data)
    (folder / "results.npz").unlink()
    return results


def reshard_with_metas_code(src: Path, dst: Path, mp: int) -> None:
    """Meta's reshard (llama_models.checkpoint.reshard_mp, as maybe_reshard_state_dict calls it)
    from src's shards to `mp` shards in dst, one per new rank."""
    import shutil

    import torch
    from llama_models.checkpoint import map_mp_rank, reshard_mp

    dst.mkdir(parents=True, exist_ok=True)
    for name in ("params.json", "tokenizer.model"):
        shutil.copyfile(src / name, dst / name)
    params = json.loads((src / "params.json").read_text())
    old = sorted(src.glob("consolidated.*.pth"))
    for rank in range(mp):
        states = [torch.load(old[i], weights_only=True) for i in map_mp_rank(len(old), mp, rank)]
        size = max(mp // len(old), 1)
        state = reshard_mp(states, size=size, rank=rank % size, repeat_qk_qv=max(mp // params["n_kv_heads"], 1))
        torch.save({k: state[k].contiguous() for k in states[0]}, dst / f"consolidated.{rank:02d}.pth")


def _rank_main(folder: Path, mp: int, rank: int) -> None:
    import contextlib
    import io

    import torch
    import torch.distributed as dist
    from fairscale.nn.model_parallel import initialize as fs_init
    from fairscale.nn.model_parallel.layers import (ColumnParallelLinear, RowParallelLinear,
                                                    VocabParallelEmbedding, _initialize_affine_weight)
    from llama_models.llama3.args import ModelArgs
    from llama_models.llama3.model import Transformer
    from llama_models.llama3.tokenizer import Tokenizer

    from tests.meta_reference import bf16_linear_inputs
    from tests.tinymodel import tiny_state_dict

    torch.set_num_threads(1)
    params = json.loads((folder / "params.json").read_text())
    master = tiny_state_dict(params, seed=int((folder / "seed").read_text()), weight_std=None)
    dist.init_process_group("gloo", init_method=f"file://{folder / 'pg_store'}", rank=rank, world_size=mp)
    with contextlib.redirect_stdout(io.StringIO()):
        fs_init.initialize_model_parallel(mp)
    model = Transformer(ModelArgs(max_seq_len=128, max_batch_size=1, **params)).eval()
    with torch.no_grad():
        for name, module in model.named_modules():
            whole = master.get(f"{name}.weight")
            if whole is None:
                continue
            fill = lambda w, whole=whole: w.copy_(whole.float())  # noqa: E731
            if isinstance(module, ColumnParallelLinear):
                _initialize_affine_weight(module.weight, module.out_features, module.in_features,
                                          module.output_size_per_partition, 0, fill)
            elif isinstance(module, RowParallelLinear):
                _initialize_affine_weight(module.weight, module.out_features, module.in_features,
                                          module.input_size_per_partition, 1, fill)
            elif isinstance(module, VocabParallelEmbedding):
                _initialize_affine_weight(module.weight, module.num_embeddings, module.embedding_dim,
                                          module.num_embeddings_per_partition, 0, fill)
            else:  # the norms: replicated
                module.weight.copy_(whole.float())
    torch.save({k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}, folder / f"consolidated.{rank:02d}.pth")

    ids = Tokenizer(folder / "tokenizer.model").encode(PROMPT, bos=True, eos=False)
    steps = [int(t) for t in np.random.default_rng(1).integers(0, 128000, size=N_STEPS)]

    def forward(tokens, pos):
        with torch.inference_mode():
            return model.forward(torch.tensor([list(tokens)]), pos)[0, -1].float().numpy()

    def logits():
        return np.array([forward(ids, 0)] + [forward([t], len(ids) + i) for i, t in enumerate(steps)])

    def greedy():
        out, last = [], forward(ids, 0)
        for _ in range(N_GREEDY):
            out.append(int(np.argmax(last)))
            last = forward([out[-1]], len(ids) + len(out) - 1)
        return out

    results = {"prompt": np.array(ids), "steps": np.array(steps), "f32": logits(), "greedy_f32": greedy()}
    with bf16_linear_inputs():
        results.update(rounded=logits(), greedy_rounded=greedy())
    if rank == 0:
        np.savez(folder / "results.npz", **results)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    _rank_main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))

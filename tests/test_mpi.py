"""Model-parallel checkpoints on MPI ranks against Meta's own sharded reference model.

Tiny random models are cut into shards by Meta's Transformer itself at model-parallel size 2 and 4
(fairscale on gloo, one process per rank: tests/meta_shards.py), and one 2-shard model is
resharded to 4 by Meta's reshard_mp, which repeats its kv heads across shards (MP > n_kv_heads).
llama_nb runs each with 2 MPI ranks (one mpirun for the whole module: tests/mpi_runner.py) and
with 1 process (all shards joined): logits within 1e-4 of Meta's sharded model at precision
float32 and the same greedy tokens; at bf16 within the bounds tests/test_model.py holds.
Then the failures: a missing shard, shards that disagree with params.json or with the rank
count, a rank killed mid-generation.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

import llama_nb
from tests.meta_shards import make_sharded_model, reshard_with_metas_code
from tests.mpi_runner import results_for
from tests.tinymodel import tiny_params

MPIRUN = Path(sys.executable).parent / "mpirun"
REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not MPIRUN.exists(), reason="the mpi extra (mpi4py, mpich) is not installed")

MODELS = {
    # name: (params, model-parallel size Meta's model runs at, reshard to)
    "gqa-mp2": (tiny_params(dim=64, n_layers=2, n_heads=4, n_kv_heads=2), 2, None),
    "gqa-mp4-repeated-kv": (tiny_params(dim=64, n_layers=2, n_heads=4, n_kv_heads=2), 2, 4),
    "odd-ffn-mp4": (tiny_params(dim=128, n_layers=2, n_heads=8, n_kv_heads=4, multiple_of=48, ffn_dim_multiplier=1.3,
                                rope_theta=10000.0, use_scaled_rope=False), 4, None),
}


class mpirun(subprocess.Popen):
    """`mpirun -n N python ARGS...` with pipes; communicate() ends the job when it times out."""

    def __init__(self, n: int, *args: str, env: dict | None = None, **kwargs):
        environ = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
        super().__init__([str(MPIRUN), "-n", str(n), sys.executable, *args], env=environ, cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)

    def communicate(self, input=None, timeout=None):
        try:
            return super().communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.end()
            raise

    def end(self) -> None:
        self.terminate()  # mpirun passes SIGTERM on to its ranks (SIGKILL it could not)
        try:
            super().communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """name -> (folder, Meta's results); one Meta run per distinct model."""
    base = tmp_path_factory.mktemp("mp")
    out = {}
    for name, (params, mp, reshard) in MODELS.items():
        folder = base / f"{name}-meta{mp}"
        results = make_sharded_model(folder, params, mp, seed=len(name))
        if reshard is not None:
            reshard_with_metas_code(folder, base / name, reshard)
            folder = base / name
        out[name] = (folder, results)
    return out


@pytest.fixture(scope="module")
def two_ranks(sharded, tmp_path_factory):
    """name -> llama_nb's results with 2 MPI ranks (one mpirun for every model)."""
    names = sorted(sharded)
    npz = tmp_path_factory.mktemp("mpi") / "results.npz"
    proc = mpirun(2, "-m", "tests.mpi_runner", str(npz), *(str(sharded[n][0]) for n in names))
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err.decode()[-3000:]
    with np.load(npz) as data:
        return {name: {k.split(".", 1)[1]: data[k] for k in data.files if k.startswith(f"{i}.")}
                for i, name in enumerate(names)}


@pytest.fixture(scope="module")
def one_process(sharded):
    return {name: results_for(str(folder)) for name, (folder, _) in sharded.items()}


def rms(a):
    return float(np.sqrt(np.mean(np.square(a))))


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("ranks", [1, 2])
def test_float32_logits_and_greedy_tokens_match_metas_sharded_model(name, ranks, sharded, one_process, two_ranks):
    ours = (one_process if ranks == 1 else two_ranks)[name]
    meta = sharded[name][1]
    assert int(ours["float32.ranks"]) == ranks
    assert meta["f32"].std() > 0.05  # the comparison has teeth
    np.testing.assert_allclose(ours["float32.logits"], meta["f32"], atol=1e-4, rtol=0)
    assert list(ours["float32.greedy"]) == list(meta["greedy_f32"])


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("ranks", [1, 2])
def test_bf16_follows_metas_sharded_model_with_the_same_rounding(name, ranks, sharded, one_process, two_ranks):
    # tests/test_model.py's bound: far closer to Meta's rounded model than the rounding moves it
    ours = (one_process if ranks == 1 else two_ranks)[name]["bf16.logits"]
    meta = sharded[name][1]
    assert rms(ours - meta["rounded"]) <= 0.3 * rms(meta["rounded"] - meta["f32"])
    assert np.abs(ours - meta["rounded"]).max() <= 2e-3


def test_two_ranks_match_one_process_token_for_token(one_process, two_ranks):
    for name in MODELS:
        assert list(two_ranks[name]["bf16.greedy"]) == list(one_process[name]["bf16.greedy"])


def test_the_cli_runs_on_two_ranks_and_only_rank_0_prints(sharded):
    folder = sharded["gqa-mp2"][0]
    prompt = b"The quick brown fox"  # on stdin, which only rank 0 reads

    def run(temperature: str, ranks: int) -> bytes:
        args = ["-m", "llama_nb", "run", "-", "--model", str(folder), "-n", "6", "--seed", "5",
                "--temperature", temperature, "--quiet"]
        if ranks == 1:
            proc = subprocess.run([sys.executable, *args], input=prompt, capture_output=True,
                                  env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)
            assert proc.returncode == 0, proc.stderr.decode()
            return proc.stdout
        job = mpirun(ranks, *args, stdin=subprocess.PIPE)
        out, err = job.communicate(prompt, timeout=300)
        assert job.returncode == 0, err.decode()
        return out

    # Greedy, the text one process prints, printed once
    greedy = run("0", 2)
    assert greedy == run("0", 1) and greedy.strip()
    # Sampled, the seed reaches every rank: the same text again. Not compared with one process: the
    # all-reduce adds the ranks' partial sums in an order one process never uses, which can move a
    # draw at a near-tie (the chat test below saw it once)
    sampled = run("0.9", 2)
    assert sampled == run("0.9", 2) and sampled.strip()


def test_chat_on_two_ranks_reads_on_rank_0_and_answers_as_one_process(sharded):
    folder = sharded["gqa-mp2"][0]
    args = ["-m", "llama_nb", "chat", "--model", str(folder), "-n", "5", "--quiet"]
    lines = b"Hello\n/set temperature 0.8\n/set seed 3\nWho are you?\n"
    proc = mpirun(2, *args, stdin=subprocess.PIPE)
    out, err = proc.communicate(lines, timeout=300)
    assert proc.returncode == 0, err.decode()
    alone = subprocess.run([sys.executable, *args], input=lines, capture_output=True, timeout=300,
                           env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert alone.returncode == 0, alone.stderr.decode()
    assert out.count(b">>> ") == alone.stdout.count(b">>> ") == 5
    # The greedy answer and both settings lines, as one process prints them. The sampled answer need
    # not be: the all-reduce adds the two ranks' partial sums, an order one process never uses, and
    # a draw at temperature 0.8 lands elsewhere at a near-tie (seen once in CI, 2026-12-04, after
    # an equal first token), so the sampled answer only has to be there on both.
    *shared, sampled, tail = out.split(b">>> ")
    *shared_alone, sampled_alone, tail_alone = alone.stdout.split(b">>> ")
    assert shared == shared_alone and tail == tail_alone
    assert b"seed=3" in shared[-1] and sampled.strip() and sampled_alone.strip()


def broken_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def one_error_line(n: int, folder: Path) -> str:
    proc = mpirun(n, "-m", "llama_nb", "run", "hi", "--model", str(folder), "-n", "2")
    out, err = proc.communicate(timeout=300)
    lines = [line for line in err.decode().splitlines() if not line.startswith("(set LLAMA_NB_DEBUG")]
    assert proc.returncode == 1 and out == b"" and len(lines) == 1, (proc.returncode, out, err)
    return lines[0]


def test_a_missing_shard_shards_that_disagree_and_the_wrong_rank_count_say_one_line(sharded, tmp_path):
    four = sharded["odd-ffn-mp4"][0]
    missing = broken_copy(four, tmp_path / "missing")
    (missing / "consolidated.02.pth").unlink()
    assert "missing consolidated.02.pth" in one_error_line(2, missing)

    other = broken_copy(sharded["gqa-mp2"][0], tmp_path / "three")  # 3 shards, 2 ranks
    shutil.copyfile(other / "consolidated.01.pth", other / "consolidated.02.pth")
    line = one_error_line(2, other)
    assert "3 shards cannot be run on 2 ranks" in line or "not divisible by 3" in line

    wrong = broken_copy(sharded["gqa-mp2"][0], tmp_path / "wrong")
    shutil.copyfile(four / "consolidated.01.pth", wrong / "consolidated.01.pth")  # another model's shard
    assert "consolidated.01.pth" in one_error_line(2, wrong)

    with pytest.raises(llama_nb.errors.CheckpointError, match="missing consolidated.02.pth"):
        llama_nb.load_model(missing)


def test_a_rank_killed_mid_generation_ends_every_rank(sharded):
    marker = uuid.uuid4().hex
    folder = sharded["gqa-mp2"][0]
    proc = mpirun(2, "-m", "llama_nb", "run", "The quick brown fox", "--model", str(folder), "-n", "3000",
                  "--ctx", "4096", "--quiet", env={"LLAMA_NB_TEST_MARK": marker})
    os.set_blocking(proc.stdout.fileno(), False)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not proc.stdout.read(1):  # generation has started
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    victims = [pid for pid in _pids_with(f"LLAMA_NB_TEST_MARK={marker}") if "PMI_RANK=1" in _environ(pid)]
    assert len(victims) == 1
    os.kill(victims[0], signal.SIGKILL)
    try:
        proc.wait(timeout=60)  # no hang
    finally:
        proc.end()
    assert proc.returncode != 0
    time.sleep(0.5)
    assert not _pids_with(f"LLAMA_NB_TEST_MARK={marker}")  # every rank exited


def _environ(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").replace("\0", "\n")
    except OSError:
        return ""


def _pids_with(entry: str) -> list[int]:
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return [pid for pid in pids if entry in _environ(pid).splitlines() and "python" in _cmdline(pid)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_an_error_only_one_rank_meets_ends_the_job(monkeypatch, capfd):
    """cli/_ranks.end: an error every rank shares (AgreedError) lets each exit; any other one,
    under MPI, is said by its rank and MPI_Abort ends every rank (a fake MPI records the call)."""
    from llama_nb.cli import _ranks
    from llama_nb.errors import LlamaNbError
    from llama_nb.model.parallel import AgreedError

    class World:
        aborted = None

        def Get_size(self):
            return 2

        def Get_rank(self):
            return 1

        def Abort(self, code):
            World.aborted = code

    class FakeMPI:
        COMM_WORLD = World()

        @staticmethod
        def Is_initialized():
            return True

    monkeypatch.setitem(sys.modules, "mpi4py.MPI", FakeMPI)
    read, write = os.pipe()
    monkeypatch.setattr(_ranks, "_real_stderr", write)  # rank 1's own stderr, kept by begin()
    _ranks.end(1, AgreedError("a shard is missing"))
    assert World.aborted is None
    _ranks.end(1, LlamaNbError("the logits at position 3 are not finite"))
    assert World.aborted == 1
    os.close(write)
    assert os.read(read, 1000) == b"error: rank 1: the logits at position 3 are not finite\n"
    os.close(read)
    _ranks.end(0, None)  # success: nothing to end

"""`mpirun -n 2 llama-nb serve` (the README's command) on a tiny model cut into 2 shards by Meta's
reference model (tests/meta_shards.py), driven by the official openai client, against one process
serving the same folder: the same error for a prompt whose pass fails on every rank (non-finite
logits), then the same greedy text for a chat completion, for the same conversation again (taken
from the slot's cache: the other rank's cache follows rank 0's), a streamed completion and two
concurrent requests. Between requests the other rank uses ~0% CPU. SIGTERM to mpirun ends the
stream in flight and then every rank, cleanly, and so does Ctrl-C (exit 130); a port in use and
a killed rank end every rank too. And model/follow.py's plan and failure rules, between fake groups.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest

from llama_nb.errors import LlamaNbError
from llama_nb.model import follow
from llama_nb.model.parallel import Single
from tests.meta_shards import make_sharded_model
from tests.test_mpi import MPIRUN, REPO, _environ, _pids_with
from tests.test_readme import README
from tests.test_serve import Server, streamed_text, wait_idle
from tests.tinymodel import tiny_params

needs_mpirun = pytest.mark.skipif(not MPIRUN.exists(), reason="the mpi extra (mpi4py, mpich) is not installed")
MARK = "LLAMA_NB_TEST_MARK"


def readme_command() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The README's `mpirun -n 2 llama-nb serve ...` line as (launcher, llama-nb arguments without --model)."""
    (line,) = [line.split("  #")[0] for line in README.read_text(encoding="utf-8").splitlines()
               if line.startswith("mpirun -n 2 llama-nb serve ")]
    argv = shlex.split(line)
    at = argv.index("llama-nb")
    command = argv[at + 1 :]
    del command[command.index("--model") : command.index("--model") + 2]
    return (str(MPIRUN), *argv[1:at]), tuple(command)


POISONED = 100000  # an ordinary token of rank 1's vocab slice whose embedding row is made NaN


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Meta's 2 shards of a tiny model, token POISONED's embedding row set to NaN in shard 1: a
    prompt holding it fails its pass with non-finite logits on both ranks (a shared failure)."""
    import torch

    out = tmp_path_factory.mktemp("mpi-serve") / "gqa-mp2"
    make_sharded_model(out, tiny_params(dim=64, n_layers=2, n_heads=4, n_kv_heads=2), 2, seed=11)
    shard = torch.load(out / "consolidated.01.pth", weights_only=True)
    rows = shard["tok_embeddings.weight"]
    rows[POISONED - (128256 - len(rows))] = float("nan")  # shard 1 holds the second half of the vocab
    torch.save(shard, out / "consolidated.01.pth")
    return out


def end(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.terminate()  # mpirun passes it on to its ranks
        try:
            server.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.proc.kill()


@pytest.fixture(scope="module")
def servers(folder):
    """(2 ranks, 1 process): the README's command on the sharded folder, both started at once."""
    launcher, command = readme_command()
    marker = uuid.uuid4().hex
    with ThreadPoolExecutor(2) as pool:
        two = pool.submit(Server, command=command, model=folder, launcher=launcher, env={MARK: marker})
        one = pool.submit(Server, command=command, model=folder)
        two, one = two.result(), one.result()
    two.marker = marker
    yield two, one
    end(two)
    end(one)


def ranks(marker: str) -> dict[int, int]:
    """rank -> pid of the ranks mpirun started with $LLAMA_NB_TEST_MARK=marker."""
    found = {}
    for pid in _pids_with(f"{MARK}={marker}"):
        for line in _environ(pid).splitlines():
            if line.startswith("PMI_RANK="):
                found[int(line.split("=")[1])] = pid
    return found


def requests(server: Server) -> dict:
    """What one client sees of a prompt whose pass fails, a chat completion (twice), a streamed
    completion and two requests at once."""
    client = server.client()

    def chat(content: str, n: int):
        return client.chat.completions.create(model="x", messages=[{"role": "user", "content": content}],
                                              max_tokens=n, temperature=0)

    def complete(prompt: str | list[int], n: int):
        return client.completions.create(model="x", prompt=prompt, max_tokens=n, temperature=0)

    with pytest.raises(openai.InternalServerError) as failed:  # the pass fails on every rank; the server goes on
        complete([128000, 791, POISONED, 4062], 4)
    first, again = chat("Who made the heaven and the earth?", 16), chat("Who made the heaven and the earth?", 16)
    assert first.usage.completion_tokens == 16 and first.choices[0].finish_reason == "length"
    # the same conversation again: all but its last token from the slot's cache
    assert again.usage.prompt_tokens_details.cached_tokens == first.usage.prompt_tokens - 1
    streamed, chunks = streamed_text(client.completions.create(model="x", prompt="The quick brown fox", max_tokens=16,
                                                               temperature=0, stream=True))
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.submit(chat, "Tell of David", 20), pool.submit(complete, "And it came to pass", 20)
        a, b = a.result(), b.result()
    return {"failed": failed.value.body["message"], "chat": first.choices[0].message.content,
            "again": again.choices[0].message.content, "streamed": streamed,
            "finish": chunks[-1].choices[0].finish_reason,
            "together": (a.choices[0].message.content, b.choices[0].text)}


@needs_mpirun
def test_two_ranks_serve_what_one_process_serves(servers):
    two, one = servers
    assert "2 ranks" in "".join(two.lines) and "ranks" not in "".join(one.lines)
    ours, alone = requests(two), requests(one)
    assert ours == alone
    assert "not finite" in ours["failed"] and "token embeddings" in ours["failed"]
    assert ours["chat"] == ours["again"] and ours["chat"] and ours["streamed"] and all(ours["together"])


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # utime, stime: fields 14, 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@needs_mpirun
def test_an_idle_server_uses_no_cpu_on_either_rank(servers):
    two, _ = servers
    wait_idle(two)
    pids = ranks(two.marker)
    assert sorted(pids) == [0, 1]
    time.sleep(0.5)  # the other rank's sleeps between tests have grown to their longest
    before, t0 = {r: cpu_seconds(pid) for r, pid in pids.items()}, time.monotonic()
    time.sleep(2)
    share = {r: (cpu_seconds(pid) - before[r]) / (time.monotonic() - t0) for r, pid in pids.items()}
    assert all(s < 0.05 for s in share.values()), share  # a blocking MPI receive would be ~1.0 on rank 1


@needs_mpirun
def test_sigterm_to_mpirun_ends_the_stream_then_every_rank_cleanly(servers):
    two, _ = servers
    body = {"model": "x", "prompt": "And it came to pass", "max_tokens": 3000, "stream": True, "temperature": 0}
    with httpx.Client(timeout=30) as http, http.stream("POST", two.base + "/v1/completions", json=body) as response:
        lines = response.iter_lines()
        next(lines)
        code = two.stop(signal.SIGTERM)
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]" and len(rest) < 1000  # cut short by the stop
    assert code == 0
    assert [line for line in two.lines if not line.startswith("serving ")] == []  # no traceback, no MPI message
    time.sleep(0.3)
    assert ranks(two.marker) == {}  # every rank exited


def start(folder, *args: str, marker: str) -> subprocess.Popen:
    return subprocess.Popen([str(MPIRUN), "-n", "2", sys.executable, "-m", "llama_nb", "serve", "--model", str(folder),
                             *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO), **{MARK: marker}))


@needs_mpirun
def test_a_port_in_use_is_one_line_from_rank_0_and_every_rank_exits(folder):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = start(folder, "--port", str(port), marker=uuid.uuid4().hex)
        out, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if not line.startswith("(set LLAMA_NB_DEBUG")]
    assert proc.returncode == 1 and out == "" and len(lines) == 1, (proc.returncode, err)
    assert f"cannot listen on 127.0.0.1:{port}" in lines[0]


@needs_mpirun
def test_ctrl_c_to_mpirun_exits_130_on_every_rank_and_nothing_else_is_said(folder):
    marker = uuid.uuid4().hex
    server = Server(command=("serve",), model=folder, launcher=(str(MPIRUN), "-n", "2"), env={MARK: marker})
    try:
        assert server.client().completions.create(model="x", prompt="Amen", max_tokens=3).usage.completion_tokens == 3
        assert server.stop(signal.SIGINT) == 130  # rank 0's code; not MPI_Abort's
    finally:
        end(server)
    assert [line for line in server.lines if not line.startswith("serving ")] == []
    time.sleep(0.3)
    assert ranks(marker) == {}


@needs_mpirun
def test_a_killed_rank_ends_the_server(folder):
    marker = uuid.uuid4().hex
    server = Server(command=("serve",), model=folder, launcher=(str(MPIRUN), "-n", "2"), env={MARK: marker})
    try:
        assert server.client().models.list().data
        os.kill(ranks(marker)[1], signal.SIGKILL)
        assert server.proc.wait(timeout=60) != 0  # no hang: mpirun ends rank 0
    finally:
        end(server)
    time.sleep(0.3)
    assert ranks(marker) == {}


# model/follow.py between fake groups: what rank 0 sends is what the others run


class Recorded(Single):
    """A group of 2 whose broadcasts go through `wire`: rank 0 appends copies, rank 1 takes them in order."""

    size = 2

    def __init__(self, rank: int, wire: list):
        self.rank, self.wire, self.aborted = rank, wire, None

    def broadcast(self, buffer) -> None:
        if self.rank == 0:
            self.wire.append(buffer.copy())
        else:
            buffer[:] = self.wire.pop(0)

    broadcast_idle = broadcast

    def abort(self, code: int) -> None:
        self.aborted = code


class FakeModel:
    """forward_batch records its (slot, tokens, start_pos) sequences and raises `fails[i]` on pass i."""

    slots, max_batch = 3, 8

    def __init__(self, group, fails=()):
        self.group, self.fails, self.passes = group, dict(fails), []

    def forward_batch(self, sequences):
        self.passes.append([(slot, [int(t) for t in tokens], start_pos) for slot, tokens, start_pos in sequences])
        if len(self.passes) - 1 in self.fails:
            raise self.fails[len(self.passes) - 1]
        return np.zeros((len(sequences), 4), np.float32)


PASSES = [[(2, [5, 6, 7], 40), (0, [9], 3)], [(1, [128000], 0)], [(0, [1, 2, 3, 4, 5, 6, 7], 0), (2, [8], 43)]]


def test_the_others_run_rank_0s_passes_go_on_after_a_shared_error_and_stop(capfd):
    wire: list = []
    shared = LlamaNbError("positions 4096..4096 do not fit the context")
    leader_model = FakeModel(Recorded(0, wire), {1: shared})
    with follow.leading(leader_model) as passes:
        assert isinstance(passes, follow.Leader) and passes.slots == 3  # the model's own attributes
        passes.forward_batch(PASSES[0])
        with pytest.raises(LlamaNbError, match="do not fit"):
            passes.forward_batch(PASSES[1])
        passes.forward_batch(PASSES[2])
        for too_big in ([(0, list(range(9)), 0)], [(slot, [1], 0) for slot in range(4)], []):
            with pytest.raises(LlamaNbError, match="does not fit the plan"):  # refused before anything is sent
                passes.forward_batch(too_big)
    assert leader_model.passes == PASSES
    with pytest.raises(LlamaNbError, match="stopped"):
        passes.forward_batch(PASSES[0])

    class Interrupted(FakeModel):  # mpirun's SIGINT and SIGTERM reach the other ranks mid-pass
        def forward_batch(self, sequences):
            os.kill(os.getpid(), signal.SIGINT if len(self.passes) else signal.SIGTERM)
            return super().forward_batch(sequences)

    other = Interrupted(Recorded(1, wire), {1: shared})
    handler = signal.getsignal(signal.SIGTERM)
    follow.follow(other)  # returns at rank 0's STOP
    assert other.passes == PASSES and wire == []
    assert signal.getsignal(signal.SIGTERM) is handler
    assert capfd.readouterr().err == ""


def test_a_pass_that_fails_on_one_rank_alone_ends_the_job(capfd):
    wire: list = []
    leader = follow.Leader(FakeModel(Recorded(0, wire), {0: MemoryError("no room for the\nscratch")}))
    leader.forward_batch(PASSES[0])  # the fake abort returns: MPI_Abort would not
    assert leader.group.aborted == 1
    assert capfd.readouterr().err == "error: rank 0: a pass failed: MemoryError: no room for the scratch\n"
    other = FakeModel(Recorded(1, wire), {0: ZeroDivisionError("division by zero")})
    with pytest.raises(LlamaNbError, match="^a pass failed: ZeroDivisionError: division by zero$"):
        follow.follow(other)  # cli/_ranks.end says it in one line and aborts the job


def test_the_plan_reads_back_as_written():
    plan = follow.Plan(FakeModel(None))
    assert plan.body.dtype == np.int64 and len(plan.body) == follow.SPAN * 3 + 8
    for sequences in PASSES:
        sent = plan.write(sequences)
        assert len(sent) == follow.SPAN * len(sequences) + sum(len(t) for _, t, _ in sequences)
        back = plan.read()
        assert [(slot, tokens.tolist(), pos) for slot, tokens, pos in back] == sequences
        assert all(isinstance(slot, int) and isinstance(pos, int) for slot, _, pos in back)

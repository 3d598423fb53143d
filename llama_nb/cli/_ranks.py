"""`mpirun -n N llama-nb ...`: only rank 0 prints, and a failure on one rank ends every rank.

    begin()            at start: on ranks other than 0, stdin reads /dev/null and stdout and
                       stderr go there (the generated text, notes and the summary come from rank
                       0 alone, which also reads the prompt or the chat lines and shares them:
                       model/parallel.py's `share`); a copy of the real stderr is kept for an
                       error only that rank has
    end(code, error)   at exit: an error every rank raised together (model/parallel.py's
                       AgreedError: a missing shard, shards that disagree with params.json or
                       with the rank count) was said once by rank 0, and every rank exits with
                       its code. Any other failure under MPI is said in one line by the rank it
                       happened on and ends the whole job with MPI_Abort: the other ranks may be
                       waiting for it in a collective, and would wait forever.

    stopped_together() the command ended on every rank in agreement (`serve`: rank 0 told the
                       others to stop): each exits with its own code, 130 after Ctrl-C too,
                       and end() does not abort the job

A rank that dies (killed, out of memory) is seen by the MPI launcher, which ends the others at
once (mpiexec's own message says which rank died). Outside MPI all are no-ops.
"""

from __future__ import annotations

import os
import sys

RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
_real_stderr: int | None = None
_stopped_together = False


def rank_from_environment() -> int:
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return 0


def begin() -> None:
    global _real_stderr
    from llama_nb.model.parallel import mpi_size_from_environment

    try:
        if mpi_size_from_environment() == 1 or rank_from_environment() == 0:
            return
    except Exception:  # a malformed $PMI_SIZE is reported by the command that needs it
        return
    _real_stderr = os.dup(2)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)  # a rank other than 0 may hold the terminal or the pipe too: never wait on it
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)


def stopped_together() -> None:
    global _stopped_together
    _stopped_together = True


def end(code: int, error: BaseException | None) -> None:
    from llama_nb.model.parallel import AgreedError

    mpi = sys.modules.get("mpi4py.MPI")
    if code == 0 or mpi is None or not mpi.Is_initialized() or mpi.COMM_WORLD.Get_size() == 1:
        return
    if isinstance(error, AgreedError) or (_stopped_together and error is None):
        return
    if _real_stderr is not None and error is not None:  # rank 0 said its own error already
        line = "error: rank %d: %s\n" % (mpi.COMM_WORLD.Get_rank(), " ".join(str(error).split()))
        os.write(_real_stderr, line.encode("utf-8", "replace"))
    sys.stdout.flush()
    mpi.COMM_WORLD.Abort(code)

"""`llama-nb serve`: the OpenAI-compatible HTTP server (llama_nb/serve), on uvicorn.

Binds 127.0.0.1 unless --host says otherwise (the socket is bound here first, so a port in use
is one line, and --port 0 takes a free port and says which). SIGINT and SIGTERM shut it down
cleanly: the engine ends every in-flight request (streams get their last chunk and [DONE]),
uvicorn closes the connections, and the command exits 130 after Ctrl-C (the project's code for
it), 0 after SIGTERM, with no traceback.

Under `mpirun -n N` (a model-parallel folder, model/parallel.py) rank 0 alone binds the socket
(a port in use: one line from rank 0, and every rank exits 1), serves, schedules and samples;
every other rank loads its part of the weights and runs rank 0's passes (model/follow.py),
using no CPU while no request is in flight. Ctrl-C or SIGTERM (mpirun sends them to every rank)
ends the server on rank 0 as above, then rank 0 tells the others to stop, and every rank exits.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading
from typing import Annotated, Optional

import typer

from llama_nb.cli._options import CtxOpt, ImplOpt, MmapOpt, ModelOpt, PrecisionOpt, ThreadsOpt
from llama_nb.errors import LlamaNbError

API_KEY_ENV = "LLAMA_NB_API_KEY"


def serve(
    model: ModelOpt = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port (0: a free one, printed).")] = 8080,
    parallel: Annotated[int, typer.Option("--parallel", "-np", min=1, max=64,
                                          help="Requests decoded together, each with its own KV cache of --ctx tokens.")] = 4,
    ctx: CtxOpt = 4096,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar=API_KEY_ENV, show_envvar=True,
                                                   help="Require 'Authorization: Bearer KEY' on /v1 requests.")] = None,
    prefill_chunk: Annotated[int, typer.Option("--prefill-chunk", min=1,
                                               help="Prompt tokens per step: how long a new prompt delays the others.")] = 64,
    model_id: Annotated[Optional[str], typer.Option("--model-id", help="The model's name in /v1/models and responses "
                                                    "[default: the folder's name].", show_default=False)] = None,
    impl: ImplOpt = None,
    threads: ThreadsOpt = None,
    precision: PrecisionOpt = "bf16",
    mmap: MmapOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No notes on stderr, not even the address.")] = False,
) -> None:
    """Serve the model over OpenAI's HTTP API: /v1/chat/completions, /v1/completions, /v1/models, /health.

    [dim]Examples:[/]

      llama-nb serve

      llama-nb serve --port 8000 --parallel 2 --ctx 8192 --api-key secret

    Each runs until Ctrl-C (or SIGTERM). Then: curl -s localhost:8080/v1/models

    Under mpirun -n N (a model-parallel folder), rank 0 serves and the other ranks run its passes.
    """
    from llama_nb.cli import _ranks
    from llama_nb.cli._pipes import say
    from llama_nb.cli.run import load_for_cli
    from llama_nb.model.follow import follow, leading
    from llama_nb.model.parallel import group_from_environment, together

    group = group_from_environment()
    listener = together(group, lambda: _listen(host, port) if group.rank == 0 else None)  # before the slow load
    llm = load_for_cli(model, impl=impl, ctx=ctx, threads=threads, precision=precision, mmap=mmap, quiet=quiet,
                       slots=parallel, group=group)
    if group.rank != 0:
        follow(llm.model)
        raise typer.Exit(0)
    with leading(llm.model) as passes:  # under mpirun: every rank runs each pass; at the end they stop
        bound = listener.getsockname()
        url_host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        name = model_id or llm.folder.name
        if not quiet:
            ranks = f", {group.size} ranks" if group.size > 1 else ""
            say(f"serving {llm.folder} as {name!r} at http://{url_host}:{bound[1]}/v1 ({parallel} parallel, "
                f"context {ctx} tokens each{ranks}); Ctrl-C stops", style="dim")
            if api_key is None and not _loopback(bound[0]):
                say(f"warning: listening on {bound[0]} without --api-key: anyone who can reach the port can use it",
                    style="yellow")
        code = _run(llm, passes, listener, name, api_key, prefill_chunk)
    _ranks.stopped_together()
    raise typer.Exit(code)


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or one line saying why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        listener = socket.socket(family, kind, proto)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(128)
    except OSError as exc:
        raise LlamaNbError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return listener


def _loopback(address: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _run(llm, passes, listener: socket.socket, model_id: str, api_key: str | None, prefill_chunk: int) -> int:
    """Run the engine thread (its passes on `passes`: llm.model, or a Leader) and uvicorn until
    SIGINT / SIGTERM; the exit code."""
    import uvicorn

    from llama_nb.model.follow import stop_signals_to
    from llama_nb.serve.app import create_app
    from llama_nb.serve.engine import Engine

    engine = Engine(llm, prefill_chunk, model=passes)
    received: list[int] = []

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            received.append(sig)
            engine.request_stop()  # in-flight requests end now, so uvicorn's wait for them is short
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self):
            # uvicorn's own re-raises the signal after shutdown (SIGTERM would then kill the
            # process by signal); the exit code says what happened instead
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            with stop_signals_to(self.handle_exit):
                yield

    config = uvicorn.Config(create_app(engine, model_id, api_key), log_level="warning", access_log=False,
                            lifespan="off", timeout_graceful_shutdown=10)
    engine.start()
    try:
        Server(config).run(sockets=[listener])
    finally:
        engine.stop()
        listener.close()
    sys.stdout.flush()
    return 130 if signal.SIGINT in received else 0

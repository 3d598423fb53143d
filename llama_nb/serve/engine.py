"""The engine thread: the one thread that runs the model, for every request of the server.

    engine = Engine(llm, prefill_chunk=64); engine.start()
    job = Job(spec, loop)                   # in the asyncio front end: job.events is its queue
    engine.submit(job)                      # thread-safe; the engine thread picks it up
    ...await job.events.get()               # ("text", str) deltas, then ("done", reason, usage)
    engine.cancel(job)                      # client gone: generation stops, the slot frees
    engine.stop()                           # shutdown: every job ends now (reason "stop")

The model (its Numba thread pool, KV cache and buffers) is used from this thread only. It loops:
take the commands that arrived (new jobs, cancellations), run one BatchGenerator step (one forward
pass over every active request), hand each event to its job's asyncio queue through the loop's
call_soon_threadsafe; when nothing is active it sleeps on the command queue.

Stop strings are matched here, on the text as it is generated: the text is held back while its
end could be the start of a stop string, cut at the first occurrence, and the request is
cancelled at once (the stop string is not sent; OpenAI's behaviour).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass, field

from llama_nb.errors import LlamaNbError
from llama_nb.model.batch import BatchEvent, BatchGenerator, Sequence
from llama_nb.serve.requests import JobSpec

FINISH_REASON = {"stop_token": "stop", "max_tokens": "length", "context": "length", "cancelled": "stop"}


class StopStrings:
    """Cut generated text at the first occurrence of any stop string, holding back what may begin one."""

    def __init__(self, stops: list[str]):
        self.stops, self.pending = stops, ""

    def push(self, text: str) -> tuple[str, bool]:
        """(text that is safe to send, whether a stop string was found)."""
        self.pending += text
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        keep = 0  # the longest end of pending that is the start of a stop string
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.pending)), keep, -1):
                if self.pending.endswith(stop[:n]):
                    keep = n
                    break
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


@dataclass
class Job:
    """One request between the front end (its asyncio loop and queue) and the engine thread."""

    spec: JobSpec
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    seq: Sequence | None = None
    stops: StopStrings | None = None
    finished: bool = False

    def emit(self, *item) -> None:  # from the engine thread
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)

    def usage(self) -> dict:
        stats = self.seq.stats if self.seq is not None else None
        prompt, completion = len(self.spec.prompt), stats.generated_tokens if stats else 0
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": stats.start_pos if stats else 0}}


class Engine:
    """Runs a BatchGenerator over the model in its own thread (see the module docstring).

    model  what runs the passes: llm.model (default), or under mpirun rank 0's model/follow.py
           Leader, which has the other ranks run each pass too
    """

    def __init__(self, llm, prefill_chunk: int, model=None):
        self.llm = llm
        self.model = model if model is not None else llm.model
        self.batch = BatchGenerator(self.model, llm.tokenizer, prefill_chunk)
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._jobs: dict[int, Job] = {}  # by sequence id
        self._thread = threading.Thread(target=self._run, name="llama-nb-engine", daemon=True)
        self.stopping = False

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        self._commands.put(("submit", job))

    def cancel(self, job: Job) -> None:
        self._commands.put(("cancel", job))

    def request_stop(self) -> None:
        """End every job (each gets its "done"), then the thread; returns at once (a signal handler calls it)."""
        if not self.stopping:
            self.stopping = True
            self._commands.put(("stop", None))

    def stop(self, timeout: float = 10.0) -> None:
        """request_stop, then wait for the thread."""
        self.request_stop()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def active(self) -> int:
        return len(self._jobs)

    def _run(self) -> None:
        stop = False
        while not (stop and not self.batch.busy):
            try:
                first = self._commands.get(block=not self.batch.busy)
            except queue.Empty:
                first = None
            commands = [first] if first is not None else []
            while True:
                try:
                    commands.append(self._commands.get_nowait())
                except queue.Empty:
                    break
            for verb, job in commands:
                if verb == "submit":
                    self._start(job) if not stop else job.emit("error", "the server is shutting down")
                elif verb == "cancel" and job.seq is not None and not job.finished:
                    self.batch.cancel(job.seq)
                elif verb == "stop":
                    stop = True
                    for running in self._jobs.values():
                        self.batch.cancel(running.seq)
            if self.batch.busy:
                self._step()

    def _start(self, job: Job) -> None:
        spec = job.spec
        try:
            job.seq = self.batch.submit(spec.prompt, spec.max_tokens, temperature=spec.temperature,
                                        top_p=spec.top_p, seed=spec.seed, stop_tokens=() if spec.ignore_eos else None)
        except LlamaNbError as exc:
            job.emit("error", str(exc))
            return
        job.stops = StopStrings(spec.stop)
        self._jobs[job.seq.id] = job

    def _step(self) -> None:
        try:
            events = self.batch.step()
        except Exception as exc:  # noqa: BLE001  a failed pass ends every request with the reason, not the server
            message = " ".join(str(exc).split()) or type(exc).__name__
            for job in self._jobs.values():
                job.finished = True
                job.emit("error", message)
            self._jobs.clear()
            self.batch = BatchGenerator(self.model, self.llm.tokenizer, self.batch.prefill_chunk)
            return
        for event in events:
            self._deliver(event)

    def _deliver(self, event: BatchEvent) -> None:
        job = self._jobs.get(event.seq)
        if job is None:
            return
        if event.token is None:  # the sequence ended
            del self._jobs[event.seq]
            if not job.finished:
                self._send(job, job.stops.push(event.text)[0] + job.stops.flush())
                job.finished = True
                job.emit("done", FINISH_REASON[event.finished], job.usage())
            return
        if job.finished:
            return
        text, hit = job.stops.push(event.text)
        self._send(job, text)
        if hit:  # the stop string ends it: nothing after it is sent; the slot frees next step
            job.finished = True
            job.emit("done", "stop", job.usage())
            self.batch.cancel(job.seq)

    @staticmethod
    def _send(job: Job, text: str) -> None:
        if text:
            job.emit("text", text)

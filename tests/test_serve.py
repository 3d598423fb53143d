"""`llama-nb serve` on the demo model, as a subprocess on 127.0.0.1, driven by the official `openai`
client (and httpx for what the client hides): chat and completions, streamed and not, usage,
four concurrent clients, a client that leaves mid-stream, bad requests, stop strings, the API
key, and a clean shutdown on SIGINT and SIGTERM."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from llama_nb.demo import demo_model_dir
from tests.test_readme import NOT_RUN, README, help_examples

ROOT = Path(__file__).resolve().parent.parent
CTX = 256
URL = re.compile(r"at (http://127\.0\.0\.1:\d+)/v1")
PROMPTS = ["Who made the heaven and the earth?", "And what of the sea?", "Blessed are the meek", "Tell of David"]


class Server:
    """A `llama-nb serve` subprocess on a free port (the last --port wins); .base is its http://127.0.0.1:PORT.

    model: the demo's by default; launcher: what starts the process (tests/test_mpi_serve.py: mpirun -n 2);
    env: variables added to the environment."""

    def __init__(self, *args: str, command: tuple[str, ...] = ("serve", "--ctx", str(CTX)), model: Path | None = None,
                 launcher: tuple[str, ...] = (), env: dict | None = None):
        self.proc = subprocess.Popen([*launcher, sys.executable, "-m", "llama_nb", *command, *args, "--model",
                                      str(model or demo_model_dir()), "--port", "0"], cwd=ROOT, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, **(env or {})))
        self.lines: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.lines.append(line)
            m = URL.search(line)
            if m:
                self.base = m.group(1)
                threading.Thread(target=self._drain, daemon=True).start()
                return
        self.proc.kill()
        raise AssertionError("the server did not start: " + "".join(self.lines))

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def client(self, key: str = "none") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base + "/v1", api_key=key, max_retries=0, timeout=60)

    def stop(self, sig: int) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        time.sleep(0.1)  # the drain thread reads the last lines
        return code


@pytest.fixture(scope="module")
def server():
    s = Server("--parallel", "4")
    yield s
    if s.proc.poll() is None:
        s.proc.kill()


def chat(client, content: str, **kw):
    return client.chat.completions.create(model="demo", messages=[{"role": "user", "content": content}],
                                          temperature=0, **kw)


def streamed_text(stream) -> tuple[str, list]:
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" if c.object == "chat.completion.chunk" else c.choices[0].text
                   for c in chunks if c.choices)
    return text, chunks


def test_models_and_health(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["demo"]
    assert httpx.get(server.base + "/health").json()["status"] == "ok"


def test_chat_streamed_and_not_agree_and_carry_usage(server):
    client = server.client()
    whole = chat(client, PROMPTS[0], max_tokens=12)
    assert whole.object == "chat.completion" and whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 12 and whole.usage.prompt_tokens > 5
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + 12
    text, chunks = streamed_text(chat(client, PROMPTS[0], max_tokens=12, stream=True,
                                      stream_options={"include_usage": True}))
    assert text == whole.choices[0].message.content and text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert all(c.usage is None for c in chunks[:-1])
    # the same conversation again: its prompt (all but the last token) comes from the slot's cache
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == whole.usage.prompt_tokens - 1


def test_completions_streamed_and_not(server):
    client = server.client()
    whole = client.completions.create(model="demo", prompt="In the beginning God created", max_tokens=10, temperature=0)
    assert whole.object == "text_completion" and whole.usage.completion_tokens == 10
    text, chunks = streamed_text(client.completions.create(model="demo", prompt="In the beginning God created",
                                                           max_tokens=10, temperature=0, stream=True))
    assert text == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stop_strings_cut_the_text_before_the_first_occurrence(server):
    client = server.client()
    free = client.completions.create(model="demo", prompt="And the LORD spake unto Moses", max_tokens=40, temperature=0)
    text = free.choices[0].text
    stop = " the"
    assert stop in text
    cut = client.completions.create(model="demo", prompt="And the LORD spake unto Moses", max_tokens=40,
                                    temperature=0, stop=[stop, "zzz"])
    assert cut.choices[0].text == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"
    streamed, _ = streamed_text(client.completions.create(model="demo", prompt="And the LORD spake unto Moses",
                                                          max_tokens=40, temperature=0, stop=stop, stream=True))
    assert streamed == cut.choices[0].text


def test_four_concurrent_clients_get_what_each_gets_alone(server):
    client = server.client()
    alone = [chat(client, p, max_tokens=24).choices[0].message.content for p in PROMPTS]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda p: chat(server.client(), p, max_tokens=24).choices[0].message.content, PROMPTS))
    assert together == alone


def wait_idle(server, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(server.base + "/health").json()["active"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(server.base + "/health").json()["active"] == 0, "a request still holds its slot"


def test_a_client_that_leaves_mid_stream_frees_its_slot(server):
    body = {"model": "demo", "messages": [{"role": "user", "content": PROMPTS[1]}], "max_tokens": CTX - 30,
            "stream": True, "temperature": 0}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", server.base + "/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()
            got = [next(lines) for _ in range(6)]
            assert any(line.startswith("data: ") for line in got)
            assert httpx.get(server.base + "/health").json()["active"] == 1
    wait_idle(server)
    assert chat(server.client(), PROMPTS[2], max_tokens=4).usage.completion_tokens == 4


BAD = [
    ({"temperature": -1}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": 1.5}, "max_completion_tokens"),
    ({"n": 2}, "n"),
    ({"seed": "x"}, "seed"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "amen " * CTX}]}, "messages"),  # longer than the context
    ({"max_tokens": CTX}, "messages"),  # the prompt and max_tokens beyond the context
]


@pytest.mark.parametrize("change,param", BAD, ids=[p for _, p in BAD])
def test_bad_requests_are_openai_errors_and_the_server_keeps_serving(server, change, param):
    body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}], **change}
    with pytest.raises(openai.BadRequestError) as caught:
        server.client().chat.completions.create(**body)
    error = caught.value.body
    assert caught.value.status_code == 400 and error["type"] == "invalid_request_error"
    assert error["param"] == param and error["message"]
    if param == "messages" and "content" in str(change):
        assert error["code"] == "context_length_exceeded"


def test_unknown_fields_are_tolerated_and_broken_bodies_refused(server):
    reply = server.client().chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "hi"}], max_tokens=2, temperature=0,
        extra_body={"frequency_penalty": 0.5, "some_future_field": {"x": 1}}, user="u1")
    assert reply.usage.completion_tokens == 2
    for body in (b"{not json", b"[1, 2]", b'{"prompt": {"a": 1}}'):
        r = httpx.post(server.base + "/v1/completions", content=body)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(server.base + "/v1/completions", content=b'{"prompt": "' + b"a" * (2 << 20) + b'"}')
    assert r.status_code == 413 and "larger than" in r.json()["error"]["message"]
    r = httpx.get(server.base + "/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()
    assert chat(server.client(), "hi", max_tokens=2).usage.completion_tokens == 2


def documented(prefix: str) -> list[str]:
    """The README's command lines that start with `prefix` (test_readme.py leaves them to this file)."""
    return [line.split("  #")[0].strip() for line in NOT_RUN if line.startswith(prefix)]


def test_the_documented_serve_commands_start_and_stop():
    commands = set(documented("llama-nb serve")) | {e for path, e in help_examples() if path == "llama-nb serve"}
    assert len(commands) >= 2
    for line in sorted(commands):
        argv = shlex.split(line)[1:]
        s = Server(command=tuple(argv))
        try:
            key = argv[argv.index("--api-key") + 1] if "--api-key" in argv else "none"
            assert s.client(key).models.list().data[0].id == "demo", line
            assert s.stop(signal.SIGINT) == 130, line
        finally:
            if s.proc.poll() is None:
                s.proc.kill()


def test_the_readme_curl_and_client_examples(server, capsys):
    import json

    host = server.base.removeprefix("http://")
    for line in documented("curl"):
        out = subprocess.run(["bash", "-c", line.replace("localhost:8080", host)], capture_output=True, text=True,
                             timeout=60).stdout
        if '"stream": true' in line:
            assert out.rstrip().endswith("data: [DONE]") and '"text_completion"' in out, out
        else:
            assert json.loads(out)["usage"]["completion_tokens"] == 16, out
    (block,) = re.findall(r"```py\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    exec(compile(block.replace("http://127.0.0.1:8080", server.base), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert re.search(r"\n\d+ prompt tokens, 16 generated\n$", printed), printed


def test_sigint_ends_in_flight_streams_and_exits_cleanly(server):
    body = {"model": "demo", "prompt": "And it came to pass", "max_tokens": CTX - 20, "stream": True, "temperature": 0}
    with httpx.Client(timeout=30) as http, http.stream("POST", server.base + "/v1/completions", json=body) as response:
        lines = response.iter_lines()
        next(lines)
        code = server.stop(signal.SIGINT)
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    assert code == 130
    assert "Traceback" not in "".join(server.lines)


def test_api_key_and_sigterm(tmp_path):
    s = Server("--parallel", "2", "--api-key", "sesame")
    try:
        with pytest.raises(openai.AuthenticationError):
            s.client("wrong").models.list()
        assert httpx.get(s.base + "/v1/models").status_code == 401
        assert s.client("sesame").completions.create(model="demo", prompt="Amen", max_tokens=3).usage.completion_tokens == 3
        body = {"model": "demo", "prompt": "And it came to pass", "max_tokens": CTX - 20, "stream": True}
        headers = {"Authorization": "Bearer sesame"}
        with httpx.Client(timeout=30) as http, http.stream("POST", s.base + "/v1/completions", json=body,
                                                           headers=headers) as response:
            lines = response.iter_lines()
            next(lines)
            code = s.stop(signal.SIGTERM)
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        assert code == 0
        assert "Traceback" not in "".join(s.lines)
    finally:
        if s.proc.poll() is None:
            s.proc.kill()


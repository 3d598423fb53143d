"""Tool calls through the OpenAI API (serve/requests.py dialog_of and tools, serve/tools.py, serve/app.py),
driven by the official `openai` client over the ASGI app in process (Starlette's TestClient as its
HTTP client): the prompt a request makes, and the answer a generated tool call becomes.

The demo model never writes a tool call of its own, so the answer side runs on an engine that
plays a scripted generation (FakeEngine: the text a Llama 3.1 model writes, then its stop token),
and the prompt side on the real engine and model (its usage counts the prompt's tokens)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import openai
import pytest
from starlette.testclient import TestClient

import llama_nb
from llama_nb.demo import demo_model_dir
from llama_nb.io.messages import Message, ToolCall
from llama_nb.io.tools import as_tools
from llama_nb.serve.app import create_app
from llama_nb.serve.engine import Engine
from llama_nb.serve.requests import ApiError, dialog_of, parse_chat
from llama_nb.serve.tools import HeldText

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "the city"}},
                   "required": ["city"]}}}
CONVERSATION = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'},
]


@pytest.fixture(scope="module")
def llm():
    model = llama_nb.load_model(demo_model_dir(), ctx=1024, slots=2)
    model.compile()
    return model


def test_openai_messages_map_to_meta_messages():
    dialog = dialog_of(CONVERSATION)
    assert dialog[2] == Message("assistant", "", None, (ToolCall("get_weather", {"city": "Paris"}, "call_1"),))
    assert dialog[3] == Message("tool", '{"temperature": 21}')
    builtin = dialog_of([{"role": "assistant", "content": "", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "brave_search", "arguments": '{"query": "x"}'}}]}])
    assert builtin[0].stop_reason == "end_of_message", "a built-in tool's call ended with <|eom_id|>"
    for bad in ([{"role": "assistant", "content": None, "tool_calls": [{"function": {"name": 3}}]}],
                [{"role": "assistant", "content": None, "tool_calls": "x"}]):
        with pytest.raises(ApiError) as error:
            dialog_of(bad)
        assert error.value.param.startswith("messages[0].tool_calls")


def test_a_request_with_tools_prompts_as_llama_nb_chat_does(llm):
    body = {"messages": CONVERSATION, "tools": [WEATHER]}
    spec = parse_chat(body, llm.chat_format, llm.ctx)
    want = llm.chat_format.encode_chat(dialog_of(CONVERSATION), tools=as_tools([WEATHER]))
    assert spec.tools and spec.prompt == want
    assert "get_weather" in llm.tokenizer.decode(spec.prompt) and "Environment: ipython" in llm.tokenizer.decode(spec.prompt)
    plain = parse_chat(dict(body, tool_choice="none"), llm.chat_format, llm.ctx)
    assert not plain.tools and "get_weather" not in llm.tokenizer.decode(plain.prompt[:plain.prompt.index(
        llm.tokenizer.special_tokens["<|eot_id|>"]) + 1])
    for change, param in (({"tool_choice": "required"}, "tool_choice"), ({"tools": [{"type": "function"}]}, "tools"),
                          ({"tools": "get_weather"}, "tools")):
        with pytest.raises(ApiError) as error:
            parse_chat(dict(body, **change), llm.chat_format, llm.ctx)
        assert error.value.status == 400 and error.value.param == param


@pytest.mark.parametrize("pieces, sent", [
    (["Hello", " there"], "Hello there"),
    ([" ", "\n", "It is", " warm"], " \nIt is warm"),
    (['{"name": "f", ', '"parameters": {}}'], ""),
    (["<", "function=f>", "{}</function>"], ""),
    (["<|python_tag|>", "brave_search.call(query=\"x\")"], ""),
    (["[", "f(a=1)]"], ""),
    (["<b>", "bold"], "<b>bold"),
])
def test_held_text_holds_only_what_may_be_a_call(pieces, sent):
    held = HeldText()
    assert "".join(held.push(p) for p in pieces) == sent
    assert held.maybe_call == (sent == "")
    assert held.rest() == ("".join(pieces) if sent == "" else "")


class FakeEngine:
    """Engine's interface to the app, playing `text` then `stop_token` for every job."""

    def __init__(self, llm, text: str, stop_token: int):
        self.llm, self.text, self.stop_token, self.stopping = llm, text, stop_token, False

    def submit(self, job):
        job.seq = SimpleNamespace(stats=SimpleNamespace(stop_token=self.stop_token, generated_tokens=7, start_pos=0))
        for i in range(0, len(self.text), 5):
            job.emit("text", self.text[i:i + 5])
        job.emit("done", "stop", job.usage())

    def cancel(self, job):
        pass


def client_of(engine) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key="none", max_retries=0,
                         http_client=TestClient(create_app(engine, "demo")))


@pytest.mark.parametrize("stream", [False, True])
def test_a_generated_tool_call_comes_back_as_openai_tool_calls(llm, stream):
    eot = llm.tokenizer.special_tokens["<|eot_id|>"]
    engine = FakeEngine(llm, '{"name": "get_weather", "parameters": {"city": "Paris"}}', eot)
    client = client_of(engine)
    messages = CONVERSATION[:2]
    if not stream:
        reply = client.chat.completions.create(model="demo", messages=messages, tools=[WEATHER])
        choice = reply.choices[0]
        calls, reason, content = choice.message.tool_calls, choice.finish_reason, choice.message.content
    else:
        chunks = list(client.chat.completions.create(model="demo", messages=messages, tools=[WEATHER], stream=True))
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        calls = [call for d in deltas for call in (d.tool_calls or [])]
        reason = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason][-1]
        content = "".join(d.content or "" for d in deltas) or None
    assert reason == "tool_calls" and content is None
    assert [(c.type, c.function.name, json.loads(c.function.arguments)) for c in calls] == \
        [("function", "get_weather", {"city": "Paris"})]
    assert calls[0].id


@pytest.mark.parametrize("stream", [False, True])
def test_text_that_is_not_a_call_is_text(llm, stream):
    eot = llm.tokenizer.special_tokens["<|eot_id|>"]
    client = client_of(FakeEngine(llm, "It is 21 degrees in Paris.", eot))
    kw = dict(model="demo", messages=CONVERSATION, tools=[WEATHER])
    if stream:
        chunks = list(client.chat.completions.create(stream=True, **kw))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1, "streamed as it came"
    else:
        text = client.chat.completions.create(**kw).choices[0].message.content
    assert text == "It is 21 degrees in Paris."


def test_the_real_engine_answers_a_conversation_with_a_tool_result(llm):
    engine = Engine(llm, prefill_chunk=64)
    engine.start()
    try:
        reply = client_of(engine).chat.completions.create(model="demo", messages=CONVERSATION, tools=[WEATHER],
                                                          max_tokens=4, temperature=0)
    finally:
        engine.stop()
    want = llm.chat_format.encode_chat(dialog_of(CONVERSATION), tools=as_tools([WEATHER]))
    assert reply.usage.prompt_tokens == len(want) and reply.usage.completion_tokens >= 1

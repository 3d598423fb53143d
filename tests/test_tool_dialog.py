"""A tool call round trip: the model calls a tool, its result goes back as an ipython message, the
dialog goes on. The ids are llama_models' ChatFormat's for the same dialog (Meta's datatypes); the
system prompt text is ours, checked against Meta's documents in tests/test_chat_tools.py."""

from __future__ import annotations

import datetime
import json

import pytest
from llama_models.datatypes import RawMessage, StopReason
from llama_models.datatypes import ToolCall as MetaToolCall
from llama_models.llama3.chat_format import ChatFormat as MetaChatFormat
from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer
from typer.testing import CliRunner

import llama_nb
from llama_nb.cli import app
from llama_nb.io.chat import ChatFormat, Message, ToolCall
from llama_nb.io.tokenizer import Tokenizer
from llama_nb.io.tools import Tool, ToolParam, custom_tools_prompt, system_prompt
from llama_nb.model.conversation import Conversation, read_conversation
from tests.tinymodel import llama3_tokenizer_path

DATE = datetime.date(2026, 12, 2)
SONGS = Tool("trending_songs", "Returns the trending songs on a Music site",
             {"n": ToolParam("int", "The number of songs to return")})


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer(llama3_tokenizer_path())


@pytest.fixture(scope="module")
def meta() -> MetaChatFormat:
    return MetaChatFormat(MetaTokenizer(llama3_tokenizer_path()))


def generate_as_a_model(conversation: Conversation, tokenizer: Tokenizer, new_ids: list[int], text: str,
                        special: str | None, stop: str) -> Message:
    """What generate() would hand back had the model written `text` (after `special`) and stopped on `stop`."""
    ids = ([tokenizer.special_tokens[special]] if special else []) + tokenizer.encode(text, bos=False, eos=False)
    cache_end = len(conversation.cached) + len(new_ids) + len(ids)  # ended on a stop token: every id was run
    return conversation.answered(tokenizer.decode(ids), ids, cache_end, tokenizer.special_tokens[stop])


@pytest.mark.parametrize("tools,call_text,special,call,meta_call", [
    (["brave_search"], 'brave_search.call(query="trending songs")', "<|python_tag|>",
     ToolCall("brave_search", {"query": "trending songs"}), MetaToolCall(call_id="c", tool_name="brave_search",
                                                                          arguments={"query": "trending songs"})),
    ([SONGS], '{"type": "function", "name": "trending_songs", "parameters": {"n": 3}}', "<|python_tag|>",
     ToolCall("trending_songs", {"n": 3}), MetaToolCall(call_id="c", tool_name="trending_songs", arguments={"n": 3})),
    (["code_interpreter"], "print(sum(range(10)))", "<|python_tag|>",
     ToolCall("code_interpreter", {"code": "print(sum(range(10)))"}),
     MetaToolCall(call_id="c", tool_name="code_interpreter", arguments={"code": "print(sum(range(10)))"})),
])
def test_tool_round_trip_equals_metas_dialog(tokenizer, meta, tools, call_text, special, call, meta_call):
    conversation = Conversation(ChatFormat(tokenizer, llama31=True), ctx=4096, system="You are a helpful assistant.",
                                tools=tools, date=DATE)
    new_ids, start = conversation.turn("What are the trending songs?")
    assert start == 0 and new_ids == conversation.encoded()
    answer = generate_as_a_model(conversation, tokenizer, new_ids, call_text, special, "<|eom_id|>")
    assert [(c.name, c.arguments) for c in answer.tool_calls] == [(call.name, call.arguments)]
    assert answer.stop_reason == "end_of_message" and answer.content == ""

    result = '{"results": ["song a", "song b"]}'
    new_ids, start = conversation.tool_result(result)
    prompt = conversation.cached + new_ids
    assert prompt == conversation.encoded() and start == len(conversation.cached)
    sys_messages = [RawMessage(role="system", content=system_prompt("You are a helpful assistant.", tools, DATE))]
    if any(isinstance(t, Tool) for t in tools):
        sys_messages.append(RawMessage(role="user", content=custom_tools_prompt(tools)))
    want = meta.encode_dialog_prompt(sys_messages + [
        RawMessage(role="user", content="What are the trending songs?"),
        RawMessage(role="assistant", content="", stop_reason=StopReason.end_of_message, tool_calls=[meta_call]),
        RawMessage(role="tool", content=result)]).tokens
    assert prompt == want

    # The dialog goes on; a final answer ends the turn.
    final = generate_as_a_model(conversation, tokenizer, new_ids, "Song a and song b.", None, "<|eot_id|>")
    assert final == Message("assistant", "Song a and song b.", "end_of_turn")
    assert [m.role for m in conversation.messages] == ["user", "assistant", "ipython", "assistant"]


def test_saved_tool_dialog_reads_back(tmp_path, tokenizer):
    conversation = Conversation(ChatFormat(tokenizer), ctx=4096, tools=["brave_search"], date=DATE)
    new_ids, _ = conversation.turn("Search")
    generate_as_a_model(conversation, tokenizer, new_ids, 'brave_search.call(query="x")', "<|python_tag|>", "<|eom_id|>")
    conversation.tool_result("nothing found")
    conversation.save(tmp_path / "c.json")
    _, messages, _ = read_conversation(tmp_path / "c.json")
    assert [(m.role, m.stop_reason, [(c.name, c.arguments) for c in m.tool_calls]) for m in messages] == [
        ("user", None, []), ("assistant", "end_of_message", [("brave_search", {"query": "x"})]), ("ipython", None, [])]


def test_no_llama31_prompt_for_a_plain_chat_on_a_3_0_model(tokenizer):
    conversation = Conversation(ChatFormat(tokenizer), ctx=4096, system="Be brief")
    assert conversation.date is None
    assert conversation.encoded() == ChatFormat(tokenizer).encode_dialog_prompt([Message("system", "Be brief")])


def test_run_with_tools_on_the_demo_model():
    llm = llama_nb.load_model()
    result = CliRunner().invoke(app, ["run", "What is new?", "--tools", "brave_search,code_interpreter", "--date",
                                      "2026-12-02", "-n", "4", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    prompt = llm.tokenizer.decode(out["prompt_ids"])
    assert "Environment: ipython\nTools: brave_search\nCutting Knowledge Date: December 2023\n" in prompt
    assert "Today Date: 02 December 2026\n" in prompt
    assert out["prompt_ids"] == llm.encode_prompt("What is new?", tools=["brave_search", "code_interpreter"], date=DATE)
    assert out["message"]["role"] == "assistant" and out["message"]["stop_reason"] == "out_of_tokens"

"""The Llama 3.1 system prompt, tools and tool calls against Meta's own code and documents.

Oracles (nothing here restates Meta's expected text):
- llama_models' prompt_format.md files (llama3_1/prompt_format.md, llama3_2/text_prompt_format.md,
  installed with the package): every "Input Prompt Format" block is Meta's templates' prompt for a
  dialog, decoded from Meta's tokens. Our prompt for the same dialog, decoded, must be the block.
  (llama_models 0.3.0 no longer ships the prompt_templates that rendered them.)
- llama_models' ChatFormat.encode_dialog_prompt, with its datatypes (RawMessage, ToolCall): the same
  dialog, the texts of its system and user messages taken from the .md block, must give our ids.
- ChatFormat.decode_assistant_message_from_content: our parse of every "Model Response Format"
  block, and of our own strings, must equal Meta's decoded message.

One place where the .md and Meta's ChatFormat disagree: the .md was rendered by an older
ChatFormat that put <|python_tag|> before every tool call of an assistant message; the installed
one (llama_models 0.3.0) puts it only before code_interpreter's. We follow the installed code, and
check the .md with that one token taken out.
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

import llama_models
import pytest
from llama_models.datatypes import BuiltinTool, RawMessage, StopReason, ToolPromptFormat
from llama_models.datatypes import ToolCall as MetaToolCall
from llama_models.llama3.chat_format import ChatFormat as MetaChatFormat
from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer
from llama_models.llama3.tool_utils import ToolUtils, parse_python_list_for_function_calls

from llama_nb.errors import LlamaNbError
from llama_nb.io.chat import ChatFormat, Message, ToolCall, as_message, llama31_dialog
from llama_nb.io.tokenizer import Tokenizer
from llama_nb.io.tool_calls import parse_assistant
from llama_nb.io.tools import Tool, ToolParam, as_date, as_tools, format_date, parse_tool_names, read_tool_file
from tests.tinymodel import llama3_tokenizer_path

PACKAGE = Path(llama_models.__file__).parent
MD = {"3.1": PACKAGE / "llama3_1" / "prompt_format.md", "3.2": PACKAGE / "llama3_2" / "text_prompt_format.md"}
PYTHON_TAG = "<|python_tag|>"


@pytest.fixture(scope="module")
def chat() -> ChatFormat:
    return ChatFormat(Tokenizer(llama3_tokenizer_path()))


@pytest.fixture(scope="module")
def meta() -> MetaChatFormat:
    return MetaChatFormat(MetaTokenizer(llama3_tokenizer_path()))


def md_blocks(version: str, kind: str) -> list[str]:
    return re.findall(rf"##### {kind} Prompt Format\n```\n(.*?)\n```" if kind == "Input"
                      else r"##### Model Response Format\n```\n(.*?)\n```", MD[version].read_text(encoding="utf-8"), re.S)


def md_messages(block: str) -> list[tuple[str, str]]:
    """(role, content) of every closed message of a rendered prompt."""
    return re.findall(r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\n\n(.*?)<\|eo[tm]_id\|>", block, re.S)


def to_meta(m: Message) -> RawMessage:
    return RawMessage(role="tool" if m.role == "ipython" else m.role, content=m.content,
                      stop_reason=StopReason(m.stop_reason) if m.stop_reason else None,
                      tool_calls=[MetaToolCall(call_id=c.call_id or "id", tool_name=c.name, arguments=c.arguments)
                                  for c in m.tool_calls])


# Meta's example tools (the prompt_templates' data_examples, as the .md files show them).
TRENDING_SONGS = Tool("trending_songs", "Returns the trending songs on a Music site", {
    "n": ToolParam("int", "The number of songs to return", required=True),
    "genre": ToolParam("str", "The genre of the songs to return", required=False)})
BUILTIN = ["code_interpreter", "brave_search", "wolfram_alpha"]
SEPT_21, SEPT_24 = datetime.date(2024, 9, 21), datetime.date(2024, 9, 24)


def md_case(version: str, index: int):
    """(the .md block, Meta's messages with the .md's own texts, the .md's tool-call messages)."""
    block = md_blocks(version, "Input")[index]
    return block, md_messages(block)


# (version, block index, our dialog, what our API is given: tools, date, tool format)
CHAT_CASES = {
    "3.1 user and assistant": ("3.1", 1, [Message("system", "You are a helpful assistant"),
                                          Message("user", "Answer who are you in the form of jeopardy?")], None),
    "3.1 builtin tool calling": ("3.1", 2, [Message("system", "You are a helpful assistant."),
                                            Message("user", "Search the web for the latest price of 1oz gold?")],
                                 dict(tools=BUILTIN, date=SEPT_21)),
    "3.1 json custom tools": ("3.1", 5, [Message("system", "You are a helpful assistant."),
                                         Message("user", "Use tools to get latest trending songs")],
                              dict(tools=[TRENDING_SONGS], date=SEPT_21)),
    "3.1 function_tag custom tools": ("3.1", 6, [Message("system", "You are a helpful assistant."),
                                                 Message("user", "Use tools to get latest trending songs")],
                                      dict(tools=[TRENDING_SONGS], date=SEPT_21, tool_format="function_tag")),
    "3.2 user and assistant": ("3.2", 0, [Message("system", "You are a helpful assistant"),
                                          Message("user", "Who are you?")], None),
    "3.2 code interpreter": ("3.2", 3, [Message("user", "Write code to check if number is prime. Use it to verify "
                                                        "if number 7 is prime")],
                             dict(tools=["code_interpreter"], date=SEPT_24)),
}


@pytest.mark.parametrize("name", sorted(CHAT_CASES))
def test_system_prompts_equal_metas_documents_and_tokens(chat, meta, name):
    version, index, messages, kwargs = CHAT_CASES[name]
    ids = chat.encode_chat(messages, **kwargs) if kwargs else chat.encode_dialog_prompt(messages)
    block, md = md_case(version, index)
    assert chat.tokenizer.decode(ids) == block
    # Meta's ChatFormat on the .md's own texts gives the same ids.
    meta_ids = meta.encode_dialog_prompt([RawMessage(role=r, content=c) for r, c in md]).tokens
    assert ids == meta_ids


def test_dialogs_with_tool_calls_equal_metas(chat, meta):
    """The .md dialogs that hold a tool call and its result: the 3.1 built-in full interaction and
    the 3.2 end-to-end python_list call, their system/user/ipython texts from the .md."""
    cases = [("3.1", 4, ToolCall("wolfram_alpha", {"query": "100th decimal of pi"}), "end_of_message", "json"),
             ("3.2", 4, ToolCall("get_weather", {"city": "San Francisco", "metric": "celsius"}), "end_of_turn",
              "python_list")]
    for version, index, call, stop, tool_format in cases:
        block, md = md_case(version, index)
        (r0, system), (r1, user), (_, call_text), (r3, result) = md
        assert (r0, r1, r3) == ("system", "user", "ipython") and call_text.startswith(PYTHON_TAG)
        dialog = [Message("system", system), Message("user", user), Message("assistant", "", stop, (call,)),
                  Message("ipython", result)]
        ids = chat.encode_dialog_prompt(dialog, tool_format)
        assert ids == meta.encode_dialog_prompt([to_meta(m) for m in dialog], ToolPromptFormat(tool_format)).tokens
        assert chat.tokenizer.decode(ids) == block.replace(PYTHON_TAG, "", 1)  # the older ChatFormat's tag


def test_responses_parse_as_metas_decoder(meta):
    for version in MD:
        for text in md_blocks(version, "Response"):
            assert_parses_like_meta(meta, text)


STRINGS = [
    '<|python_tag|>brave_search.call(query="latest price of 1oz gold")<|eom_id|>',
    '<|python_tag|>wolfram_alpha.call(query="solve x^2 = 4")',
    'I will search: photogen.call(query="a cat") now',
    "<|python_tag|>import math\nprint(math.pi)<|eom_id|>",
    '{"type": "function", "name": "trending_songs", "parameters": {"n": "10", "genre": "all"}}',
    '<|python_tag|>{"name": "brave_search", "parameters": {"q": "weather"}}<|eom_id|>',
    '<function=getWeather>{"location":"New York","date":"2023-08-05"}</function>',
    "<function=trending_songs>{'n': 10}</function><|eot_id|>",
    "<function=broken>{not json}</function>",
    '[get_boiling_point(liquid_name="water", celcius=True)]',
    "[calculate_volume(radius=5.2, height=10)]",
    '{"type": "object", "value": 3}',
    '["not", "calls"]',
    "  <|start_header_id|>assistant<|end_header_id|>\n\nHello there.<|eot_id|>  ",
    "Plain text, no call.",
    "",
]


@pytest.mark.parametrize("text", STRINGS)
def test_our_strings_parse_as_metas_decoder(meta, text):
    assert_parses_like_meta(meta, text)


def assert_parses_like_meta(meta, text: str) -> None:
    want = meta.decode_assistant_message_from_content(text, StopReason.out_of_tokens)
    got = parse_assistant(text, "out_of_tokens")
    assert (got.role, got.content, got.stop_reason) == ("assistant", want.content, want.stop_reason.value), text
    want_calls = [(c.tool_name.value if isinstance(c.tool_name, BuiltinTool) else c.tool_name, c.arguments)
                  for c in want.tool_calls]
    # Meta keeps the first call of a Python list ("FIXME: Enable multiple tool calls"); we keep all.
    assert [(c.name, c.arguments) for c in got.tool_calls][:1] == want_calls, text
    assert all(c.call_id for c in got.tool_calls)


def test_several_python_list_calls_are_all_kept():
    text = md_blocks("3.2", "Response")[1]  # [get_weather(city='San Francisco', ...), get_weather(city='Seattle', ...)]
    calls = parse_assistant(text).tool_calls
    assert [c.arguments["city"] for c in calls] == ["San Francisco", "Seattle"]
    want = parse_python_list_for_function_calls(text.removesuffix("<|eot_id|>"))
    assert [(c.name, c.arguments) for c in calls] == want


def test_python_list_is_read_not_run():
    for text in ['[f(x=__import__("os").system("true"))]', "[f(x=open('/etc/passwd'))]", "[f(**kw)]", "[(lambda: 1)()]"]:
        assert parse_assistant(text).tool_calls == (), text


RANDOM_ARGUMENTS = [{"query": "Who won NBA in 2024?"}, {"code": "print('hi')\n"}, {"n": 10, "genre": "jazz"},
                    {"nested": {"a": 1}, "flag": True, "none": None, "list": [1, "x"]}, {}]


@pytest.mark.parametrize("tool_format", ["json", "function_tag", "python_list"])
def test_tool_calls_encode_as_metas(chat, meta, tool_format):
    calls = [ToolCall("brave_search", RANDOM_ARGUMENTS[0]), ToolCall("wolfram_alpha", RANDOM_ARGUMENTS[0]),
             ToolCall("photogen", {"query": "a dog"}), ToolCall("code_interpreter", RANDOM_ARGUMENTS[1]),
             ToolCall("trending_songs", RANDOM_ARGUMENTS[2]), ToolCall("fancy", RANDOM_ARGUMENTS[4])]
    if tool_format != "python_list":
        calls.append(ToolCall("deep", RANDOM_ARGUMENTS[3]))  # Meta's python_list writes no dict literal Python reads
    for call in calls:
        for stop in ("end_of_message", "end_of_turn", None):
            dialog = [Message("user", "Go"), Message("assistant", "Calling." if stop is None else "", stop, (call,)),
                      Message("ipython", '{"results": ["something"]}')]
            ours = chat.encode_dialog_prompt(dialog, tool_format)
            assert ours == meta.encode_dialog_prompt([to_meta(m) for m in dialog], ToolPromptFormat(tool_format)).tokens
            if stop is not None and call.name != "deep":
                # The call as written reads back as the call (a nested object does not: Meta's
                # <function=...> pattern ends at the first "}").
                start = len(chat.encode_dialog_prompt(dialog[:1]))  # it ends in the assistant header
                end = ours.index(chat.tokenizer.special_tokens["<|start_header_id|>"], start)
                written = chat.tokenizer.decode(ours[start:end])
                back = parse_assistant(written)
                assert [(c.name, c.arguments) for c in back.tool_calls] == [(call.name, call.arguments)], written
                assert back.stop_reason == (stop if stop == "end_of_message" else "end_of_turn")


def test_round_trip_of_a_parsed_call(chat):
    """A generated built-in call, parsed, re-encodes as Meta's ChatFormat writes it."""
    for text, fmt in [('<|python_tag|>brave_search.call(query="gold price")<|eom_id|>', "json"),
                      ('{"type": "function", "name": "trending_songs", "parameters": {"n": 10}}', "json"),
                      ('<function=trending_songs>{"n": 10}</function>', "function_tag")]:
        message = parse_assistant(text, "end_of_turn")
        again = parse_assistant(chat.tokenizer.decode(chat.encode_message(message, fmt)[4:]))
        assert [(c.name, c.arguments) for c in again.tool_calls] == [(c.name, c.arguments) for c in message.tool_calls]


def test_llama31_dialog_and_dates(chat):
    d = datetime.date(2026, 12, 2)
    assert format_date(d) == d.strftime("%d %B %Y") == "02 December 2026"  # the C locale's %B
    assert as_date("2026-12-02") == d and as_date(None) == datetime.date.today()
    messages = llama31_dialog([Message("system", "Be brief"), Message("user", "Hi")], date=d)
    assert [m.role for m in messages] == ["system", "user"]
    assert messages[0].content.endswith("Today Date: 02 December 2026\n\nBe brief\n")
    assert "Environment" not in messages[0].content
    # A model trained with the 3.1 prompt gets it with no tools and no date; a 3.0 model does not.
    plain, llama31 = ChatFormat(chat.tokenizer), ChatFormat(chat.tokenizer, llama31=True)
    dialog = [Message("user", "Hi")]
    assert plain.encode_chat(dialog) == plain.encode_dialog_prompt(dialog)
    assert "Cutting Knowledge Date" in chat.tokenizer.decode(llama31.encode_chat(dialog))
    assert "Today Date: 02 December 2026" in chat.tokenizer.decode(plain.encode_chat(dialog, date=d))


def test_tool_definitions_and_files(tmp_path):
    openai = {"type": "function", "function": {"name": "trending_songs", "description": TRENDING_SONGS.description,
              "parameters": {"type": "object", "properties": {
                  "n": {"type": "int", "description": "The number of songs to return"},
                  "genre": {"type": "str", "description": "The genre of the songs to return"}}, "required": ["n"]}}}
    meta_style = {"tool_name": "trending_songs", "description": TRENDING_SONGS.description,
                  "parameters": {"n": {"param_type": "int", "description": "The number of songs to return"},
                                 "genre": {"param_type": "str", "description": "The genre of the songs to return",
                                           "required": False}}}
    assert as_tools([openai]) == as_tools([meta_style]) == (TRENDING_SONGS,)
    path = tmp_path / "tools.json"
    path.write_text(json.dumps(["brave_search", openai]))
    assert read_tool_file(path) == ("brave_search", TRENDING_SONGS)
    assert parse_tool_names("brave_search, code_interpreter") == ("brave_search", "code_interpreter")
    for bad, word in [("[1]", "a tool is a name or an object"), ("{]", "not a JSON tool list"),
                      ('["brave_search", "brave_search"]', "given twice"), ('[{"name": "x", "parameters": 3}]', "parameters"),
                      ('["web_search"]', "unknown built-in tool")]:
        path.write_text(bad)
        with pytest.raises(LlamaNbError, match=word) as info:
            read_tool_file(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(LlamaNbError, match="no such file"):
        read_tool_file(tmp_path / "missing.json")
    for hostile in (Path("/dev/zero"), tmp_path):  # not a regular file: refused before reading
        with pytest.raises(LlamaNbError) as info:
            read_tool_file(hostile)
        assert str(hostile) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(LlamaNbError, match="not a date"):
        as_date("December 2")


def test_bad_tool_messages_are_one_line_errors():
    for bad, word in [({"role": "user", "content": "x", "tool_calls": [{"name": "f", "arguments": {}}]}, "only an assistant"),
                      ({"role": "assistant", "content": "", "tool_calls": [{"arguments": {}}]}, "needs a 'name'"),
                      ({"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": 3}]}, "arguments"),
                      ({"role": "assistant", "content": "", "tool_calls": "f"}, "must be a list")]:
        with pytest.raises(LlamaNbError, match=word):
            as_message(bad)
    with pytest.raises(LlamaNbError, match="one system message"):
        llama31_dialog([Message("user", "a"), Message("system", "b")])
    with pytest.raises(LlamaNbError, match="needs the argument 'query'"):
        ChatFormat(Tokenizer(llama3_tokenizer_path())).encode_message(
            Message("assistant", "", None, (ToolCall("brave_search", {"q": "x"}),)))


def test_metas_tool_utils_cases():
    """llama_models' own tests/api/test_tool_utils.py strings, through our parser."""
    text = '<function=getWeather>{"location":"New York","date":"2023-08-05"}'
    assert ToolUtils.maybe_extract_custom_tool_call(text) == ("getWeather", {"location": "New York", "date": "2023-08-05"})
    assert [(c.name, c.arguments) for c in parse_assistant(text).tool_calls] == [
        ("getWeather", {"location": "New York", "date": "2023-08-05"})]
    for text in ['[get_boiling_point(liquid_name="water", celcius=True), get_melting_point(substance="ice", kelvin=False)]',
                 '[process_data(name="sample", value=42, active=True, ratio=3.14)]', "[initialize()]",
                 '[get_boiling_point(liquid={"name":"water", "color":"translucent"}), convert_temperature(value=[100, 101], '
                 'from_unit="C", to_unit="F")]']:
        assert [(c.name, c.arguments) for c in parse_assistant(text).tool_calls] == parse_python_list_for_function_calls(text)
    for text in ["[]", '[get_boiling_point(liquid_name="water"), 42]', '[get_boiling_point("water", True)]',
                 '[[get_boiling_point(liquid_name="water")]]', 'get_boiling_point(liquid_name="water")']:
        assert parse_assistant(text).tool_calls == (), text

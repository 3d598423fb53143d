"""`llama-nb chat` on the demo model: a scripted session on a pseudo-terminal (three turns, /set,
/save and /load, Ctrl-C mid-answer, /bye), checked against Meta's ChatFormat; and the session's
parts (Conversation, Settings) on their own."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from llama_models.datatypes import RawMessage
from llama_models.llama3.chat_format import ChatFormat as MetaChatFormat
from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer

import llama_nb
from llama_nb.cli.chat import Settings
from llama_nb.demo import demo_model_dir
from llama_nb.errors import LlamaNbError
from llama_nb.model.conversation import Conversation, common_prefix, read_conversation
from llama_nb.model.generate import GenerationStats, generate
from tests.ptyrun import PtySession

DEMO = demo_model_dir()
TURN = re.compile(rb"(\d+) tokens at [\d.]+ tok/s, prompt (\d+) tokens(?: \(\+(\d+) from the cache\))? at "
                  rb"[\d.]+ tok/s; stopped by ([^\r\n\x1b]+)")


@pytest.fixture(scope="module")
def meta() -> MetaChatFormat:
    return MetaChatFormat(MetaTokenizer(DEMO / "tokenizer.model"))


def meta_ids(meta: MetaChatFormat, system: str | None, messages: list[dict]) -> list[int]:
    raw = ([RawMessage(role="system", content=system)] if system else []) + [
        RawMessage(role=m["role"], content=m["content"]) for m in messages]
    return meta.encode_dialog_prompt(raw).tokens


def turn_numbers(output: bytes, since: int):
    m = TURN.search(output, since)
    assert m, output[since:][-600:]
    generated, prefill, cached, stop = m.groups()
    return int(generated), int(prefill), int(cached or 0), stop.decode(), m.end()


def test_scripted_chat_session(tmp_path, meta):
    saved, saved_again = tmp_path / "chat.json", tmp_path / "after.json"
    s = PtySession(["chat", "--model", str(DEMO), "--system", "Answer as the scripture would", "-n", "12"],
                   columns=80, rows=24, env={"HOME": str(tmp_path), "LLAMA_NB_HISTORY": str(tmp_path / "history")})
    at = s.expect(rb">>> ")
    s.send(b"Who made the heaven and the earth?\r")
    s.expect(TURN.pattern, since=at)
    n1, prefill1, cached1, stop1, at = turn_numbers(bytes(s.output), at)
    at = s.expect(rb">>> ", since=at)
    assert (n1, cached1, stop1) == (12, 0, "reaching --max-tokens")

    s.send(b"/set temperature 0.8\r")
    at = s.expect(rb"temperature=0.8 .*seed=None", since=at)
    s.send(b"/set seed 7\r")
    at = s.expect(rb"seed=7", since=at)
    s.send(b"And what of the sea?\r")
    s.expect(TURN.pattern, since=at)
    n2, prefill2, cached2, stop2, at = turn_numbers(bytes(s.output), at)
    at = s.expect(rb">>> ", since=at)

    s.send(f"/save {saved}\r".encode())
    at = s.expect(rb"saved 4 messages", since=at)

    s.send(b"/set max_tokens 4000\r")
    at = s.expect(rb"max_tokens=4000", since=at)
    s.send(b"Tell me all of it\r")
    s.expect(rb"tokens  [\d.]+ tok/s", since=at)  # the status line: the answer is streaming
    s.send(b"\x03")  # Ctrl-C mid-answer
    s.expect(TURN.pattern, since=at)
    n3, _, _, stop3, at = turn_numbers(bytes(s.output), at)
    assert stop3 == "Ctrl-C" and 0 < n3 < 4000
    at = s.expect(rb">>> ", since=at)  # the session goes on

    s.send(f"/load {saved}\r".encode())
    at = s.expect(rb"loaded 4 messages", since=at)
    s.send(b"/set max_tokens 12\r")
    at = s.expect(rb"max_tokens=12", since=at)
    s.send(b"And the stars?\r")
    s.expect(TURN.pattern, since=at)
    n4, prefill4, cached4, _, at = turn_numbers(bytes(s.output), at)
    at = s.expect(rb">>> ", since=at)
    s.send(f"/save {saved_again}\r".encode())
    at = s.expect(rb"saved 6 messages", since=at)
    s.send(b"/stats\r")
    at = s.expect(rb"context: \d+ of 4096 tokens used, \d+ left", since=at)
    s.send(b"/bye\r")
    s.wait()
    assert s.code == 0, bytes(s.output[-400:])

    first = json.loads(saved.read_text())
    system, m = first["system"], first["messages"]
    assert [x["role"] for x in m] == ["user", "assistant", "user", "assistant"]
    assert first["settings"]["temperature"] == 0.8 and first["settings"]["seed"] == 7
    # turn 1 ran its whole prompt; turn 2 only what the cache lacked: its own message, the
    # headers around it and the one answer token that was sampled but not yet run
    assert prefill1 == len(meta_ids(meta, system, m[:1]))
    assert cached2 == len(meta_ids(meta, system, m[:1])) + n1 - 1
    assert cached2 + prefill2 == len(meta_ids(meta, system, m[:3]))
    assert prefill2 == len(meta_ids(meta, system, m[:3])) - len(meta_ids(meta, system, m[:1])) - n1 + 1
    # what the KV cache holds is Meta's encoding of the dialog, then the last answer's ids
    ids = first["context_ids"]
    assert ids[: len(meta_ids(meta, system, m[:3]))] == meta_ids(meta, system, m[:3])
    assert len(ids) == len(meta_ids(meta, system, m[:3])) + n2 - 1
    # after /load, the prefix the interrupted turn left in the cache is reused
    second = json.loads(saved_again.read_text())
    assert second["messages"][:4] == m and second["messages"][4]["content"] == "And the stars?"
    assert cached4 >= len(meta_ids(meta, system, m[:3]))  # at least the dialog up to the second answer
    assert cached4 + prefill4 == len(meta_ids(meta, system, second["messages"][:5]))
    full = second["context_ids"]
    assert full[: cached4 + prefill4] == meta_ids(meta, system, second["messages"][:5])


@pytest.fixture(scope="module")
def llm():
    return llama_nb.load_model(DEMO, ctx=256)


def run_turn(llm, conversation, text, n=8):
    new, start = conversation.turn(text)
    stats = GenerationStats()
    events = list(generate(llm.model, llm.tokenizer, new, n, stats=stats, start_pos=start))
    ids = [e.token for e in events]
    conversation.answered("".join(e.text for e in events) + stats.tail_text, ids, stats.cache_end)
    return new, start, ids


def test_kept_cache_gives_the_same_tokens_as_a_fresh_prefill(llm, meta):
    conversation = Conversation(llm.chat_format, ctx=llm.ctx, system="Be brief")
    run_turn(llm, conversation, "Hello")
    new, start, ids = run_turn(llm, conversation, "And then?")
    assert start > 0 and len(new) < len(conversation.encoded()) // 2
    # the same dialog prefilled from position 0 in one pass gives the same answer (greedy)
    dialog = [{"role": m.role, "content": m.content} for m in conversation.messages[:-1]]
    fresh = [e.token for e in generate(llm.model, llm.tokenizer, meta_ids(meta, "Be brief", dialog), 8)]
    assert fresh == ids


def test_context_full_is_said_and_the_conversation_is_unchanged(llm):
    conversation = Conversation(llm.chat_format, ctx=40)
    run_turn(llm, conversation, "Hello", n=4)
    before = list(conversation.messages)
    with pytest.raises(LlamaNbError, match="would take .* tokens but the context holds 40: /save FILE"):
        conversation.turn("word " * 50)
    assert conversation.messages == before


def test_settings_are_checked_and_name_the_setting():
    s = Settings()
    s.set("temperature", "0.5")
    s.set("top-k", "40")
    s.set("seed", "-3")
    s.set("top_p", "none")
    assert (s.temperature, s.top_k, s.seed, s.top_p) == (0.5, 40, -3, None)
    for name, value, match in [("temperature", "-1", "/set temperature: temperature must be"),
                               ("top_p", "2", "top-p must be in"), ("max_tokens", "0", "must be >= 1"),
                               ("seed", "x", "not an integer"), ("colour", "1", "unknown setting 'colour'")]:
        with pytest.raises(LlamaNbError, match=match):
            s.set(name, value)
    assert s.temperature == 0.5


def test_bad_saved_conversations_are_one_line_errors(tmp_path):
    cases = {"not json": "{", "no messages": "{}", "bad role": '{"messages": [{"role": "robot", "content": "x"}]}'}
    for name, body in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(body)
        with pytest.raises(LlamaNbError, match=re.escape(str(path))):
            read_conversation(path)
    with pytest.raises(LlamaNbError, match="cannot read it"):
        read_conversation(tmp_path / "missing.json")


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([], [1]) == 0 and common_prefix([1, 2], [1, 2, 3]) == 2


def chat_script(lines: list[str], *args) -> "object":
    from typer.testing import CliRunner

    from llama_nb.cli import app

    return CliRunner().invoke(app, ["chat", "--model", str(DEMO), "-n", "6", *args], input="\n".join(lines) + "\n",
                              catch_exceptions=False)


def test_commands_multiline_and_errors_in_a_piped_session(tmp_path):
    saved = tmp_path / "s.json"
    result = chat_script(['"""', "first line", "second line", '"""', "/system Be brief", "/system", "/help",
                          "/frobnicate", "/save", f"/save {tmp_path / 'no' / 'such' / 'dir.json'}", f"/save {saved}",
                          "/clear", "/stats", "/load", f"/load {tmp_path / 'missing.json'}", f"/load {saved}", "/stats"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "system prompt set" in out and "system prompt: Be brief" in out
    assert "/set [NAME VALUE]" in out  # /help
    assert "unknown command /frobnicate; /help lists them" in out
    assert "/save needs a file name" in out and "cannot write the conversation" in out
    assert "saved 2 messages" in out and "conversation cleared" in out and "loaded 2 messages" in out
    assert "/load needs a file name" in out and "missing.json: cannot read it" in out
    data = json.loads(saved.read_text())
    assert data["messages"][0] == {"role": "user", "content": "first line\nsecond line"}
    assert data["system"] == "Be brief"
    assert re.search(r"context: \d+ of 4096 tokens used", out)


def test_a_full_context_is_said_with_what_to_do():
    result = chat_script(["Hello", "And the earth?", "/bye"], "--ctx", "40")
    assert result.exit_code == 0, result.output
    assert "/save FILE to keep" in result.output and "/clear to start over" in result.output

"""OpenAI request bodies -> a checked `Job` description, or an `ApiError` in OpenAI's error shape.

    POST /v1/chat/completions   messages (-> Meta's chat format: `dialog_of`, the one mapping), and
                                tools (OpenAI's function definitions, -> Meta's Llama 3.1 tool prompt;
                                tool_choice "auto" or "none"); assistant messages' tool_calls and
                                "tool" results (-> Meta's ipython turn) continue a dialog
    POST /v1/completions        prompt: a string, a list of one string, or a list of token ids
    both: model, max_tokens (chat also max_completion_tokens), temperature [0, 2] (default 1, as
          OpenAI's), top_p (0, 1], seed (integer), stop (a string or up to 4), n (1 only),
          stream, stream_options.include_usage; and ignore_eos (llama.cpp's and vLLM's extension)
Fields this server does not know (frequency_penalty, user, logit_bias, ...) are tolerated and
ignored, as OpenAI-compatible servers do; a known field with a bad value is a 400 naming it. A
prompt that does not fit the context with the tokens asked for is refused (400,
"context_length_exceeded"), never truncated.

Errors are OpenAI's: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from llama_nb.errors import LlamaNbError
from llama_nb.io.chat import ChatFormat, Message
from llama_nb.io.messages import ToolCall
from llama_nb.io.tokenizer import Tokenizer
from llama_nb.io.tool_calls import END_OF_MESSAGE
from llama_nb.io.tools import BUILTIN_TOOLS, as_tools

MAX_STOPS = 4  # OpenAI's limit on `stop` strings
COMPLETIONS_MAX_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions (chat: the context)


class ApiError(Exception):
    """An HTTP error with OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def invalid(param: str, message: str) -> ApiError:
    return ApiError(400, f"Invalid value for '{param}': {message}", param=param, code="invalid_value")


@dataclass
class JobSpec:
    """A checked request: what to generate and how to answer."""

    kind: str  # "chat" or "text"
    prompt: list[int]
    max_tokens: int
    temperature: float
    top_p: float | None
    seed: int | None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    ignore_eos: bool = False  # llama.cpp's and vLLM's extension: run through end-of-text tokens (benchmarks)
    tools: bool = False  # the prompt offered tools: the answer is read for tool calls (serve/tools.py)


def _number(body: dict, name: str, low: float, high: float, default: float | None, low_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise invalid(name, f"expected a number, got {value!r}")
    if value > high or value < low or (low_open and value == low):
        raise invalid(name, f"must be in {'(' if low_open else '['}{low}, {high}], got {value}")
    return float(value)


def _integer(body: dict, name: str, low: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(name, f"expected an integer, got {value!r}")
    if low is not None and value < low:
        raise invalid(name, f"must be at least {low}, got {value}")
    return value


def _common(body: Any, kind: str, prompt: list[int], ctx: int, max_tokens_names: tuple[str, ...],
            default_max: int | None) -> JobSpec:
    n = _integer(body, "n", 1)
    if n is not None and n != 1:
        raise invalid("n", f"this server generates one choice per request (n=1), got {n}")
    max_tokens = None
    for name in max_tokens_names:
        max_tokens = _integer(body, name, 1) if max_tokens is None else max_tokens
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise invalid("stream", f"expected true or false, got {stream!r}")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise invalid("stream_options", f"expected an object, got {options!r}")
        if not stream:
            raise invalid("stream_options", "only allowed when 'stream' is true")
        include_usage = options.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise invalid("stream_options.include_usage", f"expected true or false, got {include_usage!r}")
    stop = body.get("stop")
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
        raise invalid("stop", f"expected a non-empty string or a list of at most {MAX_STOPS}, got {stop!r}")
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise invalid("ignore_eos", f"expected true or false, got {ignore_eos!r}")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise invalid("model", f"expected a string, got {model!r}")
    room = ctx - len(prompt)
    if room < 1 or (max_tokens is not None and max_tokens > room):
        asked = f"{len(prompt)} in the prompt" + (f" and {max_tokens} to generate" if max_tokens is not None else "")
        raise ApiError(400, f"This model's maximum context length is {ctx} tokens; the request needs more "
                       f"({asked}). Shorten the prompt or ask for fewer tokens; the server never truncates.",
                       param="messages" if kind == "chat" else "prompt", code="context_length_exceeded")
    if max_tokens is None:
        max_tokens = room if default_max is None else min(default_max, room)
    return JobSpec(kind, prompt, max_tokens,
                   temperature=_number(body, "temperature", 0.0, 2.0, 1.0),
                   top_p=_number(body, "top_p", 0.0, 1.0, None, low_open=True),
                   seed=_integer(body, "seed"), stop=stops, stream=bool(stream), include_usage=include_usage,
                   ignore_eos=ignore_eos)


def _content(message: dict, index: int) -> str:
    """A message's text: a string, or a list of {"type": "text", "text": ...} parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise invalid(f"messages[{index}].content", "expected text (a string or a list of text parts)")


# OpenAI's roles -> the chat format's ("developer" is OpenAI's newer name for "system"; "tool"
# results go in Meta's "ipython" turn: io/messages.py HEADER_NAMES).
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


def dialog_of(messages: Any) -> list[Message]:
    """OpenAI chat messages as the chat format's Messages: the one place the two are mapped. An
    assistant message's tool_calls ({"id", "type": "function", "function": {"name", "arguments":
    a JSON string}}) become its ToolCalls (content may then be null)."""
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "expected a non-empty list of messages")
    dialog = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid(f"messages[{i}]", f"expected an object, got {message!r}")
        role = message.get("role")
        if role not in _ROLES:
            raise invalid(f"messages[{i}].role", f"expected one of {', '.join(_ROLES)}, got {role!r}")
        calls = _tool_calls(message, i) if role == "assistant" else ()
        content = "" if calls and message.get("content") is None else _content(message, i)
        # A built-in tool's call ended with <|eom_id|> (the model waits for its result), a custom one's
        # with <|eot_id|> (Meta's prompt formats): so the prompt repeats the tokens the model wrote.
        waits = any(call.name in BUILTIN_TOOLS for call in calls)
        dialog.append(Message(_ROLES[role], content, END_OF_MESSAGE if waits else None, calls))
    return dialog


def _tool_calls(message: dict, index: int) -> tuple[ToolCall, ...]:
    calls = message.get("tool_calls")
    if calls is None:
        return ()
    where = f"messages[{index}].tool_calls"
    if not isinstance(calls, list):
        raise invalid(where, f"expected a list, got {calls!r}")
    out = []
    for k, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        name, arguments = (fn.get("name"), fn.get("arguments", "{}")) if isinstance(fn, dict) else (None, None)
        if not (isinstance(name, str) and name and isinstance(arguments, str)):
            raise invalid(f"{where}[{k}]", "expected {\"type\": \"function\", \"function\": {\"name\": ..., "
                                            "\"arguments\": a JSON string}}")
        try:
            parsed = json.loads(arguments)
        except ValueError:
            parsed = arguments  # as the model wrote it: kept as text
        out.append(ToolCall(name, parsed if isinstance(parsed, dict) else arguments, call.get("id")))
    return tuple(out)


def _tools(body: dict) -> tuple:
    """The request's tools as io/tools.py's (built-in names or Tools); () for none or tool_choice "none"."""
    choice = body.get("tool_choice")
    if choice not in (None, "auto", "none"):
        raise invalid("tool_choice", f"this server lets the model choose: 'auto' or 'none', got {choice!r}")
    tools = body.get("tools")
    if tools is None or choice == "none":
        return ()
    if not isinstance(tools, list):
        raise invalid("tools", f"expected a list of tools, got {tools!r}")
    try:
        return as_tools(tools, source="tools")
    except LlamaNbError as exc:
        raise invalid("tools", str(exc).removeprefix("tools: ")) from None


def _body(body: Any) -> dict:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def parse_chat(body: Any, chat_format: ChatFormat, ctx: int) -> JobSpec:
    """The prompt as `llama-nb chat` makes it: behind Meta's 3.1 system prompt for a model trained
    with it or when tools are offered (ChatFormat.encode_chat)."""
    body = _body(body)
    dialog, tools = dialog_of(body.get("messages")), _tools(body)
    try:
        prompt = chat_format.encode_chat(dialog, tools=tools)
    except LlamaNbError as exc:  # e.g. a second system message
        raise invalid("messages", str(exc)) from None
    spec = _common(body, "chat", prompt, ctx, ("max_completion_tokens", "max_tokens"), None)
    spec.tools = bool(tools)
    return spec


def parse_completion(body: Any, tokenizer: Tokenizer, ctx: int, vocab_size: int) -> JobSpec:
    body = _body(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt, bos=True, eos=False)
    elif (isinstance(prompt, list) and prompt
          and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab_size for t in prompt)):
        ids = list(prompt)
    else:
        raise invalid("prompt", f"expected a string or a list of token ids in [0, {vocab_size}) (one prompt per request)")
    return _common(body, "text", ids, ctx, ("max_tokens",), COMPLETIONS_MAX_TOKENS)

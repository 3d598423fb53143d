"""Chat messages as data: Message(role, content, stop_reason, tool_calls) and ToolCall(name,
arguments, call_id), the structures llama_nb/io/chat.py encodes and io/tool_calls.py parses into.
Dicts of the same keys are accepted everywhere (`as_message`) and written back by `to_json`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

from llama_nb.errors import LlamaNbError

ROLES = ("system", "user", "assistant", "ipython")
HEADER_NAMES = {"system": "system", "user": "user", "assistant": "assistant", "ipython": "ipython", "tool": "ipython"}


@dataclass(frozen=True)
class ToolCall:
    """A call the model made: the tool's name, its arguments (an object, or text as a model may
    write it), and an id that ties the tool's result to it (not part of the prompt)."""

    name: str
    arguments: Union[dict, str]
    call_id: str | None = None


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant" | "ipython"
    content: str
    stop_reason: str | None = None  # assistant only: "end_of_message" ends it with <|eom_id|>
    tool_calls: tuple[ToolCall, ...] = ()  # assistant only


MessageLike = Union[Message, Mapping[str, Any]]
_MESSAGE_KEYS = {"role", "content", "stop_reason", "tool_calls"}


def as_message(message: MessageLike) -> Message:
    """A Message from a Message or a {"role": ..., "content": ...[, "stop_reason": ...]
    [, "tool_calls": [{"name": ..., "arguments": {...}[, "call_id": ...]}]]} dict."""
    if isinstance(message, Message):
        m = message
    elif isinstance(message, Mapping):
        unknown = set(message) - _MESSAGE_KEYS
        if unknown or "role" not in message or "content" not in message:
            raise LlamaNbError(f"a message needs keys 'role' and 'content' (optional 'stop_reason', 'tool_calls'), "
                               f"got {sorted(message)}")
        calls = message.get("tool_calls") or ()
        if not isinstance(calls, (list, tuple)):
            raise LlamaNbError(f"a message's 'tool_calls' must be a list, got {type(calls).__name__}")
        m = Message(message["role"], message["content"], message.get("stop_reason"), tuple(as_tool_call(c) for c in calls))
    else:
        raise LlamaNbError(f"a message is a dict or Message, got {type(message).__name__}")
    if m.role not in HEADER_NAMES:
        raise LlamaNbError(f"unknown message role {m.role!r}; expected one of {', '.join(ROLES)}")
    if not isinstance(m.content, str):
        raise LlamaNbError(f"{m.role} message content must be text, got {type(m.content).__name__}")
    if m.tool_calls and m.role != "assistant":
        raise LlamaNbError(f"only an assistant message has tool calls, not a {m.role} message")
    for call in m.tool_calls:
        as_tool_call(call)
    return m


def as_tool_call(call: ToolCall | Mapping[str, Any]) -> ToolCall:
    """A ToolCall from a ToolCall or a {"name" (or "tool_name"), "arguments"[, "call_id"]} dict."""
    if isinstance(call, Mapping):
        call = ToolCall(call.get("name", call.get("tool_name")), call.get("arguments", {}), call.get("call_id"))
    if not isinstance(call, ToolCall) or not isinstance(call.name, str) or not call.name:
        raise LlamaNbError(f"a tool call needs a 'name' string and 'arguments', got {call!r}")
    if not isinstance(call.arguments, (dict, str)):
        raise LlamaNbError(f"tool call {call.name}: 'arguments' must be an object or text, "
                           f"got {type(call.arguments).__name__}")
    return call


def to_json(message: Message) -> dict:
    """The dict as_message reads back (stop_reason and tool_calls only when set)."""
    d: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.stop_reason:
        d["stop_reason"] = message.stop_reason
    if message.tool_calls:
        d["tool_calls"] = [{"name": c.name, "arguments": c.arguments, "call_id": c.call_id} for c in message.tool_calls]
    return d

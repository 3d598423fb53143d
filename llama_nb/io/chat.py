"""The Llama 3 chat format: a dialog as token ids, as Meta's `ChatFormat.encode_dialog_prompt`.

    <|begin_of_text|>                                       once, first
    <|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>    per message
    <|start_header_id|>assistant<|end_header_id|>\\n\\n       left open for the model

Role and content are encoded as plain text (special-token text typed by a user stays text). An
assistant message that stopped for a tool call (stop_reason "end_of_message") ends in <|eom_id|>
instead of <|eot_id|>; every other message, and an assistant message without a stop_reason (the
default), ends in <|eot_id|>. The tool role is written "ipython" in the header ("tool" is
accepted as Meta's name for it). Text content only: no images, no tool-call encoding.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Union

from llama_nb.errors import LlamaNbError
from llama_nb.io.tokenizer import Tokenizer

ROLES = ("system", "user", "assistant", "ipython")
_HEADER_NAME = {"system": "system", "user": "user", "assistant": "assistant", "ipython": "ipython", "tool": "ipython"}
END_OF_MESSAGE = "end_of_message"


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant" | "ipython"
    content: str
    stop_reason: str | None = None  # assistant only: "end_of_message" ends it with <|eom_id|>


MessageLike = Union[Message, Mapping[str, str]]


def as_message(message: MessageLike) -> Message:
    """A Message from a Message or a {"role": ..., "content": ...[, "stop_reason": ...]} dict."""
    if isinstance(message, Message):
        m = message
    elif isinstance(message, Mapping):
        unknown = set(message) - {"role", "content", "stop_reason"}
        if unknown or "role" not in message or "content" not in message:
            raise LlamaNbError(f"a message needs keys 'role' and 'content' (optional 'stop_reason'), got {sorted(message)}")
        m = Message(message["role"], message["content"], message.get("stop_reason"))
    else:
        raise LlamaNbError(f"a message is a dict or Message, got {type(message).__name__}")
    if m.role not in _HEADER_NAME:
        raise LlamaNbError(f"unknown message role {m.role!r}; expected one of {', '.join(ROLES)}")
    if not isinstance(m.content, str):
        raise LlamaNbError(f"{m.role} message content must be text, got {type(m.content).__name__}")
    return m


def dialog(user: str, system: str | None = None) -> list[Message]:
    """The usual one-turn dialog: an optional system prompt, then the user's message."""
    return ([Message("system", system)] if system is not None else []) + [Message("user", user)]


class ChatFormat:
    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._special = tokenizer.special_tokens

    def _text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, bos=False, eos=False)

    def encode_header(self, role: str) -> list[int]:
        """<|start_header_id|>{role}<|end_header_id|>\\n\\n"""
        name = _HEADER_NAME.get(role)
        if name is None:
            raise LlamaNbError(f"unknown message role {role!r}; expected one of {', '.join(ROLES)}")
        return [
            self._special["<|start_header_id|>"],
            *self._text(name),
            self._special["<|end_header_id|>"],
            *self._text("\n\n"),
        ]

    def encode_message(self, message: MessageLike) -> list[int]:
        """Header, content, then <|eot_id|> (or <|eom_id|> for an assistant's end_of_message)."""
        m = as_message(message)
        eom = m.role == "assistant" and m.stop_reason == END_OF_MESSAGE
        end = self._special["<|eom_id|>" if eom else "<|eot_id|>"]
        return [*self.encode_header(m.role), *self._text(m.content), end]

    def encode_dialog_prompt(self, messages: Iterable[MessageLike]) -> list[int]:
        """BOS, every message, then an open assistant header for the model to complete."""
        tokens = [self.tokenizer.bos_id]
        for message in messages:
            tokens += self.encode_message(message)
        tokens += self.encode_header("assistant")
        return tokens

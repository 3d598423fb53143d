"""The Llama 3 chat format: a dialog as token ids, as Meta's `ChatFormat.encode_dialog_prompt`.

    <|begin_of_text|>                                       once, first
    <|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>    per message
    <|start_header_id|>assistant<|end_header_id|>\\n\\n       left open for the model

Role and content are encoded as plain text (special-token text typed by a user stays text). An
assistant message that stopped for a tool call (stop_reason "end_of_message") ends in <|eom_id|>
instead of <|eot_id|>; every other message, and an assistant message without a stop_reason (the
default), ends in <|eot_id|>. The tool role is written "ipython" in the header ("tool" is
accepted as Meta's name for it): a tool's result goes back to the model as an ipython message.
An assistant message's tool calls follow its content, each encoded on its own in Meta's form
(llama_nb/io/tool_calls.py), after a <|python_tag|> token when the first is code_interpreter's.

`encode_chat` puts the Llama 3.1 system prompt in front (llama_nb/io/tools.py: "Cutting Knowledge
Date", "Today Date", the tools), as Meta's LLama31Interface does, for the models trained with it
(Llama 3.1 and later: `ChatFormat(tokenizer, llama31=True)`) or whenever tools or a date are given;
`encode_dialog_prompt` encodes the messages exactly as given. Text content only: no images.

For a server: build `Message`s (role, content, tool_calls of `ToolCall(name, arguments, call_id)`),
`chat_format.encode_chat(messages, tools=..., date=...)` gives the prompt ids, and
`parse_assistant(text, stop_reason)` (io/tool_calls.py) turns the generated text into a Message.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable

from llama_nb.errors import LlamaNbError
from llama_nb.io.messages import (HEADER_NAMES, ROLES, Message, MessageLike, ToolCall, as_message, as_tool_call,
                                  to_json)
from llama_nb.io.tokenizer import Tokenizer
from llama_nb.io.tool_calls import END_OF_MESSAGE, END_OF_TURN, OUT_OF_TOKENS, encode_tool_call, parse_assistant
from llama_nb.io.tools import TOOL_FORMATS, Tool, ToolLike, as_date, as_tools, custom_tools_prompt, system_prompt

__all__ = ["ChatFormat", "Message", "ToolCall", "ROLES", "as_message", "as_tool_call", "to_json", "dialog",
           "llama31_dialog", "parse_assistant"]


def dialog(user: str, system: str | None = None) -> list[Message]:
    """The usual one-turn dialog: an optional system prompt, then the user's message."""
    return ([Message("system", system)] if system is not None else []) + [Message("user", user)]


def llama31_dialog(messages: Iterable[MessageLike], *, tools: Iterable[ToolLike] = (),
                   date: _dt.date | str | None = None, tool_format: str = "json") -> list[Message]:
    """The messages behind Meta's 3.1 system prompt: a leading system message of `messages` becomes
    its instruction; custom tools add a user message listing them (io/tools.py)."""
    messages = [as_message(m) for m in messages]
    tools = as_tools(tools)
    instruction = None
    if messages and messages[0].role == "system":
        instruction = messages.pop(0).content
    if any(m.role == "system" for m in messages):
        raise LlamaNbError("a dialog has one system message, the first")
    out = [Message("system", system_prompt(instruction, tools, as_date(date)))]
    custom = [t for t in tools if isinstance(t, Tool)]
    if custom:
        out.append(Message("user", custom_tools_prompt(custom, tool_format)))
    return out + messages


class ChatFormat:
    """Dialogs as token ids for one tokenizer; `llama31`: the model was trained with the 3.1
    system prompt (encode_chat adds it even without tools or date)."""

    def __init__(self, tokenizer: Tokenizer, llama31: bool = False):
        self.tokenizer = tokenizer
        self.llama31 = llama31
        self._special = tokenizer.special_tokens

    def _text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, bos=False, eos=False)

    def encode_header(self, role: str) -> list[int]:
        """<|start_header_id|>{role}<|end_header_id|>\\n\\n"""
        name = HEADER_NAMES.get(role)
        if name is None:
            raise LlamaNbError(f"unknown message role {role!r}; expected one of {', '.join(ROLES)}")
        return [
            self._special["<|start_header_id|>"],
            *self._text(name),
            self._special["<|end_header_id|>"],
            *self._text("\n\n"),
        ]

    def encode_message(self, message: MessageLike, tool_format: str = "json") -> list[int]:
        """Header, content, each tool call, then <|eot_id|> (or <|eom_id|> for an assistant's
        end_of_message). Meta's encode_message: <|python_tag|> first when the first call is
        code_interpreter's, and every piece encoded on its own."""
        m = as_message(message)
        tokens = self.encode_header(m.role)
        if m.role == "assistant" and m.tool_calls and m.tool_calls[0].name == "code_interpreter":
            tokens.append(self._special["<|python_tag|>"])
        tokens += self._text(m.content)
        for call in m.tool_calls:
            tokens += self._text(encode_tool_call(call.name, call.arguments, tool_format))
        eom = m.role == "assistant" and m.stop_reason == END_OF_MESSAGE
        tokens.append(self._special["<|eom_id|>" if eom else "<|eot_id|>"])
        return tokens

    def encode_dialog_prompt(self, messages: Iterable[MessageLike], tool_format: str = "json") -> list[int]:
        """BOS, every message, then an open assistant header for the model to complete."""
        if tool_format not in TOOL_FORMATS:
            raise LlamaNbError(f"unknown tool format {tool_format!r}; expected one of {', '.join(TOOL_FORMATS)}")
        tokens = [self.tokenizer.bos_id]
        for message in messages:
            tokens += self.encode_message(message, tool_format)
        tokens += self.encode_header("assistant")
        return tokens

    def uses_llama31_prompt(self, tools: Iterable[ToolLike] = (), date: _dt.date | str | None = None) -> bool:
        return self.llama31 or bool(tuple(tools)) or date is not None

    def chat_messages(self, messages: Iterable[MessageLike], *, tools: Iterable[ToolLike] = (),
                      date: _dt.date | str | None = None, tool_format: str = "json") -> list[Message]:
        """The messages the model sees: behind the 3.1 system prompt (llama31_dialog) when this
        model was trained with it or tools or a date are given, else as they are."""
        tools = tuple(tools)
        if self.uses_llama31_prompt(tools, date):
            return llama31_dialog(messages, tools=tools, date=date, tool_format=tool_format)
        return [as_message(m) for m in messages]

    def encode_chat(self, messages: Iterable[MessageLike], *, tools: Iterable[ToolLike] = (),
                    date: _dt.date | str | None = None, tool_format: str = "json") -> list[int]:
        """The prompt ids of a chat: encode_dialog_prompt(chat_messages(...))."""
        return self.encode_dialog_prompt(self.chat_messages(messages, tools=tools, date=date, tool_format=tool_format),
                                         tool_format)

    def stop_reason(self, stop_token: int | None) -> str:
        """Meta's StopReason of a generation that ended on `stop_token` (`stats.stop_token`; None
        or another token: it ran out of tokens, or was stopped)."""
        t = self.tokenizer
        return {t.eom_id: END_OF_MESSAGE, t.eot_id: END_OF_TURN}.get(stop_token, OUT_OF_TOKENS)

    def parse_completion(self, token_ids: Iterable[int], stop_reason: str | None = None) -> Message:
        """A generated assistant message from its ids (Meta's decode_assistant_message)."""
        return parse_assistant(self.tokenizer.decode(list(token_ids)), stop_reason)

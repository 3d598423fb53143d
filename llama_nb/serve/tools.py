"""Tool calls over OpenAI's API: the model's call out of its generated text, in OpenAI's shapes.

A request with `tools` puts them in Meta's Llama 3.1 prompt (io/tools.py, through
ChatFormat.encode_chat); the answer is read back as Meta's decoder reads it (io/tool_calls.py
parse_assistant: a JSON function call, `<function=...>`, a Python list of calls, or a built-in
tool after <|python_tag|>). A message that holds calls is answered as OpenAI answers one:

    {"role": "assistant", "content": null,
     "tool_calls": [{"id": "call_...", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}}]}
    finish_reason "tool_calls"

Streaming: a Llama 3.x model writes a call as its whole message, from the first character, so
`HeldText` holds the text back only while it could still be the start of a call (empty, or a
prefix of one of CALL_STARTS, or starting with one); anything else is sent as it comes. A held
message is parsed when it ends, and sent as one tool_calls delta, or as text if it was none.
"""

from __future__ import annotations

import json

from llama_nb.io.messages import Message

# How a Llama 3.x tool call begins (io/tool_calls.py's forms): a JSON object, a <function=...> tag,
# a Python list of calls, or the python tag of a built-in tool.
CALL_STARTS = ("{", "[", "<function=", "<|python_tag|>")


class HeldText:
    """Decides, as text arrives, whether a generated message may be a tool call (then holds it)."""

    def __init__(self):
        self.held, self.decided, self.maybe_call = "", False, False

    def push(self, text: str) -> str:
        """The part of `text` that can be sent now ("" while the message may still be a call)."""
        if self.decided and not self.maybe_call:
            return text
        self.held += text
        if self.decided:
            return ""
        start = self.held.lstrip()
        if not start or any(c.startswith(start) for c in CALL_STARTS):
            return ""  # too little to tell
        self.decided = True
        self.maybe_call = start.startswith(CALL_STARTS)
        if self.maybe_call:
            return ""
        out, self.held = self.held, ""
        return out

    def rest(self) -> str:
        """What is held (the whole message when it may be a call), emptied."""
        out, self.held = self.held, ""
        return out


def openai_tool_calls(message: Message) -> list[dict]:
    """The message's calls as OpenAI's `tool_calls` (arguments as a JSON string, as OpenAI sends them)."""
    return [{"id": call.call_id or f"call_{i}", "type": "function",
             "function": {"name": call.name,
                          "arguments": call.arguments if isinstance(call.arguments, str)
                          else json.dumps(call.arguments, ensure_ascii=False)}}
            for i, call in enumerate(message.tool_calls)]

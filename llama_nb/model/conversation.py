"""A multi-turn chat that keeps its KV cache: each turn prefills only the tokens the cache lacks.

The model always sees exactly Meta's `ChatFormat.encode_dialog_prompt(dialog)`: before a turn the
whole dialog is encoded, compared with the token ids already in the KV cache (`cached`), and
only what follows their longest common prefix is run:

    cached   <bos> sys... <eot> user1... <eot> <hdr assistant> answer1 ids   (positions 0..n-1)
    dialog   <bos> sys... <eot> user1... <eot> <hdr assistant> answer1 <eot> user2... <hdr assistant>
                                                                       ^ start_pos: prefill from here

So the second turn prefills its own message (plus the answer's last token, which was sampled but
not yet run); `/system`, `/clear` or `/load` simply change the dialog, and whatever prefix still
matches is reused. An answer whose text encodes to other ids than the ones generated (BPE is not
always canonical) is re-run from the first differing token: the cache never holds anything but
Meta's encoding of the dialog.

    conversation = Conversation(llm.chat_format, ctx=llm.ctx, system="Be brief")
    new_ids, start_pos = conversation.turn("Hi")          # the user's message
    ... generate(model, tokenizer, new_ids, n, start_pos=start_pos, stats=stats) ...
    conversation.answered(text, generated_ids, stats.cache_end, stats.stop_token)

With `tools` (and `date`) the dialog opens with Meta's Llama 3.1 system prompt (io/tools.py; also
without them for a model trained with it, `chat_format.llama31`). An answer is kept as Meta's
decoder reads it (io/tool_calls.py): a tool call becomes a ToolCall, the message ends in <|eom_id|>
when the model stopped there, and `conversation.tool_result(text)` sends the tool's output back as
an ipython message (then generate as after a turn). The date is fixed when the conversation
starts, so the cached prefix stays valid past midnight.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path

from llama_nb.errors import ContextLimitError, LlamaNbError
from llama_nb.io.chat import ChatFormat, Message, as_message, to_json
from llama_nb.io.tool_calls import parse_assistant
from llama_nb.io.tools import Tool, ToolLike, as_date, as_tools

FORMAT = "llama-nb chat 1"  # the "format" key of a saved conversation


@dataclass
class Conversation:
    """Messages, system prompt and the ids in the KV cache (positions 0..len(cached)-1)."""

    chat_format: ChatFormat
    ctx: int
    system: str | None = None
    messages: list[Message] = field(default_factory=list)  # user, assistant and ipython turns, no system
    cached: list[int] = field(default_factory=list)
    tools: tuple[str | Tool, ...] | list[ToolLike] = ()  # built-in names and custom Tools (io/tools.py)
    date: _dt.date | str | None = None  # the system prompt's "Today Date"; None: today, fixed at the start
    tool_format: str = "json"  # how custom tools are offered and their calls written (io/tools.py)

    def __post_init__(self) -> None:
        self.tools = as_tools(self.tools)
        if self.chat_format.uses_llama31_prompt(self.tools, self.date):
            self.date = as_date(self.date)

    def dialog(self) -> list[Message]:
        """The messages as given (the system prompt first), before the 3.1 system prompt."""
        return ([Message("system", self.system)] if self.system else []) + self.messages

    def encoded(self, extra: list[Message] | None = None) -> list[int]:
        """Meta's encoding of the dialog (and `extra` messages), ending in an open assistant header."""
        return self.chat_format.encode_chat(self.dialog() + (extra or []), tools=self.tools, date=self.date,
                                            tool_format=self.tool_format)

    def tokens_used(self) -> int:
        """Tokens the dialog takes in the context now (with the open header of the next answer)."""
        return len(self.encoded())

    def turn(self, user: str) -> tuple[list[int], int]:
        """Add the user's message; return (ids to run, their first position). Raises
        ContextLimitError, leaving the conversation unchanged, when the dialog would not leave
        room for one answer token."""
        return self.send(Message("user", user))

    def tool_result(self, content: str) -> tuple[list[int], int]:
        """Send a tool's output back (an ipython message) for the model to go on; as turn()."""
        return self.send(Message("ipython", content))

    def send(self, message: Message) -> tuple[list[int], int]:
        """Add a user or ipython message; return (ids to run, their first position), as turn()."""
        message = as_message(message)
        if message.role not in ("user", "ipython"):
            raise LlamaNbError(f"a conversation sends user or ipython messages, not {message.role}")
        full = self.encoded([message])
        if len(full) >= self.ctx:
            raise ContextLimitError(
                f"the conversation would take {len(full)} tokens but the context holds {self.ctx}: "
                f"/save FILE to keep it, then /clear to start over (or restart with a larger --ctx)"
            )
        self.messages.append(message)
        start = common_prefix(self.cached, full)
        start = min(start, len(full) - 1)  # at least one token runs: its logits start the answer
        self.cached = full[:start]  # what the KV cache still holds of the dialog
        self._pending = full
        return full[start:], start

    def answered(self, text: str, generated_ids: list[int], cache_end: int, stop_token: int | None = None) -> Message:
        """Record the answer (also a partial one, after Ctrl-C) and what the cache now holds:
        the prompt and the generated ids that went through a forward pass (`stats.cache_end`).
        `stop_token` (`stats.stop_token`): <|eom_id|> means the model waits for a tool's result.
        Returns the answer as kept: with tools offered, its content and tool calls as Meta's
        decoder reads them; without, the text as it came."""
        self.cached = (self._pending + list(generated_ids))[:cache_end]
        stop = self.chat_format.stop_reason(stop_token)
        message = parse_assistant(text, stop) if self.tools else Message("assistant", text, stop)
        self.messages.append(message)
        return message

    def undo_turn(self) -> None:
        """Drop the last user (or ipython) message when its answer never started (an error before decoding)."""
        if self.messages and self.messages[-1].role in ("user", "ipython"):
            self.messages.pop()

    def clear(self) -> None:
        """Forget the messages (the system prompt stays; its cached prefix is reused)."""
        self.messages = []

    # -- saving and loading ---------------------------------------------------------------

    def to_json(self, settings: dict | None = None) -> dict:
        return {
            "format": FORMAT,
            "system": self.system,
            "messages": [to_json(m) for m in self.messages],
            "settings": settings or {},
            "context_ids": list(self.cached),  # what the model's KV cache holds, for checking
        }

    def save(self, path: Path, settings: dict | None = None) -> None:
        try:
            path.write_text(json.dumps(self.to_json(settings), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        except OSError as exc:
            raise LlamaNbError(f"{path}: cannot write the conversation ({exc.strerror or exc})") from None

    def load(self, path: Path) -> dict:
        """Replace system prompt and messages with the file's; return its settings."""
        system, messages, settings = read_conversation(path)
        self.system, self.messages = system, messages
        return settings


def read_conversation(path: Path) -> tuple[str | None, list[Message], dict]:
    """(system, messages, settings) of a saved conversation, checked: one-line errors naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LlamaNbError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LlamaNbError(f"{path}: not a saved conversation (not JSON: {exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise LlamaNbError(f"{path}: not a saved conversation (expected an object with a 'messages' list)")
    system = data.get("system")
    if system is not None and not isinstance(system, str):
        raise LlamaNbError(f"{path}: 'system' must be text or null")
    messages = []
    for i, raw in enumerate(data["messages"]):
        try:
            m = as_message(raw)
        except LlamaNbError as exc:
            raise LlamaNbError(f"{path}: message {i}: {exc}") from None
        if m.role == "system":
            system = m.content  # a system message anywhere counts as the system prompt
            continue
        messages.append(m)
    settings = data.get("settings") or {}
    if not isinstance(settings, dict):
        raise LlamaNbError(f"{path}: 'settings' must be an object")
    return system, messages, settings


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading ids a and b share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n

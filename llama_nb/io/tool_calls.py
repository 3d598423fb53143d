"""Tool calls in an assistant message: written as Meta's ToolUtils.encode_tool_call writes them,
read back as Meta's ChatFormat.decode_assistant_message reads a generated message.

The forms a Llama 3.x model writes (llama_models' prompt_format.md files):

    <|python_tag|>brave_search.call(query="...")<|eom_id|>      built-in: brave_search, wolfram_alpha,
                                                                 photogen
    <|python_tag|>import math\\nprint(math.pi)<|eom_id|>          code_interpreter: the code itself
    {"type": "function", "name": "f", "parameters": {...}}       custom tool, tool_format "json"
    <function=f>{"a": 1}</function>                              custom tool, tool_format "function_tag"
    [f(a=1), g(b="x")]                                           custom tools, "python_list" (Llama 3.2)

`parse_assistant` follows Meta's decoder step for step (strip spaces and a leading assistant header;
<|python_tag|> noted and dropped; a trailing <|eot_id|> / <|eom_id|> sets the stop reason; then
the first form that matches, in Meta's order: <function=...>, a JSON object with "name", a Python
list of calls, name.call(query="..."), else, after <|python_tag|>, code for code_interpreter). A
message that holds a call has its content emptied, as Meta's does. Where Meta's decoder raises
(a JSON object with "type": "function" and no "name" or "parameters") or prints and gives up,
this one returns the message without a call. One difference on purpose: a Python list of several
calls gives all of them (Meta's keeps the first: "FIXME: Enable multiple tool calls").
Nothing here evaluates model output: the Python list is read with ast.parse and literal_eval.
"""

from __future__ import annotations

import ast
import json
import re
import uuid
from typing import Any

from llama_nb.errors import LlamaNbError
from llama_nb.io.messages import Message, ToolCall
from llama_nb.io.tools import BUILTIN_TOOLS, TOOL_FORMATS

PYTHON_TAG, EOT, EOM = "<|python_tag|>", "<|eot_id|>", "<|eom_id|>"
ASSISTANT_HEADER = "<|start_header_id|>assistant<|end_header_id|>\n\n"
END_OF_TURN, END_OF_MESSAGE, OUT_OF_TOKENS = "end_of_turn", "end_of_message", "out_of_tokens"
QUERY_TOOLS = ("brave_search", "wolfram_alpha", "photogen")  # called as name.call(query="...")

# Meta's patterns (llama_models/llama3/tool_utils.py).
BUILTIN_CALL = re.compile(r'\b(?P<tool_name>\w+)\.call\(query="(?P<query>[^"]*)"\)')
FUNCTION_TAG_CALL = re.compile(r"<function=(?P<function_name>[^}]+)>(?P<args>{.*?})")


def new_call_id() -> str:
    return str(uuid.uuid4())


def encode_tool_call(name: str, arguments: dict | str, tool_format: str = "json") -> str:
    """The text of one call in an assistant message (Meta's ToolUtils.encode_tool_call)."""
    if name in QUERY_TOOLS:
        return f'{name}.call(query="{_argument(name, arguments, "query")}")'
    if name == "code_interpreter":
        return str(_argument(name, arguments, "code"))
    if tool_format == "json":
        return json.dumps({"type": "function", "name": name, "parameters": arguments})
    if tool_format == "function_tag":
        return f"<function={name}>{json.dumps(arguments)}</function>"
    if tool_format == "python_list":
        if not isinstance(arguments, dict):
            raise LlamaNbError(f"tool call {name}: python_list arguments must be an object, got text")
        return f"[{name}({', '.join(f'{k}={_python_value(v)}' for k, v in arguments.items())})]"
    raise LlamaNbError(f"unknown tool format {tool_format!r}; expected one of {', '.join(TOOL_FORMATS)}")


def _argument(name: str, arguments: dict | str, key: str) -> Any:
    if not isinstance(arguments, dict) or key not in arguments:
        raise LlamaNbError(f"a {name} call needs the argument {key!r}, got {arguments!r}")
    return arguments[key]


def _python_value(value: Any) -> str:
    """Meta's format_value for python_list calls (strings in double quotes, dicts as k=v)."""
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (int, float, bool)) or value is None:
        return str(value)
    if isinstance(value, list):
        return f"[{', '.join(_python_value(v) for v in value)}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_python_value(v)}" for k, v in value.items()) + "}"
    raise LlamaNbError(f"a python_list tool argument cannot be a {type(value).__name__}")


def parse_assistant(text: str, stop_reason: str | None = None) -> Message:
    """A generated assistant message (its text, special tokens as text) as a Message with its
    tool calls (see the module docstring); `stop_reason` is how generation ended, overridden by a
    trailing <|eot_id|> or <|eom_id|> in the text."""
    content = text.strip(" ")
    if content.startswith(ASSISTANT_HEADER):
        content = content[len(ASSISTANT_HEADER):]
    ipython = content.startswith(PYTHON_TAG)
    if ipython:
        content = content[len(PYTHON_TAG):]
    if content.endswith(EOT):
        content, stop_reason = content[: -len(EOT)], END_OF_TURN
    elif content.endswith(EOM):
        content, stop_reason = content[: -len(EOM)], END_OF_MESSAGE

    calls = _custom_calls(content)
    if calls is not None:
        # A built-in tool called in the custom form: its first argument is the query (Meta's rule).
        calls = [(name, {"query": next(iter(args.values()))} if name in BUILTIN_TOOLS and isinstance(args, dict) and args
                  else args) for name, args in calls]
    else:
        match = BUILTIN_CALL.search(content)
        if match:
            calls = [(match.group("tool_name"), {"query": match.group("query")})]
        elif ipython:
            calls = [("code_interpreter", {"code": content})]
    if not calls:
        return Message("assistant", content, stop_reason)
    return Message("assistant", "", stop_reason, tuple(ToolCall(name, args, new_call_id()) for name, args in calls))


def _custom_calls(body: str) -> list[tuple[str, Any]] | None:
    """Meta's maybe_extract_custom_tool_call, as [(name, arguments)], or None."""
    match = FUNCTION_TAG_CALL.search(body)
    if match:
        try:
            args = json.loads(match.group("args").replace("'", '"'))
        except (json.JSONDecodeError, RecursionError):
            return None  # Meta prints the exception and returns None
        return [(match.group("function_name"), args)] if isinstance(args, (dict, str)) else None
    obj = _json_object(body)
    if obj is not None:
        if obj.get("type") == "function" or "name" in obj:
            name, args = obj.get("name"), obj.get("parameters")
            if isinstance(name, str) and isinstance(args, (dict, str)):
                return [(name, args)]
        return None
    return _python_list_calls(body)


def _json_object(body: str) -> dict | None:
    try:
        obj = json.loads(body)
    except (json.JSONDecodeError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _python_list_calls(body: str) -> list[tuple[str, dict]] | None:
    """[f(a=1), g(b="x")]: a non-empty list of calls of plain names with keyword literals only
    (Meta's is_valid_python_list and parse_python_list_for_function_calls)."""
    try:
        tree = ast.parse(body)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Expr) or not isinstance(tree.body[0].value, ast.List):
        return None
    calls = tree.body[0].value.elts
    if not calls or not all(isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and not c.args
                            and all(k.arg is not None for k in c.keywords) for c in calls):
        return None
    try:
        return [(c.func.id, {k.arg: ast.literal_eval(k.value) for k in c.keywords}) for c in calls]
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        return None  # an argument that is not a literal: not a call list (Meta's raises)

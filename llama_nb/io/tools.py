"""Tools a Llama 3.1 model may call, and the system prompt that offers them, as Meta writes it.

Meta's llama_models (LLama31Interface.system_messages with its prompt_templates; the rendered
prompts are in the package's llama3_1/prompt_format.md) put the tools and today's date first in
the dialog:

    system   [Environment: ipython                    when any tool is offered
              Tools: brave_search, wolfram_alpha      the built-in tools but code_interpreter
             ]                                        (code_interpreter is implied by "ipython")
             Cutting Knowledge Date: December 2023
             Today Date: 02 December 2026             "%d %B %Y", English month names
             [
             <the caller's system prompt>]
             \\n
    user     the custom tools as JSON function definitions (tool_format "json", the default) or
             as "<function=...>" instructions ("function_tag"); only when custom tools are given

Built-in tools are names (BUILTIN_TOOLS); a custom tool is a `Tool` (name, description,
parameters, each a `ToolParam`), read from Meta's ToolDefinition spelling or OpenAI's function
spelling (`as_tool`, `read_tool_file`). The JSON texts are Meta's templates' output, character for
character: hand-built JSON with the descriptions inserted as they are, and Jinja's `tojson` (sorted
keys; <, >, & and ' escaped) where Meta's templates use it.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from llama_nb.errors import LlamaNbError

BUILTIN_TOOLS = ("brave_search", "wolfram_alpha", "photogen", "code_interpreter")  # Meta's BuiltinTool
TOOL_FORMATS = ("json", "function_tag", "python_list")  # Meta's ToolPromptFormat
KNOWLEDGE_CUTOFF = "December 2023"
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
MAX_TOOL_FILE_BYTES = 1 << 20


@dataclass(frozen=True)
class ToolParam:
    """One parameter of a custom tool (Meta's ToolParamDefinition)."""

    param_type: str = "string"
    description: str | None = None
    required: bool = True
    default: Any = None


@dataclass(frozen=True)
class Tool:
    """A custom tool (Meta's ToolDefinition with a str name): parameters in their order."""

    name: str
    description: str | None = None
    parameters: Mapping[str, ToolParam] = field(default_factory=dict)


ToolLike = Union[str, Tool, Mapping[str, Any]]


def as_tool(spec: ToolLike, source: str = "tools") -> str | Tool:
    """A built-in tool's name or a custom Tool, from a name, a Tool, Meta's ToolDefinition dict
    ({"tool_name", "description", "parameters": {name: {"param_type", "description", "required",
    "default"}}}) or OpenAI's ({"type": "function", "function": {"name", "description",
    "parameters": JSON schema}}). LlamaNbError naming `source` on anything else."""
    if isinstance(spec, Tool):
        return spec
    if isinstance(spec, str):
        if spec in BUILTIN_TOOLS:
            return spec
        raise LlamaNbError(f"{source}: unknown built-in tool {spec!r}; built-in: {', '.join(BUILTIN_TOOLS)} "
                           f"(a custom tool needs a definition: a JSON file, see README)")
    if not isinstance(spec, Mapping):
        raise LlamaNbError(f"{source}: a tool is a name or an object, got {type(spec).__name__}")
    if spec.get("type") == "function" and isinstance(spec.get("function"), Mapping):
        return _openai_tool(spec["function"], source)
    name = spec.get("tool_name", spec.get("name"))
    if not isinstance(name, str) or not name:
        raise LlamaNbError(f"{source}: a tool needs a 'tool_name' (or 'name') string, got keys {sorted(spec)}")
    if name in BUILTIN_TOOLS:
        return name
    params = spec.get("parameters") or {}
    if not isinstance(params, Mapping):
        raise LlamaNbError(f"{source}: tool {name!r}: 'parameters' must be an object")
    if params.get("type") == "object" and isinstance(params.get("properties"), Mapping):
        return _openai_tool(spec, source)  # a JSON schema under Meta's keys
    parameters = {}
    for pname, p in params.items():
        if not isinstance(p, Mapping):
            raise LlamaNbError(f"{source}: tool {name!r}: parameter {pname!r} must be an object")
        parameters[str(pname)] = ToolParam(str(p.get("param_type", p.get("type", "string"))),
                                           _text(p.get("description"), source, name),
                                           bool(p.get("required", True)), p.get("default"))
    return Tool(name, _text(spec.get("description"), source, name), parameters)


def _openai_tool(fn: Mapping[str, Any], source: str) -> str | Tool:
    """OpenAI's function definition: a JSON schema object; 'required' lists the required names."""
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise LlamaNbError(f"{source}: a function needs a 'name' string")
    if name in BUILTIN_TOOLS:
        return name
    schema = fn.get("parameters") or {}
    props = schema.get("properties") or {} if isinstance(schema, Mapping) else None
    required = schema.get("required") or [] if isinstance(schema, Mapping) else None
    if not isinstance(props, Mapping) or not isinstance(required, list):
        raise LlamaNbError(f"{source}: function {name!r}: 'parameters' must be a JSON schema object "
                           f"with 'properties' (an object) and 'required' (a list)")
    parameters = {}
    for pname, p in props.items():
        p = p if isinstance(p, Mapping) else {}
        parameters[str(pname)] = ToolParam(str(p.get("type", "string")), _text(p.get("description"), source, name),
                                           pname in required, p.get("default"))
    return Tool(name, _text(fn.get("description"), source, name), parameters)


def _text(value: Any, source: str, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise LlamaNbError(f"{source}: tool {name!r}: a description must be text, got {type(value).__name__}")


def as_tools(specs: Iterable[ToolLike] | None, source: str = "tools") -> tuple[str | Tool, ...]:
    """Every tool checked (as_tool), in order; a name given twice is an error."""
    tools = tuple(as_tool(s, source) for s in (specs or ()))
    names = [t if isinstance(t, str) else t.name for t in tools]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise LlamaNbError(f"{source}: tool {twice[0]!r} is given twice")
    return tools


def parse_tool_names(text: str) -> tuple[str, ...]:
    """`--tools brave_search,code_interpreter`: built-in tool names, comma-separated."""
    return tuple(as_tool(name.strip(), "--tools") for name in text.split(",") if name.strip())


def read_tool_file(path: Path) -> tuple[str | Tool, ...]:
    """`--tool-file tools.json`: a JSON list of tools (names or definitions, see as_tool) or one."""
    from llama_nb.io.files import read_regular_file

    raw = read_regular_file(path, MAX_TOOL_FILE_BYTES, "tool file", missing="no such file")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else "nested too deeply"  # RecursionError says nothing
        raise LlamaNbError(f"{path}: not a JSON tool list ({why})") from None
    return as_tools(data if isinstance(data, list) else [data], str(path))


def as_date(value: _dt.date | str | None) -> _dt.date:
    """The "Today Date": a date, an ISO "YYYY-MM-DD" string, or None for today (local time)."""
    if value is None:
        return _dt.date.today()
    if isinstance(value, _dt.datetime):
        return value.date()
    if isinstance(value, _dt.date):
        return value
    try:
        return _dt.date.fromisoformat(str(value).strip())
    except ValueError:
        raise LlamaNbError(f"--date: {value!r} is not a date like 2026-12-02") from None


def format_date(date: _dt.date) -> str:
    """strftime("%d %B %Y") in English whatever the locale: "02 December 2026"."""
    return f"{date.day:02d} {MONTHS[date.month - 1]} {date.year}"


def system_prompt(instruction: str | None, tools: Iterable[str | Tool], date: _dt.date) -> str:
    """The 3.1 system message text (module docstring): Meta's LLama31Interface.system_messages."""
    tools = tuple(tools)
    text = ""
    if tools:
        builtin = [t for t in tools if isinstance(t, str) and t != "code_interpreter"]
        # Meta's BuiltinToolGenerator: Jinja drops the one newline its output ends with.
        text += "Environment: ipython\n" + (f"Tools: {', '.join(builtin)}" if builtin else "")
        text += "\n"
    text += f"Cutting Knowledge Date: {KNOWLEDGE_CUTOFF}\nToday Date: {format_date(date)}"
    if instruction:
        text += "\n\n" + instruction
    return text + "\n"


def custom_tools_prompt(tools: Iterable[Tool], tool_format: str = "json") -> str:
    """The user message that lists the custom tools: Meta's JsonCustomToolGenerator ("json") or
    FunctionTagCustomToolGenerator ("function_tag")."""
    tools = [t for t in tools if isinstance(t, Tool)]
    if tool_format == "json":
        return ("Answer the user's question by making use of the following functions if needed.\n"
                "If none of the function can be used, please say so.\n"
                "Here is a list of functions in JSON format:\n"
                + "".join(_json_definition(t) for t in tools)
                + "\nReturn function calls in JSON format.")
    if tool_format == "function_tag":
        return ("You have access to the following functions:\n\n"
                + "".join(_function_tag_definition(t) for t in tools)
                + FUNCTION_TAG_INSTRUCTIONS)
    raise LlamaNbError(f"tool format {tool_format!r} has no custom-tool prompt for Llama 3.1; use json or function_tag")


FUNCTION_TAG_INSTRUCTIONS = """Think very carefully before calling functions.
If you choose to call a function ONLY reply in the following format with no prefix or suffix:

<function=example_function_name>{"example_name": "example_value"}</function>

Reminder:
- If looking for real time information use relevant functions before falling back to brave_search
- Function calls MUST follow the specified format, start with <function= and end with </function>
- Required parameters MUST be specified
- Only call one function at a time
- Put the entire function call reply on one line"""


def _json_definition(t: Tool) -> str:
    """One tool as JsonCustomToolGenerator writes it (every parameter typed "object", as Meta's)."""
    properties = ",".join(
        f'\n                {{\n                    "{name}": {{\n                        "type": "object",\n'
        f'                        "description": "{_jinja_str(p.description)}"\n                    }}\n                }}'
        for name, p in t.parameters.items())
    required = tojson([name for name, p in t.parameters.items() if p.required])
    return (f'{{\n    "type": "function",\n    "function": {{\n        "name": "{t.name}",\n'
            f'        "description": "{_jinja_str(t.description)}",\n        "parameters": {{\n'
            f'            "type": "object",\n            "properties": [{properties}\n            ],\n'
            f'            "required": {required}\n        }}\n    }}\n}}\n')


def _function_tag_definition(t: Tool) -> str:
    """One tool as FunctionTagCustomToolGenerator writes it: the parameters without their defaults."""
    params = {name: {"param_type": p.param_type, "description": p.description, "required": p.required}
              for name, p in t.parameters.items()}
    return (f"Use the function '{t.name}' to '{_jinja_str(t.description)}':\n"
            f'{{"name": "{t.name}", "description": "{_jinja_str(t.description)}", "parameters": {tojson(params)}}}\n\n')


def _jinja_str(value: Any) -> str:
    """What Jinja prints for {{ value }}: None as "None"."""
    return str(value)


def tojson(value: Any) -> str:
    """Jinja's `tojson` filter: json.dumps with sorted keys, then <, >, & and ' as \\u escapes."""
    text = json.dumps(value, sort_keys=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").replace("'", "\\u0027")

"""`llama-nb chat`: talk to an instruct model, turn after turn, in Meta's chat format.

The KV cache is kept across turns (llama_nb/model/conversation.py), so each turn prefills only
its own tokens; the summary line after each answer says how many were run and how many came
from the cache. Input is read with the standard library's readline (llama_nb/cli/_lineedit.py):
line editing and history. A line of three double quotes starts and ends a multi-line message.

    /help                 the commands
    /system [TEXT]        show or set the system prompt (the dialog is kept)
    /set [NAME VALUE]     show the settings, or set temperature | top_k | top_p | seed | max_tokens
    /clear                forget the conversation (the system prompt stays)
    /save FILE, /load FILE   the conversation as JSON (system, messages, settings)
    /stats                tokens used and left in the context, the last turn's speed
    /tool TEXT            send TEXT as the result of the model's tool call (an ipython message)
    /bye                  leave (so does Ctrl-D); Ctrl-C stops an answer and keeps the session

With --tools / --tool-file (and for Llama 3.1+ models always) the dialog opens with Meta's 3.1
system prompt (--date sets its "Today Date"); an answer that calls a tool is shown as the call.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from llama_nb.cli._options import (CtxOpt, DateOpt, ImplOpt, KvCacheOpt, MmapOpt, ModelOpt, PrecisionOpt, QuietOpt,
                                   ThreadsOpt, ToolFileOpt, ToolFormatOpt, ToolsOpt, VerboseOpt, chat_tools)
from llama_nb.cli.run import MaxTokensOpt, SeedOpt, TemperatureOpt, TopKOpt, TopPOpt, check_sampling_options
from llama_nb.errors import LlamaNbError

MULTILINE = '"""'
HELP = """commands:
  /help                  this list
  /system [TEXT]         show or set the system prompt
  /set [NAME VALUE]      show settings, or set temperature, top_k, top_p, seed, max_tokens ('none' unsets)
  /clear                 forget the conversation (the system prompt stays)
  /save FILE             write the conversation as JSON
  /load FILE             read a conversation saved with /save
  /stats                 tokens used and left in the context, last turn's numbers
  /tool TEXT             send TEXT back as the result of the model's tool call
  /bye                   leave (Ctrl-D too)
  \"\"\"                    start or end a multi-line message
Ctrl-C stops an answer and keeps the session."""


@dataclass
class Settings:
    """What /set changes: the sampling of every later answer."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    max_tokens: int = 512

    def set(self, name: str, value: str) -> None:
        """Parse and check one setting; LlamaNbError names the setting and the valid range."""
        from llama_nb.model.generate import check_sampling

        name = name.replace("-", "_")
        kinds = {"temperature": float, "top_k": int, "top_p": float, "seed": int, "max_tokens": int}
        if name not in kinds:
            raise LlamaNbError(f"/set: unknown setting {name!r}; have {', '.join(kinds)}")
        if value.lower() in ("none", "off", "") and name in ("top_k", "top_p", "seed"):
            parsed = None
        else:
            try:
                parsed = kinds[name](value)
            except ValueError:
                raise LlamaNbError(f"/set {name}: {value!r} is not {'an integer' if kinds[name] is int else 'a number'}") from None
        if name == "max_tokens" and parsed < 1:
            raise LlamaNbError(f"/set max_tokens: must be >= 1, got {parsed}")
        trial = {**asdict(self), name: parsed}
        try:
            check_sampling(trial["temperature"], trial["top_k"], trial["top_p"])
        except LlamaNbError as exc:
            raise LlamaNbError(f"/set {name}: {str(exc).removeprefix('--')}") from None
        setattr(self, name, parsed)

    def describe(self) -> str:
        return "  ".join(f"{k}={v}" for k, v in asdict(self).items())


# The parameter list repeats the other generating commands' on purpose: Typer reads a command's
# options from its signature. What they mean is declared once, in cli/_options.py.
def chat(
    model: ModelOpt = None,
    system: Annotated[Optional[str], typer.Option("--system", help="The system prompt.")] = None,
    tools: ToolsOpt = None,
    tool_file: ToolFileOpt = None,
    date: DateOpt = None,
    tool_format: ToolFormatOpt = "json",
    max_tokens: MaxTokensOpt = 512,
    temperature: TemperatureOpt = 0.0,
    top_k: TopKOpt = None,
    top_p: TopPOpt = None,
    seed: SeedOpt = None,
    ctx: CtxOpt = 4096,
    impl: ImplOpt = None,
    threads: ThreadsOpt = None,
    precision: PrecisionOpt = "bf16",
    kv_cache: KvCacheOpt = None,
    mmap: MmapOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Chat with the model turn after turn; the KV cache is kept, so each turn prefills only its own tokens.

    [dim]Examples:[/]

      llama-nb chat

      llama-nb chat --system "You are a pirate" --temperature 0.7 --seed 1

      printf 'Hello\\n/stats\\n' | llama-nb chat -n 16

      printf 'Search the news\\n/tool {"results": []}\\n' | llama-nb chat --tools brave_search --date 2026-12-02 -n 8
      printf 'Hello\\n' | llama-nb chat -n 8 --kv-cache f32
    """
    from llama_nb.cli.run import load_for_cli
    from llama_nb.model.conversation import Conversation

    check_sampling_options(temperature, top_k, top_p)
    offered, day = chat_tools(tools, tool_file, date, tool_format)
    llm = load_for_cli(model, impl=impl, ctx=ctx, threads=threads, precision=precision, kv_cache=kv_cache, mmap=mmap,
                       quiet=quiet)
    settings = Settings(temperature, top_k, top_p, seed, max_tokens)
    conversation = Conversation(llm.chat_format, ctx=llm.ctx, system=system, tools=offered, date=day,
                                tool_format=tool_format)
    session = Session(llm, conversation, settings, quiet=quiet, verbose=verbose)
    if not quiet:
        _say(f"chatting with {llm.folder} (context {llm.ctx} tokens); /help for commands, /bye or Ctrl-D to leave")
    raise typer.Exit(session.loop())


def _say(text: str) -> None:
    from llama_nb.cli._pipes import say

    say(text, style="dim")


class Session:
    """The REPL: read a message or a command, answer, repeat."""

    def __init__(self, llm, conversation, settings: Settings, *, quiet: bool = False, verbose: bool = False):
        self.llm, self.conversation, self.settings = llm, conversation, settings
        self.quiet, self.verbose = quiet, verbose
        self.last = None  # the RunReport of the last answer

    def loop(self) -> int:
        while True:
            try:
                line = self._ask(">>> ")
                if line is None:  # Ctrl-D
                    sys.stdout.write("\n")
                    return 0
                if line.strip().startswith(MULTILINE):
                    line = self._read_multiline(line.strip()[len(MULTILINE):])
                    if line is None:
                        return 0
            except KeyboardInterrupt:  # at the prompt: a fresh line, as in a shell
                if self.llm.model.group.size > 1:  # under mpirun the ranks would part ways: end them all
                    raise
                sys.stdout.write("\n")
                _say("(Ctrl-D or /bye to leave)")
                continue
            text = line.strip()
            if not text:
                continue
            if text.startswith("/"):
                try:
                    if self.command(text) == "bye":
                        return 0
                except KeyboardInterrupt:  # during /tool's answer, as during any answer
                    sys.stdout.write("\n")
                continue
            try:
                self.answer(line)
            except KeyboardInterrupt:  # between the answer's steps: the session goes on
                if self.llm.model.group.size > 1:
                    raise
                sys.stdout.write("\n")

    def _ask(self, prompt: str) -> str | None:
        """A line from the user (None: Ctrl-D); under mpirun rank 0 reads it, every rank gets it."""
        from llama_nb.cli._lineedit import ask

        group = self.llm.model.group
        return group.share(ask(prompt) if group.rank == 0 else None)

    def _read_multiline(self, first: str) -> str | None:
        lines = []
        if first.rstrip().endswith(MULTILINE):
            return first.rstrip()[: -len(MULTILINE)]
        if first:
            lines.append(first)
        while True:
            line = self._ask("... ")
            if line is None:
                return None
            if line.rstrip().endswith(MULTILINE):
                lines.append(line.rstrip()[: -len(MULTILINE)])
                return "\n".join(lines).strip("\n")
            lines.append(line)

    def answer(self, message: str, role: str = "user") -> None:
        """Send a user message (or, role "ipython", a tool's result) and stream the answer."""
        from llama_nb.cli._report import RunReport
        from llama_nb.cli.run import show_tool_calls, stream
        from llama_nb.io.chat import Message

        try:
            new_ids, start_pos = self.conversation.send(Message(role, message))
        except LlamaNbError as exc:
            self._error(exc)
            return
        s = self.settings
        report = RunReport.for_model(self.llm, new_ids)
        try:
            stream(self.llm, new_ids, s.max_tokens, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                   seed=s.seed, quiet=self.quiet, verbose=self.verbose, start_pos=start_pos, report=report, one_line=True)
        except LlamaNbError as exc:
            self.conversation.undo_turn()
            self._error(exc)
            return
        answer = self.conversation.answered(report.text, report.generated_ids, report.stats.cache_end,
                                            report.stats.stop_token)
        show_tool_calls(answer, self.quiet)
        self.last = report
        if report.stats.stop_reason == "context":
            self._error(LlamaNbError(
                "the context is full: /save FILE to keep the conversation, then /clear to start over "
                "(or restart with a larger --ctx)"))

    def _error(self, exc: Exception) -> None:
        from llama_nb.cli._pipes import say

        say(f"error: {exc}", style="bold red")

    def command(self, text: str) -> str | None:
        """Run one /command; "bye" to leave."""
        name, _, arg = text.partition(" ")
        arg = arg.strip()
        name = name.lower()
        try:
            if name in ("/bye", "/exit", "/quit"):
                return "bye"
            if name in ("/help", "/?"):
                print(HELP, flush=True)
            elif name == "/system":
                if arg:
                    self.conversation.system = arg
                    print("system prompt set", flush=True)
                else:
                    print(f"system prompt: {self.conversation.system or '(none)'}", flush=True)
            elif name == "/set":
                if arg:
                    key, _, value = arg.partition(" ")
                    self.settings.set(key, value.strip())
                print(self.settings.describe(), flush=True)
            elif name == "/clear":
                self.conversation.clear()
                print("conversation cleared", flush=True)
            elif name == "/save":
                path = self._path(arg, "/save")
                if self.llm.model.group.rank == 0:  # under mpirun: one writer
                    self.conversation.save(path, asdict(self.settings))
                print(f"saved {len(self.conversation.messages)} messages to {path}", flush=True)
            elif name == "/load":
                path = self._path(arg, "/load")
                saved = self.conversation.load(path)
                for key, value in saved.items():
                    self.settings.set(key, "none" if value is None else str(value))
                print(f"loaded {len(self.conversation.messages)} messages from {path}", flush=True)
            elif name == "/stats":
                print(self.stats(), flush=True)
            elif name == "/tool":
                if not arg:
                    raise LlamaNbError("/tool needs the tool's result, e.g. /tool {\"temperature\": 21}")
                self.answer(arg, role="ipython")
            else:
                raise LlamaNbError(f"unknown command {name}; /help lists them")
        except LlamaNbError as exc:
            self._error(exc)
        return None

    @staticmethod
    def _path(arg: str, command: str) -> Path:
        if not arg:
            raise LlamaNbError(f"{command} needs a file name, e.g. {command} chat.json")
        return Path(arg).expanduser()

    def stats(self) -> str:
        used = self.conversation.tokens_used()
        lines = [f"context: {used} of {self.llm.ctx} tokens used, {self.llm.ctx - used} left "
                 f"({len(self.conversation.messages)} messages; {len(self.conversation.cached)} tokens in the KV cache)"]
        if self.last is not None:
            from llama_nb.cli._report import summary_line

            lines.append("last answer: " + summary_line(self.last))
        lines.append("settings: " + self.settings.describe())
        return "\n".join(lines)

"""`llama-nb menu`: the interactive menu of llama-nuts-and-bolts, item for item, with a way back.

    0   print the model's metadata (tensor list, hyperparameters, sizes)
    1   [Text completion] a predefined prompt
    2-6 [Chat mode] predefined system + user prompts
    7   [Text completion] your own prompt
    8   [Chat mode] your own system prompt (optional) and prompt
    q   quit

The model is loaded and compiled once; after each answer the menu comes back. Prompts are read
with the same line editor as `chat` (readline: arrow keys, history). `/set NAME VALUE` at the
menu's prompt changes temperature, top_k, top_p, seed or max_tokens for the next answers. Ctrl-C
during an answer, and Ctrl-C or end of input at a sub-prompt, return to the menu; Ctrl-C or end of
input at the menu leaves cleanly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import typer

from llama_nb.cli._options import CtxOpt, ImplOpt, KvCacheOpt, MmapOpt, ModelOpt, PrecisionOpt, QuietOpt, ThreadsOpt, VerboseOpt
from llama_nb.cli.run import MaxTokensOpt, SeedOpt, TemperatureOpt
from llama_nb.errors import LlamaNbError


@dataclass(frozen=True)
class MenuPrompt:
    prompt: str
    chat: bool
    system: str | None = None


# The Go original's predefined prompts, in its order (items 1-6).
PREDEFINED = [
    MenuPrompt("Hello, my name is", chat=False),
    MenuPrompt("Describe your theory.", chat=True, system="You are Einstein"),
    MenuPrompt("Can you explain what is Theory of relativity?", chat=True,
               system="Answer in 20 words, directly, and without an introduction"),
    MenuPrompt("Explain what is quantum computer in 20 words.", chat=True, system="You are a pirate"),
    MenuPrompt("How to go from Beijing to NY?", chat=True, system="Always answer with emojis"),
    MenuPrompt("What is the flag of Turkey?", chat=True, system="Answer with only one emoji"),
]
MANUAL_TEXT, MANUAL_CHAT = len(PREDEFINED) + 1, len(PREDEFINED) + 2


def menu_text() -> str:
    """The menu as Rich markup."""
    lines = ["[bold]Select from the predefined prompts (the last two are for your own input):[/]",
             f"{0:2d}. {'':17s} Print model metadata (tensor list, hyperparameters, etc.)"]
    for i, item in enumerate(PREDEFINED, start=1):
        if item.chat:
            lines.append(f"{i:2d}. {'[Chat mode]':17s} [bold]System prompt:[/] {_escape(item.system or '(empty)')}")
            lines.append(f"{'':22s}[bold]Prompt:[/] {_escape(item.prompt)}")
        else:
            lines.append(f"{i:2d}. {'[Text completion]':17s} [bold]Prompt:[/] {_escape(item.prompt)}")
    lines.append(f"{MANUAL_TEXT:2d}. {'[Text completion]':17s} Other, manual input")
    lines.append(f"{MANUAL_CHAT:2d}. {'[Chat mode]':17s} Other, manual input")
    lines.append(f"{'q':>2s}. {'':17s} Quit")
    lines.append("[dim]    /set NAME VALUE    sampling for the next answers, e.g. /set temperature 0.8[/]")
    return "\n".join(lines)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def parse_choice(answer: str) -> int | None | str:
    """An int 0..8, "quit", or None with the reason printed by the caller for anything else."""
    answer = answer.strip().lower()
    if answer in ("q", "quit", "exit"):
        return "quit"
    try:
        choice = int(answer)
    except ValueError:
        return None
    return choice if 0 <= choice <= MANUAL_CHAT else None


def menu(
    model: ModelOpt = None,
    max_tokens: MaxTokensOpt = 256,
    temperature: TemperatureOpt = 0.0,
    seed: SeedOpt = None,
    ctx: CtxOpt = 4096,
    impl: ImplOpt = None,
    threads: ThreadsOpt = None,
    precision: PrecisionOpt = "bf16",
    kv_cache: KvCacheOpt = None,
    mmap: MmapOpt = False,
    plain: Annotated[bool, typer.Option("--plain", help="Stream plain text instead of the live view.")] = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Interactive menu: the Go original's predefined prompts, your own prompts, model metadata.

    [dim]Example:[/]

      printf '1\\nq\\n' | llama-nb menu -n 16

      printf '1\\nq\\n' | llama-nb menu -n 8 --kv-cache f32
    """
    from rich.console import Console

    from llama_nb.cli._lineedit import ask as read_line
    from llama_nb.cli.chat import Settings
    from llama_nb.cli.info import print_model_info
    from llama_nb.cli.run import check_sampling_options, load_for_cli, stream

    check_sampling_options(temperature, None, None)
    settings = Settings(temperature=temperature, seed=seed, max_tokens=max_tokens)
    console = Console()
    console.print("[bold]Welcome to llama-nb[/], the Numba re-imagining of Llama Nuts and Bolts!")
    llm = load_for_cli(model, impl=impl, ctx=ctx, threads=threads, precision=precision, kv_cache=kv_cache, mmap=mmap,
                       quiet=quiet)
    console.print(f"Model [bold]{_escape(str(llm.folder))}[/] loaded in {llm.load_seconds:.2f} s, "
                  f"kernels ready in {llm.compile_seconds:.2f} s.\n")
    mode = "plain" if plain or not console.is_terminal else "live"

    def ask(question: str) -> str | None:
        """A sub-prompt's answer; None (back to the menu) on Ctrl-C or end of input."""
        try:
            return read_line(question)
        except KeyboardInterrupt:
            console.print()
            return None

    try:
        while True:
            console.print(menu_text())
            answer = read_line(f"\nYour choice (0 to {MANUAL_CHAT}, q to quit): ")
            if answer is None:
                break
            if answer.strip().startswith("/set"):
                key, _, value = answer.strip()[len("/set"):].strip().partition(" ")
                try:
                    if key:
                        settings.set(key, value.strip())
                    console.print(f"\n{_escape(settings.describe())}\n")
                except LlamaNbError as exc:
                    console.print(f"\n[red]{_escape(str(exc))}[/]\n")
                continue
            choice = parse_choice(answer)
            if choice == "quit":
                break
            if choice is None:
                console.print(f"\n[red]Not a valid choice: {_escape(answer.strip())!s}. Choose a number from 0 to {MANUAL_CHAT}, or q.[/]\n")
                continue
            if choice == 0:
                print_model_info(llm.folder, console=console)
                console.print("\nModel metadata was printed.\n")
                continue
            if choice <= len(PREDEFINED):
                item = PREDEFINED[choice - 1]
            else:
                system = None
                if choice == MANUAL_CHAT:
                    system = ask("System prompt (optional, Enter to skip): ")
                    if system is None:
                        continue
                    system = system.strip() or None
                prompt = ask("Your prompt: ")
                if prompt is None:
                    continue
                if not prompt.strip():
                    console.print("\n[red]The prompt is empty.[/]\n")
                    continue
                item = MenuPrompt(prompt, chat=choice == MANUAL_CHAT, system=system)
            ids = llm.encode_prompt(item.prompt, chat=item.chat, system=item.system)
            console.print(f"\n[dim]{'chat' if item.chat else 'text completion'}, {len(ids)} prompt tokens[/]")
            try:
                code = stream(llm, ids, settings.max_tokens, temperature=settings.temperature, top_k=settings.top_k,
                              top_p=settings.top_p, seed=settings.seed, mode=mode, quiet=quiet, verbose=verbose,
                              one_line=True)
            except LlamaNbError as exc:  # e.g. a prompt longer than --ctx: say so, ask again
                console.print(f"\n[red]{_escape(str(exc))}[/]\n")
                continue
            if code == 130:
                console.print("[yellow]stopped (Ctrl-C); back to the menu[/]")
            console.print()
    except KeyboardInterrupt:
        console.print("\nbye")
        raise typer.Exit(130)
    console.print("bye")

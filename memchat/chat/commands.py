"""The REPL's slash commands: one registry, name -> function; each docstring is its line in /help."""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape

from memchat.chat import actions
from memchat.interrupts import deferred_interrupt

if TYPE_CHECKING:
    from memchat.chat.repl import Chat

# A command gets the chat and the text after its name; it returns True to leave the REPL.
Command = Callable[["Chat", str], "bool | None"]
COMMANDS: dict[str, Command] = {}
USAGE: dict[str, str] = {}  # name -> its arguments, as /help shows them


def command(name: str, usage: str = "") -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        COMMANDS[name], USAGE[name] = fn, usage
        return fn

    return register


def run_command(chat: Chat, line: str) -> bool:
    """Run a '/name args' line; True when the REPL should end."""
    name, _, arg = line[1:].strip().partition(" ")
    fn = COMMANDS.get(name)
    if fn is None:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"did you mean /{close[0]}?" if close else "/help lists the commands"
        chat.out.print(f"[yellow]unknown command /{escape(name)}[/]; {hint}")
        return False
    return bool(fn(chat, arg.strip()))


@command("help")
def help_(chat: Chat, arg: str) -> None:
    """Show the commands and keys."""
    from rich.table import Table

    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    for name, fn in COMMANDS.items():
        table.add_row(f"/{name} {USAGE[name]}".rstrip(), (fn.__doc__ or "").strip().splitlines()[0])
    chat.out.print(table)
    chat.out.print(
        '[dim]Alt-Enter (or Esc, Enter) adds a line; a line """ starts and ends a multi-line message. '
        "Ctrl-C stops a reply or clears the line; Ctrl-D leaves.[/]"
    )


@command("stats")
def stats(chat: Chat, arg: str) -> None:
    """What memory holds: injections, tokens, sources, and what occupies the memory pool."""
    from memchat.service.stats import render_stats, stats

    render_stats(chat.out, stats(chat.memory.options, live=chat.memory))


@command("forget", "WHEN")
def forget(chat: Chat, arg: str) -> None:
    """Forget everything injected since WHEN ('2 hours ago', 'yesterday', '2026-01-31 14:00')."""
    from memchat.chat.when import parse_when

    if not arg:
        chat.out.print("[yellow]say since when:[/] /forget 10 minutes ago")
        return
    # Held against Ctrl-C: a rebuild stopped half-way would leave this session's memory short of rows
    # that the journal says are applied.
    with deferred_interrupt():
        forgotten = actions.forget_matching(chat.memory, chat.out, chat.confirm, since=parse_when(arg))
    if forgotten is None:
        chat.out.print("kept them")
    elif forgotten and chat.window:
        # The recent turns would otherwise bring what was just forgotten straight back into the prompt.
        chat.window.clear()
        chat.out.print("[dim]cleared the recent-turn window too[/]")


@command("ingest", "PATH…")
def ingest(chat: Chat, arg: str) -> None:
    """Inject files and folders: text, Markdown, code and PDF; unchanged files are skipped."""
    if not arg:
        chat.out.print("[yellow]say what to ingest:[/] /ingest ~/notes")
        return
    # A path with spaces needs no quotes when it is the only one.
    paths = [arg] if Path(arg).expanduser().exists() else shlex.split(arg)
    report = actions.ingest_files(chat.memory, [Path(p).expanduser() for p in paths], chat.out, verbose=True)
    chat.out.print(actions.ingest_summary(report))


@command("log", "[TEXT]")
def log(chat: Chat, arg: str) -> None:
    """The latest injections, or those matching TEXT."""
    from memchat.service.stats import render_log

    render_log(chat.out, chat.memory.options, search=arg or None, source=None, since=None, limit=20)


@command("incognito")
def incognito(chat: Chat, arg: str) -> None:
    """Stop remembering turns (and saving them in the input history) until /incognito again."""
    chat.incognito = not chat.incognito
    if chat.incognito:
        chat.out.print("incognito: from now on turns are not remembered; /incognito to remember again")
    else:
        chat.out.print("incognito off: turns are remembered again")


@command("clear")
def clear(chat: Chat, arg: str) -> None:
    """Start the conversation afresh: empty the recent-turn window (memory is unchanged)."""
    chat.window.clear()
    chat.out.print("cleared the recent-turn window; memory is unchanged")


@command("model")
def model(chat: Chat, arg: str) -> None:
    """The model, device, quantization and memory size."""
    info = chat.memory.describe()
    chat.out.print(actions.model_line(info))
    chat.out.print(
        f"[dim]{escape(info['folder'])}; injections of up to {info['max_injection_tokens']} tokens; "
        f"{len(chat.window)} of {chat.window.maxlen} recent exchanges in the prompt[/]"
    )


@command("exit")
def exit_(chat: Chat, arg: str) -> bool:
    """Save memory and leave (Ctrl-D too)."""
    return True

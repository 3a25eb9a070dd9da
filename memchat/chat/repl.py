"""The REPL: read a message, stream the reply from memory, inject the exchange.

The prompt carries the last few exchanges as chat messages so the conversation reads naturally; what
lasts beyond them is what the turns left in the model's memory. Between turns we apply rows that other
processes (`memchat ingest`, a watcher) journaled while we held the memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion, PathCompleter
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory
from prompt_toolkit.key_binding import KeyBindings
from rich.console import Console
from rich.markup import escape

from memchat.chat import actions
from memchat.chat.commands import COMMANDS, run_command
from memchat.chat.ui import progress_bar, progress_callback, render_markdown, stream_reply
from memchat.config import Config
from memchat.errors import MemchatError
from memchat.interrupts import deferred_interrupt

if TYPE_CHECKING:
    from memchat.service.memory import Memory

FENCE = '"""'


@dataclass
class Chat:
    memory: Memory  # as the holder of the lock
    config: Config
    out: Console
    window: deque[tuple[str, str]] = field(init=False)  # recent (user, assistant) exchanges
    sampling: object = field(init=False)  # the engine's Sampling, with the configured overrides
    incognito: bool = False

    def __post_init__(self) -> None:
        self.window = deque(maxlen=self.config.window)
        self.sampling = self.memory.sampling(**self.config.generation())

    def messages(self, text: str) -> list[dict[str, str]]:
        """The prompt: the recent exchanges, then the user's new message."""
        messages = []
        for user, assistant in self.window:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        return [*messages, {"role": "user", "content": text}]

    def turn(self, text: str) -> None:
        """Answer from memory; remember the exchange unless the reply was stopped or we are incognito."""
        try:
            reply = stream_reply(self.out, self.memory.reply(self.messages(text), self.sampling))
        except KeyboardInterrupt:
            self.out.print("\n[yellow]stopped[/] [dim](this exchange is not remembered)[/]")
            return
        render_markdown(self.out, reply)
        self.window.append((text, reply))
        if not self.incognito:
            with deferred_interrupt():
                self.memory.remember_turn(text, reply)

    def apply_queued(self) -> None:
        """Apply what other processes journaled while we held the memory."""
        with deferred_interrupt(), progress_bar(self.out) as bar:
            applied = self.memory.apply_pending(progress_callback(bar, "applying queued injections"))
        if applied:
            self.out.print(
                f"[dim]applied {applied} injection{'s' * (applied != 1)} queued by other processes[/]"
            )

    def confirm(self, question: str) -> bool:
        from prompt_toolkit.shortcuts import prompt

        try:
            return prompt(f"{question} [y/N] ").strip().lower() in ("y", "yes")
        except (KeyboardInterrupt, EOFError):
            return False

    @property
    def prompt(self) -> str:
        return "incognito> " if self.incognito else "you> "


def run_chat(memory: Memory, config: Config, out: Console) -> None:
    """The REPL, until /exit or Ctrl-D. The caller closes the memory, which saves its state."""
    from memchat.service.stats import stats

    chat = Chat(memory, config, out)
    out.print(f"[bold]memchat[/] · {actions.model_line(memory.describe())}")
    out.print(f"{actions.memory_line(stats(memory.options))} · [dim]/help for commands, Ctrl-D to leave[/]")
    session = _session(chat, memory.layout.root / "history")
    while True:
        try:
            typed = session.prompt(chat.prompt)
        except KeyboardInterrupt:
            continue  # Ctrl-C at the prompt clears the line
        except EOFError:
            return
        text = unfence(typed)
        if not text.strip():
            continue
        try:
            chat.apply_queued()
            if typed.startswith("/") and "\n" not in typed:
                if run_command(chat, typed):
                    return
            else:
                chat.turn(text)
        except KeyboardInterrupt:
            out.print("[yellow]interrupted[/]")
        except MemchatError as error:
            out.print(f"[red]error:[/] {escape(str(error))}")


def unfence(text: str) -> str:
    """The message inside a \"\"\" block, or the text as typed."""
    lines = text.split("\n")
    if lines[0].strip() != FENCE:
        return text
    inner = lines[1:-1] if len(lines) > 1 and lines[-1].strip() == FENCE else lines[1:]
    return "\n".join(inner)


def fence_open(text: str) -> bool:
    """Whether Enter should add a line: a \"\"\" block was started and not yet closed."""
    lines = text.split("\n")
    return lines[0].strip() == FENCE and (len(lines) == 1 or lines[-1].strip() != FENCE)


class ChatCompleter(Completer):
    """Slash commands at the start of the line; file paths after /ingest."""

    def __init__(self) -> None:
        self.paths = PathCompleter(expanduser=True)

    def get_completions(self, document: Document, event: CompleteEvent) -> Iterable[Completion]:
        text = document.text_before_cursor
        if text.startswith("/ingest "):
            yield from self.paths.get_completions(Document(text[len("/ingest ") :]), event)
        elif text.startswith("/") and " " not in text:
            for name, fn in COMMANDS.items():
                if name.startswith(text[1:]):
                    meta = (fn.__doc__ or "").strip().splitlines()[0]
                    yield Completion(f"/{name}", start_position=-len(text), display_meta=meta)


class ChatHistory(FileHistory):
    """Input history in the memory's folder; incognito input stays out of the file."""

    def __init__(self, path: Path, chat: Chat) -> None:
        super().__init__(str(path))
        self.chat = chat

    def store_string(self, string: str) -> None:
        if not self.chat.incognito:
            super().store_string(string)


def _session(chat: Chat, history: Path) -> PromptSession:
    keys = KeyBindings()

    @keys.add("enter")
    @keys.add("c-j")  # a bare line feed, as some terminals and scripts send for Enter
    def _enter(event) -> None:
        buffer = event.current_buffer
        if fence_open(buffer.text):
            buffer.insert_text("\n")
        else:
            buffer.validate_and_handle()

    @keys.add("escape", "enter")
    def _newline(event) -> None:
        event.current_buffer.insert_text("\n")

    return PromptSession(
        history=ChatHistory(history, chat),
        completer=ChatCompleter(),
        key_bindings=keys,
        multiline=True,
        prompt_continuation=lambda width, line, wrapped: "." * (width - 1) + " ",
    )

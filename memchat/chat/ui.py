"""Terminal pieces the command line and the REPL share: progress bars and replies streamed as they are
generated."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import Progress

# Control characters other than newline and tab: a model can emit them (the tiny test model does), and
# raw on a terminal they ring bells, move the cursor or start escape sequences.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Text safe to show on a terminal; tabs become spaces so that its width can be counted."""
    return _CONTROL.sub("", text).expandtabs(4)


def progress_bar(console: Console, *extra) -> Progress:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra,
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def progress_callback(bar: Progress, label: str) -> Callable[[int, int], None]:
    """A (done, total) callback that shows its task on the bar only once there is progress to show."""
    task = None

    def update(done: int, total: int) -> None:
        nonlocal task
        if task is None:
            task = bar.add_task(label, total=total)
        bar.update(task, completed=done, total=total)

    return update


def stream_reply(console: Console, pieces: Iterator[str]) -> str:
    """Print a reply piece by piece as it is generated and return it whole.

    Ctrl-C stops generation: the KeyboardInterrupt propagates once the generator is closed, and what was
    printed stays on screen.
    """
    parts: list[str] = []
    try:
        for piece in pieces:
            parts.append(piece)
            console.out(printable(piece), end="", highlight=False)
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()
    return "".join(parts)


def render_markdown(console: Console, text: str) -> None:
    """End a streamed reply: on a terminal, redraw it as Markdown in place when all of it is still on
    screen (what scrolled away cannot be erased); otherwise just end the line."""
    from rich.cells import cell_len

    shown = printable(text)
    width, height = console.size
    rows = sum(max(1, -(-cell_len(line) // width)) for line in shown.split("\n"))
    if not console.is_terminal or not shown.strip() or rows >= height:
        console.out("")
        return
    from rich.markdown import Markdown

    # Back to the first row of the reply, then erase to the end of the screen (rich has no erase-down).
    console.file.write("\r" + (f"\x1b[{rows - 1}A" if rows > 1 else "") + "\x1b[J")
    console.print(Markdown(shown))

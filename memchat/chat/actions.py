"""What the command line and the REPL both do with a memory, written once: ingest with progress, forget
with a confirmation, and the one-line descriptions of the model and of the memory."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from memchat.chat.ui import progress_bar, progress_callback
from memchat.ingest.files import DEFAULT_MAX_BYTES
from memchat.ingest.files import _human as human_size

if TYPE_CHECKING:
    from memchat.ingest.pipeline import IngestReport
    from memchat.service.memory import Memory


def counted(n: int, noun: str) -> str:
    """'1 injection', '2 injections'."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def ingest_files(
    memory: Memory,
    paths: Sequence[str | Path],
    console: Console,
    *,
    dry_run: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
    verbose: bool = False,
    reported: set[Path] | None = None,
) -> IngestReport:
    """Run the ingest pipeline under a progress bar and return its report.

    `verbose` lists every file and every skip. `reported`, for the passes of a watch, lists each new or
    changed file and each notable skip once: the skips seen in earlier passes are in the set.
    """
    from rich.progress import TextColumn

    from memchat.ingest.pipeline import ingest

    with progress_bar(console, TextColumn("{task.fields[tokens]} tokens")) as bar:
        task = bar.add_task("ingesting", total=None, tokens=0)

        def on_file(plan) -> None:
            note = f" [dim]({escape(plan.note)})[/]" if plan.note else ""
            if verbose or dry_run or reported is not None:
                what = f"{counted(len(plan.chunks), 'chunk')}, {counted(plan.tokens, 'token')}"
                bar.console.print(f"{escape(str(plan.path))}: {what}{note}")
            bar.update(task, tokens=bar.tasks[task].fields["tokens"] + plan.tokens)

        def on_skip(skipped) -> None:
            notable = not skipped.reason.startswith(("hidden", "excluded", "empty"))
            if verbose or (notable and skipped.path not in (reported or ())):
                bar.console.print(f"[yellow]skipped[/] {escape(str(skipped.path))}: {escape(skipped.reason)}")
            if reported is not None:
                reported.add(skipped.path)

        return ingest(
            memory,
            paths,
            dry_run=dry_run,
            max_bytes=max_bytes,
            on_file=on_file,
            on_skip=on_skip,
            on_chunk=lambda n: bar.advance(task, n),
        )


def ingest_summary(report: IngestReport, dry_run: bool = False) -> str:
    verb = "would inject" if dry_run else "queued" if report.queued else "injected"
    return (
        f"{verb} {counted(report.chunks, 'chunk')} ({counted(report.tokens, 'token')}) from "
        f"{counted(report.files, 'file')}; "
        f"{report.unchanged} unchanged, {len(report.skipped)} skipped"
    )


QUEUED_NOTE = "another memchat holds this memory; it applies the rows between turns"


def forget_matching(
    memory: Memory,
    console: Console,
    confirm: Callable[[str], bool],
    *,
    since: float | None = None,
    source: str | None = None,
    dry_run: bool = False,
) -> int | None:
    """Show what a forget would take and cost, ask `confirm(question)`, then forget with a progress bar.

    Returns how many injections were forgotten, or None when the user said no.
    """
    ids = memory.select(since=since, source=source)
    if not ids:
        console.print("nothing to forget")
        return 0
    cost = memory.replay_cost(ids)
    what = (
        counted(len(ids), "injection")
        + (f" since {time.strftime('%Y-%m-%d %H:%M', time.localtime(since))}" if since else "")
        + (f" from {escape(source)}" if source else "")
    )
    eta = f", about {_duration(cost.seconds)}" if cost.seconds else ""
    replay = f"{counted(cost.rows, 'injection')} ({counted(cost.tokens, 'token')}{eta})"
    console.print(f"will forget {what}; then replay {replay} to rebuild memory")
    if dry_run:
        return 0
    if not confirm("forget them?"):
        return None
    with progress_bar(console) as bar:
        memory.forget(ids, progress=progress_callback(bar, "rebuilding memory"))
    console.print(f"forgot {counted(len(ids), 'injection')}")
    return len(ids)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def model_line(info: dict) -> str:
    """'tiny on cpu · float32 · quantization none · memory pool 32 rows × 2 layers × 64 (16.0 KB)'"""
    return (
        f"{escape(str(info['model']))} on {info['device']} · {info['dtype']} · "
        f"quantization {info['quant']} · "
        f"memory pool {info['memory_rows']} rows × {info['layers']} layers × {info['hidden']} "
        f"({human_size(info['memory_bytes'])})"
    )


def memory_line(stats: dict) -> str:
    """'memory: 12 injections (3400 tokens), last 2026-11-22 14:03' from `service.stats.stats()`."""
    if not stats["injections"] and not stats["pending"]:
        return "memory: empty"
    last = time.strftime("%Y-%m-%d %H:%M", time.localtime(stats["last_used"])) if stats["last_used"] else "-"
    pending = f", {stats['pending']} pending" if stats["pending"] else ""
    return f"memory: {stats['injections']} injections ({stats['tokens']} tokens){pending}, last {last}"


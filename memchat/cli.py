"""The `memchat` command line. Thin: it parses, asks the service, and prints; heavy modules load only
inside the commands that need them, so `memchat --help` starts fast."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from memchat.errors import MemchatError

app = typer.Typer(
    help="A terminal chat agent with lifelong memory (MemoryLLM / M+).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
memory_app = typer.Typer(help="Inspect, verify, export and import what memory holds.", no_args_is_help=True)
app.add_typer(memory_app, name="memory")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class UsageError(MemchatError):
    pass


def _options(ctx: typer.Context):
    return ctx.obj["options"]


@app.callback()
def main_options(
    ctx: typer.Context,
    home: Annotated[
        Path | None, typer.Option(envvar="MEMCHAT_HOME", help="Where memchat keeps its data.")
    ] = None,
    profile: Annotated[str, typer.Option(envvar="MEMCHAT_PROFILE", help="Whose memory.")] = "default",
    model: Annotated[
        str, typer.Option(envvar="MEMCHAT_MODEL", help="Hub id, local folder or preset.")
    ] = "tiny",
    device: Annotated[str | None, typer.Option(envvar="MEMCHAT_DEVICE", help="cuda, cuda:1 or cpu.")] = None,
    quant: Annotated[str | None, typer.Option(envvar="MEMCHAT_QUANT", help="nf4, int8 or none.")] = None,
    seed: Annotated[int | None, typer.Option(envvar="MEMCHAT_SEED", help="Fix the drop-seed salt.")] = None,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    from memchat.service.memory import Options

    ctx.obj = {
        "options": Options(home=home, profile=profile, model=model, device=device, quant=quant, seed=seed),
        "debug": debug,
    }


def _open(ctx: typer.Context, progress_label: str = "replaying journal"):
    """Open the memory, with a progress bar when recovery has rows to replay."""
    from memchat.service.memory import Memory

    with _progress() as bar:
        task = None

        def progress(done: int, total: int) -> None:
            nonlocal task
            if task is None:
                task = bar.add_task(progress_label, total=total)
            bar.update(task, completed=done, total=total)

        return Memory.open(_options(ctx), notice=lambda m: err.print(f"[yellow]{m}[/]"), progress=progress)


def _progress(*extra):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra,
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )


# --- ingest ---------------------------------------------------------------------------------------------


@app.command()
def ingest(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="Files and folders (recursive).")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be injected.")] = False,
    max_size: Annotated[float, typer.Option(help="Largest file to take, in MB.")] = 10.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="List every file.")] = False,
) -> None:
    """Inject files into memory: text, Markdown, code and PDF. Unchanged files are skipped."""
    from rich.progress import TextColumn

    from memchat.ingest.pipeline import ingest as run_ingest

    with _open(ctx) as memory, _progress(TextColumn("{task.fields[tokens]} tokens")) as bar:
        task = bar.add_task("ingesting", total=None, tokens=0)

        def on_file(plan) -> None:
            note = f" [dim]({plan.note})[/]" if plan.note else ""
            if verbose or dry_run:
                bar.console.print(f"{plan.path}: {len(plan.chunks)} chunks, {plan.tokens} tokens{note}")
            bar.update(task, tokens=bar.tasks[task].fields["tokens"] + plan.tokens)

        def on_skip(skipped) -> None:
            if verbose or not skipped.reason.startswith(("hidden", "excluded", "empty")):
                bar.console.print(f"[yellow]skipped[/] {skipped.path}: {skipped.reason}")

        report = run_ingest(
            memory,
            paths,
            dry_run=dry_run,
            max_bytes=int(max_size * 1024 * 1024),
            on_file=on_file,
            on_skip=on_skip,
            on_chunk=lambda n: bar.advance(task, n),
        )
    verb = "would inject" if dry_run else "queued" if report.queued else "injected"
    out.print(
        f"{verb} {report.chunks} chunks ({report.tokens} tokens) from {report.files} files; "
        f"{report.unchanged} unchanged, {len(report.skipped)} skipped"
    )
    if report.queued:
        out.print("[dim]another memchat holds this memory; it applies the rows between turns[/]")


# --- forget ---------------------------------------------------------------------------------------------


def parse_when(text: str) -> float:
    """Unix time of a user's 'yesterday', '2 hours ago', 'last monday' or ISO date (local time if no zone).

    Whole-day words mean the start of that day: 'forget --since yesterday' includes all of yesterday.
    """
    import dateparser

    settings = {"PREFER_DATES_FROM": "past", "RETURN_AS_TIMEZONE_AWARE": True}
    when = dateparser.parse(text, settings=settings)
    if when is None:
        raise UsageError(
            f"cannot read the time '{text}'; try 'yesterday', '2 hours ago', 'last monday' "
            f"or 2026-01-31 14:00"
        )
    if text.strip().lower() in ("today", "yesterday"):
        when = when.replace(hour=0, minute=0, second=0, microsecond=0)
    return when.timestamp()


@app.command()
def forget(
    ctx: typer.Context,
    since: Annotated[str | None, typer.Option(help="Forget everything injected since then.")] = None,
    source: Annotated[str | None, typer.Option(help="Forget everything from this source.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would be forgotten.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Take memory back exactly to what it would be without those injections, and wipe their text."""
    if since is None and source is None:
        raise UsageError("say what to forget: --since WHEN or --source NAME")
    start = parse_when(since) if since is not None else None
    with _open(ctx) as memory:
        ids = memory.select(since=start, source=source)
        if not ids:
            out.print("nothing to forget")
            return
        cost = memory.replay_cost(ids)
        what = (
            f"{len(ids)} injections"
            + (f" since {time.strftime('%Y-%m-%d %H:%M', time.localtime(start))}" if start else "")
            + (f" from {source}" if source else "")
        )
        eta = f", about {_duration(cost.seconds)}" if cost.seconds else ""
        out.print(f"will forget {what}; then replay {cost.rows} injections ({cost.tokens} tokens{eta}) "
                  f"to rebuild memory")
        if dry_run:
            return
        if not yes and not typer.confirm("forget them?", default=False):
            raise typer.Exit(1)
        with _progress() as bar:
            task = bar.add_task("rebuilding memory", total=cost.rows)
            memory.forget(ids, progress=lambda done, total: bar.update(task, completed=done, total=total))
    out.print(f"forgot {len(ids)} injections")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


# --- memory … -------------------------------------------------------------------------------------------


@memory_app.command("stats")
def memory_stats(
    ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False
) -> None:
    """What memory holds: injections, tokens, sources, and what still occupies the memory pool."""
    from memchat.service.stats import render_stats, stats

    data = stats(_options(ctx))
    if as_json:
        print(json.dumps(data))
    else:
        render_stats(out, data)


@memory_app.command("log")
def memory_log(
    ctx: typer.Context,
    search: Annotated[str | None, typer.Option("--search", "-s", help="Full-text search.")] = None,
    source: Annotated[str | None, typer.Option(help="Only this source.")] = None,
    since: Annotated[str | None, typer.Option(help="Only since then.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many rows.")] = 50,
) -> None:
    """The journal of injections, newest last; searchable."""
    from memchat.service.stats import render_log

    render_log(
        out,
        _options(ctx),
        search=search,
        source=source,
        since=parse_when(since) if since else None,
        limit=limit,
    )


@memory_app.command("verify")
def memory_verify(ctx: typer.Context) -> None:
    """Rebuild memory from the journal and compare it with the live state."""
    with _open(ctx) as memory, _progress() as bar:
        task = bar.add_task("rebuilding from the journal", total=None)
        live, rebuilt = memory.verify(progress=lambda d, t: bar.update(task, completed=d, total=t))
    if live != rebuilt:
        raise MemchatError(f"memory differs from its journal (live {live[:12]}, rebuilt {rebuilt[:12]})")
    out.print(f"ok: memory matches its journal ({live[:16]})")


@memory_app.command("export")
def memory_export(
    ctx: typer.Context, file: Annotated[Path, typer.Argument(help="Archive to write.")]
) -> None:
    """Write a portable archive of this memory (journal and state)."""
    from memchat.service.archive import export_memory

    with _open(ctx) as memory:
        export_memory(memory, file)
    out.print(f"exported to {file}")


@memory_app.command("import")
def memory_import(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="Archive to read.")],
    force: Annotated[bool, typer.Option(help="Replace a memory that is not empty.")] = False,
) -> None:
    """Replace this memory with an exported archive."""
    from memchat.service.archive import import_memory

    rows = import_memory(_options(ctx), file, force=force)
    out.print(f"imported {rows} injections from {file}")


def main() -> None:
    """Entry point: user errors are one red line; tracebacks only with --debug."""
    debug = "--debug" in sys.argv
    try:
        app()
    except MemchatError as error:
        if debug:
            raise
        err.print(f"[red]error:[/] {error}")
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()

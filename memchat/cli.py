"""The `memchat` command line. Thin: it parses, asks the service, and prints; heavy modules load only
inside the commands that need them, so `memchat --help` and `memchat memory stats` start without torch."""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from memchat.config import CPU_DEFAULT_MODEL, GPU_DEFAULT_MODEL, setting_help
from memchat.errors import MemchatError
from memchat.eval.cli import eval_app
from memchat.train.cli import train_app

app = typer.Typer(
    help="A terminal chat agent with lifelong memory (MemoryLLM / M+). Without a command: chat.",
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
memory_app = typer.Typer(help="Inspect, verify, export and import what memory holds.", no_args_is_help=True)
model_app = typer.Typer(help="List and download models.", no_args_is_help=True)
config_app = typer.Typer(help="Settings: flags, environment, then config.toml.", no_args_is_help=True)
app.add_typer(memory_app, name="memory")
app.add_typer(model_app, name="model")
app.add_typer(config_app, name="config")
app.add_typer(eval_app, name="eval")
app.add_typer(train_app, name="train")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
NANO_NOTE = (
    "memchat-nano: a small demo model memchat trained on one chat domain (where you live, your family and "
    "pets, your job, your favourite things) that knows nothing else; with an NVIDIA GPU memchat runs "
    f"{GPU_DEFAULT_MODEL}. Choose a model with --model."
)


class UsageError(MemchatError):
    pass


@app.callback(invoke_without_command=True)
def main_options(
    ctx: typer.Context,
    home: Annotated[
        Path | None, typer.Option(help="Where memchat keeps its data and config. \\[env: MEMCHAT_HOME]")
    ] = None,
    profile: Annotated[str | None, typer.Option(help=setting_help("profile"))] = None,
    model: Annotated[str | None, typer.Option(help=setting_help("model"))] = None,
    device: Annotated[str | None, typer.Option(help=setting_help("device"))] = None,
    quant: Annotated[str | None, typer.Option(help=setting_help("quant"))] = None,
    seed: Annotated[int | None, typer.Option(help=setting_help("seed"))] = None,
    debug: Annotated[bool, typer.Option(help="Show tracebacks.")] = False,
) -> None:
    from memchat.config import load_config

    flags = {"profile": profile, "model": model, "device": device, "quant": quant, "seed": seed}
    ctx.obj = {"config": load_config(flags, home=home), "debug": debug}
    if ctx.invoked_subcommand is None:
        _chat(ctx)


def _config(ctx: typer.Context):
    return ctx.obj["config"]


def _options(ctx: typer.Context):
    """The service's Options from the effective settings; explains when no model can be chosen."""
    from memchat.service.memory import Options

    config = _config(ctx)
    budget = {} if config.snapshot_budget is None else {"snapshot_budget": config.snapshot_budget}
    return Options(
        home=config.home,
        profile=config.profile,
        model=config.model,
        device=config.device,
        quant=config.quant,
        seed=config.seed,
        **budget,
    )


def _open(ctx: typer.Context):
    """Open the memory, with a progress bar when recovery has rows to replay."""
    from memchat.chat.ui import progress_bar, progress_callback
    from memchat.service.memory import Memory

    config = ctx.obj["config"] = _config(ctx).for_this_machine()
    if config.origins["model"] == "default" and config.model == CPU_DEFAULT_MODEL:
        err.print(f"[dim]{NANO_NOTE}[/]")
    options = _options(ctx)
    with progress_bar(err) as bar:
        return Memory.open(
            options,
            notice=lambda m: err.print(f"[yellow]{m}[/]"),
            progress=progress_callback(bar, "replaying journal"),
        )


# --- chat -------------------------------------------------------------------------------------------------


def _chat(ctx: typer.Context) -> None:
    """The REPL (memchat with no command)."""
    from memchat.chat.repl import run_chat

    if not sys.stdin.isatty():
        raise UsageError('the chat needs a terminal; from a script use: memchat ask "…"')
    with _open(ctx) as memory:
        memory.require_holder()
        run_chat(memory, _config(ctx), out)
    out.print("[dim]memory saved[/]")


@app.command()
def ask(
    ctx: typer.Context,
    question: Annotated[
        str | None, typer.Argument(help="The question; '-' or nothing reads it from stdin.")
    ] = None,
    no_remember: Annotated[
        bool, typer.Option("--no-remember", help="Do not inject this exchange into memory.")
    ] = False,
    temperature: Annotated[float | None, typer.Option(help=setting_help("temperature"))] = None,
    top_p: Annotated[float | None, typer.Option(help=setting_help("top_p"))] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help=setting_help("max_new_tokens"))] = None,
) -> None:
    """Answer one question from memory, streamed to stdout (for scripts); the exchange is remembered."""
    from memchat.chat.ui import stream_reply
    from memchat.interrupts import deferred_interrupt

    text = _question(question)
    config = _config(ctx).override(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    with _open(ctx) as memory:
        memory.require_holder()
        pieces = memory.reply([{"role": "user", "content": text}], memory.sampling(**config.generation()))
        reply = stream_reply(out, pieces)
        out.out("")
        if not no_remember:
            with deferred_interrupt():
                memory.remember_turn(text, reply)


def _question(question: str | None) -> str:
    if question is None and sys.stdin.isatty():
        raise UsageError('ask what? memchat ask "…", or pipe the question on stdin')
    text = sys.stdin.read() if question in (None, "-") else question
    if not text.strip():
        raise UsageError("the question is empty")
    return text.strip()


# --- ingest ---------------------------------------------------------------------------------------------


@app.command()
def ingest(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="Files and folders (recursive).")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be injected.")] = False,
    max_size: Annotated[float, typer.Option(help="Largest file to take, in MB.")] = 10.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="List every file.")] = False,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Then keep ingesting files as they change; Ctrl-C stops.")
    ] = False,
) -> None:
    """Inject files into memory: text, Markdown, code and PDF. Unchanged files are skipped."""
    from memchat.chat.actions import QUEUED_NOTE, ingest_files, ingest_summary
    from memchat.ingest.watch import Watch

    if watch and dry_run:
        raise UsageError("--watch and --dry-run do not go together")
    max_bytes = int(max_size * 1024 * 1024)
    # The watch starts before the first pass, so a file saved during that pass is not missed.
    with _open(ctx) as memory, Watch(paths) if watch else nullcontext() as changes:
        report = ingest_files(memory, paths, err, dry_run=dry_run, max_bytes=max_bytes, verbose=verbose)
        out.print(ingest_summary(report, dry_run))
        if report.queued:
            out.print(f"[dim]{QUEUED_NOTE}[/]")
        if changes is not None:
            _follow(memory, paths, changes, max_bytes)


def _follow(memory, paths: list[Path], changes, max_bytes: int) -> None:
    """Ingest again after each burst of changes: a line per new or changed file; Ctrl-C stops."""
    from memchat.chat.actions import QUEUED_NOTE, ingest_files, ingest_summary
    from memchat.interrupts import deferred_interrupt

    held = "" if memory.holder else f" ({QUEUED_NOTE})"
    out.print(f"watching {', '.join(map(str, paths))} for changes{held}; Ctrl-C stops")
    reported: set[Path] = set()
    try:
        for _ in changes.bursts():
            with deferred_interrupt():
                report = ingest_files(memory, paths, out, max_bytes=max_bytes, reported=reported)
            if report.files:
                out.print(ingest_summary(report))
    except KeyboardInterrupt:
        out.print("stopped watching")


# --- forget ---------------------------------------------------------------------------------------------


@app.command()
def forget(
    ctx: typer.Context,
    since: Annotated[str | None, typer.Option(help="Forget everything injected since then.")] = None,
    source: Annotated[str | None, typer.Option(help="Forget everything from this source.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would be forgotten.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Take memory back exactly to what it would be without those injections, and wipe their text."""
    from memchat.chat.actions import forget_matching
    from memchat.chat.when import parse_when

    if since is None and source is None:
        raise UsageError("say what to forget: --since WHEN or --source NAME")
    start = parse_when(since) if since is not None else None

    def confirm(question: str) -> bool:
        return yes or typer.confirm(question, default=False)

    with _open(ctx) as memory:
        if forget_matching(memory, out, confirm, since=start, source=source, dry_run=dry_run) is None:
            raise typer.Exit(1)


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
    from memchat.chat.when import parse_when
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
    from memchat.chat.ui import progress_bar
    from memchat.service.memory import setups

    with _open(ctx) as memory, progress_bar(err) as bar:
        task = bar.add_task("rebuilding from the journal", total=None)
        live, rebuilt = memory.verify(progress=lambda d, t: bar.update(task, completed=d, total=t))
        current = memory.setup
        others = sorted({setup for _, setup in setups(memory.journal)} - {current})
    if live != rebuilt:
        why = (
            f"; it holds injections computed with {', '.join(others)}, and this run's {current} computes "
            "them slightly differently, so a difference is expected"
            if others
            else ""
        )
        raise MemchatError(f"memory differs from its journal (live {live[:12]}, rebuilt {rebuilt[:12]}){why}")
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
    from memchat.chat.actions import counted
    from memchat.service.archive import import_memory

    rows = import_memory(_options(ctx), file, force=force)
    out.print(f"imported {counted(rows, 'injection')} from {file}")


# --- model … --------------------------------------------------------------------------------------------


@model_app.command("list")
def model_list(ctx: typer.Context) -> None:
    """The model presets and which are on this machine (looks in the Hugging Face cache, offline)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound
    from rich.table import Table

    from memchat.engine.load import presets

    try:
        cached = {repo.repo_id: repo.size_on_disk for repo in scan_cache_dir().repos}
    except (CacheNotFound, OSError):  # no cache yet, or one we cannot read: nothing downloaded
        cached = {}
    current = _config(ctx).model
    table = Table("", "preset", "what", "on this machine", box=None)
    for name, what in presets().items():
        table.add_row("*" if name == current else "", name, what, _on_this_machine(name, cached))
    out.print(table)
    out.print("[dim]* the current model; `memchat model pull NAME` downloads one[/]")
    if current is None:
        out.print("[dim]no model chosen, and no CUDA GPU for the default: --model tiny tries memchat out[/]")


def _on_this_machine(preset: str, cached: dict[str, int]) -> str:
    from memchat.engine.load import HUB_PRESETS, TINY_PRESETS, LoadError, resolve
    from memchat.ingest.files import _human as human_size

    if preset in TINY_PRESETS:
        return "built in"
    repo = HUB_PRESETS.get(preset)
    if repo is not None:
        return f"downloaded ({human_size(cached[repo])})" if repo in cached else "-"
    try:  # a preset shipped as files (nano): there or not
        return f"installed ({resolve(preset)})"
    except LoadError:
        return "-"


@model_app.command("pull")
def model_pull(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="A preset or a hub id (owner/name).")]
) -> None:
    """Download a model into the Hugging Face cache, with progress."""
    from memchat.engine.load import resolve
    from memchat.store import memchat_home

    folder = resolve(name, memchat_home(_config(ctx).home) / "cache")
    out.print(f"{name} is ready in {folder}")


# --- config … -------------------------------------------------------------------------------------------


@config_app.command("show")
def config_show(ctx: typer.Context) -> None:
    """The effective settings and where each comes from (flag, environment, config.toml, default)."""
    from rich.markup import escape
    from rich.table import Table

    from memchat.config import SETTINGS
    from memchat.store import memchat_home

    config = _config(ctx)
    table = Table("setting", "value", "from", box=None)
    table.add_row("home", escape(str(memchat_home(config.home))), config.origins["home"])
    for spec in SETTINGS:
        value, origin = getattr(config, spec.name), config.origins[spec.name]
        shown = escape(str(value)) if value is not None else f"[dim]{spec.metadata['unset']}[/]"
        table.add_row(spec.name, shown, config.path.name if origin == str(config.path) else origin)
    out.print(table)
    if config.path.exists():
        out.print(f"{config.path.name}: {escape(str(config.path))}")
    else:
        example = 'model = "tiny"'
        out.print(f"no {config.path.name} yet; create {escape(str(config.path))} with lines like: {example}")


@config_app.command("path")
def config_path(ctx: typer.Context) -> None:
    """Where config.toml is read from (it may not exist yet)."""
    print(_config(ctx).path)


def main() -> None:
    """Entry point: user errors are one red line; tracebacks only with --debug."""
    debug = "--debug" in sys.argv
    try:
        app()
    except MemchatError as error:
        if debug:
            raise
        from rich.markup import escape

        err.print(f"[red]error:[/] {escape(str(error))}")
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()

"""`memchat eval …`: a typer sub-app the main CLI mounts (`app.add_typer(eval_app, name="eval")`); it
takes --model, --device, --quant and --home from the main CLI's settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

eval_app = typer.Typer(help="Measure what a memory model remembers.", no_args_is_help=True)


@eval_app.callback()
def _group() -> None:
    """Measure what a memory model remembers."""


def parse_distances(text: str) -> list[int]:
    from memchat.eval.retention import EvalError

    try:
        values = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise EvalError(f"--d takes comma-separated whole numbers such as 0,1,4,16, not {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise EvalError(f"--d takes comma-separated whole numbers ≥ 0, not {text!r}")
    return values


@eval_app.command("retention")
def retention(
    ctx: typer.Context,
    data: Annotated[
        Path | None,
        typer.Option(help="JSONL of {context, question, answer} (+ before, stale: an update question); "
                          "default: nano's held-out facts."),
    ] = None,
    distractors: Annotated[
        Path | None,
        typer.Option(help="Unrelated contexts (.jsonl, or text: paragraphs or lines); default: chit-chat, "
                          "or the other contexts of --data."),
    ] = None,
    n: Annotated[int, typer.Option("--n", help="Questions (per D), and as many update questions.")] = 32,
    d: Annotated[str, typer.Option("--d", help="Distractor counts D.")] = "0,1,2,4,8,16,32,64",
    seed: Annotated[int, typer.Option(help="Picks questions, distractors and drop seeds.")] = 0,
    tokens: Annotated[int, typer.Option(help="A hit must appear in this many generated tokens.")] = 16,
    model: Annotated[str | None, typer.Option(help="Model to test (default: the global --model).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Draw recall against D into this PNG.")] = None,
) -> None:
    """Knowledge retention: recall after D unrelated contexts, and a no-context control.

    Inject a context, then D unrelated ones, and ask; a hit is the answer within the first --tokens
    generated tokens. Uses the model alone: your memory and journal are not touched.
    """
    config = ctx.obj["config"].for_this_machine()  # the main CLI's settings: flags, environment, config.toml
    retention_command(
        model=model or config.model, device=config.device, quant=config.quant, home=config.home,
        data=data, distractors=distractors, n=n, distances=parse_distances(d), seed=seed, tokens=tokens,
        as_json=as_json, plot_path=plot,
    )


def retention_command(
    *,
    model: str,
    device: str | None = None,
    quant: str | None = None,
    home: Path | None = None,
    data: Path | None = None,
    distractors: Path | None = None,
    n: int = 32,
    distances: list[int] | None = None,
    seed: int = 0,
    tokens: int = 16,
    as_json: bool = False,
    plot_path: Path | None = None,
) -> dict:
    """The command's work, callable without typer; returns the JSON object it prints with --json."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from memchat.engine.engine import Engine
    from memchat.engine.load import resolve
    from memchat.eval import retention as rt
    from memchat.service.memory import check_gpu_fits
    from memchat.store import memchat_home

    if n < 1:
        raise rt.EvalError("--n must be at least 1")
    distances = distances if distances is not None else list(rt.DEFAULT_DISTANCES)
    if plot_path is not None:
        rt.require_matplotlib()
    if data is not None:
        loaded = rt.load_items(data)
        items = [i for i in loaded if i.before is None][:n] + [i for i in loaded if i.before is not None][:n]
        pool = rt.load_contexts(distractors) if distractors else [i.context for i in loaded]
    else:
        items = rt.builtin_items(n, seed)
        pool = rt.load_contexts(distractors) if distractors else rt.builtin_distractors(500, seed)
    err = Console(stderr=True, highlight=False)
    cache_dir = memchat_home(home) / "cache"
    folder = resolve(model, cache_dir)
    check_gpu_fits(model, folder, device, quant)
    engine = Engine.load(folder, device, quant, cache_dir=cache_dir)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(f"retention of {model}", total=None)
        result = rt.run_retention(
            engine, items, pool, distances, seed, tokens,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    title = f"knowledge retention: {model}"
    if plot_path is not None:
        rt.plot(result, plot_path, title)
    out = result.to_json()
    if as_json:
        print(json.dumps(out))
    else:
        console = Console(highlight=False)
        rt.render_table(console, result, title)
        if plot_path is not None:
            console.print(f"plot written to {plot_path}")
    return out


"""`memchat train …`: a typer sub-app the main CLI mounts (`app.add_typer(train_app, name="train")`)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    import torch

train_app = typer.Typer(help="Train memchat's own memory model.", no_args_is_help=True)


@train_app.callback()
def _group() -> None:
    """Train memchat's own memory model."""


@train_app.command("nano")
def nano_command(
    out: Annotated[Path, typer.Option(help="Run folder: training state in train/, the model in model/.")],
    seed: Annotated[int | None, typer.Option(help="Seed of weights and episodes (default 0).")] = None,
    minutes: Annotated[float | None, typer.Option(help="Stop (saving) after this long; run again to resume.")]
    = None,
    steps: Annotated[int | None, typer.Option(help="Length of the schedule (default 16000).")] = None,
    batch: Annotated[int | None, typer.Option(help="Episodes per step (default 16).")] = None,
    size: Annotated[str | None, typer.Option(help="nano, or micro for a quick try.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    save_every: Annotated[int | None, typer.Option(help="Save every this many steps.")] = None,
    eval_every: Annotated[int | None, typer.Option(help="Held-out recall every this many steps.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch (default: all cores).")] = None,
    device: Annotated[str, typer.Option(help="cpu, or cuda for a GPU (not bit-reproducible).")] = "cpu",
    settings: Annotated[list[str] | None, typer.Option(
        "--set", help="Any other training setting, NAME=VALUE (VALUE in JSON); repeatable.")] = None,
) -> None:
    """Train memchat-nano on the personal-facts domain, or resume the run in --out. Deterministic for a
    seed; Ctrl-C (or SIGTERM) saves. The model lands in OUT/model (copy it to assets/memchat-nano to ship
    it)."""
    overrides = {
        k: v
        for k, v in dict(seed=seed, steps=steps, batch=batch, size=size, lr=lr, save_every=save_every,
                         eval_every=eval_every).items()
        if v is not None
    }
    overrides.update(parse_settings(settings or []))
    train_command(out, overrides, minutes=minutes, threads=threads, device=device)


def parse_settings(pairs: list[str]) -> dict[str, object]:
    """`--set NAME=VALUE` pairs as TrainConfig overrides, each checked against its setting's type."""
    import json
    from dataclasses import fields

    from memchat.train.trainer import TrainConfig, TrainError

    defaults = {f.name: f.default for f in fields(TrainConfig)}
    settings = {}
    for pair in pairs:
        name, _, text = pair.partition("=")
        if name not in defaults:
            known = ", ".join(sorted(defaults))
            raise TrainError(f"--set {pair}: there is no setting {name!r} (the settings: {known})")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        default = defaults[name]
        if not _fits(value, default):
            like = "a whole number ≥ 1" if default is None else f"a value like {json.dumps(default)}"
            raise TrainError(f"--set {pair}: {name} takes {like}")
        settings[name] = value
    return settings


def _fits(value: object, default: object) -> bool:
    if default is None:  # an optional count
        return value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)
    if isinstance(default, bool) or isinstance(value, bool):
        return type(value) is type(default)
    if isinstance(default, float):
        return isinstance(value, int | float)
    return isinstance(value, list if isinstance(default, tuple) else type(default))


def training_device(name: str) -> torch.device:
    """The torch device `--device` names; a clear error where it is not there."""
    import torch

    from memchat.train.trainer import TrainError

    try:
        device = torch.device(name)
    except RuntimeError:
        raise TrainError(f"unknown device {name!r}: use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainError("no CUDA GPU here: train with --device cpu")
    return device


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM stops training the way Ctrl-C does (saving): `kill` is how a run started in the
    background (where SIGINT is ignored) is stopped."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def train_command(
    out: Path, overrides: dict | None = None, minutes: float | None = None, threads: int | None = None,
    max_steps: int | None = None, show_progress: bool = True, device: str = "cpu",
):
    """The command's work, callable without typer; returns the run's RunReport."""
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from memchat.train.trainer import Trainer, train

    if threads:
        torch.set_num_threads(threads)
    console = Console(stderr=True, highlight=False)
    on = training_device(device)
    trainer = Trainer.open(Path(out), overrides=overrides or {}, device=on)
    tc = trainer.tc
    verb = f"resuming at step {trainer.step}" if trainer.step else "starting"
    where = f"{torch.get_num_threads()} threads" if on.type == "cpu" else str(on)
    console.print(f"{verb}: {tc.size}, seed {tc.seed}, batch {tc.batch}, {tc.steps} steps, "
                  f"{where} → {Path(out) / 'model'}")
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f} recall {task.fields[recall]:.2f} D≤{task.fields[top]} "
                   "{task.fields[rate]:.2f}/s"),
        TimeElapsedColumn(),
    )
    state = {"loss": None, "recall": None}
    with Progress(*columns, console=console, disable=not show_progress) as bar:
        task = bar.add_task("training", total=tc.steps, completed=trainer.step, loss=0.0, recall=0.0,
                            top=trainer.curriculum.top(tc), rate=0.0)
        start_step = trainer.step

        def on_step(tr, result, distance, seconds):
            ema = lambda old, new: new if old is None else 0.95 * old + 0.05 * new  # noqa: E731
            state["loss"] = ema(state["loss"], result.loss)
            if result.recall is not None:
                state["recall"] = ema(state["recall"], result.recall)
            bar.update(task, completed=tr.step, loss=state["loss"], recall=state["recall"] or 0.0,
                       top=tr.curriculum.top(tc), rate=(tr.step - start_step) / max(seconds, 1e-9))

        def on_eval(tr, held):
            text = " ".join(f"D{d}:{r:.2f}" for d, r in held.items())
            bar.console.print(f"step {tr.step}: held-out recall {text}")

        try:
            with _terminate_as_interrupt():
                report = train(trainer, minutes=minutes, max_steps=max_steps, on_step=on_step,
                               on_eval=on_eval)
        except KeyboardInterrupt:
            bar.stop()
            console.print(f"interrupted: saved at step {trainer.step} ({trainer.seconds / 60:.1f} min of "
                          f"training in all); run the same command again to continue")
            raise
    rate = report.steps / report.seconds if report.seconds else 0.0
    first = f"{report.first_loss:.3f}" if report.first_loss is not None else "-"
    last = f"{report.last_loss:.3f}" if report.last_loss is not None else "-"
    console.print(f"{report.steps} steps in {report.seconds / 60:.1f} min ({rate:.2f} step/s), now at step "
                  f"{report.step}/{tc.steps} ({trainer.seconds / 60:.1f} min of training in all), "
                  f"curriculum D≤{tc.levels[report.level]}; loss {first} → {last}")
    console.print(f"model: {Path(out) / 'model'}" + ("" if report.step >= tc.steps else
                                                      "  (run the same command again to continue)"))
    return report


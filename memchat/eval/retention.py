"""Knowledge retention, the MemoryLLM paper's protocol, for any model the engine loads.

For each question: inject its context, then D unrelated contexts, ask, and count a hit when the answer
appears (case-insensitive) in the first tokens of the greedy reply. A control asks the same question of
the untouched memory. D runs over a list; for one question the distractor sequence is fixed, and the
question is asked after the first D distractors for each D in turn: the memory after D distractors is
exactly what a separate run with those D distractors would build, at a fraction of the injections.

It works on the engine alone, from the checkpoint's initial memory state for every question, with
explicit drop seeds: no journal, no profile, nothing of the user's memory is read or written.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memchat.errors import MemchatError
from memchat.seeds import seed_of

DEFAULT_DISTANCES = (0, 1, 2, 4, 8, 16, 32, 64)
DEFAULT_TOKENS = 16

Context = str | dict  # plain text, or a chat turn {"user": ..., "assistant": ...}


class EvalError(MemchatError):
    pass


@dataclass(frozen=True)
class Item:
    context: Context
    question: str
    answer: str
    # An update question: `before` told an older value (`stale`) that `context` changes ("I moved to
    # Paris."); the reply must give the newer value and not the older one.
    before: Context | None = None
    stale: str | None = None


@dataclass
class RetentionResult:
    n: int
    distances: list[int]
    hits: dict[int, int]
    control_hits: int
    abstained: int
    updates: int = 0  # update questions asked
    updated: int = 0  # ... answered with the newer value and not the older
    # Right after a context, another item's question it does not answer: the reply should say it does not
    # know rather than give the fact just told (or invent one).
    asked_other: int = 0
    abstained_other: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def recall(self) -> dict[int, float]:
        return {d: self.hits[d] / self.n for d in self.distances}

    @property
    def control(self) -> float:
        return self.control_hits / self.n

    @property
    def abstain(self) -> float:
        return self.abstained / self.n

    @property
    def update(self) -> float | None:
        return self.updated / self.updates if self.updates else None

    @property
    def abstain_other(self) -> float | None:
        return self.abstained_other / self.asked_other if self.asked_other else None

    def to_json(self) -> dict[str, Any]:
        return {
            "recall": {str(d): r for d, r in self.recall.items()},
            "control": self.control,
            "abstain": self.abstain,
            "update": self.update,
            "abstain_other": self.abstain_other,
            "n": self.n,
        }


# --- data ---------------------------------------------------------------------------------------------


def _check_context(value: Any, where: str) -> Context:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, dict) and all(isinstance(value.get(k), str) for k in ("user", "assistant")):
        return {"user": value["user"], "assistant": value["assistant"]}
    raise EvalError(f"{where}: a context is a non-empty string or an object with 'user' and 'assistant'")


def _jsonl(path: Path) -> list[tuple[str, Any]]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise EvalError(f"cannot read {path}: {e.strerror or e}") from None
    out = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                out.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise EvalError(f"{path}:{number}: not JSON ({e.msg})") from None
    return out


def load_items(path: Path) -> list[Item]:
    """A JSONL file of {"context": text or {user, assistant}, "question": ..., "answer": ...}; a row
    with "before" (an earlier context) and "stale" (its answer) is an update question."""
    items = []
    for where, row in _jsonl(path):
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("question", "answer")):
            raise EvalError(f"{where}: expected an object with 'context', 'question' and 'answer'")
        before = row.get("before")
        if before is not None and not isinstance(row.get("stale"), str):
            raise EvalError(f"{where}: an update question ('before') needs 'stale', the older answer")
        items.append(Item(
            _check_context(row.get("context"), where), row["question"], row["answer"],
            None if before is None else _check_context(before, where), row.get("stale") if before else None,
        ))
    if not items:
        raise EvalError(f"{path}: no questions")
    return items


def load_contexts(path: Path) -> list[Context]:
    """Distractor contexts: a .jsonl file (each line a string, {user, assistant}, or an object with
    "context" or "text"), or a text file (paragraphs separated by blank lines; else one per line)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        out = []
        for where, row in _jsonl(path):
            if isinstance(row, dict) and ("context" in row or "text" in row):
                row = row.get("context", row.get("text"))
            out.append(_check_context(row, where))
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise EvalError(f"cannot read {path}: {e.strerror or e}") from None
        parts = [p.strip() for p in text.split("\n\n")]
        if sum(1 for p in parts if p) <= 1:
            parts = [line.strip() for line in text.splitlines()]
        out = [p for p in parts if p]
    if not out:
        raise EvalError(f"{path}: no contexts")
    return out


def builtin_items(n: int, seed: int) -> list[Item]:
    """memchat-nano's held-out set: n facts with values never used in training, one relation after
    another, then n update questions (an older value, then the change to a held-out one)."""
    from memchat.train.domain import HELDOUT, Domain

    domain = Domain(HELDOUT)
    return [Item(**i) for i in [*domain.items(n, seed), *domain.update_items(n, seed)]]


def builtin_distractors(n: int, seed: int) -> list[Context]:
    from memchat.train.domain import Domain

    return list(Domain().distractor_contexts(n, seed))


def abstain_markers() -> tuple[str, ...]:
    from memchat.train.domain import ABSTAIN_MARKERS

    return ABSTAIN_MARKERS


# --- the protocol -------------------------------------------------------------------------------------


def context_chunks(engine, context: Context) -> list[list[int]]:
    """Token ids of a context as memchat injects it: a chat turn in the model's own turn format, cut
    into injections no longer than the model takes."""
    from memchat.service.chunk import chunk_text

    tokenizer = engine.tokenizer
    if not isinstance(context, str):
        context = tokenizer.format_turn(context["user"], context["assistant"])
    chunks = chunk_text(context, tokenizer.offsets, engine.config.max_injection_tokens)
    return [tokenizer.encode(c) for c in chunks]


def inject_context(engine, context: Context, seed: int, question: int, position: int) -> int:
    """Inject a context's chunks, each with the seed of its position in the question's sequence of
    injections; returns the next position."""
    for chunk in context_chunks(engine, context):
        engine.inject(chunk, seed=seed_of("retention", seed, question, position), origin=position)
        position += 1
    return position


def ask(engine, question: str, max_new_tokens: int) -> str:
    from memchat.engine.generate import Sampling

    prompt = engine.tokenizer.encode_prompt([{"role": "user", "content": question}])
    ids = list(engine.generate_ids(prompt, Sampling(temperature=0.0, max_new_tokens=max_new_tokens)))
    return engine.tokenizer.decode(ids)


def run_retention(
    engine,
    items: Sequence[Item],
    distractors: Sequence[Context],
    distances: Sequence[int] = DEFAULT_DISTANCES,
    seed: int = 0,
    max_new_tokens: int = DEFAULT_TOKENS,
    progress: Callable[[int, int], None] | None = None,
    examples: int = 3,
) -> RetentionResult:
    """Run the protocol on `engine` and put its memory state back as it was. Update questions among
    `items` are asked right after their change, and counted apart."""
    distances = sorted(set(distances))
    updates = [i for i in items if i.before is not None]
    items = [i for i in items if i.before is None]
    if not items:
        raise EvalError("no questions to ask")
    if any(d < 0 for d in distances):
        raise EvalError("distances must be ≥ 0")
    longest = distances[-1]
    markers = abstain_markers()
    initial = engine.state
    result = RetentionResult(len(items), distances, dict.fromkeys(distances, 0), 0, 0, len(updates))
    total, done = len(items) * (len(distances) + 1) + len(updates), 0
    try:
        for q, item in enumerate(items):
            rng = random.Random(f"retention:{seed}:{q}")
            pool = [c for c in distractors if c != item.context]
            if longest and not pool:
                raise EvalError("no distractor contexts to inject")
            if len(pool) >= longest:
                sequence = rng.sample(pool, longest)
            else:
                sequence = [rng.choice(pool) for _ in range(longest)]
            engine.state = initial  # asking writes nothing
            reply = ask(engine, item.question, max_new_tokens)
            result.control_hits += _hit(reply, item.answer)
            result.abstained += any(m in reply.lower() for m in markers)
            replies = {"control": reply}
            done += 1
            if progress:
                progress(done, total)
            engine.state = initial.clone()  # the engine rewrites the pool it is given
            position = inject_context(engine, item.context, seed, q, 0)
            other = items[(q + 1) % len(items)]
            if not _answers(item.context, other):
                reply = ask(engine, other.question, max_new_tokens)
                result.asked_other += 1
                result.abstained_other += any(m in reply.lower() for m in markers)
                replies["other"] = reply
            injected = 0
            for d in distances:
                while injected < d:
                    position = inject_context(engine, sequence[injected], seed, q, position)
                    injected += 1
                reply = ask(engine, item.question, max_new_tokens)
                result.hits[d] += _hit(reply, item.answer)
                replies[str(d)] = reply
                done += 1
                if progress:
                    progress(done, total)
            if q < examples:
                result.examples.append({"question": item.question, "answer": item.answer, "replies": replies})
        for u, item in enumerate(updates, len(items)):
            engine.state = initial.clone()
            position = inject_context(engine, item.before, seed, u, 0)
            inject_context(engine, item.context, seed, u, position)
            reply = ask(engine, item.question, max_new_tokens)
            stale = item.stale.strip().lower() not in item.answer.lower() and _hit(reply, item.stale)
            result.updated += _hit(reply, item.answer) and not stale
            done += 1
            if progress:
                progress(done, total)
    finally:
        engine.state = initial
    return result


def _hit(reply: str, answer: str) -> bool:
    return answer.strip().lower() in reply.lower()


def _answers(context: Context, item: Item) -> bool:
    """Whether `context` may answer `item`: it is the item's own context, or holds its answer."""
    text = context if isinstance(context, str) else f"{context['user']} {context['assistant']}"
    return _hit(text, item.answer) or (item.context == context)


# --- output --------------------------------------------------------------------------------------------


def render_table(console, result: RetentionResult, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("distractors D", justify="right")
    table.add_column("hits", justify="right")
    table.add_column("recall", justify="right")
    for d in result.distances:
        table.add_row(str(d), f"{result.hits[d]}/{result.n}", f"{result.recall[d]:.2f}")
    table.add_section()
    table.add_row("control (no context)", f"{result.control_hits}/{result.n}", f"{result.control:.2f}")
    table.add_row("control says it does not know", f"{result.abstained}/{result.n}", f"{result.abstain:.2f}")
    if result.update is not None:
        table.add_row("after a change, the newer value", f"{result.updated}/{result.updates}",
                      f"{result.update:.2f}")
    if result.abstain_other is not None:
        table.add_row("told another fact, says it does not know",
                      f"{result.abstained_other}/{result.asked_other}", f"{result.abstain_other:.2f}")
    console.print(table)
    for ex in result.examples:
        console.print(f"[dim]{ex['question']} → expected {ex['answer']!r}; "
                      f"D={result.distances[0]}: {ex['replies'][str(result.distances[0])]!r}; "
                      f"control: {ex['replies']['control']!r}[/]")


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise EvalError("--plot needs matplotlib: pip install 'memchat[plot]'") from None


def plot(result: RetentionResult, path: Path, title: str) -> None:
    """Recall against D (symmetric-log axis, so D=0 shows), with the control as a dashed line."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result.distances, [result.recall[d] for d in result.distances], marker="o", label="recall")
    ax.axhline(result.control, linestyle="--", color="grey", label="control (no context)")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xticks(result.distances, [str(d) for d in result.distances])
    ax.set_xlim(-0.3, max(result.distances) * 1.25 + 0.3)  # symlog would leave room for negative D
    ax.set_ylim(0, 1)
    ax.set_xlabel("distractor contexts injected after the context (D)")
    ax.set_ylabel(f"recall (n={result.n})")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""What a memory holds, read from the store alone (the journal and the saved state's header), so
`memchat memory stats` and `memory log` answer at once without loading a model."""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from pathlib import Path

from memchat.service.memory import (
    LTM_ROWS_KEY,
    ORIGINS_KEY,
    Memory,
    Options,
    memory_layout,
    saved_digest,
    saved_meta,
    setups,
)
from memchat.store.journal import Journal
from memchat.store.paths import MemoryLayout

CHECKPOINT = "(checkpoint)"


def stats(options: Options, live: Memory | None = None) -> dict:
    """From the store alone (as saved), or from the live memory of the process that holds it."""
    layout = memory_layout(options)
    with Journal(layout.journal) as journal:
        counts = journal.counts()
        meta = saved_meta(layout) or {}
        digest = saved_digest(layout)
        if live is not None and live.holder:
            meta, digest = {**meta, ORIGINS_KEY: json.dumps(live.origins())}, live.digest()
            if live.ltm is not None:
                meta[LTM_ROWS_KEY] = str(live.ltm_rows())
        origins = {int(k): v for k, v in json.loads(meta.get(ORIGINS_KEY, "{}")).items()}
        rows = {i: journal.get(i) for i in origins if i >= 0}
        last = journal.last_row_time()
        computed_with = [{"from_row": first, "setup": setup} for first, setup in setups(journal)]
    total_rows = sum(origins.values())
    by_source, by_period = defaultdict(int), defaultdict(int)
    for row_id, n in origins.items():
        row = rows.get(row_id)
        by_source[row.source_name or row.source_kind if row else CHECKPOINT] += n
        by_period[time.strftime("%Y-%m-%d", time.localtime(row.created_at)) if row else CHECKPOINT] += n
    return {
        "model": options.model,
        "profile": options.profile,
        "injections": counts.applied,
        "pending": counts.pending,
        "forgotten": counts.forgotten,
        "tokens": counts.tokens,
        "by_source": {name: {"injections": n, "tokens": t} for name, (n, t) in counts.by_source.items()},
        "memory_digest": digest,
        "computed_with": computed_with,
        "snapshots": _count(layout.snapshots, "*.safetensors"),
        "disk_bytes": _disk_bytes(layout.root),
        **_ltm_rows(layout, meta),
        "last_used": last,
        "pool_rows": total_rows,
        "pool_by_source": _shares(by_source, total_rows),
        "pool_by_period": _shares(by_period, total_rows),
        "path": str(layout.root),
    }


def _ltm_rows(layout: MemoryLayout, meta: dict[str, str]) -> dict[str, int | None]:
    """M+: long-term rows in the memory, and rows whose values are on disk (live ones, and pruned ones
    that a snapshot may still need); nothing for MemoryLLM."""
    if LTM_ROWS_KEY not in meta:
        return {}
    from memchat.store.ltm import disk_rows  # here: it loads numpy, which stats otherwise never needs

    return {"ltm_rows_live": int(meta[LTM_ROWS_KEY]), "ltm_rows_on_disk": disk_rows(layout.ltm)}


def _shares(counts: dict[str, int], total: int) -> dict[str, float]:
    return {k: round(v / total, 4) for k, v in sorted(counts.items())} if total else {}


def _count(folder: Path, pattern: str) -> int:
    return sum(1 for _ in folder.glob(pattern)) if folder.is_dir() else 0


def _disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def render_stats(console, data: dict) -> None:
    from rich.table import Table

    table = Table(title=f"memory of {data['profile']} on {data['model']}", show_header=False)
    last = (
        time.strftime("%Y-%m-%d %H:%M", time.localtime(data["last_used"])) if data["last_used"] else "never"
    )
    for label, value in (
        ("injections", f"{data['injections']} ({data['tokens']} tokens)"),
        ("pending", data["pending"]),
        ("forgotten", data["forgotten"]),
        ("last injection", last),
        ("snapshots", data["snapshots"]),
        ("on disk", f"{data['disk_bytes'] / 1e6:.1f} MB in {data['path']}"),
        ("digest", (data["memory_digest"] or "-")[:16]),
        ("computed with", _setups_line(data["computed_with"])),
    ):
        table.add_row(label, str(value))
    if "ltm_rows_live" in data:
        table.add_row("long-term rows", f"{data['ltm_rows_live']} live, {data['ltm_rows_on_disk']} on disk")
    console.print(table)
    for title, shares in (
        ("memory pool by source", data["pool_by_source"]),
        ("memory pool by day written", data["pool_by_period"]),
    ):
        if shares:
            console.print(f"[bold]{title}[/]")
            _bars(console, shares)


def _setups_line(computed_with: list[dict]) -> str:
    if len(computed_with) == 1:
        return computed_with[0]["setup"]
    return "; ".join(f"{c['setup']} from row {c['from_row']}" for c in computed_with) or "-"


def _bars(console, shares: dict[str, float], width: int = 40) -> None:
    label_width = min(40, max(len(k) for k in shares))
    for label, share in sorted(shares.items(), key=lambda kv: -kv[1])[:12]:
        bar = "█" * round(share * width)
        console.print(f"  {label[-label_width:]:>{label_width}} {bar} {share:.0%}")


def render_log(
    console, options: Options, *, search: str | None, source: str | None, since: float | None, limit: int
) -> None:
    from rich.markup import escape
    from rich.table import Table

    layout: MemoryLayout = memory_layout(options)
    with Journal(layout.journal) as journal:
        if search:
            found = [
                (hit.row, hit.snippet)
                for hit in journal.search(search, source=source, since=since, limit=limit)
            ]
        else:
            found = [(row, row.text) for row in journal.recent(limit=limit, source=source, since=since)]
    table = Table("id", "time", "source", "tokens", "status", "text")
    for row, text in found:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(row.created_at))
        preview = escape(readable(text)[:160]) if text else "[dim](forgotten)[/]"
        table.add_row(
            str(row.id), when, row.source_name or row.source_kind, str(row.token_count), row.status, preview
        )
    console.print(table)


_TURN_MARKUP = re.compile(r"<\|start_header_id\|>(\w+)<\|end_header_id\|>|<\|eot_id\|>|<\|begin_of_text\|>")


def readable(text: str) -> str:
    """A journal row for people: chat turns as 'user: … assistant: …' rather than template tokens."""
    text = _TURN_MARKUP.sub(lambda m: f" {m.group(1)}: " if m.group(1) else " ", text)
    return " ".join(text.split())


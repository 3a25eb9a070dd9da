"""`memchat ingest`: walk the paths, read each new or changed file, inject only chunks not yet in memory.

A file's sha256 says whether it changed since its last ingest; a chunk's sha256 says whether that piece
of text is already journaled for the file, so an edit injects only the chunks it created.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from memchat.ingest.files import DEFAULT_MAX_BYTES, Found, IngestError, Skipped, read_text, walk

SOURCE_KIND = "file"


@dataclass
class FilePlan:
    path: Path
    chunks: list[str]  # the chunks not yet in memory
    tokens: int
    note: str | None = None


@dataclass
class IngestReport:
    files: int = 0
    unchanged: int = 0
    chunks: int = 0
    tokens: int = 0
    queued: bool = False
    skipped: list[Skipped] = field(default_factory=list)


def plan_file(memory, found: Found, max_bytes: int = DEFAULT_MAX_BYTES) -> FilePlan | None:
    """What ingesting one file would inject; None when the file is unchanged since its last ingest."""
    from memchat.store import sha256_text

    if memory.journal.file_unchanged(found.path):
        return None
    text, note = read_text(found.path, max_bytes=max_bytes)
    known = memory.journal.chunk_hashes(str(found.path))
    chunks = [c for c in memory.chunks(text) if sha256_text(c) not in known]
    return FilePlan(found.path, chunks, sum(len(memory.tokenizer.encode(c)) for c in chunks), note)


def ingest(
    memory,
    paths: Sequence[str | Path],
    *,
    dry_run: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
    on_file: Callable[[FilePlan], None] | None = None,
    on_skip: Callable[[Skipped], None] | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> IngestReport:
    """Ingest files and folders in a stable order; with `dry_run` only report what would be injected."""
    report = IngestReport()
    for item in walk(paths, max_bytes):
        if isinstance(item, Skipped):
            report.skipped.append(item)
            if on_skip:
                on_skip(item)
            continue
        try:
            plan = plan_file(memory, item, max_bytes)
        except IngestError as error:
            skipped = Skipped(item.path, str(error))
            report.skipped.append(skipped)
            if on_skip:
                on_skip(skipped)
            continue
        if plan is None:
            report.unchanged += 1
            continue
        report.files += 1
        report.chunks += len(plan.chunks)
        report.tokens += plan.tokens
        if on_file:
            on_file(plan)
        if dry_run:
            continue
        if plan.chunks:
            result = memory.inject_chunks(
                plan.chunks,
                SOURCE_KIND,
                str(plan.path),
                progress=(lambda done, total: on_chunk(1)) if on_chunk else None,
            )
            report.queued = report.queued or result.queued
        memory.journal.record_file(plan.path)
    return report

"""`memchat ingest --watch`: after the first pass, ingest again after each burst of file changes.

A burst ends after a quiet spell with no events, so an editor's save (write, rename, chmod) or a `git
checkout` of many files is one pass, not dozens. A pass walks the given paths again rather than
ingesting the paths the events named: the walk already knows what to leave out (hidden files,
.gitignore, binaries), and the pipeline only injects what is new.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

# Reads (opened, closed_no_write) are left out: ingesting reads the files, which would start a new burst.
_CHANGES = {"created", "modified", "moved", "deleted", "closed"}


class _Changes(FileSystemEventHandler):
    def __init__(self) -> None:
        self.last = 0.0  # monotonic time of the latest change
        self.pending = threading.Event()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in _CHANGES:
            self.last = time.monotonic()
            self.pending.set()


class Watch:
    """Changes under `paths`, seen from the moment the watch is entered, so that a first pass run inside
    it misses nothing; `bursts()` yields once after each burst, when `quiet` seconds pass without
    another change, until `stop` is set (or Ctrl-C)."""

    def __init__(
        self, paths: Sequence[str | Path], quiet: float = 0.5, stop: threading.Event | None = None
    ) -> None:
        self.quiet = quiet
        self.stop = stop or threading.Event()
        self._changes = _Changes()
        self._observer = Observer()
        for folder, recursive in _watch_roots(paths):
            self._observer.schedule(self._changes, str(folder), recursive=recursive)

    def __enter__(self) -> Watch:
        self._observer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._observer.stop()
        self._observer.join()

    def bursts(self) -> Iterator[None]:
        changes = self._changes
        while not self.stop.is_set():
            if not changes.pending.wait(timeout=0.1):
                continue
            wait = changes.last + self.quiet - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, 0.1))
                continue
            changes.pending.clear()
            yield


def _watch_roots(paths: Sequence[str | Path]) -> list[tuple[Path, bool]]:
    """Folders to watch: a folder recursively; for a file, its folder alone (watchdog watches folders)."""
    roots: dict[Path, bool] = {}
    for raw in paths:
        path = Path(raw).expanduser().absolute()
        if path.is_dir():
            roots[path] = True
        elif path.parent.is_dir():
            roots.setdefault(path.parent, False)
    return list(roots.items())

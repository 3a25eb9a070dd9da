"""Errors of the store layer; each message is one line that tells the user what to do."""

from __future__ import annotations

from memchat.errors import MemchatError


class StoreError(MemchatError):
    """Base class, so the interfaces can catch every store failure in one place."""


class CorruptState(StoreError):
    """A state or snapshot file failed its checksum; it is only a cache, so it can be rebuilt."""


class CorruptJournal(StoreError):
    """The journal database is damaged; it is the source of truth, so we never repair it silently."""


class MemoryBusy(StoreError):
    """Another process holds the memory's single-writer lock."""

    def __init__(self, directory: object, pid: int | None = None, command: str | None = None,
                 since: str | None = None) -> None:
        self.pid = pid
        self.command = command
        self.since = since
        holder = "another process" if pid is None else f"pid {pid}"
        detail = " since ".join(part for part in (command, since) if part)
        if detail:
            holder += f" ({detail})"
        super().__init__(
            f"memory {directory} is held by {holder}; close that session first or use another --profile"
        )

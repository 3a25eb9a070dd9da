"""One writer per memory: an OS file lock on `memory.lock`, plus an owner note for error messages.

The OS lock (flock on POSIX, LockFileEx on Windows) is dropped by the kernel when its holder dies, even by
SIGKILL, so a crashed chat never blocks the memory. The note `memory.lock.owner` is only information: it
can be stale after a crash and is never used to decide who holds the lock.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import filelock

from .errors import MemoryBusy
from .paths import FILE_MODE, ensure_dir

LOCK_NAME = "memory.lock"
OWNER_NAME = "memory.lock.owner"


@dataclass(frozen=True)
class LockOwner:
    pid: int
    command: str
    since: float  # unix seconds when the lock was taken

    @property
    def since_text(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))


def _new_file_lock(path: Path) -> filelock.BaseFileLock:
    kwargs: dict[str, object] = {"thread_local": False}
    # Newer filelock versions can fall back to a marker-file lock where flock is missing; such a lock
    # would survive a crash, which is exactly what we must not have.
    if "fallback_to_soft" in inspect.signature(filelock.FileLock.__init__).parameters:
        kwargs["fallback_to_soft"] = False
    return filelock.FileLock(str(path), mode=FILE_MODE, **kwargs)


class MemoryLock:
    """The single-writer lock of one memory folder. Reentrant within one object, exclusive across
    processes and across separate `MemoryLock` objects of the same process."""

    def __init__(self, directory: str | Path, command: str | None = None) -> None:
        self.directory = Path(directory)
        self.command = command or " ".join(["memchat", *sys.argv[1:2]]).strip()
        self._lock = _new_file_lock(self.directory / LOCK_NAME)
        self._owner_path = self.directory / OWNER_NAME

    @property
    def held(self) -> bool:
        return self._lock.is_locked

    def try_acquire(self) -> bool:
        """Take the lock without waiting; False if another process (or object) holds it."""
        if self._lock.is_locked:
            return True
        ensure_dir(self.directory)
        try:
            self._lock.acquire(blocking=False)
        except filelock.Timeout:
            return False
        self._write_owner()
        return True

    def acquire(self) -> None:
        """Take the lock or raise `MemoryBusy` naming the holder."""
        if not self.try_acquire():
            owner = self.owner()
            if owner is None:
                raise MemoryBusy(self.directory)
            raise MemoryBusy(self.directory, owner.pid, owner.command, owner.since_text)

    def release(self) -> None:
        if not self._lock.is_locked:
            return
        with contextlib.suppress(FileNotFoundError):
            self._owner_path.unlink()
        self._lock.release(force=True)

    def owner(self) -> LockOwner | None:
        """Who wrote the owner note last; may be stale if that process crashed."""
        try:
            data = json.loads(self._owner_path.read_text(encoding="utf-8"))
            return LockOwner(int(data["pid"]), str(data["command"]), float(data["since"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write_owner(self) -> None:
        note = {"pid": os.getpid(), "command": self.command, "since": time.time()}
        tmp = self._owner_path.with_name(f".{OWNER_NAME}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(note, f)
        os.replace(tmp, self._owner_path)

    def __enter__(self) -> MemoryLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

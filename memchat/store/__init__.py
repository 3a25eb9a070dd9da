"""Disk and durability for memchat: the journal (the truth), state files, snapshots and the M+ long-term
row log (caches of it, `ltm.py`), and the single-writer lock. No model code lives here.

Names load on first use (PEP 562) so that `Journal` and `MemoryLock` do not pull in torch: a process that
only appends to the journal or probes the lock starts in milliseconds instead of a second.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .errors import CorruptJournal, CorruptState, MemoryBusy, StoreError
    from .header import UPTO_KEY, read_digest, read_meta
    from .journal import (
        LIVE,
        Counts,
        FileRecord,
        Hit,
        Journal,
        NewRow,
        Row,
        fts_query,
        sha256_file,
        sha256_text,
    )
    from .lock import LockOwner, MemoryLock
    from .paths import MemoryLayout, ensure_dir, memchat_home, memory_dir, model_key, validate_profile
    from .schema import MIGRATIONS, migrate
    from .snapshots import SnapshotInfo, SnapshotPolicy, Snapshots
    from .state import dtype_code, load_state, remove_stale_temps, save_state, state_digest

__all__ = [
    "LIVE", "MIGRATIONS", "UPTO_KEY", "CorruptJournal", "CorruptState", "Counts", "FileRecord", "Hit",
    "Journal", "LockOwner", "MemoryBusy", "MemoryLayout", "MemoryLock", "NewRow", "Row", "SnapshotInfo",
    "SnapshotPolicy", "Snapshots", "StoreError", "dtype_code", "ensure_dir", "fts_query", "load_state",
    "memchat_home", "memory_dir", "migrate", "model_key", "read_digest", "read_meta", "remove_stale_temps",
    "save_state", "sha256_file", "sha256_text", "state_digest", "validate_profile",
]

# Searched in this order; the torch-free modules come first.
_SUBMODULES = ("errors", "paths", "header", "schema", "journal", "lock", "snapshots", "state")


def __getattr__(name: str) -> Any:
    if name in __all__:
        for submodule in _SUBMODULES:
            module = importlib.import_module(f".{submodule}", __name__)
            if name in vars(module):
                value = vars(module)[name]
                globals()[name] = value
                return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

"""Snapshots of the memory state, so `forget` replays from a nearby point instead of from the checkpoint.

A snapshot named `<upto:012d>.safetensors` holds the state with every live row id <= upto applied; the
checkpoint's initial memory is the implicit snapshot 0, so it is never stored.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import CorruptState
from .header import UPTO_KEY
from .paths import ensure_dir
from .state import load_state, remove_stale_temps, save_state

log = logging.getLogger(__name__)

_NAME = re.compile(r"(\d{12})\.safetensors")


@dataclass(frozen=True)
class SnapshotInfo:
    upto: int
    path: Path
    size: int


def _report(path: Path, error: CorruptState) -> None:
    log.warning("skipping snapshot: %s", error)


class SnapshotPolicy:
    """When to take a snapshot and which ones to keep.

    Defaults: `budget_bytes` = 8 GiB, `every_rows` = 256. An 8B MemoryLLM pool is about 3.4 GB, so 8 GiB
    keeps two of them next to the live state (disk is finite, and the M+ long-term store already takes tens
    of GB); a tiny model's state is KBs, so there the thinning below, not the budget, sets the count.
    256 rows is a few minutes of replay for an 8B model and costs one extra state write per 256 injections.

    Retention keeps a spread over time: the newest, then at most one per geometric age band (ages measured
    in rows behind the newest, bands [1, 2), [2, 4), [4, 8)... x every_rows), keeping the oldest in each band
    so snapshots age into the next band instead of being replaced. Over budget, the oldest go first:
    recent rows are the ones most often forgotten, and replay from an old snapshot is long anyway.
    """

    def __init__(self, budget_bytes: int = 8 << 30, every_rows: int = 256) -> None:
        if budget_bytes < 0 or every_rows < 1:
            raise ValueError("budget_bytes must be >= 0 and every_rows >= 1")
        self.budget_bytes = budget_bytes
        self.every_rows = every_rows

    def due(self, last_upto: int | None, upto: int, state_bytes: int) -> bool:
        """Whether the state at `upto` should be snapshotted; never if one state alone exceeds the budget."""
        if state_bytes > self.budget_bytes:
            return False
        return upto - (last_upto or 0) >= self.every_rows

    def to_delete(self, snapshots: Sequence[SnapshotInfo]) -> list[SnapshotInfo]:
        """The snapshots to remove so the rest are spread over time and fit in the budget."""
        ordered = sorted(snapshots, key=lambda s: s.upto, reverse=True)
        if not ordered:
            return []
        newest = ordered[0]
        kept = [newest]
        band_of_last: int | None = None
        for snap in ordered[1:]:  # newest to oldest: the last one seen per band is its oldest
            band = max(newest.upto - snap.upto, 1) // self.every_rows
            band = band.bit_length()  # 0 for < every_rows, then 1, 2, 3... for each doubling
            if band == band_of_last:
                kept[-1] = snap
            else:
                kept.append(snap)
                band_of_last = band
        total = sum(s.size for s in kept)
        while len(kept) > 1 and total > self.budget_bytes:
            total -= kept.pop().size
        if total > self.budget_bytes:
            kept = []
        keep = {s.path for s in kept}
        return [s for s in ordered if s.path not in keep]


class Snapshots:
    """The `snapshots/` folder of one memory."""

    def __init__(self, directory: str | Path, policy: SnapshotPolicy | None = None) -> None:
        self.directory = Path(directory)
        self.policy = policy or SnapshotPolicy()

    def path_for(self, upto: int) -> Path:
        return self.directory / f"{upto:012d}.safetensors"

    def list(self) -> list[SnapshotInfo]:
        """Snapshots on disk, oldest first (unverified)."""
        found = []
        if not self.directory.is_dir():
            return found
        for entry in self.directory.iterdir():
            match = _NAME.fullmatch(entry.name)
            if match:
                with contextlib.suppress(FileNotFoundError):
                    found.append(SnapshotInfo(int(match.group(1)), entry, entry.stat().st_size))
        return sorted(found, key=lambda s: s.upto)

    def due(self, upto: int, state_bytes: int) -> bool:
        snaps = self.list()
        return self.policy.due(snaps[-1].upto if snaps else None, upto, state_bytes)

    def save(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str], upto: int) -> Path:
        """Write a snapshot of a state at `upto` (atomic, checksummed), then prune."""
        ensure_dir(self.directory)
        path = self.path_for(upto)
        save_state(path, tensors, {**meta, UPTO_KEY: str(upto)})
        self.prune()
        return path

    def link(self, state_path: str | Path, upto: int) -> Path:
        """Snapshot a state file that was just saved at `upto`, by hard link when possible.

        The state file is only ever replaced by rename, never rewritten in place, so sharing its inode is
        safe and the snapshot costs no time and, until the next save, no space. The state's metadata must
        say `journal_upto` = upto.
        """
        ensure_dir(self.directory)
        path = self.path_for(upto)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-link")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        try:
            os.link(state_path, tmp)
        except OSError:  # no hard links here (another device, some filesystems): copy instead
            shutil.copyfile(state_path, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        self.prune()
        return path

    def prune(self) -> list[Path]:
        """Apply the policy; also clears temp files of saves that were killed."""
        remove_stale_temps(self.directory)
        removed = []
        for snap in self.policy.to_delete(self.list()):
            with contextlib.suppress(FileNotFoundError):
                snap.path.unlink()
                removed.append(snap.path)
        return removed

    def invalidate_from(self, row_id: int) -> list[Path]:
        """Delete snapshots that include row `row_id` or later: after a forget they hold forgotten data."""
        removed = []
        for snap in self.list():
            if snap.upto >= row_id:
                with contextlib.suppress(FileNotFoundError):
                    snap.path.unlink()
                    removed.append(snap.path)
        return removed

    def load_before(
        self, row_id: int, on_corrupt: Callable[[Path, CorruptState], None] = _report
    ) -> tuple[dict[str, torch.Tensor], dict[str, str], int] | None:
        """Load the newest intact snapshot holding only rows < row_id: (tensors, meta, upto), or None
        meaning "start from the checkpoint's initial memory". Damaged snapshots are reported and skipped."""
        for snap in reversed(self.list()):
            if snap.upto >= row_id:
                continue
            try:
                tensors, meta = load_state(snap.path)
                if meta.get(UPTO_KEY, str(snap.upto)) != str(snap.upto):
                    raise CorruptState(f"snapshot {snap.path} says {UPTO_KEY}={meta[UPTO_KEY]}; delete it")
            except FileNotFoundError:
                continue  # pruned by another process meanwhile
            except CorruptState as error:
                on_corrupt(snap.path, error)
                continue
            return tensors, meta, snap.upto
        return None

    def latest_before(
        self, row_id: int, on_corrupt: Callable[[Path, CorruptState], None] = _report
    ) -> tuple[Path, int] | None:
        """Like `load_before` but returns (path, upto); it still reads each candidate to verify it, so
        prefer `load_before` when the tensors are wanted anyway."""
        found = self.load_before(row_id, on_corrupt)
        if found is None:
            return None
        return self.path_for(found[2]), found[2]

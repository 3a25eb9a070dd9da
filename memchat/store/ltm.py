"""The M+ long-term memory on disk: per layer, an append-only log of rows in fixed-size segment files,
read through memory maps so that only the rows a retrieval picks are paged in.

    ltm/manifest.json              format, dtype, row width and rows per segment, fixed by the first append
    ltm/layer{l:03d}/rows.sha256   32 bytes per row, the sha256 of its values, in id order: its size
                                   gives the layer's length
    ltm/layer{l:03d}/{s:08d}.rows  rows s·R … (s+1)·R − 1 as raw little-endian values, no header
    ltm/tombstones.sqlite          (layer, row, pruned_at): the journal row whose injection pruned a row

A row's id is its position in the log and never changes. A saved memory state names its long-term rows
by id and records the log lengths it was built over; restoring it cuts the log back to those lengths
(`rewind`), and replaying the journal appends the very same rows again, because updates are seeded.

Pruning writes a tombstone, not a deletion, so a snapshot older than the tombstone still sees the row.
`collect` deletes a value segment once every row in it was pruned at or before the oldest state that can
still be restored. Hash files are never collected (1/256 of the values for 4096 bf16 columns): they keep
the lengths, and the digest of a memory, independent of which values are still on disk.

Durability: appends go to the page cache; `flush` fsyncs them (and the folders of new files) and must
run before a state that names those rows is saved. A crash can leave rows past the saved state's lengths,
or half a row; opening drops half rows, and restoring the state drops the rest. Each row is written at
its offset, values first and hash last, so a row counts only once whole.
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import re
import shutil
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from memchat.rowhash import SHA256_BYTES, row_bytes, row_sha256

from .errors import CorruptState, StoreError
from .header import ITEMSIZE
from .paths import FILE_MODE, ensure_dir, fsync_path

if TYPE_CHECKING:
    from collections.abc import Iterator

    from torch import Tensor

FORMAT = "memchat-ltm-1"
_MANIFEST = "manifest.json"
_HASHES = "rows.sha256"
_SEGMENT = re.compile(r"(\d{8})\.rows")
_LAYER = re.compile(r"layer(\d{3})")


@dataclass(frozen=True)
class _Manifest:
    dtype: str  # safetensors dtype code
    width: int
    rows_per_segment: int
    format: str = FORMAT

    @property
    def row_bytes(self) -> int:
        return self.width * ITEMSIZE[self.dtype]


def _read_manifest(folder: Path) -> _Manifest | None:
    """None when there is no usable manifest: then nothing in the folder is trusted."""
    try:
        manifest = _Manifest(**json.loads((folder / _MANIFEST).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return manifest if manifest.format == FORMAT and manifest.dtype in ITEMSIZE else None


def disk_rows(folder: Path) -> int | None:
    """Rows whose values are on disk, all layers together, from file sizes alone (no torch); None when
    there is no long-term memory."""
    manifest = _read_manifest(folder)
    if manifest is None:
        return None
    return sum(p.stat().st_size // manifest.row_bytes for p in folder.glob("layer*/*.rows"))


class SegmentLog:
    """The on-disk row log of one memory (the engine's RowLog). Only the lock holder opens it."""

    def __init__(self, folder: Path, segment_bytes: int) -> None:
        """`segment_bytes` sizes the segment files of a new log; an existing one keeps its own."""
        self.folder = ensure_dir(Path(folder))
        self._segment_bytes = segment_bytes
        self._manifest = _read_manifest(self.folder)
        self._maps: dict[Path, tuple[int, np.ndarray]] = {}  # path -> (file size when mapped, rows)
        self._unsynced: set[Path] = set()  # files and folders written since the last flush
        self._tombstones = _open_tombstones(self.folder / "tombstones.sqlite")
        self._lengths: list[int] = []
        for layer in range(self._layer_count()):
            self._set_length(layer, self._recover(layer))

    # --- the RowLog protocol --------------------------------------------------------------------------

    def append(self, layer: int, rows: Tensor) -> Tensor:
        import torch

        from .state import code_dtype

        manifest = self._manifest or self._create(rows)
        rows = rows.detach().to("cpu", code_dtype(manifest.dtype)).contiguous()
        if rows.shape[1] != manifest.width:
            raise StoreError(f"rows {rows.shape[1]} wide cannot join long-term rows {manifest.width} wide")
        raw = row_bytes(rows)
        start = self.length(layer)
        self._write_values(layer, start, raw)
        # The hash goes last: a row exists once its hash is written.
        self._write(self._hashes_path(layer), row_sha256(raw), start * SHA256_BYTES)
        self._set_length(layer, start + len(raw))
        return torch.arange(start, start + len(raw))

    def read(self, layer: int, ids: Tensor) -> Tensor:
        import torch

        from .state import code_dtype

        self._check_ids(layer, ids)
        manifest = self._manifest
        if manifest is None:  # nothing appended yet, so `ids` is empty
            return torch.empty(0, 0)
        out = np.empty((len(ids), manifest.row_bytes), dtype=np.uint8)
        for segment, where, local in self._by_segment(ids):
            out[where] = self._values(layer, segment, local)[local]
        return torch.from_numpy(out).view(code_dtype(manifest.dtype))

    def hashes(self, layer: int, ids: Tensor) -> Tensor:
        import torch

        self._check_ids(layer, ids)
        if len(ids) == 0:
            return torch.zeros(0, SHA256_BYTES, dtype=torch.uint8)
        hashes = self._map(self._hashes_path(layer), SHA256_BYTES, self.length(layer))
        return torch.from_numpy(hashes[np.asarray(ids)])

    def length(self, layer: int) -> int:
        return self._lengths[layer] if layer < len(self._lengths) else 0

    def has(self, layer: int, ids: Tensor) -> bool:
        if len(ids) == 0:
            return True
        if int(ids.min()) < 0 or int(ids.max()) >= self.length(layer):
            return False
        try:
            for segment, _, local in self._by_segment(ids):
                self._values(layer, segment, local)
        except CorruptState:
            return False
        return True

    # --- durability, restoring and collecting ---------------------------------------------------------

    def flush(self) -> None:
        """Make every appended row and every tombstone durable; run it before saving a state naming them."""
        for path in sorted(self._unsynced, key=Path.is_dir):  # data first, then the folders' new names
            with contextlib.suppress(FileNotFoundError):
                fsync_path(path)
        self._unsynced.clear()
        self._tombstones.commit()

    def rewind(self, lengths: list[int], upto: int) -> None:
        """The log as it was when the state at journal row `upto`, built over `lengths`, was saved: later
        rows and tombstones go (the journal replays them)."""
        for layer, n in enumerate(lengths):
            if n > self.length(layer):
                raise ValueError(f"cannot rewind layer {layer} forwards: it has {self.length(layer)} rows")
            self._cut(layer, n)
            self._set_length(layer, n)
            self._tombstones.execute("DELETE FROM tombstone WHERE layer = ? AND row >= ?", (layer, n))
        self._tombstones.execute("DELETE FROM tombstone WHERE pruned_at > ?", (upto,))
        self._tombstones.commit()

    def tombstone(self, layer: int, ids: Tensor, when: int) -> None:
        """Record that applying journal row `when` pruned the rows `ids` (durable at the next flush)."""
        self._tombstones.executemany(
            "INSERT OR REPLACE INTO tombstone VALUES (?, ?, ?)", ((layer, i, when) for i in ids.tolist())
        )

    def collect(self, horizon: int) -> int:
        """Delete the value segments whose every row was pruned at or before journal row `horizon` (the
        oldest state that can still be restored), except the one rows are appended to. Returns how many."""
        if self._manifest is None:
            return 0
        R = self._manifest.rows_per_segment
        dead = self._tombstones.execute(
            "SELECT layer, row / ? AS segment FROM tombstone WHERE pruned_at <= ? "
            "GROUP BY layer, segment HAVING count(*) = ?",
            (R, horizon, R),
        ).fetchall()
        deleted = 0
        for layer, segment in dead:
            if segment >= (self.length(layer) - 1) // R:
                continue  # the last segment may still be appended to
            path = self._segment_path(layer, segment)
            self._maps.pop(path, None)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                deleted += 1
            self._tombstones.execute(
                "DELETE FROM tombstone WHERE layer = ? AND row >= ? AND row < ?",
                (layer, segment * R, (segment + 1) * R),
            )
        self._tombstones.commit()
        return deleted

    def close(self) -> None:
        self._maps.clear()
        self._tombstones.close()

    # --- files ----------------------------------------------------------------------------------------

    def _layer_dir(self, layer: int) -> Path:
        return self.folder / f"layer{layer:03d}"

    def _segment_path(self, layer: int, segment: int) -> Path:
        return self._layer_dir(layer) / f"{segment:08d}.rows"

    def _hashes_path(self, layer: int) -> Path:
        return self._layer_dir(layer) / _HASHES

    def _layer_count(self) -> int:
        found = [int(m.group(1)) for p in self.folder.iterdir() if (m := _LAYER.fullmatch(p.name))]
        return max(found, default=-1) + 1

    def _segments(self, layer: int) -> list[int]:
        folder = self._layer_dir(layer)
        if not folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _SEGMENT.fullmatch(p.name)))

    def _set_length(self, layer: int, n: int) -> None:
        self._lengths.extend([0] * (layer + 1 - len(self._lengths)))
        self._lengths[layer] = n

    def _create(self, rows: Tensor) -> _Manifest:
        """Fix the format at the first append; files without a manifest are leftovers and go."""
        from .state import dtype_code

        for folder in self.folder.iterdir():
            if _LAYER.fullmatch(folder.name):
                shutil.rmtree(folder)
        row_bytes = rows.shape[1] * rows.element_size()
        manifest = _Manifest(dtype_code(rows.dtype), rows.shape[1], max(1, self._segment_bytes // row_bytes))
        tmp = self.folder / f".{_MANIFEST}.tmp"
        tmp.write_text(json.dumps(asdict(manifest), indent=2))
        fsync_path(tmp)
        os.replace(tmp, self.folder / _MANIFEST)
        fsync_path(self.folder)
        self._manifest = manifest
        return manifest

    def _write_values(self, layer: int, start: int, raw: np.ndarray) -> None:
        R = self._manifest.rows_per_segment
        if not self._layer_dir(layer).is_dir():
            ensure_dir(self._layer_dir(layer))
            self._unsynced.add(self.folder)
        done = 0
        while done < len(raw):
            segment, offset = divmod(start + done, R)
            take = min(len(raw) - done, R - offset)
            self._write(self._segment_path(layer, segment), raw[done : done + take], offset * raw.shape[1])
            done += take

    def _write(self, path: Path, data: np.ndarray, offset: int) -> None:
        """Write at an offset, not at the end: bytes of a write that was interrupted get overwritten."""
        if not path.exists():
            self._unsynced.add(path.parent)  # a new name in the folder
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
        try:
            view = memoryview(np.ascontiguousarray(data)).cast("B")
            while len(view):
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreError(f"disk full while writing the long-term memory in {self.folder}") from exc
            raise
        finally:
            os.close(fd)
        self._unsynced.add(path)

    def _values(self, layer: int, segment: int, local: np.ndarray) -> np.ndarray:
        """A segment's rows, mapped; it must hold the rows at `local` (indices within the segment)."""
        return self._map(self._segment_path(layer, segment), self._manifest.row_bytes, int(local.max()) + 1)

    def _map(self, path: Path, unit: int, needed: int) -> np.ndarray:
        """The file as rows of `unit` bytes, memory-mapped; it must hold at least `needed` rows."""
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            raise _damaged(path, "is missing") from None
        if size < needed * unit:
            raise _damaged(path, f"is cut short ({size} bytes)")
        cached = self._maps.get(path)
        # Remap whenever the size changed: a grown file has rows the map lacks, and reading a map past a
        # shrunk file's end is a SIGBUS, not an exception.
        if cached is None or cached[0] != size:
            with open(path, "rb") as f:
                mapped = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
            rows = np.frombuffer(mapped, dtype=np.uint8, count=size - size % unit).reshape(-1, unit)
            cached = self._maps[path] = (size, rows)
        return cached[1]

    def _by_segment(self, ids: Tensor) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(segment, mask of the ids in it, their rows within it) for each segment the ids touch."""
        index = np.asarray(ids, dtype=np.int64)
        R = self._manifest.rows_per_segment
        segments = index // R
        for segment in np.unique(segments):
            where = segments == segment
            yield int(segment), where, index[where] - segment * R

    def _check_ids(self, layer: int, ids: Tensor) -> None:
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= self.length(layer)):
            raise IndexError(f"row ids outside the {self.length(layer)} rows of layer {layer}")

    def _recover(self, layer: int) -> int:
        """A layer's length after a crash: its whole rows in the hash file. Values a crash lost surface as
        rows `has` denies, and only unflushed rows, past every saved state, can lose them."""
        if self._manifest is None:
            return 0
        hashes = self._hashes_path(layer)
        n = hashes.stat().st_size // SHA256_BYTES if hashes.exists() else 0
        self._cut(layer, n)
        return n

    def _cut(self, layer: int, n: int) -> None:
        """Delete or shorten the files of rows n and later."""
        self._maps.clear()
        R = self._manifest.rows_per_segment if self._manifest else 1
        row_bytes = self._manifest.row_bytes if self._manifest else 0
        for segment in self._segments(layer):
            path = self._segment_path(layer, segment)
            if segment * R >= n:
                path.unlink()
            elif (segment + 1) * R > n and path.stat().st_size > (n - segment * R) * row_bytes:
                os.truncate(path, (n - segment * R) * row_bytes)
        hashes = self._hashes_path(layer)
        if hashes.exists() and hashes.stat().st_size > n * SHA256_BYTES:
            os.truncate(hashes, n * SHA256_BYTES)


def _damaged(path: Path, why: str) -> CorruptState:
    return CorruptState(
        f"long-term memory file {path} {why}; open the memory again and memchat rebuilds it from the journal"
    )


def _open_tombstones(path: Path) -> sqlite3.Connection:
    """The tombstone table; a damaged one is started afresh (it only decides what may be deleted, and a
    row without a tombstone is simply kept)."""
    for _ in range(2):
        db = sqlite3.connect(path)
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS tombstone (layer INTEGER NOT NULL, row INTEGER NOT NULL, "
                "pruned_at INTEGER NOT NULL, PRIMARY KEY (layer, row)) WITHOUT ROWID"
            )
            db.commit()
            return db
        except sqlite3.DatabaseError:
            db.close()
            path.unlink()
    raise StoreError(f"cannot open {path}")

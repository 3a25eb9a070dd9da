"""The journal: every injection is a row in SQLite. It is the truth; the memory tensors are a cache of it.

Several processes use one journal at once (a chat holding the memory, `memchat ingest` appending to it), so
the database runs in WAL mode, every write takes the write lock up front (`BEGIN IMMEDIATE`, which waits
on the busy timeout instead of failing on a lock upgrade), and long reads are paged so that no reader
holds a snapshot open while the caller does slow work between rows.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from .errors import CorruptJournal, StoreError
from .paths import FILE_MODE, ensure_dir
from .schema import migrate

STATUSES = ("pending", "applied", "forgotten")
LIVE = ("pending", "applied")
MAX_SEED = 2**63 - 1  # SQLite integers are signed 64-bit

_COLUMNS = ("id, created_at, source_kind, source_name, text, token_count, chunk_sha256, seed, status, "
            "applied_at, forgotten_at")
_SQL_VARS = 500  # ids per statement, well under SQLite's variable limit
_PAGE = 512
_BUSY, _LOCKED, _CORRUPT, _FULL, _NOTADB = 5, 6, 11, 13, 26  # SQLite primary result codes


@dataclass(frozen=True)
class NewRow:
    """An injection to append. `seed=None` means: ask `append(seed_fn=...)` for it once the id is known."""

    text: str
    source_kind: str
    source_name: str = ""
    token_count: int = 0
    chunk_sha256: str | None = None  # None: sha256 of the UTF-8 text
    seed: int | None = None
    created_at: float | None = None  # None: now (unix seconds, UTC)


@dataclass(frozen=True)
class Row:
    """One journal row as stored."""

    id: int
    created_at: float
    source_kind: str
    source_name: str
    text: str
    token_count: int
    chunk_sha256: str
    seed: int
    status: str
    applied_at: float | None
    forgotten_at: float | None


@dataclass(frozen=True)
class Hit:
    """A search result: the row, a snippet with the matches in [brackets], and bm25 (lower is better)."""

    row: Row
    snippet: str
    rank: float


@dataclass(frozen=True)
class Counts:
    """Totals for `memchat stats`; tokens and the per-source tables count live (not forgotten) rows."""

    applied: int
    pending: int
    forgotten: int
    tokens: int
    pending_tokens: int
    by_kind: dict[str, tuple[int, int]]  # source_kind -> (rows, tokens)
    by_source: dict[str, tuple[int, int]]  # source_name -> (rows, tokens)


@dataclass(frozen=True)
class FileRecord:
    """What ingest remembers about a file so an unchanged file is not injected twice."""

    path: str
    sha256: str
    size: int
    mtime: float
    ingested_at: float


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Streamed, so a large file never sits in memory whole."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def fts_query(text: str) -> str:
    """Turn user input into an FTS5 query that cannot raise: every word becomes a quoted phrase (AND)."""
    words = [w for w in text.split() if any(ch.isalnum() for ch in w)]
    return " ".join('"' + w.replace('"', '""') + '"' for w in words)


def _error_code(exc: sqlite3.Error) -> int | None:
    """The primary SQLite result code (Python >= 3.11 exposes it; older versions only give the message)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def _is_corruption(exc: sqlite3.Error) -> bool:
    code = _error_code(exc)
    if code is not None:
        return code in (_CORRUPT, _NOTADB)
    message = str(exc).lower()
    return "malformed" in message or "not a database" in message


def _is_busy(exc: sqlite3.Error) -> bool:
    code = _error_code(exc)
    if code is not None:
        return code in (_BUSY, _LOCKED)
    return "locked" in str(exc).lower()


def _enable_wal(conn: sqlite3.Connection, deadline: float) -> None:
    """Switch to WAL, retrying: the switch needs an exclusive lock, and when two processes open a new
    journal at once SQLite reports "locked" at once instead of waiting on the busy timeout."""
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
            return
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def _statuses(status: str | Iterable[str] | None) -> tuple[str, ...] | None:
    if status is None:
        return None
    chosen = (status,) if isinstance(status, str) else tuple(status)
    for s in chosen:
        if s not in STATUSES:
            raise ValueError(f"unknown status {s!r}; expected one of {STATUSES}")
    return chosen


def _check_seed(seed: object) -> int:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an int in [0, 2**63); got {seed!r}")
    return seed


def _update_rows(db: sqlite3.Connection, ids: Sequence[int], assignments: str, condition: str) -> int:
    """`UPDATE … SET assignments WHERE condition` for `ids`, in statements of bounded size; the one `?`
    in `assignments` is the current time. Returns how many rows changed."""
    now = time.time()
    changed = 0
    for part in _chunks(ids):
        changed += db.execute(
            f"UPDATE injections SET {assignments} WHERE {condition} AND id IN ({', '.join('?' * len(part))})",
            (now, *part),
        ).rowcount
    return changed


_FILTERS = {"since": "created_at >= ?", "until": "created_at < ?", "source": "source_name = ?",
            "source_kind": "source_kind = ?"}


def _filters(first: str, **values: object) -> tuple[str, list[object]]:
    """`first AND …` for each filter that is set (see _FILTERS), with the query arguments."""
    where, args = [first], []
    for name, value in values.items():
        if value is not None:
            where.append(_FILTERS[name])
            args.append(value)
    return " AND ".join(where), args


def _chunks(ids: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), _SQL_VARS):
        yield ids[start:start + _SQL_VARS]


class Journal:
    """The SQLite journal of one memory. Usable as a context manager; safe to share between threads."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 30.0, check: bool = True) -> None:
        """Open or create, then migrate; `check` runs `PRAGMA quick_check` to fail early on damage."""
        self.path = Path(path)
        self._lock = threading.RLock()
        ensure_dir(self.path.parent)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, FILE_MODE))  # WAL and SHM inherit the mode
        self._conn: sqlite3.Connection | None = None
        try:
            with self._guard():
                conn = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None,
                                       check_same_thread=False)
                self._conn = conn
                conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
                _enable_wal(conn, time.monotonic() + busy_timeout)
                conn.execute("PRAGMA synchronous = FULL")
                conn.execute("PRAGMA secure_delete = ON")
                conn.execute("PRAGMA foreign_keys = ON")
                if check:
                    result = conn.execute("PRAGMA quick_check").fetchall()
                    if result != [("ok",)]:
                        raise self._corrupt(str(result[0][0]) if result else "quick_check failed")
                migrate(conn, self.path)
        except BaseException:
            self.close()
            raise

    # -- plumbing ---------------------------------------------------------------------------------------

    def _corrupt(self, why: str) -> CorruptJournal:
        return CorruptJournal(
            f"journal {self.path} is damaged ({why}); move it aside and salvage it with "
            f"`sqlite3 {self.path.name} .recover`, or restore a backup"
        )

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"journal {self.path} is closed")
        return self._conn

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn SQLite's corruption and lock-timeout errors into one-line store errors."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if _is_corruption(exc):
                raise self._corrupt(str(exc)) from exc
            if _error_code(exc) == _FULL or "disk is full" in str(exc):
                raise StoreError(
                    f"disk full while writing journal {self.path}; free some space and retry"
                ) from exc
            if _is_busy(exc):
                raise StoreError(
                    f"journal {self.path} stayed locked by another process; retry in a moment"
                ) from exc
            raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._guard():
            yield self._db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._guard():
            conn = self._db
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with suppress(sqlite3.Error):  # keep the original error
                        conn.execute("ROLLBACK")
                raise

    def backup(self, dest: str | Path) -> None:
        """A consistent copy of the whole journal (SQLite's online backup), even while others write.

        Written to a temp file and renamed, so `dest` is never half a database.
        """
        dest = Path(dest)
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY, FILE_MODE))
        try:
            target = sqlite3.connect(tmp)
            try:
                with self._read() as db:
                    db.backup(target)
            finally:
                target.close()
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def close(self) -> None:
        """Close the connection; the last connection to close also checkpoints and removes the WAL."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- injections -------------------------------------------------------------------------------------

    def append(self, rows: Sequence[NewRow], seed_fn: Callable[[int], int] | None = None) -> list[int]:
        """Append rows in one transaction, ids increasing in order; all or nothing.

        A row without a seed gets `seed_fn(row_id)`, computed inside the same transaction, so a seed
        derived from the id is never observable half-written.
        """
        for r in rows:
            if not isinstance(r.text, str) or not isinstance(r.source_kind, str) or not r.source_kind:
                raise ValueError(f"a row needs text and a source_kind: {r!r}")
            if r.seed is None and seed_fn is None:
                raise ValueError("a row without a seed needs append(..., seed_fn=...)")
            if r.seed is not None:
                _check_seed(r.seed)
        now = time.time()
        ids = []
        with self._write() as db:
            for r in rows:
                cursor = db.execute(
                    "INSERT INTO injections (created_at, source_kind, source_name, text, token_count, "
                    "chunk_sha256, seed, status) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending')",
                    (now if r.created_at is None else r.created_at, r.source_kind, r.source_name, r.text,
                     int(r.token_count), r.chunk_sha256 or sha256_text(r.text), r.seed or 0),
                )
                row_id = cursor.lastrowid
                assert row_id is not None
                if r.seed is None:
                    assert seed_fn is not None
                    seed = _check_seed(seed_fn(row_id))
                    db.execute("UPDATE injections SET seed = ? WHERE id = ?", (seed, row_id))
                ids.append(row_id)
        return ids

    def rows(self, after_id: int = 0, status: str | Iterable[str] | None = None, *,
             before_id: int | None = None) -> Iterator[Row]:
        """Rows with after_id < id (< before_id), in id order, fetched in pages.

        Paging keeps no read transaction open between pages, so a slow consumer (replay on a GPU) does not
        pin the WAL, and it may append or mark rows while iterating.
        """
        statuses = _statuses(status)
        where = "id > ?"
        extra: list[object] = []
        if before_id is not None:
            where += " AND id < ?"
            extra.append(before_id)
        if statuses is not None:
            where += f" AND status IN ({', '.join('?' * len(statuses))})"
            extra.extend(statuses)
        last = after_id
        while True:
            with self._read() as db:
                page = [Row(*r) for r in db.execute(
                    f"SELECT {_COLUMNS} FROM injections WHERE {where} ORDER BY id LIMIT ?",
                    (last, *extra, _PAGE))]
            yield from page
            if len(page) < _PAGE:
                return
            last = page[-1].id

    def get(self, row_id: int) -> Row | None:
        with self._read() as db:
            r = db.execute(f"SELECT {_COLUMNS} FROM injections WHERE id = ?", (row_id,)).fetchone()
        return Row(*r) if r else None

    def pending(self, after_id: int = 0) -> list[Row]:
        """Rows appended (by us or by another process) but not yet applied to the live memory."""
        return list(self.rows(after_id, "pending"))

    def last_id(self) -> int:
        """The highest id ever assigned (0 if none); ids are never reused, even after a rollback."""
        with self._read() as db:
            r = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'injections'").fetchone()
        return int(r[0]) if r else 0

    def mark_applied(self, ids: Iterable[int]) -> int:
        """Pending -> applied; forgotten rows stay forgotten. Returns how many rows changed."""
        with self._write() as db:
            return _update_rows(db, list(ids), "status = 'applied', applied_at = ?", "status = 'pending'")

    def select_ids(self, *, since: float | None = None, until: float | None = None,
                   source: str | None = None, source_kind: str | None = None) -> list[int]:
        """Ids of live rows matching all given filters, ascending (what `forget --since/--source` targets)."""
        where, args = _filters("status != 'forgotten'", since=since, until=until, source=source,
                               source_kind=source_kind)
        with self._read() as db:
            return [r[0] for r in db.execute(f"SELECT id FROM injections WHERE {where} ORDER BY id", args)]

    def forget(self, ids: Iterable[int]) -> int:
        """Mark rows forgotten and destroy their text everywhere SQLite keeps it. Returns rows changed.

        Wipes `text` and `chunk_sha256` (a hash of a short text is enough to confirm a guess); keeps id,
        times, source and token count so stats and ids stay meaningful. The FTS index is rewritten
        (`optimize`) because a delete alone only adds a tombstone over the old terms; `secure_delete`
        zeroes the freed pages; the WAL, which still holds old page images, is then checkpointed and
        truncated. If another process is reading at that moment the truncation waits up to the busy
        timeout; `checkpoint()` can be retried, and closing the last connection does it too.
        """
        with self._write() as db:
            changed = _update_rows(db, sorted(set(ids)),
                                   "status = 'forgotten', forgotten_at = ?, text = '', chunk_sha256 = ''",
                                   "status != 'forgotten'")
            if changed:
                db.execute("INSERT INTO injections_fts (injections_fts) VALUES ('optimize')")
        if changed:
            self.checkpoint()
        return changed

    def checkpoint(self) -> bool:
        """Copy the WAL into the database and truncate it; False if a reader kept it from finishing."""
        with self._read() as db:
            busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return busy == 0

    def recent(self, limit: int = 50, source: str | None = None, since: float | None = None) -> list[Row]:
        """The newest `limit` rows (forgotten ones included, without text), oldest first, for `memory log`."""
        where, args = _filters("1", since=since, source=source)
        with self._read() as db:
            found = db.execute(f"SELECT {_COLUMNS} FROM injections WHERE {where} ORDER BY id DESC LIMIT ?",
                               (*args, int(limit))).fetchall()
        return [Row(*r) for r in reversed(found)]

    def chunk_hashes(self, source: str) -> set[str]:
        """sha256 of every live chunk from `source`: what a re-ingest of that file need not inject again."""
        with self._read() as db:
            return {r[0] for r in db.execute("SELECT chunk_sha256 FROM injections WHERE source_name = ? "
                                             "AND status != 'forgotten'", (source,))}

    def last_row_time(self) -> float | None:
        """When the newest row was appended (unix seconds), or None for an empty journal."""
        with self._read() as db:
            return db.execute("SELECT MAX(created_at) FROM injections").fetchone()[0]

    def forgotten_count(self, upto: int | None = None) -> int:
        """Forgotten rows with id <= upto. Rows are never un-forgotten, so a state saved at `upto` is
        stale exactly when this number has grown since it was saved."""
        with self._read() as db:
            return db.execute(
                "SELECT COUNT(*) FROM injections WHERE status = 'forgotten' AND id <= ?",
                (MAX_SEED if upto is None else upto,),
            ).fetchone()[0]

    def search(self, text: str, source: str | None = None, since: float | None = None,
               limit: int = 20) -> list[Hit]:
        """Full-text search over live rows' text and source name; any user input is safe."""
        query = fts_query(text)
        if not query:
            return []
        where = ["injections_fts MATCH ?", "i.status != 'forgotten'"]
        args: list[object] = [query]
        if source is not None:
            where.append("i.source_name = ?")
            args.append(source)
        if since is not None:
            where.append("i.created_at >= ?")
            args.append(since)
        columns = ", ".join(f"i.{c.strip()}" for c in _COLUMNS.split(","))
        with self._read() as db:
            found = db.execute(
                f"SELECT {columns}, snippet(injections_fts, 0, '[', ']', '…', 16), rank "
                f"FROM injections_fts JOIN injections i ON i.id = injections_fts.rowid "
                f"WHERE {' AND '.join(where)} ORDER BY rank LIMIT ?", (*args, int(limit))
            ).fetchall()
        return [Hit(Row(*r[:11]), r[11], r[12]) for r in found]

    def counts(self) -> Counts:
        with self._read() as db:
            db.execute("BEGIN")  # one snapshot for all three queries
            try:
                by_status = {s: (n, t) for s, n, t in db.execute(
                    "SELECT status, COUNT(*), COALESCE(SUM(token_count), 0) FROM injections GROUP BY status")}
                by_kind = {k: (n, t) for k, n, t in db.execute(
                    "SELECT source_kind, COUNT(*), SUM(token_count) FROM injections "
                    "WHERE status != 'forgotten' GROUP BY source_kind ORDER BY source_kind")}
                by_source = {k: (n, t) for k, n, t in db.execute(
                    "SELECT source_name, COUNT(*), SUM(token_count) FROM injections "
                    "WHERE status != 'forgotten' GROUP BY source_name ORDER BY source_name")}
            finally:
                db.execute("COMMIT")
        applied, pending = by_status.get("applied", (0, 0)), by_status.get("pending", (0, 0))
        return Counts(applied=applied[0], pending=pending[0], forgotten=by_status.get("forgotten", (0, 0))[0],
                      tokens=applied[1] + pending[1], pending_tokens=pending[1],
                      by_kind=by_kind, by_source=by_source)

    # -- meta -------------------------------------------------------------------------------------------

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        with self._read() as db:
            r = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return r[0] if r else default

    def set_meta(self, key: str, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"meta values are str; got {type(value).__name__}")
        with self._write() as db:
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                       "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def meta_setdefault(self, key: str, value: str) -> str:
        """Set `key` unless present and return the stored value: race-free one-time values like a salt."""
        with self._write() as db:
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
            return db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]

    # -- ingested files ---------------------------------------------------------------------------------

    def file_record(self, path: str | Path) -> FileRecord | None:
        with self._read() as db:
            r = db.execute("SELECT path, sha256, size, mtime, ingested_at FROM files WHERE path = ?",
                           (str(path),)).fetchone()
        return FileRecord(*r) if r else None

    def file_unchanged(self, path: str | Path) -> bool:
        """Cheap test first (size, mtime), then the content hash only when those differ."""
        record = self.file_record(path)
        if record is None:
            return False
        st = os.stat(path)
        if st.st_size == record.size and st.st_mtime == record.mtime:
            return True
        return st.st_size == record.size and sha256_file(path) == record.sha256

    def record_file(self, path: str | Path, sha256: str | None = None) -> FileRecord:
        """Remember a file as ingested (hashing it unless the caller already did)."""
        st = os.stat(path)
        record = FileRecord(str(path), sha256 or sha256_file(path), st.st_size, st.st_mtime, time.time())
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO files (path, sha256, size, mtime, ingested_at) "
                       "VALUES (?, ?, ?, ?, ?)", (record.path, record.sha256, record.size, record.mtime,
                                                 record.ingested_at))
        return record

    def remove_file(self, path: str | Path) -> bool:
        with self._write() as db:
            return db.execute("DELETE FROM files WHERE path = ?", (str(path),)).rowcount > 0

    def files(self) -> list[FileRecord]:
        with self._read() as db:
            return [FileRecord(*r) for r in db.execute(
                "SELECT path, sha256, size, mtime, ingested_at FROM files ORDER BY path")]

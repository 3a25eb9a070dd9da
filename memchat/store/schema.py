"""The journal's schema as an append-only list of named migrations.

Each migration runs once, in order, inside one transaction together with its row in `migrations`, so a
crash never leaves half a migration. Never edit or reorder a released entry; append a new one.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import StoreError

MIGRATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("0001_injections", (
        """CREATE TABLE injections (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            created_at REAL NOT NULL,
            source_kind TEXT NOT NULL,
            source_name TEXT NOT NULL DEFAULT '',
            text TEXT NOT NULL,
            token_count INTEGER NOT NULL CHECK (token_count >= 0),
            chunk_sha256 TEXT NOT NULL,
            seed INTEGER NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'applied', 'forgotten')),
            applied_at REAL,
            forgotten_at REAL
        )""",
        "CREATE INDEX injections_status ON injections (status, id)",
        "CREATE INDEX injections_created ON injections (created_at)",
        "CREATE INDEX injections_source ON injections (source_name, id)",
    )),
    ("0002_injections_fts", (
        """CREATE VIRTUAL TABLE injections_fts USING fts5 (
            text, source_name, content='injections', content_rowid='id',
            tokenize='unicode61 remove_diacritics 2'
        )""",
        # Forgotten rows are never in the index. External content: a delete must repeat the old values.
        """CREATE TRIGGER injections_fts_insert AFTER INSERT ON injections
           WHEN new.status != 'forgotten' BEGIN
            INSERT INTO injections_fts (rowid, text, source_name) VALUES (new.id, new.text, new.source_name);
        END""",
        """CREATE TRIGGER injections_fts_update AFTER UPDATE OF text, source_name, status ON injections
           WHEN old.text IS NOT new.text OR old.source_name IS NOT new.source_name
                OR (old.status = 'forgotten') != (new.status = 'forgotten') BEGIN
            INSERT INTO injections_fts (injections_fts, rowid, text, source_name)
                SELECT 'delete', old.id, old.text, old.source_name WHERE old.status != 'forgotten';
            INSERT INTO injections_fts (rowid, text, source_name)
                SELECT new.id, new.text, new.source_name WHERE new.status != 'forgotten';
        END""",
        """CREATE TRIGGER injections_fts_delete AFTER DELETE ON injections
           WHEN old.status != 'forgotten' BEGIN
            INSERT INTO injections_fts (injections_fts, rowid, text, source_name)
                VALUES ('delete', old.id, old.text, old.source_name);
        END""",
    )),
    ("0003_files_meta", (
        """CREATE TABLE files (
            path TEXT PRIMARY KEY,
            sha256 TEXT NOT NULL,
            size INTEGER NOT NULL,
            mtime REAL NOT NULL,
            ingested_at REAL NOT NULL
        )""",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    )),
)


def migrate(conn: sqlite3.Connection, path: Path | str = "journal",
            migrations: Sequence[tuple[str, Sequence[str]]] = MIGRATIONS) -> list[str]:
    """Apply the migrations not yet recorded, in order, in one transaction; returns the names applied.

    Another process may be migrating at the same moment: the check is repeated under the write lock.
    """
    names = [name for name, _ in migrations]

    def applied() -> list[str]:
        try:
            return [r[0] for r in conn.execute("SELECT name FROM migrations ORDER BY rowid")]
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise

    if applied() == names:
        return []
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL)")
        done = applied()
        if done != names[:len(done)]:
            raise StoreError(
                f"journal {path} has migrations {done[len(names):] or done} this memchat does not know; "
                "upgrade memchat"
            )
        todo = list(migrations[len(done):])
        for name, statements in todo:
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO migrations (name, applied_at) VALUES (?, ?)", (name, time.time()))
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return [name for name, _ in todo]

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from memchat.store import MIGRATIONS, CorruptJournal, Journal, NewRow, StoreError, fts_query, migrate

from ._util import Spawner


def row(text: str, kind: str = "chat", source: str = "chat", tokens: int = 3, seed: int | None = 7,
        created_at: float | None = None) -> NewRow:
    return NewRow(text, kind, source, tokens, seed=seed, created_at=created_at)


@pytest.fixture
def journal(tmp_path: Path):
    with Journal(tmp_path / "mem" / "journal.sqlite") as j:
        yield j


def applied_migrations(path: Path) -> list[tuple[str, float]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT name, applied_at FROM migrations ORDER BY rowid").fetchall()


# -- schema and connection ----------------------------------------------------------------------------

def test_migrations_apply_once_in_order(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    Journal(path).close()
    first = applied_migrations(path)
    assert [name for name, _ in first] == [name for name, _ in MIGRATIONS]
    Journal(path).close()
    assert applied_migrations(path) == first  # reopening applies nothing


def test_partially_migrated_journal_gets_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, path, MIGRATIONS[:1]) == [MIGRATIONS[0][0]]
    conn.execute("INSERT INTO injections (created_at, source_kind, text, token_count, chunk_sha256, seed) "
                 "VALUES (1, 'chat', 'written before fts existed', 1, '', 0)")
    conn.close()
    with Journal(path) as j:
        assert [name for name, _ in applied_migrations(path)] == [name for name, _ in MIGRATIONS]
        j.append([row("written after")])
        assert [h.row.text for h in j.search("written after")] == ["written after"]


def test_failing_migration_rolls_back_whole(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "j.sqlite", isolation_level=None)
    broken = [("0001_ok", ("CREATE TABLE a (x)",)), ("0002_bad", ("CREATE TABLE b (x)", "NOT SQL"))]
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, "j", broken)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables.isdisjoint({"a", "b"})
    assert migrate(conn, "j", broken[:1]) == ["0001_ok"]
    assert migrate(conn, "j", broken[:1]) == []


def test_journal_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    Journal(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO migrations VALUES ('9999_future', 0)")
    with pytest.raises(StoreError, match="upgrade memchat"):
        Journal(path)


def test_pragmas_and_file_mode(journal: Journal) -> None:
    db = journal._db
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert db.execute("PRAGMA secure_delete").fetchone()[0] == 1
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
    assert journal.path.stat().st_mode & 0o777 == 0o600
    assert journal.path.parent.stat().st_mode & 0o777 == 0o700


def test_garbage_file_is_a_corrupt_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    path.write_bytes(b"this is not sqlite at all " * 100)
    with pytest.raises(CorruptJournal) as info:
        Journal(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_damaged_pages_are_a_corrupt_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    with Journal(path) as j:
        j.append([row(f"row {i} " + "x" * 300, seed=i) for i in range(200)])
    size = path.stat().st_size
    assert size > 8 * 4096
    for page in (1, size // 4096 // 2, size // 4096 - 1):
        damaged = tmp_path / f"damaged{page}.sqlite"
        shutil.copyfile(path, damaged)
        with open(damaged, "r+b") as f:
            f.seek(page * 4096)
            f.write(b"\xa5" * 4096)  # a whole page of garbage
        with pytest.raises(CorruptJournal):
            Journal(damaged)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(CorruptJournal):
        Journal(path)


def test_closed_journal_says_so(tmp_path: Path) -> None:
    with Journal(tmp_path / "journal.sqlite") as j:
        pass
    with pytest.raises(StoreError, match="closed"):
        j.counts()
    j.close()  # idempotent


# -- rows ---------------------------------------------------------------------------------------------

def test_append_rows_pending_mark_applied(journal: Journal) -> None:
    ids = journal.append([row("one", seed=11), row("two", kind="file", source="notes.md", tokens=5)])
    assert ids == [1, 2]
    assert journal.last_id() == 2
    rows = list(journal.rows())
    assert [(r.id, r.text, r.seed, r.status, r.source_kind, r.source_name, r.token_count) for r in rows] == [
        (1, "one", 11, "pending", "chat", "chat", 3), (2, "two", 7, "pending", "file", "notes.md", 5)]
    assert rows[0].chunk_sha256 == "7692c3ad3540bb803c020b3aee66cd8887123234ea0c6e7143c0add73ff431ed"
    assert abs(rows[0].created_at - time.time()) < 60 and rows[0].applied_at is None
    assert [r.id for r in journal.pending()] == [1, 2]
    assert journal.mark_applied([1]) == 1
    assert journal.mark_applied([1]) == 0
    assert [r.id for r in journal.pending()] == [2]
    applied = journal.get(1)
    assert applied is not None and applied.status == "applied" and applied.applied_at is not None
    assert [r.id for r in journal.rows(after_id=1)] == [2]
    assert [r.id for r in journal.rows(status="applied")] == [1]
    assert [r.id for r in journal.rows(status=("applied", "pending"), before_id=2)] == [1]
    assert journal.get(99) is None
    with pytest.raises(ValueError):
        list(journal.rows(status="done"))


def test_seed_from_row_id_in_the_same_transaction(journal: Journal) -> None:
    journal.append([row("first")])
    ids = journal.append([row("a", seed=None), row("b", seed=5), row("c", seed=None)],
                         seed_fn=lambda row_id: 1000 + row_id)
    assert ids == [2, 3, 4]
    assert [r.seed for r in journal.rows(after_id=1)] == [1002, 5, 1004]


def test_append_is_all_or_nothing(journal: Journal) -> None:
    with pytest.raises(ValueError):
        journal.append([row("ok"), row("no seed", seed=None)])

    def explode(row_id: int) -> int:
        if row_id == 2:
            raise RuntimeError("boom")
        return row_id

    with pytest.raises(RuntimeError):
        journal.append([row("a", seed=None), row("b", seed=None)], seed_fn=explode)
    with pytest.raises(ValueError):
        journal.append([row("a", seed=None)], seed_fn=lambda row_id: -1)
    with pytest.raises(ValueError):
        journal.append([row("big seed", seed=2**63)])
    assert list(journal.rows()) == []
    assert journal.append([row("after", seed=2**63 - 1)]) == [1]


def test_rows_are_paged_and_tolerate_writes_while_iterating(journal: Journal) -> None:
    journal.append([row(f"r{i}", seed=i) for i in range(1300)])
    seen = []
    for r in journal.rows(status="pending"):
        seen.append(r.id)
        if r.id % 100 == 0:
            journal.mark_applied([r.id])  # the service marks as it replays
    assert seen == list(range(1, 1301))
    assert journal.counts().applied == 13


def test_forget_wipes_text_and_keeps_the_skeleton(journal: Journal) -> None:
    ids = journal.append([row("keep me"), row("drop me", kind="file", source="diary.txt", tokens=9)])
    journal.mark_applied(ids)
    assert journal.forget([ids[1], ids[1], 12345]) == 1
    assert journal.forget([ids[1]]) == 0
    dropped = journal.get(ids[1])
    assert dropped is not None
    assert (dropped.status, dropped.text, dropped.chunk_sha256, dropped.source_name, dropped.token_count) == (
        "forgotten", "", "", "diary.txt", 9)
    assert dropped.forgotten_at is not None
    assert journal.mark_applied([ids[1]]) == 0  # stays forgotten
    assert [r.id for r in journal.rows(status=("pending", "applied"))] == [ids[0]]
    assert journal.forgotten_count() == 1
    assert journal.forgotten_count(upto=ids[0]) == 0
    assert journal.search("drop") == [] and journal.search("diary") == []


def test_select_ids_for_forget(journal: Journal) -> None:
    journal.append([row("old", created_at=100.0), row("mid", source="a.txt", kind="file", created_at=200.0),
                    row("new", created_at=300.0)])
    assert journal.select_ids(since=200.0) == [2, 3]
    assert journal.select_ids(until=200.0) == [1]
    assert journal.select_ids(source="a.txt") == [2]
    assert journal.select_ids(source_kind="chat", since=150.0) == [3]
    journal.forget([3])
    assert journal.select_ids(since=200.0) == [2]


MARKERS = ("Zqxjmarkerpurple", "Zqxjmarkeroverflow", "Zqxjmarkerinwal")


def files_containing(directory: Path, needle: str) -> list[str]:
    hits = []
    for p in directory.iterdir():
        data = p.read_bytes().lower()
        if needle.lower().encode() in data:
            hits.append(p.name)
    return hits


def test_forgotten_text_is_gone_from_every_file(tmp_path: Path) -> None:
    directory = tmp_path / "mem"
    with Journal(directory / "journal.sqlite") as j, Journal(directory / "journal.sqlite") as other:
        j.append([row(f"filler {i} about cats and dogs", seed=i) for i in range(50)])
        secret = j.append([row(f"my password is {MARKERS[0]} ok"),
                           row("long " + "lorem ipsum " * 2000 + MARKERS[1], kind="file", source="s.txt")])
        j.append([row(f"after {i}", seed=i) for i in range(50)])
        j.checkpoint()
        assert files_containing(directory, MARKERS[0]) == ["journal.sqlite"]  # the test can see bytes
        assert files_containing(directory, MARKERS[1]) == ["journal.sqlite"]
        secret += j.append([row(f"fresh {MARKERS[2]}")])
        assert "journal.sqlite-wal" in files_containing(directory, MARKERS[2])
        assert len(j.search(MARKERS[1])) == 1
        assert len(other.search(MARKERS[0])) == 1  # another process reading the same journal
        assert j.forget(secret) == 3
        for marker in MARKERS:
            assert files_containing(directory, marker) == [], marker
            assert j.search(marker) == []
        fts = j._db.execute("SELECT COUNT(*) FROM injections_fts WHERE injections_fts MATCH ?",
                            (fts_query(MARKERS[0]),)).fetchone()[0]
        assert fts == 0
        assert len(j.search("cats")) == 20  # the rest of the index is intact
        assert [h.row.text for h in j.search("after 7")] == ["after 7"]
    for marker in MARKERS:
        assert files_containing(directory, marker) == []


# -- search -------------------------------------------------------------------------------------------

NASTY = ['"', "'", "(", ")", "*", "AND", "OR", "NOT", "NEAR(", "a:b", "-x", "^start", "text:",
         '"unterminated', "'); DROP TABLE injections; --", "c++", "don't", "{x y}", "a + b", "\\", "",
         "   ", "NEAR(a b, 3)", "source_name:diary", "x*y", "\x00"]


@pytest.mark.parametrize("query", NASTY)
def test_search_never_raises_on_user_input(journal: Journal, query: str) -> None:
    journal.append([row("Don't panic: c++ and a+b (see NEAR) * \"quoted\" text")])
    hits = journal.search(query)
    assert isinstance(hits, list)
    assert journal.counts().pending == 1


def test_search_matches_words_source_and_filters(journal: Journal) -> None:
    journal.append([
        row("The café opens at nine", created_at=100.0),
        row("Don't forget the \"quarterly\" report", kind="file", source="work-notes.md", created_at=200.0),
        row("nine lives of a cat", kind="file", source="cats.txt", created_at=300.0),
    ])
    assert [h.row.id for h in journal.search("cafe")] == [1]  # diacritics folded
    assert [h.row.id for h in journal.search("don't")] == [2]
    assert [h.row.id for h in journal.search('"quarterly"')] == [2]
    assert [h.row.id for h in journal.search("work-notes")] == [2]  # source names are indexed
    assert sorted(h.row.id for h in journal.search("nine")) == [1, 3]
    assert [h.row.id for h in journal.search("nine", source="cats.txt")] == [3]
    assert [h.row.id for h in journal.search("nine", since=200.0)] == [3]
    assert len(journal.search("nine", limit=1)) == 1
    hit = journal.search("quarterly")[0]
    assert "[quarterly]" in hit.snippet and isinstance(hit.rank, float)
    assert journal.search("!!! ???") == []


# -- counts, meta, files ------------------------------------------------------------------------------

def test_counts(journal: Journal) -> None:
    ids = journal.append([row("a", tokens=10), row("b", kind="file", source="f.txt", tokens=20),
                          row("c", kind="file", source="f.txt", tokens=30), row("d", tokens=40)])
    journal.mark_applied(ids[:2])
    journal.forget([ids[3]])
    c = journal.counts()
    assert (c.applied, c.pending, c.forgotten, c.tokens, c.pending_tokens) == (2, 1, 1, 60, 30)
    assert c.by_kind == {"chat": (1, 10), "file": (2, 50)}
    assert c.by_source == {"chat": (1, 10), "f.txt": (2, 50)}


def test_meta(journal: Journal) -> None:
    assert journal.get_meta("salt") is None
    assert journal.get_meta("salt", "d") == "d"
    assert journal.meta_setdefault("salt", "s1") == "s1"
    assert journal.meta_setdefault("salt", "s2") == "s1"
    journal.set_meta("model", "a")
    journal.set_meta("model", "b")
    assert journal.get_meta("model") == "b"
    with pytest.raises(TypeError):
        journal.set_meta("n", 3)  # type: ignore[arg-type]


def test_file_records(journal: Journal, tmp_path: Path) -> None:
    f = tmp_path / "notes.md"
    f.write_text("hello")
    assert not journal.file_unchanged(f)
    record = journal.record_file(f)
    assert record.sha256 == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert journal.file_record(f) == record and journal.files() == [record]
    assert journal.file_unchanged(f)
    os.utime(f, (1, 1))  # touched, same content
    assert journal.file_unchanged(f)
    f.write_text("hellO")  # same size, new content
    assert not journal.file_unchanged(f)
    f.write_text("hello, world")
    assert not journal.file_unchanged(f)
    assert journal.remove_file(f) and not journal.remove_file(f)
    assert journal.file_record(f) is None


# -- concurrency --------------------------------------------------------------------------------------

WRITER = """
    import os, sys, time
    from memchat.store import Journal, NewRow
    path, name, go = sys.argv[1:4]
    while not os.path.exists(go):
        time.sleep(0.001)
    began = time.monotonic()
    with Journal(path) as j:
        for batch in range(100):
            j.append([NewRow(f"{name} {batch} {i}", "text", name, 1) for i in range(4)],
                     seed_fn=lambda row_id: row_id * 3)
            time.sleep(0.002)  # give the reader room to see the journal mid-way
    print(began, time.monotonic(), flush=True)
"""

READER = """
    import os, sys, time
    from memchat.store import Journal
    path, go = sys.argv[1:3]
    while not os.path.exists(go):
        time.sleep(0.001)
    seen, partial = 0, 0
    with Journal(path) as j:
        deadline = time.monotonic() + 60
        while seen < 800 and time.monotonic() < deadline:
            rows = list(j.rows())
            assert [r.id for r in rows] == sorted({r.id for r in rows})
            assert all(r.seed == r.id * 3 for r in rows)
            seen = j.counts().pending
            j.search("w0")
            partial += 0 < len(rows) < 800
    print(seen, partial, flush=True)
"""


@pytest.mark.parametrize("precreated", [True, False])
def test_concurrent_writers_and_reader(tmp_path: Path, spawn: Spawner, precreated: bool) -> None:
    path, go = tmp_path / "journal.sqlite", tmp_path / "go"
    if precreated:
        Journal(path).close()
    procs = [spawn(WRITER, str(path), "w0", str(go)), spawn(WRITER, str(path), "w1", str(go)),
             spawn(READER, str(path), str(go))]
    time.sleep(0.2)  # let them all reach the starting line
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    for proc, (_, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err
        assert "locked" not in err
    (a0, a1), (b0, b1) = ([float(x) for x in out.split()] for out, _ in outs[:2])
    assert a0 < b1 and b0 < a1  # the writers really ran at the same time
    seen, partial = (int(x) for x in outs[2][0].split())
    assert seen == 800 and partial >= 1  # the reader read while the writers wrote
    with Journal(path) as j:
        rows = list(j.rows())
    assert [r.id for r in rows] == list(range(1, 801))
    for name in ("w0", "w1"):
        mine = [r.text for r in rows if r.source_name == name]
        assert mine == [f"{name} {b} {i}" for b in range(100) for i in range(4)]  # each writer's order kept


def test_backup_is_a_consistent_private_copy(journal: Journal, tmp_path: Path) -> None:
    journal.append([row("one", created_at=5.0), row("two", created_at=6.0)])
    journal.set_meta("salt", "s")
    dest = tmp_path / "out" / "copy.sqlite"
    dest.parent.mkdir()
    journal.backup(dest)
    assert dest.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in dest.parent.iterdir()] == ["copy.sqlite"]
    with Journal(dest) as copy:
        assert [r.text for r in copy.rows()] == ["one", "two"]
        assert copy.get_meta("salt") == "s"
        assert copy.last_row_time() == 6.0
    assert journal.last_row_time() == 6.0


def test_last_row_time_of_empty_journal(journal: Journal) -> None:
    assert journal.last_row_time() is None


OPENER = """
    import os, sys, time
    from memchat.store import Journal, NewRow
    path, go = sys.argv[1:3]
    while not os.path.exists(go):
        time.sleep(0.0005)
    with Journal(path) as j:
        j.append([NewRow("x", "text", seed=1)])
"""


def test_many_processes_create_one_journal_at_once(tmp_path: Path, spawn: Spawner) -> None:
    for attempt in range(3):  # the switch to WAL used to fail now and then with "database is locked"
        path, go = tmp_path / f"j{attempt}.sqlite", tmp_path / f"go{attempt}"
        procs = [spawn(OPENER, str(path), str(go)) for _ in range(6)]
        time.sleep(0.2)
        go.touch()
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
        with Journal(path) as j:
            assert [r.id for r in j.rows()] == [1, 2, 3, 4, 5, 6]


def test_full_disk_fails_cleanly_and_the_journal_stays_usable(journal: Journal) -> None:
    journal.append([row("before")])
    pages = journal._db.execute("PRAGMA page_count").fetchone()[0]
    journal._db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own way to say SQLITE_FULL
    with pytest.raises(StoreError, match="disk full while writing journal") as info:
        journal.append([row("x" * 100_000)])
    assert "\n" not in str(info.value)
    journal._db.execute("PRAGMA max_page_count = 1000000")
    assert journal.append([row("after")]) == [2]
    assert [r.text for r in journal.rows()] == ["before", "after"]

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from memchat.store import MemoryBusy, MemoryLock

from ._util import Spawner, wait_for_line

HOLDER = """
    import sys, time
    from memchat.store import MemoryLock
    lock = MemoryLock(sys.argv[1], command="memchat chat")
    assert lock.try_acquire()
    print("held", flush=True)
    time.sleep(120)
"""

TRIER = """
    import sys
    from memchat.store import MemoryBusy, MemoryLock
    lock = MemoryLock(sys.argv[1], command="memchat ingest")
    print(lock.try_acquire())
    try:
        lock.acquire()
    except MemoryBusy as exc:
        print(exc)
"""


def test_second_process_cannot_acquire(tmp_path: Path, spawn: Spawner) -> None:
    lock = MemoryLock(tmp_path / "mem", command="memchat chat")
    assert lock.try_acquire()
    proc = spawn(TRIER, str(tmp_path / "mem"))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    first, message = out.strip().splitlines()
    assert first == "False"
    assert f"held by pid {os.getpid()} (memchat chat since " in message
    lock.release()
    proc = spawn(TRIER, str(tmp_path / "mem"))
    out, err = proc.communicate(timeout=60)
    assert out.strip().splitlines() == ["True"], err


def test_sigkilled_holder_releases_the_lock(tmp_path: Path, spawn: Spawner) -> None:
    proc = spawn(HOLDER, str(tmp_path))
    wait_for_line(proc, "held")
    lock = MemoryLock(tmp_path)
    assert not lock.try_acquire()
    owner = lock.owner()
    assert owner is not None and owner.pid == proc.pid and owner.command == "memchat chat"
    assert abs(owner.since - time.time()) < 60
    with pytest.raises(MemoryBusy, match=f"pid {proc.pid}"):
        lock.acquire()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert lock.try_acquire()  # the kernel dropped the dead holder's lock
    owner = lock.owner()
    assert owner is not None and owner.pid == os.getpid()  # the stale note was replaced
    lock.release()


def test_release_reacquire_and_context_manager(tmp_path: Path) -> None:
    a, b = MemoryLock(tmp_path), MemoryLock(tmp_path)
    with a:
        assert a.held and a.try_acquire()  # the holder asking again is fine
        assert not b.try_acquire()  # a second object is a second writer, even in one process
        with pytest.raises(MemoryBusy) as info:
            b.acquire()
        assert "\n" not in str(info.value)
    assert not a.held and a.owner() is None
    assert b.try_acquire()
    b.release()
    b.release()  # idempotent


def test_lock_files_are_private(tmp_path: Path) -> None:
    directory = tmp_path / "new" / "mem"
    with MemoryLock(directory):
        for p in (tmp_path / "new", directory):
            assert p.stat().st_mode & 0o777 == 0o700
        for name in ("memory.lock", "memory.lock.owner"):
            assert (directory / name).stat().st_mode & 0o777 == 0o600

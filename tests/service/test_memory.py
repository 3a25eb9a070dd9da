"""The memory service over a real store and the tiny model: journal-first injection, recovery, exact
forgetting, verification and the single-writer queue."""

from __future__ import annotations

import time

import pytest
import torch

from memchat.service.memory import Memory, Options, derive_seed, memory_layout
from memchat.store import MemoryBusy

torch.set_num_threads(1)

FACTS = [
    "My dog is called Biscuit and he loves running on the beach every morning before breakfast.",
    "I live in Lyon, in a small flat near the river, and I work as a baker in the old town.",
    "My sister Anna is moving to Berlin next month to start a new job as a nurse at the hospital.",
    "On Sundays we usually cook a big lunch together and then play board games until the evening.",
]


def options(tmp_path, **kw) -> Options:
    return Options(home=tmp_path / "home", model="tiny", seed=7, checkpoint_every=2, snapshot_every=2, **kw)


def open_memory(opts: Options) -> Memory:
    return Memory.open(opts, notice=lambda message: None)


def test_injections_are_journaled_applied_and_survive_reopen(tmp_path):
    opts = options(tmp_path)
    with open_memory(opts) as memory:
        for fact in FACTS:
            result = memory.inject(fact, "chat", "test")
            assert result.ids and not result.queued
        digest = memory.digest()
        rows = list(memory.journal.rows())
        assert [r.status for r in rows] == ["applied"] * len(rows)
        assert [r.seed for r in rows] == [derive_seed("7", r.id) for r in rows]
    with open_memory(opts) as memory:
        assert memory.upto == rows[-1].id
        assert memory.digest() == digest
        live, rebuilt = memory.verify()
        assert live == rebuilt == digest


def test_same_journal_and_seed_give_the_same_memory_in_another_home(tmp_path):
    digests = []
    for name in ("a", "b"):
        with open_memory(options(tmp_path / name)) as memory:
            for fact in FACTS:
                memory.inject(fact, "chat")
            digests.append(memory.digest())
    assert digests[0] == digests[1]
    with open_memory(Options(home=tmp_path / "c" / "home", model="tiny", seed=8)) as memory:
        for fact in FACTS:
            memory.inject(fact, "chat")
        assert memory.digest() != digests[0]


def test_forget_since_equals_a_memory_that_never_saw_the_rows(tmp_path):
    with open_memory(options(tmp_path / "never")) as memory:
        for fact in FACTS[:2]:
            memory.inject(fact, "chat")
        expected = memory.digest()
    with open_memory(options(tmp_path / "forgot")) as memory:
        for fact in FACTS[:2]:
            memory.inject(fact, "chat")
        time.sleep(0.05)
        cut = time.time()
        for fact in FACTS[2:]:
            memory.inject(fact, "chat")
        assert memory.digest() != expected
        ids = memory.select(since=cut)
        assert len(ids) == 2
        memory.forget(ids)
        assert memory.digest() == expected
        assert memory.journal.search("Berlin") == []
        assert all(r.text == "" for r in memory.journal.rows() if r.status == "forgotten")
    with open_memory(options(tmp_path / "forgot")) as memory:
        assert memory.digest() == expected


def test_forget_by_source_keeps_the_others(tmp_path):
    with open_memory(options(tmp_path)) as memory:
        memory.inject(FACTS[0], "file", "/notes/a.md")
        memory.inject(FACTS[1], "file", "/notes/b.md")
        memory.forget(memory.select(source="/notes/a.md"))
        live = [r for r in memory.journal.rows() if r.status == "applied"]
        assert [r.source_name for r in live] == ["/notes/b.md"]
        live_digest, rebuilt = memory.verify()
        assert live_digest == rebuilt


def test_corrupt_state_falls_back_and_rebuilds_the_same_memory(tmp_path):
    opts = options(tmp_path)
    with open_memory(opts) as memory:
        for fact in FACTS:
            memory.inject(fact, "chat")
        digest = memory.digest()
    state = memory_layout(opts).state
    raw = bytearray(state.read_bytes())
    raw[-10] ^= 0xFF
    state.write_bytes(bytes(raw))
    notices = []
    with Memory.open(opts, notice=notices.append) as memory:
        assert memory.digest() == digest
    assert any("damaged" in n or "checksum" in n for n in notices), notices


def test_state_saved_before_a_forget_is_not_trusted(tmp_path):
    """A crash between marking rows forgotten and saving the rebuilt state must not resurrect them."""
    opts = options(
        tmp_path,
    )
    with open_memory(opts) as memory:
        for fact in FACTS:
            memory.inject(fact, "chat")
        memory.checkpoint()
        ids = memory.select(since=0)[2:]
        memory.snapshots.invalidate_from(ids[0])
        memory.journal.forget(ids)  # the crash happens here: the saved state still holds the rows
    with open_memory(opts) as memory:
        rebuilt_after_crash = memory.digest()
    with open_memory(options(tmp_path / "clean")) as memory:
        for fact in FACTS[:2]:
            memory.inject(fact, "chat")
        assert memory.digest() == rebuilt_after_crash


def test_a_second_opener_only_journals_and_the_holder_applies(tmp_path):
    opts = options(tmp_path)
    with open_memory(opts) as holder:
        with open_memory(opts) as second:
            assert not second.holder
            result = second.inject(FACTS[0], "file", "/x.md")
            assert result.queued and result.ids
            with pytest.raises(MemoryBusy):
                second.forget(result.ids)
        assert holder.journal.counts().pending == len(result.ids)
        assert holder.apply_pending() == len(result.ids)
        assert holder.journal.counts().pending == 0
        assert holder.upto == result.ids[-1]


def test_long_text_is_cut_into_bounded_chunks_and_short_text_is_kept(tmp_path):
    with open_memory(options(tmp_path)) as memory:
        limit = memory.engine.config.max_injection_tokens
        long_text = "\n\n".join(FACTS * 40)
        result = memory.inject(long_text, "text")
        counts = [r.token_count for r in memory.journal.rows()]
        assert len(result.ids) > 1 and max(counts) <= limit + 4 and min(counts) >= 16
        short = memory.inject("Hi.", "chat")
        assert len(short.ids) == 1

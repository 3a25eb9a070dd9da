"""M+ memories keep their long-term rows in the on-disk log: a tiny M+ whose rows are pruned after four
merges (one merge per injection), in segments of 8 rows so that collection happens within a few dozen
injections. Real files, real subprocesses, SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from memchat.engine.engine import Engine
from memchat.engine.state import MemoryState
from memchat.engine.tiny import write_tiny_checkpoint
from memchat.service.memory import Memory, Options, memory_digest, memory_layout, saved_digest
from memchat.store import load_state

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[2]
FACTS = [f"Note {i}: the blue kettle on shelf {i} holds {3 * i} spoons and a map of harbour {i}."
         for i in range(24)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mplus-pruning")
    return write_tiny_checkpoint(folder, "mplus", initial_rf_when_moving_stm_to_ltm=4, update_ltm_frequency=1)


def options(home: Path, checkpoint: Path) -> Options:
    # 8 rows of 64 fp32 values per segment: one merge fills one. On the CPU, also where a GPU is: rows
    # are bf16 there, which halves the segments, and the CPU engine below would not match them.
    return Options(home=home, model=str(checkpoint), device="cpu", seed=7, checkpoint_every=3,
                   snapshot_every=6, ltm_segment_bytes=8 * 64 * 4)


def open_memory(opts: Options, notices: list[str] | None = None) -> Memory:
    return Memory.open(opts, notice=(notices.append if notices is not None else lambda message: None))


def injected(opts: Options, facts: list[str]) -> str:
    with open_memory(opts) as memory:
        for fact in facts:
            memory.inject(fact, "chat")
        return memory.digest()


def disk_files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def test_values_live_in_the_log_and_the_digest_covers_them(tmp_path, checkpoint):
    opts = options(tmp_path / "home", checkpoint)
    layout = memory_layout(opts)
    with open_memory(opts) as memory:
        for fact in FACTS[:12]:
            memory.inject(fact, "chat")
        ltm = memory.engine.state.ltm
        assert memory.ltm_rows() < sum(memory.ltm.length(i) for i in range(ltm.layers))  # rows were pruned
        digest = memory.digest()
        files = disk_files(layout.ltm)
        assert memory.verify() == (digest, digest)
        assert disk_files(layout.ltm) == files  # verify rebuilt in a scratch log
    tensors, _ = load_state(layout.state)
    assert "ltm.row_ids.0" in tensors and not any(k.startswith("ltm.rows.") for k in tensors)
    assert saved_digest(layout) == digest
    # The same journal folded by an engine alone, its long-term rows in RAM, gives the same digest.
    engine = Engine.load(checkpoint, device="cpu", quant="none", dtype=torch.float32)
    with open_memory(opts) as memory:
        for row in memory.journal.rows():
            engine.inject(engine.tokenizer.encode(row.text), seed=row.seed, origin=row.id)
        assert memory_digest(engine.state.to_tensors()) == digest == memory.digest()


_DYING_CHILD = """
import json, os, signal, sys
from pathlib import Path
from memchat.service.memory import Memory, Options
import memchat.store.ltm, memchat.store.state

where, facts, opts = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
module, name = {"flush": (memchat.store.ltm.SegmentLog, "flush"),
                "save_state": (memchat.store.state, "save_state")}[where]
real, calls = getattr(module, name), []

def dying(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)

setattr(module, name, dying)
opts = Options(**{**opts, "home": Path(opts["home"])})
with Memory.open(opts, notice=lambda message: None) as memory:
    for fact in facts:
        memory.inject(fact, "chat")
"""


@pytest.mark.parametrize("where", ["flush", "save_state"])
def test_killed_after_appending_rows_before_saving_the_state_reopens_to_the_same_memory(
    tmp_path, checkpoint, where
):
    expected = injected(options(tmp_path / "clean", checkpoint), FACTS[:12])
    opts = options(tmp_path / "killed", checkpoint)
    fields = {k: str(v) if isinstance(v, Path) else v for k, v in opts.__dict__.items()}
    child = subprocess.run(
        [sys.executable, "-c", _DYING_CHILD, where, json.dumps(FACTS[:12]), json.dumps(fields)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
             "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=300,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    layout = memory_layout(opts)
    saved, _ = load_state(layout.state)
    on_disk = (layout.ltm / "layer000" / "rows.sha256").stat().st_size // 32
    assert on_disk > int(saved["ltm.log_lengths"][0])  # the log got rows the saved state does not name
    with open_memory(opts) as memory:
        for fact in FACTS[len(list(memory.journal.rows())):12]:
            memory.inject(fact, "chat")
        assert memory.digest() == expected


def test_forget_gives_the_memory_that_never_saw_the_rows(tmp_path, checkpoint):
    expected = injected(options(tmp_path / "never", checkpoint), FACTS[:10])
    opts = options(tmp_path / "home", checkpoint)
    with open_memory(opts) as memory:
        for fact in FACTS[:10]:
            memory.inject(fact, "chat")
        time.sleep(0.05)
        cut = time.time()
        for fact in FACTS[10:20]:
            memory.inject(fact, "chat")
        assert memory.digest() != expected
        memory.forget(memory.select(since=cut))
        assert memory.digest() == expected
    with open_memory(opts) as memory:
        assert memory.digest() == expected
        assert memory.verify() == (expected, expected)


def test_snapshots_see_rows_pruned_after_them_and_collection_spares_them(tmp_path, checkpoint):
    opts = options(tmp_path / "home", checkpoint)
    layout = memory_layout(opts)
    with open_memory(opts) as memory:
        for fact in FACTS:
            memory.inject(fact, "chat")
        now = memory.engine.state.ltm
        segments = [layout.ltm / "layer000" / f"{s:08d}.rows" for s in range(now.log_lengths[0] // 8)]
        assert not all(path.exists() for path in segments), "nothing was collected"
        snapshots = memory.snapshots.list()
        assert len(snapshots) >= 2
        pruned_since = 0
        for snap in snapshots:
            tensors, _ = load_state(snap.path)
            state = MemoryState.from_tensors(tensors, memory.ltm)  # raises unless every row is readable
            for layer in range(state.ltm.layers):
                assert torch.equal(state.ltm.rows_sha256(layer), tensors[f"ltm.rows_sha256.{layer}"])
                pruned_since += int((~torch.isin(state.ltm.row_ids[layer], now.row_ids[layer])).sum())
        assert pruned_since > 0  # the snapshots hold rows the live memory has pruned since


@pytest.mark.parametrize("damage", ["segment missing", "segment cut", "hashes cut", "folder gone"])
def test_a_damaged_long_term_memory_falls_back_and_rebuilds_the_same_memory(tmp_path, checkpoint, damage):
    opts = options(tmp_path / "home", checkpoint)
    expected = injected(opts, FACTS[:12])
    layout = memory_layout(opts)
    tensors, _ = load_state(layout.state)
    newest = int(tensors["ltm.row_ids.0"].max())
    segment = layout.ltm / "layer000" / f"{newest // 8:08d}.rows"
    if damage == "segment missing":
        segment.unlink()
    elif damage == "segment cut":
        os.truncate(segment, 10)
    elif damage == "hashes cut":
        os.truncate(layout.ltm / "layer000" / "rows.sha256", 32 * newest)
    else:
        for path in sorted(layout.ltm.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
    notices: list[str] = []
    with open_memory(opts, notices) as memory:
        assert memory.digest() == expected
    assert any("long-term memory" in n and "\n" not in n for n in notices), notices

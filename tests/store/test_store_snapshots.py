from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from memchat.store import CorruptState, SnapshotInfo, SnapshotPolicy, Snapshots, load_state, save_state


def state(value: float) -> dict[str, torch.Tensor]:
    return {"memory": torch.full((4, 8), value), "ages.0": torch.tensor([int(value)] * 3)}


def simulate(policy: SnapshotPolicy, rows: int, size: int) -> list[list[int]]:
    """Take snapshots as the policy asks while `rows` rows are applied; the kept uptos after each prune."""
    snaps: list[SnapshotInfo] = []
    history = []
    for upto in range(1, rows + 1):
        last = snaps[-1].upto if snaps else None
        if policy.due(last, upto, size):
            snaps.append(SnapshotInfo(upto, Path(f"{upto:012d}"), size))
            doomed = {s.path for s in policy.to_delete(snaps)}
            snaps = [s for s in snaps if s.path not in doomed]
            history.append([s.upto for s in snaps])
    return history


def test_due_every_rows_and_never_beyond_budget() -> None:
    policy = SnapshotPolicy(budget_bytes=1000, every_rows=10)
    assert not policy.due(None, 9, 10)
    assert policy.due(None, 10, 10)
    assert not policy.due(10, 19, 10)
    assert policy.due(10, 20, 10)
    assert not policy.due(None, 10_000, 1001)  # one state alone exceeds the budget
    with pytest.raises(ValueError):
        SnapshotPolicy(every_rows=0)


def test_defaults_are_documented_numbers() -> None:
    policy = SnapshotPolicy()
    assert policy.budget_bytes == 8 << 30 and policy.every_rows == 256
    assert "3.4 GB" in (SnapshotPolicy.__doc__ or "")


def test_retention_is_geometric_and_keeps_the_newest() -> None:
    history = simulate(SnapshotPolicy(budget_bytes=10**12, every_rows=10), rows=10_000, size=1)
    assert len(history) == 1000
    for kept in history:
        assert kept == sorted(kept)
        assert len(kept) <= math.log2(kept[-1] / 10) + 2
    final = history[-1]
    assert final[-1] == 10_000
    gaps = [b - a for a, b in zip(final, final[1:], strict=False)]
    assert gaps == sorted(gaps, reverse=True)  # older snapshots are further apart
    assert final[0] <= 10_000 // 4  # and they still reach far back
    newest_before = [max(u for u in kept if u < 9_990) for kept in history[-1:]]
    assert newest_before[0] >= 9_960  # a recent forget replays few rows


def test_retention_stays_within_budget_dropping_the_oldest_first() -> None:
    history = simulate(SnapshotPolicy(budget_bytes=350, every_rows=10), rows=3000, size=100)
    for kept in history:
        assert len(kept) * 100 <= 350
    assert history[-1][-1] == 3000 and len(history[-1]) == 3
    assert history[-1][0] > 1000  # the old end went first


def test_no_snapshot_survives_a_budget_smaller_than_one_state() -> None:
    policy = SnapshotPolicy(budget_bytes=50, every_rows=1)
    snaps = [SnapshotInfo(1, Path("a"), 100), SnapshotInfo(2, Path("b"), 100)]
    assert policy.to_delete(snaps) == [snaps[1], snaps[0]]


def test_save_list_latest_before(tmp_path: Path) -> None:
    snaps = Snapshots(tmp_path / "snapshots", SnapshotPolicy(budget_bytes=10**9, every_rows=1))
    assert snaps.latest_before(10) is None and snaps.list() == []
    for upto in (10, 20, 30):
        path = snaps.save(state(upto), {"model": "tiny"}, upto)
        assert path.name == f"{upto:012d}.safetensors"
    assert (tmp_path / "snapshots").stat().st_mode & 0o777 == 0o700
    assert [s.upto for s in snaps.list()] == [10, 20, 30]
    assert snaps.latest_before(31) == (snaps.path_for(30), 30)
    assert snaps.latest_before(30) == (snaps.path_for(20), 20)
    assert snaps.latest_before(25) == (snaps.path_for(20), 20)
    assert snaps.latest_before(11) == (snaps.path_for(10), 10)
    assert snaps.latest_before(10) is None
    found = snaps.load_before(25)
    assert found is not None
    tensors, meta, upto = found
    assert upto == 20 and meta == {"model": "tiny", "journal_upto": "20"}
    assert torch.equal(tensors["memory"], state(20)["memory"])


def test_corrupt_snapshot_is_reported_and_skipped(tmp_path: Path) -> None:
    snaps = Snapshots(tmp_path, SnapshotPolicy(budget_bytes=10**9, every_rows=1))
    for upto in (10, 20, 30):
        snaps.save(state(upto), {}, upto)
    damaged = snaps.path_for(20)
    data = bytearray(damaged.read_bytes())
    data[-3] ^= 0x40
    damaged.write_bytes(bytes(data))
    reported: list[tuple[Path, CorruptState]] = []
    found = snaps.latest_before(25, on_corrupt=lambda p, e: reported.append((p, e)))
    assert found == (snaps.path_for(10), 10)
    assert [p for p, _ in reported] == [damaged]
    assert str(damaged) in str(reported[0][1])
    assert snaps.latest_before(31) == (snaps.path_for(30), 30)


def test_snapshot_with_a_lying_name_is_skipped(tmp_path: Path) -> None:
    snaps = Snapshots(tmp_path)
    save_state(snaps.path_for(20), state(5), {"journal_upto": "5"})  # the name and the content disagree
    reported = []
    assert snaps.latest_before(100, on_corrupt=lambda p, e: reported.append(p)) is None
    assert reported == [snaps.path_for(20)]


def test_invalidate_from_removes_snapshots_holding_forgotten_rows(tmp_path: Path) -> None:
    snaps = Snapshots(tmp_path, SnapshotPolicy(budget_bytes=10**9, every_rows=1))
    for upto in (10, 20, 30):
        snaps.save(state(upto), {}, upto)
    assert snaps.invalidate_from(20) == [snaps.path_for(20), snaps.path_for(30)]
    assert [s.upto for s in snaps.list()] == [10]


def test_link_shares_the_state_file_safely(tmp_path: Path) -> None:
    state_path = tmp_path / "state" / "memory.safetensors"
    snaps = Snapshots(tmp_path / "snapshots", SnapshotPolicy(budget_bytes=10**9, every_rows=1))
    save_state(state_path, state(7), {"journal_upto": "7"})
    path = snaps.link(state_path, 7)
    assert os.path.samefile(path, state_path)
    save_state(state_path, state(9), {"journal_upto": "9"})  # the next checkpoint replaces the state
    tensors, meta = load_state(path)
    assert meta["journal_upto"] == "7" and torch.equal(tensors["memory"], state(7)["memory"])
    assert snaps.latest_before(8) == (path, 7)


def test_save_prunes_by_policy_and_stale_temps(tmp_path: Path) -> None:
    save_state(tmp_path / "probe", state(1), {"journal_upto": "1"})
    size = (tmp_path / "probe").stat().st_size
    (tmp_path / "probe").unlink()
    snaps = Snapshots(tmp_path, SnapshotPolicy(budget_bytes=3 * size, every_rows=1))
    stale = tmp_path / ".000000000005.safetensors.tmp-999999999-abcd"  # a save killed long ago
    stale.write_bytes(b"partial")
    for upto in range(1, 11):
        snaps.save(state(upto), {}, upto)
        assert sum(s.size for s in snaps.list()) <= 3 * size
    kept = [s.upto for s in snaps.list()]
    assert kept[-1] == 10 and len(kept) == 3
    assert not stale.exists()
    assert snaps.due(upto=10, state_bytes=size) is False
    assert snaps.due(upto=11, state_bytes=size) is True
    assert snaps.due(upto=11, state_bytes=4 * size) is False

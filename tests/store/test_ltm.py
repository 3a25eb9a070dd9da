"""The on-disk long-term memory log: real files, memory maps, crash leftovers, tombstones and collection."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from memchat.engine.rowlog import RamRowLog
from memchat.store import CorruptState
from memchat.store.ltm import SegmentLog, disk_rows

WIDTH = 16


def rows(n: int, seed: int, dtype: torch.dtype = torch.float32, width: int = WIDTH) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed)).to(dtype)


def open_log(folder: Path, rows_per_segment: int = 4, dtype: torch.dtype = torch.float32) -> SegmentLog:
    return SegmentLog(folder, segment_bytes=rows_per_segment * WIDTH * dtype.itemsize)


def segment_files(folder: Path, layer: int = 0) -> list[str]:
    return sorted(p.name for p in (folder / f"layer{layer:03d}").glob("*.rows"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_span_segments_read_back_exactly_and_survive_reopening(tmp_path, dtype):
    log = open_log(tmp_path, dtype=dtype)
    first, second = rows(10, 1, dtype), rows(3, 2, dtype)
    assert log.append(0, first).tolist() == list(range(10))
    assert log.append(1, first[:2]).tolist() == [0, 1]
    assert log.append(0, second).tolist() == [10, 11, 12]
    everything = torch.cat([first, second])
    ids = torch.tensor([12, 0, 5, 5, 9, 3])
    assert log.read(0, ids).dtype == dtype and torch.equal(log.read(0, ids), everything[ids])
    assert segment_files(tmp_path) == [f"{s:08d}.rows" for s in range(4)]  # 4 rows per segment
    # Each row's hash is the sha256 of its bytes, the same as the engine's in-RAM log computes.
    ram = RamRowLog()
    ram.append(0, everything)
    assert torch.equal(log.hashes(0, ids), ram.hashes(0, ids))
    raw = everything[12:].contiguous().view(torch.uint8).numpy().tobytes()
    assert bytes(log.hashes(0, torch.tensor([12])).numpy()) == hashlib.sha256(raw).digest()
    log.flush()
    log.close()
    again = open_log(tmp_path, rows_per_segment=99, dtype=dtype)  # an existing log keeps its segment size
    assert (again.length(0), again.length(1), again.length(2)) == (13, 2, 0)
    assert torch.equal(again.read(0, ids), everything[ids]) and again.has(0, ids)
    assert again.append(0, second).tolist() == [13, 14, 15]
    assert disk_rows(tmp_path) == 16 + 2


def test_reading_a_row_maps_the_file_instead_of_reading_it(tmp_path):
    """A 1 GiB segment (sparse: it costs no disk) is read through a map: one row comes in, not the file."""
    width = 4096
    log = SegmentLog(tmp_path, segment_bytes=1 << 30)
    log.append(0, rows(1, 1, width=width))
    log.close()
    rows_per_segment = (1 << 30) // (width * 4)
    os.truncate(tmp_path / "layer000" / "00000000.rows", 1 << 30)
    with open(tmp_path / "layer000" / "rows.sha256", "r+b") as f:
        f.truncate(rows_per_segment * 32)
    log = SegmentLog(tmp_path, segment_bytes=1 << 30)
    assert log.length(0) == rows_per_segment
    before = _rss_bytes()
    got = log.read(0, torch.tensor([rows_per_segment - 7, 0]))
    assert not got[0].any() and torch.equal(got[1], rows(1, 1, width=width)[0])
    assert _rss_bytes() - before < 64 << 20


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    pytest.skip("no /proc/self/status here")


def test_rewind_cuts_rows_and_drops_tombstones_written_after(tmp_path):
    log = open_log(tmp_path)
    log.append(0, rows(10, 1))
    log.tombstone(0, torch.tensor([0, 1, 2, 3]), when=3)
    log.tombstone(0, torch.tensor([4, 5, 6, 7]), when=8)
    log.rewind([9], upto=5)
    assert log.length(0) == 9
    assert segment_files(tmp_path) == ["00000000.rows", "00000001.rows", "00000002.rows"]
    assert (tmp_path / "layer000" / "00000002.rows").stat().st_size == 1 * WIDTH * 4
    # Replaying appends the same ids again; the tombstone at 8 is gone, so segment 1 stays.
    assert log.append(0, rows(3, 2)).tolist() == [9, 10, 11]
    assert log.collect(horizon=100) == 1
    assert segment_files(tmp_path) == ["00000001.rows", "00000002.rows"]
    with pytest.raises(ValueError):
        log.rewind([20], upto=5)


def test_opening_after_a_crash_drops_half_written_rows(tmp_path):
    log = open_log(tmp_path)
    log.append(0, rows(5, 1))
    log.flush()
    log.close()
    # Killed inside the next append: one and a half rows of values, part of one hash.
    with open(tmp_path / "layer000" / "00000001.rows", "ab") as f:
        f.write(b"\x01" * (WIDTH * 4 * 3 // 2))
    with open(tmp_path / "layer000" / "rows.sha256", "ab") as f:
        f.write(b"\x02" * 20)
    log = open_log(tmp_path)
    assert log.length(0) == 5
    assert (tmp_path / "layer000" / "00000001.rows").stat().st_size == WIDTH * 4
    assert log.append(0, rows(2, 2)).tolist() == [5, 6]
    assert torch.equal(log.read(0, torch.arange(7)), torch.cat([rows(5, 1), rows(2, 2)]))


def test_tombstones_are_durable_only_once_flushed(tmp_path):
    log = open_log(tmp_path)
    log.append(0, rows(9, 1))
    log.tombstone(0, torch.arange(4), when=2)
    log.close()  # not flushed: the tombstones were never committed
    log = open_log(tmp_path)
    assert log.collect(horizon=10) == 0
    log.tombstone(0, torch.arange(4), when=2)
    log.flush()
    log.close()
    assert open_log(tmp_path).collect(horizon=10) == 1


def test_collect_deletes_only_segments_dead_before_the_horizon(tmp_path):
    log = open_log(tmp_path)
    log.append(0, rows(14, 1))  # segments 0-2 full, 3 holds rows 12-13
    log.tombstone(0, torch.arange(0, 4), when=5)  # segment 0: dead at 5
    log.tombstone(0, torch.arange(4, 7), when=5)  # segment 1: row 7 still live
    log.tombstone(0, torch.arange(8, 12), when=9)  # segment 2: dead at 9
    log.tombstone(0, torch.arange(12, 14), when=5)  # segment 3: rows are appended there
    assert log.collect(horizon=7) == 1  # a snapshot at 7 may still need segment 2
    assert segment_files(tmp_path) == ["00000001.rows", "00000002.rows", "00000003.rows"]
    assert log.collect(horizon=9) == 1
    assert segment_files(tmp_path) == ["00000001.rows", "00000003.rows"]
    assert log.length(0) == 14 and log.has(0, torch.tensor([7, 12])) and not log.has(0, torch.tensor([7, 8]))
    assert torch.equal(log.read(0, torch.tensor([7, 13])), rows(14, 1)[[7, 13]])
    log.close()
    assert open_log(tmp_path).length(0) == 14  # lengths come from the hash file, which is never collected


@pytest.mark.parametrize("damage", ["missing", "cut"])
def test_a_damaged_segment_is_a_one_line_error(tmp_path, damage):
    log = open_log(tmp_path)
    log.append(0, rows(8, 1))
    segment = tmp_path / "layer000" / "00000001.rows"
    if damage == "missing":
        segment.unlink()
    else:
        os.truncate(segment, WIDTH * 4)
    assert log.has(0, torch.tensor([0, 3])) and not log.has(0, torch.tensor([0, 6]))
    with pytest.raises(CorruptState) as error:
        log.read(0, torch.tensor([6]))
    message = str(error.value)
    assert "00000001.rows" in message and "\n" not in message and "rebuilds it from the journal" in message


def test_files_without_a_manifest_are_not_trusted_and_go_at_the_first_append(tmp_path):
    log = open_log(tmp_path)
    log.append(0, rows(6, 1))
    log.close()
    (tmp_path / "manifest.json").write_text("{not json")
    log = open_log(tmp_path)
    assert log.length(0) == 0 and disk_rows(tmp_path) is None
    assert log.append(0, rows(2, 2)).tolist() == [0, 1]
    assert segment_files(tmp_path) == ["00000000.rows"] and log.length(0) == 2
    assert torch.equal(log.read(0, torch.arange(2)), rows(2, 2))

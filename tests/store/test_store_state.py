from __future__ import annotations

import errno
import os
import random
import signal
import time
from pathlib import Path

import pytest
import safetensors
import torch

from memchat.store import (
    CorruptState,
    StoreError,
    load_state,
    read_meta,
    remove_stale_temps,
    save_state,
    state_digest,
)

from ._util import Spawner, wait_for_line


def sample_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g)
    return {
        "memory": torch.randn(2, 3, 4, generator=g),
        "f64": torch.randn(3, generator=g, dtype=torch.float64),
        "bf16": torch.randn(4, 3, generator=g).to(torch.bfloat16),
        "f16": torch.randn(5, generator=g).to(torch.float16),
        "ages.0": torch.arange(7, dtype=torch.int64) * (2**40),
        "i32": torch.tensor([-1, 2, 3], dtype=torch.int32),
        "u8": torch.tensor([0, 1, 255], dtype=torch.uint8),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.empty(0, 4),
        "empty_i64": torch.empty(3, 0, dtype=torch.int64),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "scalar_bf16": torch.tensor(-1.5, dtype=torch.bfloat16),
        "transposed": base.t(),
        "strided": base[::2, 1::2],
        "expanded": torch.arange(3.0).expand(4, 3),
    }


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        assert torch.equal(a[name], b[name]), name


def test_round_trip_every_dtype_and_shape(tmp_path: Path) -> None:
    tensors = sample_state()
    assert not tensors["strided"].is_contiguous() and not tensors["transposed"].is_contiguous()
    path = tmp_path / "state" / "memory.safetensors"
    save_state(path, tensors, {"journal_upto": "12", "model": "YuWangX/memoryllm-8b"})
    loaded, meta = load_state(path)
    assert_same(tensors, loaded)
    assert meta == {"journal_upto": "12", "model": "YuWangX/memoryllm-8b"}
    assert state_digest(loaded) == state_digest(tensors)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_files_are_standard_safetensors(tmp_path: Path) -> None:
    tensors = sample_state()
    path = tmp_path / "s.safetensors"
    save_state(path, tensors, {"journal_upto": "3"})
    with safetensors.safe_open(str(path), framework="pt") as f:
        assert f.metadata()["journal_upto"] == "3"
        assert_same(tensors, {name: f.get_tensor(name) for name in f.keys()})  # noqa: SIM118


def test_empty_state(tmp_path: Path) -> None:
    save_state(tmp_path / "e.safetensors", {}, {})
    assert load_state(tmp_path / "e.safetensors") == ({}, {})


def test_save_replaces_old_state(tmp_path: Path) -> None:
    path = tmp_path / "s.safetensors"
    save_state(path, {"a": torch.zeros(3)}, {"v": "1"})
    save_state(path, {"b": torch.ones(2, dtype=torch.int64)}, {"v": "2"})
    tensors, meta = load_state(path)
    assert meta == {"v": "2"} and list(tensors) == ["b"]


def test_metadata_must_be_str_and_not_reserved(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        save_state(tmp_path / "s.safetensors", {"a": torch.zeros(1)}, {"journal_upto": 12})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        save_state(tmp_path / "s.safetensors", {"a": torch.zeros(1)}, {"store.checksum": "x"})
    assert not list(tmp_path.iterdir())


def test_every_flipped_byte_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "s.safetensors"
    save_state(path, {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor([1, 2])},
               {"journal_upto": "12"})
    good = path.read_bytes()
    load_state(path)
    for i in range(len(good)):
        damaged = bytearray(good)
        damaged[i] ^= 0xFF
        path.write_bytes(bytes(damaged))
        with pytest.raises(CorruptState) as info:
            load_state(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("from_end", [1, 5_000_000, 30_000_000])
def test_one_flipped_bit_in_a_large_payload(tmp_path: Path, from_end: int) -> None:
    """36 MB: the threaded path, and a tensor of three hash pieces (last, middle and first are hit)."""
    path = tmp_path / "s.safetensors"
    tensors = {"memory": torch.randn(9, 1024, 1024), "small": torch.arange(5)}
    save_state(path, tensors, {})
    from memchat.store import read_digest

    assert read_digest(path) == state_digest(tensors)
    assert torch.equal(load_state(path)[0]["memory"], tensors["memory"])
    with open(path, "r+b") as f:
        f.seek(-from_end, os.SEEK_END)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(CorruptState, match="checksum"):
        load_state(path)


def test_a_state_of_another_format_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "s.safetensors"
    save_state(path, sample_state(), {})
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b'"memchat-state-3"', b'"memchat-state-2"'))
    with pytest.raises(CorruptState, match="format 'memchat-state-2'"):
        load_state(path)


@pytest.mark.parametrize("keep", [0, 5, 8, 40, -1])
def test_truncation_and_garbage_are_caught(tmp_path: Path, keep: int) -> None:
    path = tmp_path / "s.safetensors"
    save_state(path, {"a": torch.arange(64.0)}, {"journal_upto": "1"})
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(CorruptState):
        load_state(path)
    path.write_bytes(data + b"\0")
    with pytest.raises(CorruptState, match="trailing"):
        load_state(path)
    path.write_bytes(os.urandom(4096))
    with pytest.raises(CorruptState):
        load_state(path)


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_state(tmp_path / "nope.safetensors")


def test_digest_ignores_layout_and_order_but_not_content() -> None:
    tensors = sample_state()
    contiguous = {k: v.contiguous().clone() for k, v in reversed(list(tensors.items()))}
    assert state_digest(tensors) == state_digest(contiguous)
    base = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    variants = [
        {"a": base["a"].reshape(3, 2)},  # same bytes, other shape
        {"a": base["a"].view(torch.int32)},  # same bytes, other dtype
        {"b": base["a"]},  # other name
        {"a": base["a"] + 1},  # other values
        {**base, "c": torch.empty(0)},  # one more (empty) tensor
    ]
    digests = {state_digest(base), *(state_digest(v) for v in variants)}
    assert len(digests) == len(variants) + 1


def test_digest_is_stable_across_processes(spawn: Spawner) -> None:
    code = """
        import torch
        from memchat.store import state_digest
        from tests.store.test_store_state import sample_state
        print(state_digest(sample_state()))
    """
    proc = spawn(code)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.strip() == state_digest(sample_state())


@pytest.mark.parametrize("size", [1000, 3 << 20])  # the inline and the threaded write paths
@pytest.mark.parametrize("failing", ["write", "fsync"])
def test_disk_full_keeps_old_state_and_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    size: int, failing: str) -> None:
    path = tmp_path / "s.safetensors"
    old = {"memory": torch.zeros(size)}
    save_state(path, old, {"journal_upto": "1"})
    real = getattr(os, failing)
    calls = 0

    def full(fd: int, *args: object) -> object:
        nonlocal calls
        calls += 1
        if calls >= (2 if failing == "write" else 1):  # let the header through, fail on the payload
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, *args)

    with monkeypatch.context() as m:
        m.setattr(os, failing, full)
        with pytest.raises(StoreError, match="disk full while saving") as info:
            save_state(path, {"memory": torch.ones(size)}, {"journal_upto": "2"})
    assert "\n" not in str(info.value)
    tensors, meta = load_state(path)
    assert meta == {"journal_upto": "1"} and torch.equal(tensors["memory"], old["memory"])
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


SAVER = """
    import sys
    import torch
    from memchat.store import save_state
    path = sys.argv[1]
    states = []
    for gen in range(2):
        g = torch.Generator().manual_seed(gen)
        states.append({"memory": torch.randn(6, 1 << 20, generator=g).to(torch.bfloat16),
                       "ages": torch.full((4096,), gen, dtype=torch.int64)})
    save_state(path, states[0], {"gen": "0"})
    print("saved", flush=True)
    i = 1
    while True:
        save_state(path, states[i % 2], {"gen": str(i % 2)})
        i += 1
"""


def test_save_is_atomic_under_sigkill(tmp_path: Path, spawn: Spawner) -> None:
    path = tmp_path / "state" / "memory.safetensors"
    expected = {}
    for gen in range(2):
        g = torch.Generator().manual_seed(gen)
        expected[str(gen)] = state_digest({"memory": torch.randn(6, 1 << 20, generator=g).to(torch.bfloat16),
                                           "ages": torch.full((4096,), gen, dtype=torch.int64)})
    rng = random.Random()
    killed_mid_save = 0
    for _ in range(4):
        proc = spawn(SAVER, str(path))
        wait_for_line(proc, "saved")
        time.sleep(rng.uniform(0.02, 0.4))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        leftovers = [p for p in path.parent.iterdir() if p != path]
        killed_mid_save += bool(leftovers)
        tensors, meta = load_state(path)  # old or new, never a mix
        assert state_digest(tensors) == expected[meta["gen"]]
        assert remove_stale_temps(path.parent) == leftovers
        assert list(path.parent.iterdir()) == [path]
    assert killed_mid_save >= 1  # the kills did land inside saves


def test_stale_temp_cleanup_spares_live_writers(tmp_path: Path) -> None:
    live = tmp_path / f".s.safetensors.tmp-{os.getpid()}-0000"
    dead = tmp_path / ".s.safetensors.tmp-999999999-0000"
    other = tmp_path / "notes.tmp-1-2"
    for p in (live, dead, other):
        p.write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == [dead]
    assert live.exists() and other.exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_tensors_save_and_digest_like_cpu(tmp_path: Path) -> None:
    tensors = sample_state()
    on_gpu = {k: v.cuda() for k, v in tensors.items()}
    assert state_digest(on_gpu) == state_digest(tensors)
    save_state(tmp_path / "s.safetensors", on_gpu, {})
    assert_same(tensors, load_state(tmp_path / "s.safetensors")[0])


def test_read_meta_reads_the_header_only(tmp_path: Path) -> None:
    path = tmp_path / "s.safetensors"
    save_state(path, {"memory": torch.zeros(1000)}, {"journal_upto": "9", "memory_digest": "abc"})
    assert read_meta(path) == {"journal_upto": "9", "memory_digest": "abc"}
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 1)
    with pytest.raises(CorruptState, match="truncated"):
        read_meta(path)
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(CorruptState):
        read_meta(path)


def test_the_digest_read_from_a_header_equals_the_digest_of_the_tensors(tmp_path):
    """`memory stats` reads the digest from the header; it must be the tensors' own digest, and leaving a
    tensor out must change it."""
    from memchat.store import read_digest

    tensors = sample_state()
    save_state(tmp_path / "s.safetensors", tensors, {"journal_upto": "3"})
    assert read_digest(tmp_path / "s.safetensors") == state_digest(tensors)
    some = sorted(tensors)[0]
    rest = {k: v for k, v in tensors.items() if k != some}
    without = read_digest(tmp_path / "s.safetensors", exclude=(some,))
    assert without == state_digest(rest) != state_digest(tensors)


def test_a_flipped_recorded_tensor_hash_is_caught(tmp_path):
    path = tmp_path / "s.safetensors"
    save_state(path, sample_state(), {})
    raw = bytearray(path.read_bytes())
    at = raw.index(b'"store.tensor_sha256":"') + len(b'"store.tensor_sha256":"')
    raw[at] = ord("f") if raw[at] != ord("f") else ord("e")
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptState):
        load_state(path)

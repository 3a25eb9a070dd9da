from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from memchat.store import MemoryLayout, StoreError, memchat_home, memory_dir, model_key, validate_profile


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_home_override_env_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMCHAT_HOME", str(tmp_path / "env"))
    assert memchat_home(tmp_path / "flag") == tmp_path / "flag"
    assert memchat_home() == tmp_path / "env"
    monkeypatch.delenv("MEMCHAT_HOME")
    default = memchat_home()
    assert default.name == "memchat" and default != tmp_path / "env"


def test_memory_dir_creates_every_missing_directory_0700(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    home = tmp_path / "a" / "home"
    old_umask = os.umask(0o022)
    try:
        d = memory_dir(home, "work", model_key("YuWangX/memoryllm-8b"))
    finally:
        os.umask(old_umask)
    assert d == home / "profiles" / "work" / "YuWangX--memoryllm-8b"
    assert d.is_dir()
    for p in (tmp_path / "a", home, home / "profiles", home / "profiles" / "work", d):
        assert mode(p) == 0o700, p
    assert mode(tmp_path) == 0o755  # existing directories are left alone
    assert memory_dir(home, "work", "tiny") == home / "profiles" / "work" / "tiny"


@pytest.mark.parametrize("bad", ["../x", "..", ".", "", "a/b", ".hidden", "-x", "x" * 65, "CON", "nul.txt",
                                 "a b", "a\\b", "é"])
def test_bad_profile_names_raise_one_clear_error(tmp_path: Path, bad: str) -> None:
    with pytest.raises(StoreError, match="invalid profile name") as info:
        memory_dir(tmp_path, bad, "tiny")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "profiles").exists() or not any((tmp_path / "profiles").iterdir())


@pytest.mark.parametrize("good", ["default", "work", "a.b", "A_1-2", "x" * 64])
def test_good_profile_names(good: str) -> None:
    assert validate_profile(good) == good


@pytest.mark.parametrize("bad_key", ["../x", "a/b", "", ".", ".."])
def test_memory_dir_rejects_unsafe_model_keys(tmp_path: Path, bad_key: str) -> None:
    with pytest.raises(StoreError):
        memory_dir(tmp_path, "default", bad_key)


def test_model_key_readable_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert model_key("YuWangX/memoryllm-8b") == "YuWangX--memoryllm-8b"
    assert model_key("YuWangX/mplus-8b") == "YuWangX--mplus-8b"
    assert model_key("tiny-memoryllm") == "tiny-memoryllm"
    local = model_key(str(tmp_path / "ckpt" / "mplus-8b"))
    assert re.fullmatch(r"mplus-8b@[0-9a-f]{12}", local)
    monkeypatch.chdir(tmp_path)
    assert model_key("./ckpt/mplus-8b") == local  # the same folder, however it is spelled
    assert model_key("./ckpt/../ckpt/mplus-8b") == local
    assert model_key(str(tmp_path / "other" / "mplus-8b")) != local


def test_model_keys_are_safe_and_collision_free(tmp_path: Path) -> None:
    ids = [
        "YuWangX/memoryllm-8b", "yuwangx/memoryllm-8b", "YuWangX--memoryllm-8b", "tiny", "tiny ", "a b",
        "a-b", "a_b", "org/name/extra", "/abs/org/name", "/abs/org2/name", "~/models/x", "../x", "a:b",
        "a?b", "CON", "x" * 300, "x" * 301, "org/na me", "ünï/cödé", "a..b", "a.", "org/", "/",
    ]
    keys = {}
    for model_id in ids:
        key = model_key(model_id)
        assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._@-]{0,127}", key), (model_id, key)
        assert key == model_key(model_id)  # deterministic
        keys.setdefault(key, set()).add(model_id.strip())
    clashes = {k: v for k, v in keys.items() if len(v) > 1}
    assert not clashes
    for key in keys:
        memory_dir(tmp_path, "p", key)  # every key is a usable directory name


def test_empty_model_id_is_rejected() -> None:
    with pytest.raises(StoreError):
        model_key("  ")


def test_layout_names(tmp_path: Path) -> None:
    layout = MemoryLayout(tmp_path)
    assert layout.journal == tmp_path / "journal.sqlite"
    assert layout.state.parent == layout.state_dir == tmp_path / "state"
    assert layout.snapshots == tmp_path / "snapshots"
    assert layout.lock == tmp_path / "memory.lock"
    assert layout.ltm == tmp_path / "ltm"

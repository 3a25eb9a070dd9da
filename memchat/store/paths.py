"""Where memories live on disk: `<home>/profiles/<profile>/<model_key>/`."""

from __future__ import annotations

import errno
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from .errors import StoreError

DIR_MODE = 0o700
FILE_MODE = 0o600

_PROFILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# A hub id is `owner/name`; the hub itself forbids `--` and `..` in both parts, which keeps `--` free as
# our separator.
_HUB_PART_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SAFE_CHARS_RE = re.compile(r"[^A-Za-z0-9._-]+")
_KEY_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._@-]{0,127}")
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                     *(f"LPT{i}" for i in range(1, 10))}
_MAX_KEY = 96


def memchat_home(override: str | Path | None = None) -> Path:
    """The data root: an explicit `--home` wins, then `MEMCHAT_HOME` (how tests stay out of real data)."""
    if override is not None and str(override) != "":
        return Path(override).expanduser()
    env = os.environ.get("MEMCHAT_HOME")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("memchat"))


def ensure_dir(path: Path) -> Path:
    """Create `path` and any missing parents as 0700: memories hold private text.

    Directories that already exist keep their mode; we only own what we create.
    """
    path = Path(path)
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(d, DIR_MODE)  # mkdir's mode is filtered by the umask; be exact
    if not path.is_dir():
        raise StoreError(f"{path} exists but is not a directory; move it aside")
    return path


def fsync_path(path: Path) -> None:
    """Make a file's data, or a folder's renames and new names, durable; without the folder's, a power cut
    can bring back an old name, or lose a new file whose data was synced."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory handles (Windows)
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def validate_profile(profile: str) -> str:
    """Profile names become directory names, so they must never walk out of `profiles/`."""
    if not isinstance(profile, str) or not _PROFILE_RE.fullmatch(profile) \
            or profile.split(".")[0].upper() in _WINDOWS_RESERVED:
        raise StoreError(
            f"invalid profile name {profile!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return profile


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def _looks_local(model_id: str) -> bool:
    return (
        os.path.isabs(model_id)
        or model_id in (".", "..", "~")
        or model_id.startswith(("./", "../", "~/", ".\\", "..\\"))
        or "\\" in model_id
        or model_id.count("/") > 1
    )


def _is_plain(name: str) -> bool:
    return (
        _HUB_PART_RE.fullmatch(name) is not None
        and "--" not in name
        and ".." not in name
        and not name.endswith(".")
        and name.split(".")[0].upper() not in _WINDOWS_RESERVED
    )


def _hashed(readable: str, identity: str) -> str:
    stem = _SAFE_CHARS_RE.sub("-", readable).strip("-.")[: _MAX_KEY - 13] or "model"
    return f"{stem}@{_short_hash(identity)}"


def model_key(model_id: str) -> str:
    """A directory name per model that is readable and never shared by two different models.

    - hub id `owner/name` -> `owner--name` (the hub forbids `--` inside ids, so this is unambiguous);
    - a plain preset name -> itself;
    - a local path -> `<basename>@<hash of the absolute path>`; `@` never occurs in the other two forms.
      Pass local checkpoints as absolute (or `./`-prefixed) paths: `a/b` is read as a hub id.
    - anything else -> a sanitized stem plus the hash of the exact id.
    """
    if not isinstance(model_id, str) or not model_id.strip():
        raise StoreError("empty model id: name a hub id, a local checkpoint folder or a preset")
    mid = model_id.strip()
    if _looks_local(mid):
        absolute = os.path.normpath(os.path.abspath(os.path.expanduser(mid)))
        return _hashed(os.path.basename(absolute), "local:" + absolute)
    parts = mid.split("/")
    if len(parts) == 2 and all(_is_plain(p) for p in parts) and len(mid) + 1 <= _MAX_KEY:
        return f"{parts[0]}--{parts[1]}"
    if len(parts) == 1 and _is_plain(mid) and len(mid) <= _MAX_KEY:
        return mid
    return _hashed(mid.replace("/", "--"), "id:" + mid)


def memory_dir(home: str | Path, profile: str, model_key: str) -> Path:
    """The folder of one memory (profile x model), created 0700."""
    validate_profile(profile)
    if not isinstance(model_key, str) or not _KEY_RE.fullmatch(model_key):
        raise StoreError(f"invalid model key {model_key!r}: build it with model_key(model_id)")
    return ensure_dir(Path(home) / "profiles" / profile / model_key)


@dataclass(frozen=True)
class MemoryLayout:
    """The file names inside one memory folder, kept in one place so no layer invents its own."""

    root: Path

    @property
    def journal(self) -> Path:
        return self.root / "journal.sqlite"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def state(self) -> Path:
        return self.root / "state" / "memory.safetensors"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    @property
    def ltm(self) -> Path:
        return self.root / "ltm"

    @property
    def lock(self) -> Path:
        return self.root / "memory.lock"

"""`memchat memory export / import`: one portable tar file with the journal and the saved state.

The journal is the memory (the state can be rebuilt from it); the state comes along so the import opens
without a replay, and for M+ so does the long-term memory folder whose rows the state names. The archive
holds no pickle: SQLite, safetensors, raw rows and JSON.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

from memchat.errors import MemchatError
from memchat.service.memory import Memory, Options, memory_layout
from memchat.store import Journal, MemoryLock

FORMAT = "memchat-archive-1"
_MEMBERS = ("manifest.json", "journal.sqlite", "memory.safetensors")
_LTM = "ltm"  # M+ only


class ArchiveError(MemchatError):
    pass


def export_memory(memory: Memory, file: Path) -> None:
    """Checkpoint, then pack a consistent copy of the journal, the state and (M+) the long-term rows."""
    memory.checkpoint()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        memory.journal.backup(folder / "journal.sqlite")
        shutil.copyfile(memory.layout.state, folder / "memory.safetensors")
        manifest = {
            "format": FORMAT,
            "model": memory.options.model,
            "profile": memory.options.profile,
            "exported_at": time.time(),
            "journal_upto": memory.upto,
        }
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
        partial = file.with_name(file.name + ".partial")
        with tarfile.open(partial, "w") as tar:
            for name in _MEMBERS:
                tar.add(folder / name, arcname=name)
            if memory.ltm is not None:
                tar.add(memory.layout.ltm, arcname=_LTM)
        partial.replace(file)


def import_memory(options: Options, file: Path, *, force: bool = False) -> int:
    """Replace this profile's memory for this model with the archive's; returns its live injections."""
    layout = memory_layout(options)
    lock = MemoryLock(layout.root)
    if not lock.try_acquire():
        raise ArchiveError(f"memory {layout.root} is in use; close the other memchat first")
    try:
        with Journal(layout.journal) as journal:
            existing = journal.counts()
        if (existing.applied or existing.pending) and not force:
            raise ArchiveError(
                f"this memory already holds {existing.applied + existing.pending} injections; "
                f"use --force to replace it, or --profile NAME to import beside it"
            )
        with tempfile.TemporaryDirectory() as tmp:
            folder = _unpack(file, Path(tmp))
            manifest = json.loads((folder / "manifest.json").read_text())
            if manifest.get("format") != FORMAT:
                raise ArchiveError(f"{file} is not a memchat archive (format {manifest.get('format')!r})")
            if manifest.get("model") != options.model:
                raise ArchiveError(
                    f"{file} holds memory of model {manifest['model']}; open it with "
                    f"--model {manifest['model']}"
                )
            with Journal(folder / "journal.sqlite") as imported:
                count = imported.counts().applied
            layout.state.parent.mkdir(parents=True, exist_ok=True)
            for snapshot in layout.snapshots.glob("*.safetensors"):
                snapshot.unlink()
            shutil.copyfile(folder / "journal.sqlite", layout.journal.with_suffix(".import"))
            for suffix in ("-wal", "-shm"):
                layout.journal.with_name(layout.journal.name + suffix).unlink(missing_ok=True)
            layout.journal.with_suffix(".import").replace(layout.journal)
            shutil.copyfile(folder / "memory.safetensors", layout.state)
            shutil.rmtree(layout.ltm, ignore_errors=True)
            if (folder / _LTM).is_dir():
                shutil.copytree(folder / _LTM, layout.ltm)
        return count
    finally:
        lock.release()


def _unpack(file: Path, into: Path) -> Path:
    try:
        with tarfile.open(file) as tar:
            names = set(tar.getnames())
            if not set(_MEMBERS) <= names:
                raise ArchiveError(f"{file} is not a memchat archive (missing {set(_MEMBERS) - names})")
            for name in _MEMBERS:
                tar.extract(name, into, filter="data")
            ltm = [m for m in tar.getmembers() if m.name == _LTM or m.name.startswith(_LTM + "/")]
            tar.extractall(into, members=ltm, filter="data")
    except (tarfile.TarError, OSError) as error:
        raise ArchiveError(f"cannot read {file}: {error}") from None
    return into

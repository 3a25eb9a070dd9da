"""The header of a state file (safetensors layout: 8-byte length, JSON header, payload), read without torch.

Kept apart from `state.py` so that `memchat memory stats` can read a state's metadata in milliseconds:
importing torch alone costs about a second.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

from .errors import CorruptState, StoreError

CHECKSUM_KEY = "store.checksum"
TENSOR_HASHES_KEY = "store.tensor_sha256"  # each tensor's sha256 (hex), concatenated in payload order
FORMAT_KEY = "store.format"
UPTO_KEY = "journal_upto"  # every live journal row with id <= this is in the state
MAX_HEADER = 100 << 20

# Bytes per element of each safetensors dtype code.
ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "C64": 8, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1,
}


def corrupt(path: Path, why: str) -> CorruptState:
    return CorruptState(
        f"state file {path} is damaged ({why}); delete it and memchat rebuilds it from the journal"
    )


def parse_header(path: Path, raw: bytes, file_size: int) -> tuple[dict, dict[str, str], str, int]:
    """(tensor entries, metadata, checksum, payload length) of a header, checked against the file size."""
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise corrupt(path, "unreadable header") from None
    if not isinstance(header, dict):
        raise corrupt(path, "unreadable header")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise corrupt(path, "bad metadata")
    checksum = meta.pop(CHECKSUM_KEY, None)
    if checksum is None:
        raise corrupt(path, "no checksum, not written by memchat")
    end = 0
    spans = []
    for name, entry in header.items():
        try:
            itemsize = ITEMSIZE[entry["dtype"]]
            shape = [int(n) for n in entry["shape"]]
            start, stop = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise corrupt(path, f"bad entry for {name!r}") from None
        numel = 1
        for n in shape:
            numel *= n
        if min(shape, default=0) < 0 or start < 0 or stop - start != numel * itemsize:
            raise corrupt(path, f"bad size for {name!r}")
        spans.append((start, stop))
        end = max(end, stop)
    spans.sort()
    position = 0
    for start, stop in spans:
        if start != position:
            raise corrupt(path, "bad tensor offsets")
        position = stop
    expected = 8 + len(raw) + end
    if file_size != expected:
        why = "truncated" if file_size < expected else "trailing bytes"
        raise corrupt(path, f"{why}: {file_size} bytes, expected {expected}")
    return header, meta, checksum, end


def read_header(path: Path, f: io.RawIOBase) -> tuple[dict, dict[str, str], str, int]:
    size = os.fstat(f.fileno()).st_size
    prefix = f.read(8) or b""
    if len(prefix) < 8:
        raise corrupt(path, "truncated")
    header_len = int.from_bytes(prefix, "little")
    if header_len > min(size - 8, MAX_HEADER):
        raise corrupt(path, "not a safetensors file")
    raw = f.read(header_len) or b""
    return parse_header(path, raw, size)


def open_state(path: Path) -> io.RawIOBase:
    try:
        return open(path, "rb", buffering=0)  # noqa: SIM115 - the callers close it
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StoreError(f"cannot read state file {path}: {exc.strerror}") from exc


def compose_digest(tensors: list[tuple[str, str, list[int], str]]) -> str:
    """The user-visible digest of a state from its tensors' (name, dtype code, shape, sha256 hex), in a
    canonical form that does not depend on device, memory layout or file order."""
    h = hashlib.sha256(b"memchat-state-digest-3\0")
    for name, code, shape, sha in sorted(tensors):
        head = json.dumps([name, code, list(shape)], separators=(",", ":")).encode()
        h.update(len(head).to_bytes(8, "little"))
        h.update(head)
        h.update(bytes.fromhex(sha))
    return h.hexdigest()


def tensor_hashes(entries: dict, meta: dict[str, str]) -> dict[str, str]:
    """name -> sha256 hex of each tensor, as recorded in the header (payload order = offset order)."""
    names = sorted(entries, key=lambda n: entries[n]["data_offsets"][0])
    joined = meta.get(TENSOR_HASHES_KEY, "")
    return {name: joined[64 * i:64 * (i + 1)] for i, name in enumerate(names)}


def excluded(name: str, exclude: tuple[str, ...]) -> bool:
    """Whether `exclude` names `name`: by the whole name, or by a prefix ending in '.'."""
    return any(name == e or (e.endswith(".") and name.startswith(e)) for e in exclude)


def read_digest(path: str | Path, exclude: tuple[str, ...] = ()) -> str:
    """The digest of a saved state (less the `exclude`d tensors, see `excluded`) from its header alone: no
    payload read, no torch. Trusts the header; `load_state` verifies it against the payload."""
    path = Path(path)
    with open_state(path) as f:
        entries, meta, _, _ = read_header(path, f)
    hashes = tensor_hashes(entries, meta)
    kept = [(n, e["dtype"], e["shape"], hashes[n]) for n, e in entries.items() if not excluded(n, exclude)]
    return compose_digest(kept)


def read_meta(path: str | Path) -> dict[str, str]:
    """The caller's metadata of a state file from its header alone, for `stats` without loading GBs.

    Checks the header's shape and the file size, not the payload checksum; `load_state` does that.
    """
    path = Path(path)
    with open_state(path) as f:
        meta = read_header(path, f)[1]
    meta.pop(FORMAT_KEY, None)
    meta.pop(TENSOR_HASHES_KEY, None)
    return meta

"""The memory state on disk: safetensors files, written atomically and checked on load.

We write the safetensors layout ourselves (8-byte header length, JSON header, raw payload) instead of calling
`safetensors.torch.save_file`, because that makes a full bytes copy of every tensor first; a 3.4 GB memory
pool should cost one pass over memory, like a file copy. The files stay readable by `safetensors`.

Each tensor is hashed once, while it is written: the header records every tensor's sha256
(`store.tensor_sha256`) and `store.checksum`, a sha256 over a canonical JSON of the header (names,
dtypes, shapes, offsets, the caller's metadata) followed by those tensor hashes. Both are patched into
fixed-width placeholders after the payload, so saving reads each tensor once, and the user-visible
memory digest is composed from the same tensor hashes without a second pass over the data.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import secrets
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from .errors import StoreError
from .header import (
    CHECKSUM_KEY,
    FORMAT_KEY,
    TENSOR_HASHES_KEY,
    compose_digest,
    corrupt,
    open_state,
    read_header,
)
from .paths import FILE_MODE, ensure_dir, fsync_path

FORMAT = "memchat-state-2"
_RESERVED_PREFIX = "store."
_PLACEHOLDER = "0" * 64
_CHUNK = 8 << 20  # reads and hashing: small enough that hashing overlaps the next read
_WRITE_CHUNK = 64 << 20  # writes: measured faster than 8 MiB pieces beside the hashing thread
_PARALLEL_MIN = 8 << 20  # below this a hashing thread costs more than it saves
_TMP_MARK = ".tmp-"
Hasher = Any  # hashlib's object type is private

_DTYPE_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.complex64: "C64",
}
for _name, _code in (("uint16", "U16"), ("uint32", "U32"), ("uint64", "U64"),
                     ("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2")):
    if hasattr(torch, _name):
        _DTYPE_CODES[getattr(torch, _name)] = _code
_CODE_DTYPES = {code: dtype for dtype, code in _DTYPE_CODES.items()}


def dtype_code(dtype: torch.dtype) -> str:
    """The safetensors name of a dtype; stable across torch versions, unlike `str(dtype)`."""
    try:
        return _DTYPE_CODES[dtype]
    except KeyError:
        raise StoreError(f"cannot store tensors of dtype {dtype}; convert them to a standard dtype") from None


def code_dtype(code: str) -> torch.dtype:
    """The dtype of a safetensors dtype name (`dtype_code` inverted)."""
    return _CODE_DTYPES[code]


def _cpu_contiguous(t: torch.Tensor) -> torch.Tensor:
    """Copy only when we must: another device, a strided view, or lazy conj/neg bits."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise StoreError(f"cannot store a {t.layout} tensor; convert it to a dense tensor")
    t = t.detach()
    if t.device.type != "cpu":
        t = t.to("cpu")
    if t.is_conj() or t.is_neg():
        t = t.resolve_conj().resolve_neg()
    return t.contiguous()


def _as_bytes(t: torch.Tensor) -> memoryview:
    """A zero-copy byte view of a CPU contiguous tensor (works for bf16, which numpy lacks)."""
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy()).cast("B")


def _chunks(view: memoryview) -> Iterator[memoryview]:
    for start in range(0, len(view), _CHUNK):
        yield view[start:start + _CHUNK]


def state_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """The user-visible `memory_digest`, independent of device and layout; equal to `read_digest` of a
    file these tensors were saved to."""
    items = []
    for name, tensor in tensors.items():
        t = _cpu_contiguous(tensor)
        h = hashlib.sha256()
        _hash_view(h, _as_bytes(t))
        items.append((name, dtype_code(t.dtype), list(t.shape), h.hexdigest()))
    return compose_digest(items)


def _checksum(entries: Mapping[str, Mapping[str, object]], meta: Mapping[str, str], hashes: list[str]) -> str:
    """sha256 of the canonical header and the tensor hashes in payload order."""
    h = hashlib.sha256(_canonical_header(entries, meta))
    for sha in hashes:
        h.update(bytes.fromhex(sha))
    return h.hexdigest()


def _value_at(header: bytes, key: str, placeholder: str) -> int:
    """Offset in `header` of the placeholder value of metadata `key`, to patch it after the payload."""
    marker = f'"{key}":"{placeholder}"'.encode()
    return header.index(marker) + len(f'"{key}":"')


def _canonical_header(entries: Mapping[str, Mapping[str, object]], meta: Mapping[str, str]) -> bytes:
    return json.dumps({"meta": meta, "tensors": entries}, sort_keys=True, separators=(",", ":")).encode()


def _check_meta(meta: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for key, value in meta.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"state metadata must map str to str (safetensors rule); got {key!r}: {value!r}")
        if key.startswith(_RESERVED_PREFIX):
            raise ValueError(f"metadata key {key!r} is reserved for the store")
        out[key] = value
    return out


def _write_all(fd: int, data: memoryview) -> None:
    while len(data):
        written = os.write(fd, data)
        data = data[written:]


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def _hash_view(hasher: Hasher, view: memoryview) -> None:
    for chunk in _chunks(view):
        hasher.update(chunk)


def _write_and_hash(fd: int, tensors: Iterator[torch.Tensor], parallel: bool) -> list[str]:
    """Write the tensors in order and return each one's sha256. With `parallel`, a worker hashes one
    tensor while the next is written (both release the GIL), and the fsync overlaps the last hash."""
    hashes: list[str] = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        previous: Future[str] | None = None
        for tensor in tensors:
            data = _as_bytes(_cpu_contiguous(tensor))
            job = pool.submit(_sha256_of, data) if parallel else None
            for start in range(0, len(data), _WRITE_CHUNK):
                _write_all(fd, data[start:start + _WRITE_CHUNK])
            if previous is not None:
                hashes.append(previous.result())  # at most two tensor copies alive at a time
            if job is None:
                hashes.append(_sha256_of(data))
            previous = job
        os.fsync(fd)
        if previous is not None:
            hashes.append(previous.result())
    return hashes


def _sha256_of(view: memoryview) -> str:
    h = hashlib.sha256()
    _hash_view(h, view)
    return h.hexdigest()


def save_state(path: str | Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str]) -> None:
    """Write `tensors` and `meta` to `path` so that a crash at any moment leaves the old file or the new one.

    Temp file in the same directory, write, fsync, `os.replace`, fsync the directory. Tensors may live on
    any device and be non-contiguous; each is copied at most once (to make it CPU contiguous), one at a time.
    """
    path = Path(path)
    meta = _check_meta(meta)
    for name in tensors:
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"invalid tensor name {name!r}")
    # Widest element first keeps every tensor naturally aligned without padding (safetensors forbids holes).
    specs = []
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensor {name!r} is a {type(t).__name__}, not a torch.Tensor")
        size = t.element_size()
        specs.append((name, dtype_code(t.dtype), list(t.shape), t.numel() * size, size))
    specs.sort(key=lambda s: (-s[4], s[0]))
    entries: dict[str, dict[str, object]] = {}
    offset = 0
    for name, code, shape, nbytes, _ in specs:
        entries[name] = {"dtype": code, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    full_meta = {**meta, FORMAT_KEY: FORMAT}
    hashes_placeholder = _PLACEHOLDER * len(specs)
    header = json.dumps(
        {"__metadata__": {CHECKSUM_KEY: _PLACEHOLDER, TENSOR_HASHES_KEY: hashes_placeholder, **full_meta},
         **entries},
        separators=(",", ":"),
    ).encode()
    header += b" " * (-len(header) % 8)
    checksum_at = 8 + _value_at(header, CHECKSUM_KEY, _PLACEHOLDER)
    hashes_at = 8 + _value_at(header, TENSOR_HASHES_KEY, hashes_placeholder)

    ensure_dir(path.parent)
    tmp = _temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        try:
            _write_all(fd, memoryview(len(header).to_bytes(8, "little") + header))
            hashes = _write_and_hash(fd, (tensors[name] for name, *_ in specs), offset >= _PARALLEL_MIN)
            os.pwrite(fd, "".join(hashes).encode(), hashes_at)
            os.pwrite(fd, _checksum(entries, full_meta, hashes).encode(), checksum_at)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreError(
                f"disk full while saving {path}; the previous file is intact, free some space and retry"
            ) from exc
        raise
    fsync_path(path.parent)


def _read_exact(f: io.RawIOBase, into: memoryview) -> bool:
    while len(into):
        got = f.readinto(into)
        if not got:
            return False
        into = into[got:]
    return True


def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a state written by `save_state`, verifying the checksum before returning anything.

    The tensors are CPU views into one buffer (no second copy); move them where they are needed.
    """
    path = Path(path)
    with open_state(path) as f:
        entries, meta, checksum, payload_len = read_header(path, f)
        buffer = torch.empty(payload_len, dtype=torch.uint8)
        view = memoryview(buffer.numpy()).cast("B") if payload_len else memoryview(b"")
        spans = sorted((e["data_offsets"][0], e["data_offsets"][1], n) for n, e in entries.items())
        hashers = {name: hashlib.sha256() for *_, name in spans}

        def hash_range(start: int, stop: int) -> None:
            for a, b, name in spans:
                if a < stop and b > start:
                    hashers[name].update(view[max(a, start):min(b, stop)])

        with ThreadPoolExecutor(max_workers=1) as pool:
            hashed: list[Future[None]] = []
            for start in range(0, payload_len, _CHUNK):
                stop = min(payload_len, start + _CHUNK)
                if not _read_exact(f, view[start:stop]):
                    raise corrupt(path, "truncated")
                if payload_len < _PARALLEL_MIN:
                    hash_range(start, stop)
                else:  # hash this chunk while the next one is read; one worker keeps the order
                    hashed.append(pool.submit(hash_range, start, stop))
            for future in hashed:
                future.result()
    hashes = [hashers[name].hexdigest() for *_, name in spans]
    recorded = meta.pop(TENSOR_HASHES_KEY, None)
    if recorded != "".join(hashes) or _checksum(entries, {**meta}, hashes) != checksum:
        raise corrupt(path, "checksum mismatch")
    tensors = {}
    for name, entry in entries.items():
        dtype = code_dtype(entry["dtype"])
        start, stop = entry["data_offsets"]
        part = buffer[start:stop]
        if stop == start:
            tensors[name] = torch.empty(entry["shape"], dtype=dtype)
            continue
        if start % dtype.itemsize:
            part = part.clone()  # unaligned (foreign writer): view() needs alignment
        tensors[name] = part.view(dtype).reshape(entry["shape"])
    meta.pop(FORMAT_KEY, None)
    return tensors, meta


def remove_stale_temps(directory: str | Path) -> list[Path]:
    """Delete temp files left by saves that were killed; a live writer's temp file is kept."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        if not entry.name.startswith(".") or _TMP_MARK not in entry.name:
            continue
        try:
            pid = int(entry.name.rsplit(_TMP_MARK, 1)[1].split("-")[0])
        except ValueError:
            continue
        if _pid_alive(pid):
            continue
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
            removed.append(entry)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True

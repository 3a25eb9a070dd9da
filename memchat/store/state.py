"""The memory state on disk: safetensors files, written atomically and checked on load.

We write the safetensors layout ourselves (8-byte header length, JSON header, raw payload) instead of calling
`safetensors.torch.save_file`, because that makes a full bytes copy of every tensor first; a 3.4 GB memory
pool should cost one pass over memory, like a file copy. The files stay readable by `safetensors`.

Each tensor is hashed once, while it is written: the header records every tensor's hash
(`store.tensor_sha256`) and `store.checksum`, a sha256 over a canonical JSON of the header (names,
dtypes, shapes, offsets, the caller's metadata) followed by those tensor hashes. Both are patched into
fixed-width placeholders after the payload, so saving reads each tensor once, and the user-visible
memory digest is composed from the same tensor hashes without a second pass over the data.

A tensor's hash is the sha256 of the sha256s of its 16 MiB pieces, not one sha256 stream: the pieces
hash on every core at once while the file is written (or read), where a single stream kept saving a
3.4 GB pool at the speed of one core's sha256, about two thirds of a plain write.
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

FORMAT = "memchat-state-3"
_RESERVED_PREFIX = "store."
_PLACEHOLDER = "0" * 64
_PIECE = 4 << 20  # tensors are hashed, and read, in pieces of this size
_WRITE_CHUNK = 64 << 20  # writes: measured faster than 8 MiB pieces beside the hashing threads
_PARALLEL_MIN = 8 << 20  # below this, hashing threads cost more than they save
_HASH_WORKERS = max(1, min(8, os.cpu_count() or 1))
_TMP_MARK = ".tmp-"

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


def _pieces(view: memoryview) -> list[memoryview]:
    return [view[start:start + _PIECE] for start in range(0, len(view), _PIECE)]


def _piece_hash(piece: memoryview) -> bytes:
    return hashlib.sha256(piece).digest()  # hashlib lets go of the GIL: pieces hash in parallel


def _tensor_hash(piece_hashes: Iterator[bytes]) -> str:
    return hashlib.sha256(b"".join(piece_hashes)).hexdigest()


@contextlib.contextmanager
def _hashing_pool(nbytes: int) -> Iterator[ThreadPoolExecutor | None]:
    """Threads to hash pieces on, or None (hash inline) when there is too little to hash."""
    if nbytes < _PARALLEL_MIN:
        yield None
        return
    with ThreadPoolExecutor(max_workers=_HASH_WORKERS) as pool:
        yield pool


def _submit(pool: ThreadPoolExecutor | None, piece: memoryview) -> Future[bytes]:
    future: Future[bytes] = Future()
    if pool is None:
        future.set_result(_piece_hash(piece))
        return future
    return pool.submit(_piece_hash, piece)


def _hash_of(view: memoryview, pool: ThreadPoolExecutor | None) -> list[Future[bytes]]:
    return [_submit(pool, piece) for piece in _pieces(view)]


def state_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """The user-visible `memory_digest`, independent of device and layout; equal to `read_digest` of a
    file these tensors were saved to."""
    items = []
    with _hashing_pool(sum(t.numel() * t.element_size() for t in tensors.values())) as pool:
        for name, tensor in tensors.items():
            t = _cpu_contiguous(tensor)
            sha = _tensor_hash(job.result() for job in _hash_of(_as_bytes(t), pool))
            items.append((name, dtype_code(t.dtype), list(t.shape), sha))
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


def _write_and_hash(fd: int, tensors: Iterator[torch.Tensor], nbytes: int) -> list[str]:
    """Write the tensors in order and return each one's hash; a tensor's pieces hash on worker threads
    while the tensor is written, so one (possibly copied) tensor is alive at a time."""
    hashes: list[str] = []
    with _hashing_pool(nbytes) as pool:
        for tensor in tensors:
            data = _as_bytes(_cpu_contiguous(tensor))
            pieces = _hash_of(data, pool)
            for start in range(0, len(data), _WRITE_CHUNK):
                _write_all(fd, data[start:start + _WRITE_CHUNK])
            hashes.append(_tensor_hash(job.result() for job in pieces))
    return hashes


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
            hashes = _write_and_hash(fd, (tensors[name] for name, *_ in specs), offset)
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
        if meta.get(FORMAT_KEY) != FORMAT:
            raise corrupt(path, f"format {meta.get(FORMAT_KEY)!r}; this memchat reads {FORMAT!r}")
        buffer = torch.empty(payload_len, dtype=torch.uint8)
        view = memoryview(buffer.numpy()).cast("B") if payload_len else memoryview(b"")
        spans = sorted((e["data_offsets"][0], e["data_offsets"][1], n) for n, e in entries.items())
        pieces: list[list[Future[bytes]]] = []
        with _hashing_pool(payload_len) as pool:
            for a, b, _ in spans:  # they tile the payload (read_header checked): read it piece by piece,
                # each piece hashing while the next is read
                pieces.append([])
                for piece in _pieces(view[a:b]):
                    if not _read_exact(f, piece):
                        raise corrupt(path, "truncated")
                    pieces[-1].append(_submit(pool, piece))
            hashes = [_tensor_hash(job.result() for job in futures) for futures in pieces]
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

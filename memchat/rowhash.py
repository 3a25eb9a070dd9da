"""The sha256 of each long-term memory row, shared by the engine's in-RAM row log and the store's on-disk
one: a memory's digest covers its long-term rows through these, so both logs must hash alike."""

from __future__ import annotations

import hashlib

import numpy as np

SHA256_BYTES = 32


def row_sha256(raw: np.ndarray) -> np.ndarray:
    """sha256 of each row of raw bytes [n, row_bytes] -> [n, 32] uint8."""
    digests = b"".join(hashlib.sha256(row).digest() for row in raw)
    return np.frombuffer(digests, dtype=np.uint8).reshape(len(raw), SHA256_BYTES)

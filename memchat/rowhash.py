"""The sha256 of each long-term memory row, shared by the engine's in-RAM row log and the store's on-disk
one: a memory's digest covers its long-term rows through these, so both logs must hash alike."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

SHA256_BYTES = 32


def row_bytes(rows: Tensor) -> np.ndarray:
    """The bytes of each row of a CPU tensor [n, d], as [n, d * itemsize] uint8 (bf16 included): what both
    logs store and hash."""
    import torch  # here: stats imports this module without torch

    return rows.contiguous().view(torch.uint8).reshape(rows.shape[0], -1).numpy()


def row_sha256(raw: np.ndarray) -> np.ndarray:
    """sha256 of each row of raw bytes [n, row_bytes] -> [n, 32] uint8."""
    digests = b"".join(hashlib.sha256(row).digest() for row in raw)
    return np.frombuffer(digests, dtype=np.uint8).reshape(len(raw), SHA256_BYTES)

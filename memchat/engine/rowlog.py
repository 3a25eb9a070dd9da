"""Where M+ long-term memory rows live: an append-only log of rows per layer, addressed by row id.

A memory state holds only the ids of its long-term rows. The log only grows, so a state taken earlier
stays valid after later appends, and pruning a row costs nothing but dropping its id. The engine keeps
the log in RAM (`RamRowLog`); the store keeps one on disk in memory-mapped segments for the tens of GB
of an 8B model. Either way each row's sha256 is taken once, on append, so that a memory's digest can
cover its long-term rows without reading them.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from memchat.rowhash import SHA256_BYTES, row_bytes, row_sha256


class RowLog(Protocol):
    def append(self, layer: int, rows: Tensor) -> Tensor:
        """Store rows [n, d] after the last ones; returns their ids [n] (int64)."""
        ...

    def read(self, layer: int, ids: Tensor) -> Tensor:
        """The rows [len(ids), d] at `ids`, in the log's dtype; only these rows are read."""
        ...

    def hashes(self, layer: int, ids: Tensor) -> Tensor:
        """The sha256 of each row's bytes at `ids`, [len(ids), 32] uint8."""
        ...

    def length(self, layer: int) -> int:
        """How many rows were appended to `layer` (the next id)."""
        ...

    def has(self, layer: int, ids: Tensor) -> bool:
        """Whether every row at `ids` can be read."""
        ...


class RamRowLog:
    """A row log in CPU RAM: for the engine alone, the fidelity check, tests and evaluation."""

    def __init__(self) -> None:
        self._rows: list[Tensor] = []  # per layer, with spare capacity at the end
        self._hashes: list[np.ndarray] = []
        self._lengths: list[int] = []

    def append(self, layer: int, rows: Tensor) -> Tensor:
        while len(self._rows) <= layer:
            self._rows.append(rows.new_empty((0, rows.shape[1]), device="cpu"))
            self._hashes.append(np.empty((0, SHA256_BYTES), dtype=np.uint8))
            self._lengths.append(0)
        start, n = self._lengths[layer], rows.shape[0]
        rows = rows.detach().to("cpu", self._rows[layer].dtype)
        if start + n > self._rows[layer].shape[0]:
            self._grow(layer, start + n)
        self._rows[layer][start : start + n] = rows
        self._hashes[layer][start : start + n] = row_sha256(row_bytes(rows))
        self._lengths[layer] = start + n
        return torch.arange(start, start + n)

    def _grow(self, layer: int, needed: int) -> None:
        """Double the capacity: appends stay amortised O(1) and ids never move."""
        old, size = self._rows[layer], self._lengths[layer]
        capacity = max(needed, 2 * old.shape[0])
        self._rows[layer] = old.new_empty((capacity, old.shape[1]))
        self._rows[layer][:size] = old[:size]
        hashes = np.empty((capacity, SHA256_BYTES), dtype=np.uint8)
        hashes[:size] = self._hashes[layer][:size]
        self._hashes[layer] = hashes

    def read(self, layer: int, ids: Tensor) -> Tensor:
        self._check(layer, ids)
        return self._rows[layer][ids]

    def hashes(self, layer: int, ids: Tensor) -> Tensor:
        self._check(layer, ids)
        return torch.from_numpy(self._hashes[layer][ids.numpy()])

    def length(self, layer: int) -> int:
        return self._lengths[layer] if layer < len(self._lengths) else 0

    def has(self, layer: int, ids: Tensor) -> bool:
        return len(ids) == 0 or (int(ids.min()) >= 0 and int(ids.max()) < self.length(layer))

    def _check(self, layer: int, ids: Tensor) -> None:
        if not self.has(layer, ids):
            raise IndexError(f"row ids outside the {self.length(layer)} rows of layer {layer}")

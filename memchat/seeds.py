"""Seeds derived from names: the drop seed of a journal row, of an evaluation's injection, of a training
step. A hash, not arithmetic, so neighbouring inputs give unrelated seeds; 63 bits, so any generator
(torch's `manual_seed` included) takes them."""

from __future__ import annotations

import hashlib


def seed_of(*parts: object) -> int:
    """A 63-bit seed from the ':'-joined parts."""
    key = ":".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") >> 1

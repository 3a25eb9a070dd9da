"""Fixtures for the store tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._util import Spawner


@pytest.fixture
def spawn() -> Iterator[Spawner]:
    spawner = Spawner()
    yield spawner
    spawner.close()

from __future__ import annotations

import pytest

from ._util import spawn


@pytest.fixture
def terminal():
    """Start memchat in pseudo-terminals; whatever a failing test leaves running is killed."""
    children = []

    def start(home, *args, **extra):
        child = spawn(home, *args, **extra)
        children.append(child)
        return child

    yield start
    for child in children:
        if child.isalive():
            child.terminate(force=True)

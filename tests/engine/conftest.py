"""Fixtures for the engine tests: tiny random checkpoints written once per test session (per xdist
worker) and engines over them that share the read-only weights but never a memory state."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from memchat.engine.engine import Engine
from memchat.engine.load import load
from memchat.engine.model import MemoryModel
from memchat.engine.state import MemoryState
from memchat.engine.tiny import write_tiny_checkpoint
from memchat.engine.tokenizer import Tokenizer

from ._util import FIXTURES, clone_state

# The tiny models are far too small to gain from intra-op threads, and with pytest-xdist every worker
# would otherwise start one thread per core and oversubscribe the machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Callable[..., Path]:
    """`tiny_checkpoint(kind, seed=0, shards=1, **config_overrides)`: a folder, written once per session.

    Treat it as read-only; tests that damage a checkpoint write their own into tmp_path."""
    written: dict[str, Path] = {}

    def make(kind: str = "memoryllm", **kwargs) -> Path:
        key = json.dumps([kind, kwargs], sort_keys=True)
        if key not in written:
            folder = tmp_path_factory.mktemp(f"tiny-{kind}")
            write_tiny_checkpoint(folder, kind, **kwargs)
            written[key] = folder
        return written[key]

    return make


@pytest.fixture(scope="session")
def loaded(tiny_checkpoint) -> Callable[..., tuple[MemoryModel, MemoryState, Path, object]]:
    """`loaded(kind, **kwargs)`: (model, initial state, folder, tokenizer), fp32 on the CPU, unquantized."""
    cache: dict[str, tuple] = {}

    def get(kind: str = "memoryllm", **kwargs):
        key = json.dumps([kind, kwargs], sort_keys=True)
        if key not in cache:
            folder = tiny_checkpoint(kind, **kwargs)
            model, state = load(folder, device="cpu", quant="none", dtype=torch.float32)
            cache[key] = (model, state, folder, Tokenizer.from_folder(folder))
        return cache[key]

    return get


@pytest.fixture
def engine_of(loaded) -> Callable[..., Engine]:
    """`engine_of(kind, **kwargs)`: a fresh Engine (its own copy of the checkpoint's memory state)."""

    def make(kind: str = "memoryllm", **kwargs) -> Engine:
        model, state, folder, tokenizer = loaded(kind, **kwargs)
        return Engine(model, clone_state(state), folder, tokenizer)

    return make


@pytest.fixture
def official() -> Callable[[str], Path]:
    def folder(name: str) -> Path:
        path = FIXTURES / name
        if not (path / "config.json").is_file():
            pytest.skip(f"official fixture {path} not present")
        return path

    return folder

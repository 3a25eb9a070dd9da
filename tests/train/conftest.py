"""Fixtures for the training tests: one small tokenizer per session, micro trainers in tmp_path."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from memchat.train.text import build_tokenizer
from memchat.train.trainer import MODEL_DIR, TrainConfig, Trainer

# Micro models gain nothing from intra-op threads, and xdist workers share the cores.
torch.set_num_threads(1)

MICRO = dict(size="micro", vocab_size=320, tokenizer_episodes=300, batch=4, save_every=0, eval_every=0,
             warmup=2, steps=1000, levels=(0, 1, 2), max_lead=1)


@pytest.fixture
def micro() -> dict:
    """The micro run's settings, for a test that opens a run itself."""
    return dict(MICRO)


@pytest.fixture(scope="session")
def tokenizer_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tok")
    return build_tokenizer(folder, MICRO["vocab_size"], 0, MICRO["tokenizer_episodes"])


@pytest.fixture(scope="session")
def template_tokenizer_folder(tmp_path_factory) -> Path:
    """A tokenizer that also learnt the chat template's words (`template_tokens`)."""
    folder = tmp_path_factory.mktemp("tok-template")
    return build_tokenizer(folder, MICRO["vocab_size"], 0, MICRO["tokenizer_episodes"], template=True)


@pytest.fixture(params=["tokenizer_folder", "template_tokenizer_folder"])
def either_tokenizer_folder(request) -> Path:
    return request.getfixturevalue(request.param)


@pytest.fixture
def make_trainer(tokenizer_folder) -> Callable[..., Trainer]:
    """`make_trainer(out, device="cpu", **config)`: a fresh micro run in `out` (the session's tokenizer
    copied in, as the run would write it itself), or the run already there resumed."""

    def make(out: Path, device: str = "cpu", **overrides) -> Trainer:
        if not (out / MODEL_DIR / "tokenizer.json").exists():
            shutil.copytree(tokenizer_folder, out / MODEL_DIR, dirs_exist_ok=True)
        return Trainer.open(out, TrainConfig(**{**MICRO, **overrides}), device=device)

    return make

"""Token generation: sampling, stop tokens and streaming text from a KV cache that already holds the
memory prefix."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from memchat.engine.model import KVCache, MemoryModel


@dataclass(frozen=True)
class Sampling:
    """Greedy when temperature is 0; otherwise temperature and nucleus (top-p) sampling."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256

    @classmethod
    def from_generation_config(cls, gc: dict) -> Sampling:
        """The checkpoint's own defaults from its generation_config.json, greedy where it says nothing."""
        if not gc.get("do_sample", False):
            return cls(max_new_tokens=int(gc.get("max_new_tokens", cls.max_new_tokens)))
        return cls(
            temperature=float(gc.get("temperature", 1.0)),
            top_p=float(gc.get("top_p", 1.0)),
            max_new_tokens=int(gc.get("max_new_tokens", cls.max_new_tokens)),
        )

    def with_overrides(self, **values: float | int | None) -> Sampling:
        return replace(self, **{k: v for k, v in values.items() if v is not None})


def read_generation_config(folder: Path) -> dict:
    path = folder / "generation_config.json"
    return json.loads(path.read_text()) if path.exists() else {}


def eos_ids(gc: dict) -> set[int]:
    eos = gc.get("eos_token_id")
    return set() if eos is None else set(eos) if isinstance(eos, list) else {int(eos)}


def next_token(logits: Tensor, sampling: Sampling, generator: torch.Generator | None = None) -> int:
    if sampling.temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # Keep the smallest set of tokens whose mass reaches top_p (always at least the first).
        outside = sorted_probs.cumsum(-1) - sorted_probs >= sampling.top_p
        outside[..., 0] = False
        sorted_probs[outside] = 0
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


@torch.inference_mode()
def generate(
    model: MemoryModel,
    cache: KVCache,
    prompt: Tensor,
    sampling: Sampling,
    stop_ids: Iterable[int] = (),
    retrieve: Callable[[int, Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
    logits_out: list[Tensor] | None = None,
) -> Iterator[int]:
    """Yield new token ids for `prompt` [1, n] until a stop id or max_new_tokens.

    The cache is reset to its memory prefix first; M+ retrieves once, from the prompt, in the prefill.
    `logits_out`, when given, receives the logits each token was chosen from.
    """
    stop = set(stop_ids)
    cache.reset()
    logits = model(prompt.to(model.device), cache, retrieve=retrieve, last_only=True)[0, -1]
    for produced in range(sampling.max_new_tokens):
        if logits_out is not None:
            logits_out.append(logits)
        token = next_token(logits, sampling, generator)
        if token in stop:
            return
        yield token
        if produced + 1 < sampling.max_new_tokens:
            logits = model(torch.tensor([[token]], device=model.device), cache)[0, -1]


def stream_text(tokens: Iterable[int], decode: Callable[[list[int]], str]) -> Iterator[str]:
    """Text pieces as tokens arrive; a piece waits while its last token ends inside a UTF-8 character."""
    ids: list[int] = []
    shown = ""
    for token in tokens:
        ids.append(token)
        text = decode(ids)
        if text.endswith("\ufffd"):
            continue
        if len(text) > len(shown):
            yield text[len(shown) :]
        shown = text
    text = decode(ids)
    if len(text) > len(shown):
        yield text[len(shown) :]

"""Token generation: sampling, stop tokens and streaming text from a KV cache that already holds the
memory prefix."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from memchat.engine.model import KVCache, MemoryModel
from memchat.interrupts import deferred_interrupt

log = logging.getLogger(__name__)


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


class CudaGraphs:
    """Answering forwards replayed as CUDA graphs, for one KV cache's buffers.

    On a GPU a token's few thousand small kernels cost far more to launch from Python than to run; a
    graph launches them all at once. A graph is captured per row count (a prompt is padded up to a power
    of two; a decoded token is one row) the first time that count is needed, around `MemoryModel.step`,
    whose shapes never change. It reads the cache's buffers where they are: when the cache grows or is
    replaced, the graphs go with it.
    """

    def __init__(self, model: MemoryModel, cache: KVCache):
        self.model, self.cache = model, cache
        self._buffers = self._where(cache)
        self._pool = torch.cuda.graph_pool_handle()
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, Tensor, Tensor, Tensor, Tensor]] = {}
        self.failed = False

    @staticmethod
    def _where(cache: KVCache) -> tuple[int, int]:
        return cache.k[0].data_ptr(), cache.capacity

    def serves(self, cache: KVCache) -> bool:
        return cache is self.cache and self._where(cache) == self._buffers

    def __call__(self, ids: Tensor) -> Tensor | None:
        """Logits [vocab] of the last of `ids` [1, n] after what the cache holds, or None where no graph
        serves: rows that do not fit in the cache as it is, or a capture that failed (the caller then
        runs the forward as usual)."""
        n, cache = ids.shape[1], self.cache
        rows = 1 << (n - 1).bit_length() if n else 0
        fits = 0 < rows <= MAX_GRAPH_ROWS and cache.length + rows <= cache.capacity
        if self.failed or not fits or not self.serves(cache):
            return None
        if rows not in self._graphs:
            try:
                self._capture(rows)
            # A kernel that cannot be captured (another bitsandbytes, say), or a torch without the
            # flash op the graphed attention calls.
            except (RuntimeError, AttributeError) as error:
                self.failed = True
                log.warning("answering without CUDA graphs: capturing one failed: %s", error)
                return None
        graph, static_ids, start, last, logits = self._graphs[rows]
        static_ids[:, :n].copy_(ids)
        start.fill_(cache.length)
        last.fill_(n - 1)
        graph.replay()
        cache.length += n
        return logits[0, -1]

    def _capture(self, rows: int) -> None:
        device, cache = self.model.device, self.cache
        static_ids = torch.zeros(1, rows, dtype=torch.long, device=device)
        start = torch.full((1,), cache.length, device=device)
        last = torch.zeros(1, dtype=torch.long, device=device)
        # Kernels pick their algorithms and allocate workspace on first use: that must happen before
        # capture, on the capturing stream. These runs write only past the cache's current rows.
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self.model.step(static_ids, cache, start, last)
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # A capture cut short by Ctrl-C could leave the stream capturing, and every later kernel failing.
        with deferred_interrupt(), torch.cuda.graph(graph, pool=self._pool):
            logits = self.model.step(static_ids, cache, start, last)
        self._graphs[rows] = graph, static_ids, start, last, logits


# Longer prompts run eagerly: their kernels outweigh the launches, and a graph's memory grows with its rows.
MAX_GRAPH_ROWS = 512


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
    graphs: CudaGraphs | None = None,
) -> Iterator[int]:
    """Yield new token ids for `prompt` [1, n] until a stop id or max_new_tokens.

    The cache is reset to its memory prefix first; M+ retrieves once, from the prompt, in the prefill.
    `logits_out`, when given, receives the logits each token was chosen from. With `graphs`, forwards
    replay CUDA graphs where they can (not M+'s retrieving prefill).
    """
    stop = set(stop_ids)
    cache.reset()
    logits = answer(model, cache, prompt.to(model.device), graphs, retrieve)
    step = torch.zeros(1, 1, dtype=torch.long, device=model.device)
    for produced in range(sampling.max_new_tokens):
        if logits_out is not None:
            logits_out.append(logits.clone())  # a graph's logits are overwritten by its next replay
        token = next_token(logits, sampling, generator)
        if token in stop:
            return
        yield token
        if produced + 1 < sampling.max_new_tokens:
            logits = answer(model, cache, step.fill_(token), graphs)


def answer(
    model: MemoryModel, cache: KVCache, ids: Tensor, graphs: CudaGraphs | None = None,
    retrieve: Callable[[int, Tensor], Tensor] | None = None,
) -> Tensor:
    """Logits [vocab] of the last of `ids` [1, n] after what the cache holds, appending ids to it:
    a graph replay where one serves (M+'s retrieving prefill never), else the model's forward."""
    logits = graphs(ids) if graphs is not None and retrieve is None else None
    if logits is None:
        logits = model(ids, cache, retrieve=retrieve, last_only=True)[0, -1]
    return logits


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

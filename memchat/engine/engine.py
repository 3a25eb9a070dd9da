"""A loaded memory model ready to use: weights, tokenizer, memory state and the cached memory prefix.

This is the engine's one stateful object. Injections update the state with an explicit seed and keep
the memory prefix in the KV cache current, so questions cost a prefill of the prompt alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor

from memchat.engine.config import MemoryConfig
from memchat.engine.generate import (
    CudaGraphs,
    Sampling,
    eos_ids,
    generate,
    read_generation_config,
    stream_text,
)
from memchat.engine.load import load, resolve
from memchat.engine.model import KVCache, MemoryModel
from memchat.engine.state import MemoryState, kept_indices, retrieve, update
from memchat.engine.tokenizer import Tokenizer
from memchat.interrupts import deferred_interrupt

# Room for prompt and reply tokens beyond the memory prefix before the cache has to grow.
CACHE_HEADROOM = 2048


class Engine:
    def __init__(
        self,
        model: MemoryModel,
        state: MemoryState,
        folder: Path | None = None,
        tokenizer: Tokenizer | None = None,
        cuda_graphs: bool = True,
    ):
        self.model = model
        self.folder = folder
        self.tokenizer = tokenizer
        generation_config = read_generation_config(folder) if folder else {}
        self.sampling = Sampling.from_generation_config(generation_config)
        self._eos = eos_ids(generation_config)
        self._state = state
        self._cache: KVCache | None = None  # built on the first question, then kept current
        self._graphs: CudaGraphs | None = None
        self.cuda_graphs = cuda_graphs and model.device.type == "cuda"

    @classmethod
    def load(
        cls,
        source: str | Path,
        device: str | None = None,
        quant: str | None = None,
        dtype: torch.dtype | None = None,
        cache_dir: Path | None = None,
    ) -> Engine:
        folder = resolve(str(source), cache_dir)
        model, state = load(folder, device=device, quant=quant, dtype=dtype)
        return cls(model, state, folder, Tokenizer.from_folder(folder))

    @property
    def config(self) -> MemoryConfig:
        return self.model.config

    @property
    def state(self) -> MemoryState:
        """The live memory state. The next injection rewrites its pool in place: clone what must last."""
        return self._state

    @state.setter
    def state(self, state: MemoryState) -> None:
        self._state = state
        self._cache = None

    # --- writing memory -------------------------------------------------------------------------------

    @torch.inference_mode()
    def inject(self, ids: Sequence[int] | Tensor, seed: int, origin: int = 0) -> None:
        """Write a context into memory. `seed` decides which rows are dropped; `origin` labels the new
        rows (the journal row id) so we can tell later what still occupies the pool."""
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(1, -1).to(self.model.device)
        if ids.shape[1] == 0:
            raise ValueError("cannot inject an empty context")
        state = self._state
        delta = self.model.inject(ids, state.memory.unsqueeze(1), state.initialized)[:, 0]
        if not state.initialized:
            self._state = update(self.config, state, delta, None, origin)
            self._cache = None
            return
        kept = kept_indices(self.config, seed)
        # The pool is rewritten in place (one pool on the GPU, not two): stopped half-way it would be
        # neither the old memory nor the new one.
        with deferred_interrupt():
            self._state = update(self.config, state, delta, kept, origin, self.model.selector_keys, True)
        # Detached while it is being updated: an interrupt half-way leaves no stale prefix behind.
        cache, self._cache = self._cache, None
        if cache is not None:
            self.model.update_prefix(cache, kept, delta.unsqueeze(1))
            self._cache = cache

    # --- reading memory -------------------------------------------------------------------------------

    def cache(self) -> KVCache:
        """The KV cache holding the current memory prefix (computed once per memory state)."""
        if self._cache is None:
            cfg = self.config
            cache = KVCache(cfg, cfg.prefix_rows + CACHE_HEADROOM, self.model.dtype, self.model.device)
            with torch.inference_mode():
                self.model.fill_prefix(cache, self._state.memory.unsqueeze(1))
            self._cache = cache  # only once complete: an interrupt half-way leaves no partial prefix
        return self._cache

    def graphs(self) -> CudaGraphs | None:
        """CUDA graphs of the answering forward over the current cache (on a GPU, unless turned off)."""
        if not self.cuda_graphs:
            return None
        cache = self.cache()
        if self._graphs is None or not self._graphs.serves(cache):
            self._graphs = CudaGraphs(self.model, cache)
        return self._graphs

    def retriever(self):
        """M+: the per-layer long-term retrieval the answering prefill calls; None for MemoryLLM."""
        ltm = self._state.ltm
        if ltm is None:
            return None
        return lambda layer, queries: retrieve(self.config, ltm, layer, queries)[0]

    def generate_ids(
        self,
        prompt: Sequence[int] | Tensor,
        sampling: Sampling | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[int]:
        prompt = torch.as_tensor(prompt, dtype=torch.long).reshape(1, -1)
        return generate(
            self.model,
            self.cache(),
            prompt,
            sampling or self.sampling,
            self.stop_ids(),
            self.retriever(),
            generator,
            graphs=self.graphs(),
        )

    def stream(
        self,
        prompt: Sequence[int] | Tensor,
        sampling: Sampling | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[str]:
        """Reply text piece by piece."""
        tokens = self.generate_ids(prompt, sampling, generator)
        return stream_text(tokens, self.tokenizer.decode)

    def stop_ids(self) -> set[int]:
        stop = set(self.config.eos_token_ids) | self._eos
        return stop | self.tokenizer.stop_ids() if self.tokenizer is not None else stop

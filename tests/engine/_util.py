"""Helpers shared by the engine tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import Tensor

from memchat.engine.engine import Engine
from memchat.engine.model import KVCache
from memchat.engine.state import MemoryState, retrieve

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO.parent / "shared" / "fixtures" / "official"
# Ids below this are the tiny tokenizer's special tokens (bos 1, eos 2, eot 5, ...): keep them out of
# random contexts so they read like text.
FIRST_PLAIN_ID = 6


def random_ids(n: int, seed: int, vocab: int = 512) -> Tensor:
    """n plain token ids [n] from a private generator (the global RNG is never touched)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(FIRST_PLAIN_ID, vocab, (n,), generator=g)


def clone_state(state: MemoryState) -> MemoryState:
    """A copy over the same row log: safe, since the log only grows."""
    tensors = {k: v.clone() for k, v in state.to_tensors().items()}
    return MemoryState.from_tensors(tensors, state.ltm.log if state.ltm else None)


def _content(state: MemoryState) -> dict[str, Tensor]:
    """The exported tensors less where long-term rows sit in their log (engines sharing a log append at
    different ids), plus the long-term rows' values."""
    where = ("ltm.row_ids.", "ltm.log_lengths")
    out = {k: v for k, v in state.to_tensors().items() if not k.startswith(where)}
    for layer in range(state.ltm.layers if state.ltm else 0):
        out[f"ltm.rows.{layer}"] = state.ltm.live_rows(layer)
    return out


def assert_states_equal(a: MemoryState, b: MemoryState) -> None:
    """Bit-identical memories: the same tensor names, dtypes, shapes and values."""
    ta, tb = _content(a), _content(b)
    assert sorted(ta) == sorted(tb)
    for name in ta:
        assert ta[name].dtype == tb[name].dtype, name
        assert ta[name].shape == tb[name].shape, name
        assert torch.equal(ta[name], tb[name]), name


def states_equal(a: MemoryState, b: MemoryState) -> bool:
    ta, tb = _content(a), _content(b)
    return sorted(ta) == sorted(tb) and all(
        ta[k].shape == tb[k].shape and torch.equal(ta[k], tb[k]) for k in ta
    )


def fresh_cache(engine: Engine, state: MemoryState | None = None, headroom: int = 64) -> KVCache:
    """A KV cache with the memory prefix of `state` computed from scratch."""
    cfg, model = engine.config, engine.model
    cache = KVCache(cfg, cfg.prefix_rows + headroom, model.dtype, model.device)
    with torch.inference_mode():
        model.fill_prefix(cache, (state or engine.state).memory.unsqueeze(1))
    return cache


@torch.inference_mode()
def plain_logits(engine: Engine, prompt: Tensor, retrieved: dict[int, Tensor] | None = None) -> Tensor:
    """Answering logits [n, V] with no KV cache at all: every layer runs once over
    X = [bos ; retrieved LTM rows (M+) ; memory ; H] with the whole prefix recomputed inside the call,
    the way the official forward does it. M+ retrieves from H unless `retrieved` gives the rows."""
    model, cfg, state = engine.model, engine.config, engine.state
    adapter = cfg.answer_adapter
    x = model.model.embed_tokens(prompt.reshape(1, -1))
    for layer, block in enumerate(model.layers):
        parts = []
        if cfg.add_bos_embedding:
            parts.append(model.bos_embedding[layer][None])
        if cfg.is_mplus:
            if retrieved is not None:
                rows = retrieved[layer]
            else:
                queries = block.self_attn.query_proj(block.input_layernorm(x[0]))
                rows = retrieve(cfg, state.ltm, layer, queries)[0]
            parts.append(rows[None].to(x.dtype))
        parts.append(state.memory[layer][None])
        prefix = torch.cat(parts, dim=1)
        X = torch.cat([prefix, x], dim=1)
        x = model._layer(block, X, prefix.shape[1], adapter)
    return model.lm_head(model.model.norm(x))[0]


def run_module(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """`python -m ...` / `python -c ...` in a fresh interpreter that imports this checkout."""
    # One thread: the tiny models gain nothing from more, and xdist workers already share the cores.
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=cwd or REPO,
    )

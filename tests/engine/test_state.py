"""The memory state and its update rules: seeded drops, tiling, M+ merges and retrieval, export."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from memchat.engine.config import MemoryConfig
from memchat.engine.rowlog import RamRowLog
from memchat.engine.state import (
    CHECKPOINT_ORIGIN,
    LogMismatch,
    LongTermMemory,
    MemoryState,
    keep_and_append,
    kept_indices,
    merge_cache,
    pruned_row_ids,
    retrieve,
    rewrite_pool,
    update,
)

from ._util import assert_states_equal, random_ids, run_module, states_equal


def _cfg(tiny_checkpoint, kind: str, **overrides) -> MemoryConfig:
    return MemoryConfig.from_file(tiny_checkpoint(kind, **overrides))


def _global_kept(N: int, K: int, seed: int, draws: int) -> list[torch.Tensor]:
    """What the official code keeps: torch.manual_seed(S), then randperm(N) from the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [torch.randperm(N)[: N - K].sort().values for _ in range(draws)]


@pytest.mark.parametrize("seed", [0, 1234, 98765, 2**40 + 3])
@pytest.mark.parametrize(
    ("kind", "overrides"),
    [
        ("memoryllm", {}),
        ("memoryllm", {"num_hidden_layers": 3}),
        ("mplus", {}),
        ("mplus", {"drop_memory_per_layer": False}),
    ],
)
def test_kept_indices_per_layer_match_global_randperm(tiny_checkpoint, kind, overrides, seed):
    cfg = _cfg(tiny_checkpoint, kind, **overrides)
    N, K, L = cfg.memory_rows, cfg.num_tokens, cfg.num_layers
    kept = kept_indices(cfg, seed)
    assert kept.shape == (L, N - K) and kept.dtype == torch.int64
    assert torch.equal(kept, torch.stack(_global_kept(N, K, seed, L)))
    assert not all(torch.equal(kept[0], row) for row in kept[1:])  # really one draw per layer


@pytest.mark.parametrize("seed", [0, 1234, 98765])
@pytest.mark.parametrize(
    ("kind", "overrides"),
    [("memoryllm-7b", {"num_hidden_layers": 3}), ("memoryllm", {"drop_memory_per_layer": False})],
)
def test_kept_indices_shared_by_all_layers(tiny_checkpoint, kind, overrides, seed):
    cfg = _cfg(tiny_checkpoint, kind, **overrides)
    N, K, L = cfg.memory_rows, cfg.num_tokens, cfg.num_layers
    kept = kept_indices(cfg, seed)
    (expected,) = _global_kept(N, K, seed, 1)
    assert kept.shape == (L, N - K)
    for row in kept:
        assert torch.equal(row, expected)


@pytest.mark.parametrize(
    ("name", "seeds"), [("memoryllm-tiny", (1234, 98765)), ("memoryllm-7b-tiny", (1234, 98765))]
)
def test_kept_indices_match_the_recorded_official_drops(official, name, seeds):
    folder = official(name)
    cfg = MemoryConfig.from_file(folder)
    golden = load_file(folder / "golden_update.safetensors")
    for step, seed in enumerate(seeds, start=1):
        assert torch.equal(kept_indices(cfg, seed), golden[f"step{step}.kept_indices"])


def test_kept_indices_do_not_touch_the_global_rng(tiny_checkpoint):
    cfg = _cfg(tiny_checkpoint, "memoryllm")
    before = torch.get_rng_state()
    kept_indices(cfg, 7)
    assert torch.equal(before, torch.get_rng_state())


def _state(cfg: MemoryConfig, seed: int = 0, initialized: bool = True) -> MemoryState:
    g = torch.Generator().manual_seed(seed)
    memory = torch.randn(cfg.num_layers, cfg.memory_rows, cfg.hidden_size, generator=g)
    origins = torch.full(memory.shape[:2], CHECKPOINT_ORIGIN, dtype=torch.int64)
    return MemoryState(memory=memory, origins=origins, initialized=initialized)


def test_update_keeps_rows_and_appends_delta(tiny_checkpoint):
    cfg = _cfg(tiny_checkpoint, "memoryllm")
    state = _state(cfg)
    before = state.memory.clone()
    delta = torch.randn(cfg.num_layers, cfg.num_tokens, cfg.hidden_size)
    kept = kept_indices(cfg, 5)
    new = update(cfg, state, delta, kept, origin=42)
    for layer in range(cfg.num_layers):
        assert torch.equal(new.memory[layer], torch.cat([before[layer, kept[layer]], delta[layer]]))
    assert torch.equal(new.origins[:, -cfg.num_tokens :], torch.full((cfg.num_layers, cfg.num_tokens), 42))
    assert (new.origins[:, : -cfg.num_tokens] == CHECKPOINT_ORIGIN).all()
    assert torch.equal(state.memory, before)  # a pure function: the old state is untouched
    # Origins follow their rows through a second update.
    newer = update(cfg, new, delta + 1, kept_indices(cfg, 6), origin=43)
    k2 = kept_indices(cfg, 6)
    for layer in range(cfg.num_layers):
        assert torch.equal(newer.origins[layer, : -cfg.num_tokens], new.origins[layer, k2[layer]])


@pytest.mark.parametrize("rows", [5, 8, 3, 31, 32, 40])
def test_first_update_tiles_the_delta(tiny_checkpoint, rows):
    cfg = _cfg(tiny_checkpoint, "memoryllm")
    N = cfg.memory_rows  # 32
    state = _state(cfg, initialized=False)
    delta = torch.randn(cfg.num_layers, rows, cfg.hidden_size)
    new = update(cfg, state, delta, None, origin=9)
    assert new.initialized and new.memory.shape == state.memory.shape
    if rows < N:
        copies, rest = divmod(N, rows)
        expected = torch.cat([delta] * copies + ([delta[:, rows - rest :]] if rest else []), dim=1)
    else:
        expected = delta[:, -N:]
    assert torch.equal(new.memory, expected)
    assert (new.origins == 9).all()


def _ltm(rows: list[int], cached: list[int], rf: list[list[float]], d: int = 4, h: int = 3) -> LongTermMemory:
    g = torch.Generator().manual_seed(1)
    return LongTermMemory.of_rows(
        [torch.randn(n, d, generator=g) for n in rows],
        keys=[torch.randn(n, h, generator=g) for n in rows],
        ages=[torch.arange(n, dtype=torch.float64) * 3 for n in rows],
        recall_frequencies=[torch.tensor(r, dtype=torch.float64) for r in rf],
        cached_rows=[torch.randn(c, d, generator=g) for c in cached],
        cached_keys=[torch.randn(c, h, generator=g) for c in cached],
        cached_ages=[torch.arange(c, dtype=torch.float64) + 100 for c in cached],
        update_step=16,
    )


def test_merge_cache_prunes_or_undoes_the_decay(tiny_checkpoint):
    cfg = _cfg(tiny_checkpoint, "mplus")  # k = 16 rows retrieved, decay 1, new rows start at 10
    k, K = cfg.ltm_rows_retrieved, cfg.num_tokens
    assert (k, cfg.decay_frequency, cfg.initial_rf_when_moving_stm_to_ltm) == (16, 1.0, 10.0)
    # Layer 0: all 20 old rows would reach 0, leaving only the 8 new ones (not more than k): undone.
    # Layer 1: 15 old rows survive with the 8 new ones (23 > k): the 5 at frequency 1 are pruned.
    ltm = _ltm([20, 20], [K, K], [[1.0] * 20, [1.0] * 5 + [5.0] * 15])
    merged = merge_cache(cfg, ltm)
    assert merged.update_step == 0
    cached = (merged.cached_rows, merged.cached_keys, merged.cached_ages)
    assert all(len(c) == 0 for lst in cached for c in lst)
    assert torch.equal(merged.live_rows(0), torch.cat([ltm.live_rows(0), ltm.cached_rows[0]]))
    assert merged.recall_frequencies[0].tolist() == [1.0] * 20 + [10.0] * K
    assert torch.equal(merged.live_rows(1), torch.cat([ltm.live_rows(1)[5:], ltm.cached_rows[1]]))
    assert torch.equal(merged.keys[1], torch.cat([ltm.keys[1][5:], ltm.cached_keys[1]]))
    assert torch.equal(merged.ages[1], torch.cat([ltm.ages[1][5:], ltm.cached_ages[1]]))
    assert merged.recall_frequencies[1].tolist() == [4.0] * 15 + [9.0] * K


def test_retrieve_takes_rows_cyclically_when_the_ltm_is_small(tiny_checkpoint):
    cfg = _cfg(tiny_checkpoint, "mplus")
    k = cfg.ltm_rows_retrieved  # 16
    ltm = _ltm([5, 5], [4, 4], [[1.0] * 5] * 2)
    ltm.ages[0] = torch.tensor([10.0, 50.0, 30.0, 20.0, 40.0], dtype=torch.float64)
    queries = torch.randn(3, 3)
    rows, picks = retrieve(cfg, ltm, 0, queries)
    # The last 16 of 0..4 repeated: row 4 four times, the others three times; then oldest first.
    assert picks.tolist() == [1] * 3 + [4] * 4 + [2] * 3 + [3] * 3 + [0] * 3
    assert rows.shape == (k, 4) and torch.equal(rows, ltm.live_rows(0)[picks])


def test_retrieve_scores_ltm_and_cache_then_orders_oldest_first(tiny_checkpoint):
    cfg = _cfg(tiny_checkpoint, "mplus")
    k, S, C = cfg.ltm_rows_retrieved, 24, 4
    g = torch.Generator().manual_seed(3)
    direction = torch.tensor([1.0, 0.5, -0.25])
    strength = torch.randperm(S + C, generator=g).double() / 10  # distinct scores, known order
    keys = (strength[:, None] * direction).float()
    ages = torch.randperm(S + C, generator=g).double() * 2  # distinct ages
    ltm = LongTermMemory.of_rows(
        [torch.randn(S, 5, generator=g)],
        keys=[keys[:S]],
        ages=[ages[:S]],
        recall_frequencies=[torch.ones(S, dtype=torch.float64)],
        cached_rows=[torch.randn(C, 5, generator=g)],
        cached_keys=[keys[S:]],
        cached_ages=[ages[S:]],
    )
    queries = torch.rand(6, 1, generator=g) * direction + 0.0  # q·key grows with `strength`
    rows, picks = retrieve(cfg, ltm, 0, queries)
    top = set(torch.argsort(strength, descending=True)[:k].tolist())
    assert set(picks.tolist()) == top
    assert any(p >= S for p in picks.tolist())  # cache rows compete with the long-term rows
    assert ages[picks].tolist() == sorted(ages[picks].tolist(), reverse=True)
    everything = torch.cat([ltm.live_rows(0), ltm.cached_rows[0]])
    assert torch.equal(rows, everything[picks])


def _inject_many(engine, count: int, first_seed: int = 100) -> None:
    for i in range(count):
        engine.inject(random_ids(3 + 5 * i, seed=first_seed + i), seed=first_seed + i, origin=i + 1)


@pytest.mark.parametrize("kind", ["memoryllm", "mplus", "memoryllm-7b"])
def test_to_tensors_round_trip(engine_of, kind):
    engine = engine_of(kind)
    _inject_many(engine, 3)  # M+: merged after 2, so the cache holds rows again after 3
    state = engine.state
    if kind == "mplus":
        assert state.ltm.update_step == engine.config.num_tokens
        assert all(len(c) > 0 for c in state.ltm.cached_rows)
        assert all(len(r) > 16 for r in state.ltm.row_ids)
    tensors = state.to_tensors()
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())
    log = state.ltm.log if state.ltm else None
    restored = MemoryState.from_tensors(tensors, log)
    assert_states_equal(restored, state)
    # Through the bytes of a safetensors file, as a store would keep it.
    saved = st_save({k: v.contiguous() for k, v in tensors.items()})
    restored = MemoryState.from_tensors(st_load(saved), log)
    assert_states_equal(restored, state)
    assert restored.initialized == state.initialized
    if kind == "mplus":
        assert restored.ltm.update_step == state.ltm.update_step
    # The restored state behaves the same: one more injection lands on identical states.
    twin = engine_of(kind)
    twin.state = restored
    engine.inject(random_ids(12, seed=5), seed=77, origin=9)
    twin.inject(random_ids(12, seed=5), seed=77, origin=9)
    assert_states_equal(engine.state, twin.state)


def test_round_trip_of_an_uninitialised_state(engine_of):
    engine = engine_of("memoryllm")
    state = replace(engine.state, initialized=False)
    restored = MemoryState.from_tensors(state.to_tensors())
    assert not restored.initialized
    assert states_equal(restored, state) and not states_equal(restored, engine.state)


# --- the long-term row log ------------------------------------------------------------------------------


class _CountingLog(RamRowLog):
    """An in-RAM log that remembers which ids were read."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[int] = []

    def read(self, layer, ids):
        self.reads += ids.tolist()
        return super().read(layer, ids)


def test_retrieval_reads_only_the_rows_it_picks(tiny_checkpoint):
    cfg = _cfg(tiny_checkpoint, "mplus")
    k, S = cfg.ltm_rows_retrieved, 200
    g = torch.Generator().manual_seed(4)
    log = _CountingLog()
    ltm = LongTermMemory.of_rows(
        [torch.randn(S, 5, generator=g)],
        log,
        keys=[torch.randn(S, 3, generator=g)],
        ages=[torch.randperm(S, generator=g).double()],
        recall_frequencies=[torch.ones(S, dtype=torch.float64)],
        cached_rows=[torch.randn(4, 5, generator=g)],
        cached_keys=[torch.randn(4, 3, generator=g)],
        cached_ages=[torch.arange(4, dtype=torch.float64) + 1000],
    )
    rows, picks = retrieve(cfg, ltm, 0, torch.randn(6, 3, generator=g))
    stored = picks[picks < S]
    assert sorted(log.reads) == sorted(stored.tolist()) and len(log.reads) <= k
    assert torch.equal(rows, torch.cat([ltm.live_rows(0), ltm.cached_rows[0]])[picks])


def test_a_state_stays_valid_after_later_states_append_and_prune(engine_of):
    engine = engine_of("mplus", initial_rf_when_moving_stm_to_ltm=4, update_ltm_frequency=1)
    _inject_many(engine, 2)
    old = engine.state
    saved = old.to_tensors()
    values = [old.ltm.live_rows(layer).clone() for layer in range(old.ltm.layers)]
    _inject_many(engine, 6, first_seed=300)  # merges append and, from the fourth on, prune
    new = engine.state
    assert all(n > o for n, o in zip(new.ltm.log_lengths, old.ltm.log_lengths, strict=True))
    pruned = pruned_row_ids(old.ltm, new.ltm)
    assert all(len(ids) > 0 for ids in pruned)
    assert not any(torch.isin(ids, kept).any() for ids, kept in zip(pruned, new.ltm.row_ids, strict=True))
    # The old state still reads its rows, pruned ones included, and restores from its export.
    assert all(torch.equal(old.ltm.live_rows(i), v) for i, v in enumerate(values))
    assert_states_equal(MemoryState.from_tensors(saved, old.ltm.log), old)


def test_a_state_refuses_a_log_without_its_rows(engine_of):
    engine = engine_of("mplus")
    _inject_many(engine, 2)
    tensors = engine.state.to_tensors()
    with pytest.raises(LogMismatch, match="lacks rows"):
        MemoryState.from_tensors(tensors, RamRowLog())
    other = RamRowLog()  # as long, other values
    for layer, n in enumerate(engine.state.ltm.log_lengths):
        other.append(layer, torch.randn(n, engine.config.hidden_size))
    with pytest.raises(LogMismatch, match="differ"):
        MemoryState.from_tensors(tensors, other)


_UPDATE_PEAK = """
import resource, sys, torch
from memchat.engine.state import keep_and_append, rewrite_pool
L, N, d, K = 8, 4096, 1024, 256  # a 128 MiB pool
rows, new = torch.ones(L, N, d), torch.zeros(L, K, d)
kept = torch.stack([torch.randperm(N)[: N - K].sort().values for _ in range(L)])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
{"functional": keep_and_append, "in_place": rewrite_pool}[sys.argv[1]](rows, kept, new)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 / rows.nbytes)
"""


@pytest.mark.parametrize(("how", "most"), [("functional", 1.5), ("in_place", 0.25)])
def test_a_memory_update_needs_room_for_one_more_pool_in_training_and_one_layer_in_the_engine(how, most):
    # Peak RSS of a fresh process, in pools. The functional update (training) builds a new pool beside
    # the old one, a layer at a time (gathering every layer before concatenating held a third pool:
    # 1.94). The engine rewrites its own pool and needs one layer's kept rows (1/8 here) beside it.
    proc = run_module("-c", _UPDATE_PEAK, how)
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout) < most


def test_the_engine_rewrites_its_pool_in_place_to_what_the_functional_update_gives():
    L, N, d, K = 3, 40, 8, 5
    g = torch.Generator().manual_seed(0)
    pool, new = torch.randn(L, N, d, generator=g), torch.randn(L, K, d, generator=g)
    kept = torch.stack([torch.randperm(N, generator=g)[: N - K].sort().values for _ in range(L)])
    expected = keep_and_append(pool, kept, new)
    assert rewrite_pool(pool, kept, new) is pool
    assert torch.equal(pool, expected)

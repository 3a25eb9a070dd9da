"""The Engine: seeded, replayable injections; the incrementally kept prefix cache; injection lengths;
uninitialised memory; presets end to end."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from memchat.engine.engine import Engine
from memchat.engine.generate import Sampling
from memchat.engine.state import CHECKPOINT_ORIGIN

from ._util import assert_states_equal, plain_logits, random_ids, states_equal

# (length, seed) of a sequence of injections: shorter than K, exactly K, longer, and more.
JOURNAL = [(3, 11), (8, 12), (21, 13), (1, 14), (40, 15), (8, 16)]


def _replay(engine: Engine, journal=JOURNAL) -> None:
    for origin, (n, seed) in enumerate(journal, start=1):
        engine.inject(random_ids(n, seed=1000 + origin), seed=seed, origin=origin)


@torch.inference_mode()
def _cached_logits(engine: Engine, prompt: torch.Tensor) -> torch.Tensor:
    cache = engine.cache()
    cache.reset()
    return engine.model(prompt[None], cache, retrieve=engine.retriever())[0]


# --- determinism ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memoryllm", "mplus", "memoryllm-7b"])
def test_replaying_injections_is_bit_identical(engine_of, kind):
    a, b = engine_of(kind), engine_of(kind)
    a.cache()  # one engine with a live prefix cache, one without: the state must not care
    _replay(a)
    _replay(b)
    assert_states_equal(a.state, b.state)
    assert not states_equal(a.state, engine_of(kind).state)
    if kind == "mplus":
        # 6 injections with update_ltm_frequency 2: three merges into the long-term memory.
        cfg = a.config
        assert cfg.update_ltm_frequency == 2
        initial = engine_of(kind).state.ltm
        assert a.state.ltm.update_step == 0
        assert all(len(r) > len(r0) for r, r0 in zip(a.state.ltm.row_ids, initial.row_ids, strict=True))
        assert not torch.equal(a.state.ltm.ages[0][: len(initial.ages[0])], initial.ages[0])


@pytest.mark.parametrize("kind", ["memoryllm", "mplus"])
def test_injections_leave_the_global_rng_alone(engine_of, kind):
    engine = engine_of(kind)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    _replay(engine)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("kind", ["memoryllm", "mplus", "memoryllm-7b"])
def test_drop_seed_decides_the_memory(engine_of, kind):
    ids = random_ids(12, seed=1)
    a, b, c = engine_of(kind), engine_of(kind), engine_of(kind)
    a.inject(ids, seed=1, origin=1)
    b.inject(ids, seed=2, origin=1)
    c.inject(ids, seed=1, origin=1)
    assert not torch.equal(a.state.memory, b.state.memory)
    assert torch.equal(a.state.memory, c.state.memory)
    # The new rows are the same delta whatever the seed; only which old rows survive differs.
    K = a.config.num_tokens
    assert torch.equal(a.state.memory[:, -K:], b.state.memory[:, -K:])


@pytest.mark.parametrize("kind", ["memoryllm", "mplus", "memoryllm-7b"])
@pytest.mark.parametrize("n", [3, 8, 29])  # n < K, n == K, n > K (K = 8)
def test_injection_writes_k_rows_and_keeps_the_rest(engine_of, kind, n):
    engine = engine_of(kind)
    cfg = engine.config
    K, N = cfg.num_tokens, cfg.memory_rows
    assert K == 8
    before = engine.state
    ids = random_ids(n, seed=n)
    with torch.inference_mode():
        delta = engine.model.inject(ids[None], before.memory.unsqueeze(1))[:, 0]
    assert delta.shape == (cfg.num_layers, K, cfg.hidden_size)
    engine.inject(ids, seed=5, origin=7)
    after = engine.state
    assert after.memory.shape == before.memory.shape == (cfg.num_layers, N, cfg.hidden_size)
    assert torch.equal(after.memory[:, -K:], delta)
    assert (after.origins[:, -K:] == 7).all() and (after.origins[:, :-K] == CHECKPOINT_ORIGIN).all()
    # Every kept row is an old row, copied exactly, in ascending order of its old index.
    for layer in range(cfg.num_layers):
        old = before.memory[layer]
        matches = [int(torch.nonzero((old == row).all(-1)).flatten()[0]) for row in after.memory[layer, :-K]]
        assert matches == sorted(set(matches)) and len(matches) == N - K
    if kind == "memoryllm-7b":
        # One permutation shared by all layers.
        kept = [
            [int(torch.nonzero((before.memory[lay] == row).all(-1))[0]) for row in after.memory[lay, :-K]]
            for lay in range(cfg.num_layers)
        ]
        assert all(k == kept[0] for k in kept)


def test_a_short_injection_reads_old_memory_rows(engine_of):
    # n < K: the delta is K rows whose first K - n are outputs at old memory rows, so changing those old
    # rows must change the delta (the official layout; a context-only delta would not depend on them).
    engine = engine_of("memoryllm")
    K = engine.config.num_tokens
    memory = engine.state.memory.unsqueeze(1)
    other = memory.clone()
    other[:, :, -K:] += 1.0
    with torch.inference_mode():
        d1 = engine.model.inject(random_ids(3, seed=1)[None], memory)
        d2 = engine.model.inject(random_ids(3, seed=1)[None], other)
    assert not torch.allclose(d1, d2)


def test_empty_injection_raises_and_changes_nothing(engine_of):
    engine = engine_of("memoryllm")
    before = engine.state
    with pytest.raises(ValueError, match="empty"):
        engine.inject([], seed=1)
    assert engine.state is before


@pytest.mark.parametrize("kind", ["memoryllm", "memoryllm-7b"])
@pytest.mark.parametrize(("n", "rows"), [(5, 5), (20, 8)])  # the first delta has min(K, n) rows
def test_uninitialised_memory_is_filled_by_tiling(engine_of, kind, n, rows):
    engine = engine_of(kind)
    engine.cache()
    engine.state = replace(engine.state, initialized=False)
    N = engine.config.memory_rows
    engine.inject(random_ids(n, seed=3), seed=99, origin=4)
    state = engine.state
    assert state.initialized
    assert (state.origins == 4).all()
    memory = state.memory
    copies, rest = divmod(N, rows)
    block = memory[:, :rows]
    for c in range(copies):
        assert torch.equal(memory[:, c * rows : (c + 1) * rows], block)
    assert torch.equal(memory[:, copies * rows :], block[:, rows - rest :])
    assert not torch.equal(memory, engine_of(kind).state.memory)
    # The first injection ignores the seed (no RNG is involved) ...
    twin = engine_of(kind)
    twin.state = replace(twin.state, initialized=False)
    twin.inject(random_ids(n, seed=3), seed=12345, origin=4)
    assert_states_equal(twin.state, state)
    # ... later ones are ordinary updates, and the prefix cache follows.
    engine.inject(random_ids(9, seed=4), seed=1, origin=5)
    prompt = random_ids(6, seed=5)
    cached, plain = _cached_logits(engine, prompt), plain_logits(engine, prompt)
    torch.testing.assert_close(cached, plain, atol=1e-5, rtol=0)


# --- the prefix cache -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "overrides"),
    [("memoryllm", {}), ("mplus", {}), ("memoryllm-7b", {}), ("memoryllm", {"add_bos_embedding": False})],
)
def test_incremental_prefix_cache_matches_a_rebuilt_one(engine_of, kind, overrides):
    engine = engine_of(kind, **overrides)
    prompt = random_ids(7, seed=42)
    initial = _cached_logits(engine, prompt)
    live = engine.cache()
    for origin, (n, seed) in enumerate(JOURNAL[:4], start=1):
        engine.inject(random_ids(n, seed=500 + origin), seed=seed, origin=origin)
        # Answer in between, so the cache also holds prompt and reply rows past the prefix.
        list(engine.generate_ids(random_ids(5, seed=origin), Sampling(max_new_tokens=3)))
    assert engine.cache() is live  # kept current in place, not rebuilt
    incremental = _cached_logits(engine, prompt)
    assert not torch.allclose(incremental, initial, atol=1e-3)  # the memory really changed

    recomputed = plain_logits(engine, prompt)
    other = Engine(engine.model, engine.state, engine.folder, engine.tokenizer)
    rebuilt_elsewhere = _cached_logits(other, prompt)
    engine.state = engine.state  # drops the cache
    assert engine.cache() is not live
    rebuilt = _cached_logits(engine, prompt)
    for logits in (rebuilt, rebuilt_elsewhere, recomputed):
        torch.testing.assert_close(incremental, logits, atol=1e-5, rtol=0)


def test_cache_grows_past_its_headroom(engine_of):
    engine = engine_of("memoryllm")
    cache = engine.cache()
    prompt = random_ids(cache.capacity - cache.prefix_len + 50, seed=8)  # longer than the room left
    logits = _cached_logits(engine, prompt)
    assert engine.cache().capacity >= cache.prefix_len + len(prompt)
    torch.testing.assert_close(logits[-5:], plain_logits(engine, prompt)[-5:], atol=1e-4, rtol=1e-4)


# --- presets, end to end ----------------------------------------------------------------------------------


def test_preset_engine_answers_a_chat_prompt(tmp_path):
    engine = Engine.load("tiny-mplus", device="cpu", cache_dir=tmp_path)
    assert engine.folder == tmp_path / "models" / "tiny-mplus"
    assert engine.config.is_mplus and engine.model.device.type == "cpu"
    facts = "My dog is called Biscuit and he loves the beach."
    for i in range(3):
        engine.inject(engine.tokenizer.encode(facts), seed=i, origin=i + 1)
    prompt = engine.tokenizer.encode_chat([{"role": "user", "content": "What is my dog called?"}])
    greedy = Sampling(max_new_tokens=8)
    ids = list(engine.generate_ids(prompt, greedy))
    assert 0 < len(ids) <= 8 and not set(ids) & engine.stop_ids()
    text = "".join(engine.stream(prompt, greedy))
    assert text == engine.tokenizer.decode(ids) and text
    # The same answer from a second engine over the same preset folder and the same journal.
    again = Engine.load("tiny-mplus", device="cpu", cache_dir=tmp_path)
    for i in range(3):
        again.inject(again.tokenizer.encode(facts), seed=i, origin=i + 1)
    assert list(again.generate_ids(prompt, greedy)) == ids


def test_an_adapter_on_o_proj_is_applied(engine_of):
    """LoRA may target o_proj too: each adapter must then change the attention output."""
    lora = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "inference_mode": False,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
    engine = engine_of("memoryllm", lora_config=lora)
    o_proj = engine.model.layers[0].self_attn.o_proj
    assert "decoder_adapter" in o_proj.lora_A
    prompt = random_ids(6, seed=3)
    before = plain_logits(engine, prompt)
    with torch.no_grad():
        o_proj.lora_B["decoder_adapter"].weight.mul_(3.0)
    assert (plain_logits(engine, prompt) - before).abs().max() > 1e-4


@pytest.mark.parametrize("kind", ["memoryllm", "mplus"])
def test_ctrl_c_during_the_in_place_update_arrives_after_it_with_the_whole_new_memory(
    engine_of, kind, monkeypatch
):
    import os
    import signal

    import memchat.engine.state as state_module

    twin, engine = engine_of(kind), engine_of(kind)
    _replay(twin)
    _replay(engine, JOURNAL[:-1])
    real = state_module.rewrite_pool

    def interrupted(pool, kept, new):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as the pool starts being rewritten
        return real(pool, kept, new)

    monkeypatch.setattr(state_module, "rewrite_pool", interrupted)
    n, seed = JOURNAL[-1]
    with pytest.raises(KeyboardInterrupt):
        engine.inject(random_ids(n, seed=1000 + len(JOURNAL)), seed=seed, origin=len(JOURNAL))
    assert_states_equal(engine.state, twin.state)  # pool, origins (so `upto`) and M+ parts all moved on


@pytest.mark.parametrize("kind", ["memoryllm", "mplus"])
def test_the_engines_in_place_injections_equal_the_functional_updates(engine_of, kind):
    # M+ must read the rows an update drops before the pool is rewritten: with the order wrong the
    # long-term memory would take the new rows instead, and only this comparison would tell.
    from memchat.engine.state import kept_indices, update

    engine, functional = engine_of(kind), engine_of(kind).state
    cfg, model = engine.config, engine.model
    for origin, (n, seed) in enumerate(JOURNAL, start=1):
        ids = random_ids(n, seed=1000 + origin)
        with torch.inference_mode():
            delta = model.inject(ids[None], functional.memory.unsqueeze(1), functional.initialized)[:, 0]
            kept = kept_indices(cfg, seed) if functional.initialized else None
            functional = update(cfg, functional, delta, kept, origin, model.selector_keys)
        engine.inject(ids, seed=seed, origin=origin)
    assert_states_equal(engine.state, functional)

"""The training loop on a micro model: batching equals the engine's one-at-a-time path, the loss falls,
gradients reach the injection path, and save → resume continues bit for bit."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from safetensors.torch import load_file

from memchat.engine.engine import Engine
from memchat.engine.model import KVCache
from memchat.engine.state import MemoryState, keep_and_append, update
from memchat.train.domain import Domain
from memchat.train.trainer import (
    Curriculum,
    TrainConfig,
    Trainer,
    TrainError,
    _domain,
    episode_memory,
    episode_prefix,
    inject_turns,
    make_batch,
    random_kept,
    run_batch,
    sample_batch,
    train,
)


def _batch(trainer, step=3, distance=2, batch=4, kind=None):
    domain = _domain("train")
    return sample_batch(domain, trainer.encoder, trainer.cfg, trainer.tc, 0, step, distance, batch, kind)


def test_keep_and_append_batched_equals_one_memory_at_a_time():
    g = torch.Generator().manual_seed(0)
    L, B, N, K, d = 3, 5, 16, 4, 8
    rows, new = torch.randn(L, B, N, d, generator=g), torch.randn(L, B, K, d, generator=g)
    kept = torch.rand(L, B, N, generator=g).argsort(-1)[..., : N - K].sort(-1).values
    batched = keep_and_append(rows, kept, new)
    for b in range(B):
        assert torch.equal(batched[:, b], keep_and_append(rows[:, b], kept[:, b], new[:, b]))
        # the single-memory form is the engine's update rule, row for row
        by_layer = [torch.cat([rows[i, b][kept[i, b]], new[i, b]]) for i in range(L)]
        assert torch.equal(batched[:, b], torch.stack(by_layer))


def test_random_kept_rows(make_trainer, tmp_path):
    cfg = make_trainer(tmp_path).cfg
    kept = random_kept(cfg, (6, 3), torch.Generator().manual_seed(1))
    N, K = cfg.memory_rows, cfg.num_tokens
    assert kept.shape == (6, cfg.num_layers, 3, N - K)
    assert (kept.diff(dim=-1) > 0).all() and kept.min() >= 0 and kept.max() < N
    assert not torch.equal(kept[0, 0, 0], kept[0, 1, 0])  # per layer
    assert not torch.equal(kept[0, 0, 0], kept[0, 0, 1])  # per episode


def test_batched_training_memory_equals_the_engine_updating_each_episode(make_trainer, tmp_path):
    """Ragged batched injections plus the label trick give, per episode, the memory that the engine's
    own `update` builds injecting that episode's turns one by one (same kept rows)."""
    trainer = make_trainer(tmp_path)
    model, cfg, memory0 = trainer.model, trainer.cfg, trainer.memory.detach()
    batch = _batch(trainer, distance=3)
    lengths = torch.stack([lengths for _, lengths in batch.turns])
    assert len(set(lengths.flatten().tolist())) > 1  # really ragged
    with torch.no_grad():
        source, deltas = inject_turns(model, memory0, batch)
        batched = episode_memory(memory0, source, deltas)
        for b in range(batch.inputs.shape[0]):
            state = MemoryState(memory0, torch.zeros(memory0.shape[:2], dtype=torch.long))
            for t, (ids, lengths) in enumerate(batch.turns):
                delta = model.inject(ids[b : b + 1, : lengths[b]], state.memory.unsqueeze(1), True)[:, 0]
                state = update(cfg, state, delta, batch.kept[t][:, b], origin=t)
            torch.testing.assert_close(batched[:, b], state.memory, rtol=1e-5, atol=1e-6)


def test_ragged_injection_gradients_equal_each_context_injected_alone(make_trainer, tmp_path):
    """A batch of right-padded contexts runs its layers on the real rows alone (model.Packed); the
    gradients are those of injecting each context by itself."""
    trainer = make_trainer(tmp_path)
    model = trainer.model
    ids, lengths = _batch(trainer, distance=1).turns[0]
    assert len(set(lengths.tolist())) > 1
    memory = trainer.memory.detach()[:, None].expand(-1, ids.shape[0], -1, -1)
    weights = torch.randn(model.inject(ids, memory, True, lengths).shape, generator=torch.Generator())

    def grads(loss):
        model.zero_grad(set_to_none=True)
        loss().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    batched = grads(lambda: (model.inject(ids, memory, True, lengths) * weights).sum())
    alone = grads(lambda: sum(
        (model.inject(ids[b : b + 1, : lengths[b]], memory[:, b : b + 1], True) * weights[:, b : b + 1]).sum()
        for b in range(ids.shape[0])))
    assert batched.keys() == alone.keys() and any(".lora_B.default." in n for n in batched)
    for name in batched:
        torch.testing.assert_close(batched[name], alone[name], rtol=1e-4, atol=1e-6, msg=name)


def test_episode_prefix_equals_fill_prefix(make_trainer, tmp_path):
    trainer = make_trainer(tmp_path)
    model, cfg, memory0 = trainer.model, trainer.cfg, trainer.memory.detach()
    batch = _batch(trainer, distance=2)
    B = batch.inputs.shape[0]
    with torch.no_grad():
        source, deltas = inject_turns(model, memory0, batch)
        fast = KVCache(cfg, cfg.prefix_rows + 4, model.dtype, model.device, batch=B)
        model.write_prefix(fast, episode_prefix(model, memory0, source, deltas))
        plain = KVCache(cfg, cfg.prefix_rows + 4, model.dtype, model.device, batch=B)
        model.fill_prefix(plain, episode_memory(memory0, source, deltas))
    for layer in range(cfg.num_layers):
        torch.testing.assert_close(fast.k[layer], plain.k[layer], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fast.v[layer], plain.v[layer], rtol=1e-5, atol=1e-6)


def test_batch_targets_are_the_answer_and_the_recent_turns(make_trainer, tmp_path):
    trainer = make_trainer(tmp_path)
    enc = trainer.encoder
    episodes = [Domain().episode(random.Random(i), distance=3, lead=1, kind="recall") for i in range(3)]
    batch = make_batch(episodes, enc, trainer.cfg, trainer.tc, lead=1, window=2, g=torch.Generator())
    assert batch.distance == 3 and batch.grad_turns == {1, 4} and len(batch.turns) == 5
    for b, ep in enumerate(episodes):
        assert enc.decode(batch.targets[b][batch.answer[b]].tolist()) == ep.answer
        assert batch.targets[b][batch.answer[b]][-1] == enc.eot  # the reply ends the turn
        # recall is scored on the value's tokens only, which lie inside the reply
        assert enc.decode(batch.targets[b][batch.scored[b]].tolist()).strip() == ep.value
        assert not (batch.scored[b] & ~batch.answer[b]).any()
        shown = enc.decode(batch.targets[b][batch.turn_tokens[b]].tolist())
        assert ep.turns[-1].assistant in shown and ep.turns[-2].assistant in shown
        assert ep.turns[1].user not in shown  # the fact is asked from memory, never shown
        # the question itself is prompt, not target
        assert not (batch.answer[b] & batch.turn_tokens[b]).any()


def test_batches_are_a_function_of_seed_and_step(make_trainer, tmp_path):
    trainer = make_trainer(tmp_path)
    a, b, c = _batch(trainer, step=5), _batch(trainer, step=5), _batch(trainer, step=6)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.kept, b.kept)
    assert not torch.equal(a.kept, c.kept)


def test_a_few_steps_on_a_fixed_batch_reduce_its_loss(make_trainer, tmp_path):
    trainer = make_trainer(tmp_path, lr=3e-3)
    batch = _batch(trainer, distance=1)
    losses = []
    for _ in range(12):
        trainer.optimizer.zero_grad()
        loss, _ = run_batch(trainer.model, trainer.memory, batch, trainer.tc)
        loss.backward()
        trainer.optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def _adapter_grads(trainer, batch) -> dict[str, float]:
    trainer.optimizer.zero_grad(set_to_none=True)
    loss, _ = run_batch(trainer.model, trainer.memory, batch, trainer.tc)
    loss.backward()
    out = {}
    for name, p in trainer.model.named_parameters():
        if ".lora_B.default" in name or name == "new_memory_positional_emb":
            out[name] = 0.0 if p.grad is None else p.grad.abs().sum().item()
    return out


def test_the_answer_loss_reaches_the_injection_path(make_trainer, tmp_path):
    # No prompt window: the only loss is the answer's, read from memory by the decoder adapter.
    trainer = make_trainer(tmp_path, lm_weight=0.0)
    batch = _batch(trainer, distance=3, kind="recall")
    grads = _adapter_grads(trainer, batch)
    # `default` (the injection adapter) and the positional embedding only act when memory is written.
    assert all(g > 0 for g in grads.values()), grads
    # Control: with every injection outside the graph, nothing reaches them.
    detached = _adapter_grads(trainer, type(batch)(**{**batch.__dict__, "grad_turns": frozenset()}))
    assert all(g == 0 for g in detached.values()), detached


def _weights(trainer) -> dict[str, torch.Tensor]:
    out = {f"param/{n}": p.detach().clone() for n, p in trainer.model.named_parameters()}
    out["memory"] = trainer.memory.detach().clone()
    named = {**dict(trainer.model.named_parameters()), "memory": trainer.memory}
    for n, p in named.items():
        for k, v in trainer.optimizer.state[p].items():
            out[f"adam/{n}/{k}"] = v.clone()
    return out


def test_checkpoint_and_resume_continue_bit_identically(make_trainer, tmp_path):
    # the curriculum moves too (it watches memory-only batches: no steps that always show the fact)
    settings = dict(levels=(0, 1), advance_at=0.0, level_min_steps=2, show_fact_first=0)
    straight = make_trainer(tmp_path / "a", **settings)
    train(straight, max_steps=6)
    first = make_trainer(tmp_path / "b", **settings)
    train(first, max_steps=3)
    resumed = make_trainer(tmp_path / "b", **settings)
    assert resumed.step == 3 and resumed is not first
    assert resumed.seconds == pytest.approx(first.seconds, abs=0.05) and first.seconds > 0
    train(resumed, max_steps=3)
    assert resumed.seconds > first.seconds  # training time adds up over the run's resumes
    assert resumed.step == straight.step == 6
    assert resumed.curriculum == straight.curriculum and straight.curriculum.level == 1
    a, b = _weights(straight), _weights(resumed)
    assert sorted(a) == sorted(b) and any(k.startswith("adam/") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and the run really trained: it is not the fresh model
    fresh = _weights(make_trainer(tmp_path / "c", **settings))
    assert not torch.equal(fresh["memory"], a["memory"])


def test_resume_refuses_other_settings(make_trainer, tmp_path):
    train(make_trainer(tmp_path), max_steps=1)
    with pytest.raises(TrainError, match="batch=2"):
        Trainer.open(tmp_path, overrides={"batch": 2})
    assert Trainer.open(tmp_path, overrides={"steps": 5000}).tc.steps == 5000
    # a finished run may go on with another share of a batch kind
    assert Trainer.open(tmp_path, overrides={"abstain_empty": 0.1}).tc.abstain_empty == 0.1
    assert Trainer.open(tmp_path, overrides={"reply_share": 0.5}).tc.reply_share == 0.5


def _run_from_before(make_trainer, tmp_path, setting: str):
    """A one-step run whose saved settings lack `setting`, as one saved before it existed; reopened."""
    train(make_trainer(tmp_path), max_steps=1)
    state = tmp_path / "train" / "state.json"
    meta = json.loads(state.read_text())
    del meta["train_config"][setting]
    state.write_text(json.dumps(meta))
    return Trainer.open(tmp_path)


def test_resume_refuses_a_run_from_before_a_setting_existed(make_trainer, tmp_path):
    with pytest.raises(TrainError, match="older memchat without the settings late_start"):
        _run_from_before(make_trainer, tmp_path, "late_start")


@pytest.mark.parametrize("setting", sorted(TrainConfig.ADDED_LATER))
def test_a_run_from_before_a_later_setting_resumes_with_the_behaviour_it_had(make_trainer, tmp_path, setting):
    resumed = _run_from_before(make_trainer, tmp_path, setting)
    assert resumed.step == 1 and getattr(resumed.tc, setting) == TrainConfig.ADDED_LATER[setting]


def test_the_memory_pool_size_is_a_setting(make_trainer, tmp_path):
    trainer = make_trainer(tmp_path, num_blocks=12)
    K = trainer.cfg.num_tokens
    assert trainer.cfg.memory_rows == 12 * K and trainer.memory.shape[1] == 12 * K
    train(trainer, max_steps=1)
    assert json.loads((tmp_path / "model" / "config.json").read_text())["num_blocks"] == 12


def test_the_rows_an_injection_writes_are_a_setting(make_trainer, tmp_path):
    trainer = make_trainer(tmp_path, num_tokens=6, num_blocks=5)
    assert (trainer.cfg.num_tokens, trainer.cfg.memory_rows, trainer.memory.shape[1]) == (6, 30, 30)
    train(trainer, max_steps=1)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert (config["num_tokens"], config["num_blocks"], config["num_memory_tokens"]) == (6, 5, 30)
    assert Trainer.open(tmp_path).cfg.num_tokens == 6


def test_a_resume_may_widen_the_injection_tiling_the_initial_memory(make_trainer, tmp_path):
    trainer = make_trainer(tmp_path, num_blocks=5)
    train(trainer, max_steps=1)
    K, memory = trainer.cfg.num_tokens, trainer.memory.detach().clone()
    adam = trainer.optimizer.state[trainer.memory]["exp_avg_sq"].clone()
    with pytest.raises(TrainError, match=f"multiple of the run's {K}"):
        Trainer.open(tmp_path, overrides={"num_tokens": K + 1})
    wide = Trainer.open(tmp_path, overrides={"num_tokens": 2 * K})
    assert (wide.cfg.num_tokens, wide.cfg.memory_rows) == (2 * K, 10 * K)
    assert torch.equal(wide.memory.detach(), torch.cat([memory, memory], dim=1))
    assert torch.equal(wide.optimizer.state[wide.memory]["exp_avg_sq"], torch.cat([adam, adam], dim=1))
    train(wide, max_steps=1)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert (config["num_tokens"], config["num_memory_tokens"]) == (2 * K, 10 * K)
    assert Engine.load(tmp_path / "model", "cpu", None).model.config.num_tokens == 2 * K


def test_template_tokens_is_a_setting_of_the_runs_own_tokenizer(micro, tmp_path):
    for template in (False, True):
        out = tmp_path / str(template)
        trainer = Trainer.open(out, TrainConfig(**micro, template_tokens=template))
        train(trainer, max_steps=1)
        pre = json.loads((out / "model" / "tokenizer.json").read_text())["pre_tokenizer"]
        assert (pre["type"] == "Sequence") == template  # Llama-3's split, then bytes
        assert Trainer.open(out).tc.template_tokens == template


def test_tied_embeddings_train_as_one_matrix_and_export_as_the_official_two(make_trainer, tmp_path):
    trainer = make_trainer(tmp_path, tie_embeddings=True)
    embed = trainer.model.model.embed_tokens.weight
    assert trainer.model.lm_head.weight is embed
    before = embed.detach().clone()
    train(trainer, max_steps=2)
    assert not torch.equal(embed.detach(), before)
    resumed = make_trainer(tmp_path).model
    assert resumed.lm_head.weight is resumed.model.embed_tokens.weight
    assert torch.equal(resumed.lm_head.weight.detach(), embed.detach())
    tensors = load_file(tmp_path / "model" / "model.safetensors")
    assert torch.equal(tensors["lm_head.weight"], tensors["model.embed_tokens.weight"])
    engine = Engine.load(tmp_path / "model", device="cpu")
    assert torch.equal(engine.model.lm_head.weight, embed.detach())


def test_the_exported_model_is_what_the_engine_loads(make_trainer, tmp_path):
    trainer = make_trainer(tmp_path)
    train(trainer, max_steps=2)
    folder = tmp_path / "model"
    config = json.loads((folder / "config.json").read_text())
    assert config["memchat"]["steps"] == 2 and config["num_blocks"] * config["num_tokens"] == 32
    engine = Engine.load(folder, device="cpu")
    loaded = dict(engine.model.named_parameters())
    for name, p in trainer.model.named_parameters():
        assert torch.equal(loaded[name], p.detach()), name
    assert torch.equal(engine.state.memory, trainer.memory.detach())
    # The engine, given a memory the trainer built, answers with the training forward's logits.
    batch = _batch(trainer, distance=1, batch=1)
    with torch.no_grad():
        memory = episode_memory(trainer.memory, *inject_turns(trainer.model, trainer.memory, batch))
        cache = KVCache(trainer.cfg, trainer.cfg.prefix_rows + batch.inputs.shape[1], torch.float32, "cpu")
        trainer.model.fill_prefix(cache, memory)
        want = trainer.model(batch.inputs, cache)
        origins = torch.zeros(memory.shape[0], memory.shape[2], dtype=torch.long)
        engine.state = MemoryState(memory[:, 0], origins)
        got = engine.model(batch.inputs, engine.cache())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_batch_moves_what_the_model_reads_and_keeps_the_row_labels_on_the_cpu(make_trainer, tmp_path):
    batch = _batch(make_trainer(tmp_path), distance=1, batch=2)
    assert batch.to(torch.device("cpu")) is batch
    moved = batch.to(torch.device("meta"))
    read = [moved.inputs, moved.targets, moved.answer, moved.scored, moved.turn_tokens]
    assert all(t.is_meta for t in read + [t for turn in moved.turns for t in turn])
    assert not moved.kept.is_meta and not batch.inputs.is_meta


def test_training_on_a_gpu_saves_and_resumes_into_a_model_the_engine_loads(make_trainer, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    trainer = make_trainer(tmp_path, device="cuda")
    assert trainer.memory.is_cuda and trainer.model.device.type == "cuda"
    report = train(trainer, max_steps=3)
    assert report.first_loss is not None and math.isfinite(report.last_loss)
    resumed = make_trainer(tmp_path, device="cuda")
    assert resumed.step == 3 and torch.equal(resumed.memory, trainer.memory)
    train(resumed, max_steps=2)
    engine = Engine.load(tmp_path / "model", device="cpu")
    assert torch.equal(engine.state.memory, resumed.memory.detach().cpu())


def test_curriculum_advances_only_on_recall_at_the_top_distance():
    tc = TrainConfig(levels=(0, 2, 4), advance_at=0.5, level_min_steps=3)
    c = Curriculum()
    for _ in range(20):
        c.observe(tc, 1, 1.0)  # not the top distance: ignored
        c.observe(tc, 0, None)  # no recall episodes: ignored
    assert c.level == 0
    for _ in range(10):
        c.observe(tc, 0, 1.0)
    assert c.level == 1 and c.top(tc) == 2
    # A level the model does not master in level_max_steps steps opens the next one anyway.
    stuck = Curriculum()
    tc = TrainConfig(levels=(0, 2, 4), advance_at=0.5, level_min_steps=3, level_max_steps=10)
    for _ in range(9):
        stuck.observe(tc, 0, 0.0)
    assert stuck.level == 0
    stuck.observe(tc, 0, 0.0)
    assert stuck.level == 1
    rng = random.Random(0)
    assert {c.sample(rng, tc) for _ in range(200)} == {0, 1, 2}


def test_domain_has_no_global_random_state():
    state = random.getstate()
    Domain().episode(random.Random(1), 3, 1)
    assert random.getstate() == state


def test_abstain_is_scored_on_saying_it_does_not_know(make_trainer, tmp_path):
    trainer = make_trainer(tmp_path)
    episodes = [Domain().episode(random.Random(i), distance=2, kind="abstain") for i in range(3)]
    enc = trainer.encoder
    batch = make_batch(episodes, enc, trainer.cfg, trainer.tc, lead=0, window=0, g=torch.Generator())
    for b in range(3):
        assert enc.decode(batch.targets[b][batch.scored[b]].tolist()).strip() == "don't know"


def test_an_empty_batch_asks_the_initial_memory_and_trains_saying_it_does_not_know(make_trainer, tmp_path):
    trainer = make_trainer(tmp_path, abstain_empty=1.0)
    cfg, enc, memory0 = trainer.cfg, trainer.encoder, trainer.memory.detach()
    batch = sample_batch(Domain(), enc, cfg, trainer.tc, 0, 3, 4, 3, kind="empty")
    assert batch.turns == [] and batch.kinds == ["abstain"] * 3 and not batch.turn_tokens.any()
    for b in range(3):
        assert enc.decode(batch.targets[b][batch.scored[b]].tolist()).strip() == "don't know"
    with torch.no_grad():
        source, deltas = inject_turns(trainer.model, memory0, batch)
    assert deltas.shape[2] == 0
    assert torch.equal(episode_memory(memory0, source, deltas), memory0.unsqueeze(1).expand(-1, 3, -1, -1))
    loss, result = run_batch(trainer.model, trainer.memory, batch, trainer.tc)
    assert math.isfinite(loss.item()) and result.recall is None and result.abstain is not None
    loss.backward()
    assert trainer.memory.grad.abs().sum() > 0  # the answer is read from the initial pool
    result, _ = trainer.train_step()  # with the setting at 1, every question-asking batch is one
    assert result.recall is None and result.abstain is not None


def test_a_window_reaching_back_over_the_fact_shows_it(make_trainer, tmp_path):
    trainer = make_trainer(tmp_path)
    enc = trainer.encoder
    episodes = [Domain().episode(random.Random(i), distance=1, lead=0, kind="recall") for i in range(2)]
    hidden = make_batch(episodes, enc, trainer.cfg, trainer.tc, lead=0, window=1, g=torch.Generator())
    shown = make_batch(episodes, enc, trainer.cfg, trainer.tc, lead=0, window=2, g=torch.Generator())
    assert not hidden.fact_shown and shown.fact_shown
    for b, ep in enumerate(episodes):
        assert ep.turns[0].user in enc.decode(shown.targets[b][shown.turn_tokens[b]].tolist())
        assert ep.turns[0].user not in enc.decode(hidden.targets[b][hidden.turn_tokens[b]].tolist())



def test_reply_batches_train_the_reply_and_stay_out_of_recall(make_trainer, tmp_path):
    trainer = make_trainer(tmp_path)
    enc = trainer.encoder
    batch = sample_batch(Domain(), enc, trainer.cfg, trainer.tc, 0, 3, 2, 6, kind="reply")
    assert batch.kinds == ["reply"] * 6
    episodes = [Domain().episode(random.Random(i), distance=2, lead=0, kind="reply") for i in range(6)]
    batch = make_batch(episodes, enc, trainer.cfg, trainer.tc, lead=0, window=0, g=torch.Generator())
    for b, ep in enumerate(episodes):
        assert enc.decode(batch.targets[b][batch.answer[b]].tolist()) == ep.answer
    _, result = run_batch(trainer.model, trainer.memory, batch, trainer.tc)
    assert result.recall is None and result.abstain is None


def test_replies_and_asked_first_episodes_begin_late_in_the_schedule(make_trainer, tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, steps=8, reply_share=1.0, asked_first=1.0, late_start=0.5)
    assert [trainer.tc.late(step, 0.3) for step in (0, 3, 4, 7)] == [0.0, 0.0, 0.3, 0.3]
    shares = []

    def spy(*args, asked_first, **kwargs):
        shares.append(asked_first)
        return sample_batch(*args, asked_first=asked_first, **kwargs)

    monkeypatch.setattr("memchat.train.trainer.sample_batch", spy)
    asked = []
    for _ in range(8):
        result, _ = trainer.train_step()
        asked.append(result.recall is not None or result.abstain is not None)  # a question was asked
    assert asked == [True] * 4 + [False] * 4  # then every batch answers a new message
    assert shares == [0.0] * 4 + [1.0] * 4


def test_the_first_steps_echo_every_told_value_then_half(make_trainer, tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, echo_first=2)
    shares = []

    def spy(*args, echo, **kwargs):
        shares.append(echo)
        return sample_batch(*args, echo=echo, **kwargs)

    monkeypatch.setattr("memchat.train.trainer.sample_batch", spy)
    for _ in range(4):
        trainer.train_step()
    assert shares == [1.0, 1.0, 0.5, 0.5]


def test_the_first_steps_show_the_fact_then_a_share_of_batches(make_trainer, tmp_path):
    trainer = make_trainer(tmp_path, show_fact_first=2, show_fact=0.25)
    assert [trainer.tc.fact_share(step) for step in (0, 1, 2, 3)] == [1.0, 1.0, 0.25, 0.25]
    always = [sample_batch(Domain(), trainer.encoder, trainer.cfg, trainer.tc, 0, step, 1, 2, show_fact=1.0)
              for step in range(3)]
    never = [sample_batch(Domain(), trainer.encoder, trainer.cfg, trainer.tc, 0, step, 1, 2, show_fact=0.0)
             for step in range(3)]
    assert all(b.fact_shown for b in always) and not any(b.fact_shown for b in never)

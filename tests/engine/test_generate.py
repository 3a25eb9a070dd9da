"""Generation: greedy and seeded sampling, top-p, stop ids, length limits, the KV cache against a
no-cache recompute, and streaming text that never splits a UTF-8 character."""

from __future__ import annotations

import json

import pytest
import torch

from memchat.engine.generate import Sampling, answer, generate, next_token, stream_text

from ._util import clone_state, fresh_cache, random_ids

GREEDY = Sampling(temperature=0.0, max_new_tokens=12)


def _ids(engine, prompt, sampling=GREEDY, generator=None) -> list[int]:
    return list(engine.generate_ids(prompt, sampling, generator))


@pytest.mark.parametrize("kind", ["memoryllm", "mplus", "memoryllm-7b"])
def test_greedy_is_deterministic(engine_of, kind):
    prompt = random_ids(9, seed=1)
    first = _ids(engine_of(kind), prompt)
    engine = engine_of(kind)
    assert _ids(engine, prompt) == first
    assert _ids(engine, prompt) == first  # the same engine again: the cache was reset to the prefix
    assert len(first) > 0


def test_seeded_sampling_is_reproducible_and_seed_dependent(engine_of):
    engine = engine_of("memoryllm")
    prompt = random_ids(9, seed=2)
    hot = Sampling(temperature=1.5, top_p=1.0, max_new_tokens=16)

    def sample(seed):
        return _ids(engine, prompt, hot, torch.Generator().manual_seed(seed))

    a, b = sample(0), sample(0)
    assert a == b and len(a) > 0
    assert sample(1) != a
    assert a != _ids(engine, prompt)  # sampling at this temperature is not greedy decoding


def test_sampling_does_not_touch_the_global_rng(engine_of):
    engine = engine_of("memoryllm")
    before = torch.get_rng_state()
    _ids(engine, random_ids(5, seed=3), Sampling(temperature=1.0, max_new_tokens=4), torch.Generator())
    assert torch.equal(before, torch.get_rng_state())


def test_tiny_top_p_is_greedy(engine_of):
    engine = engine_of("memoryllm")
    prompt = random_ids(9, seed=4)
    nucleus = Sampling(temperature=1.0, top_p=1e-6, max_new_tokens=12)
    assert _ids(engine, prompt, nucleus, torch.Generator().manual_seed(5)) == _ids(engine, prompt)


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([0.05, 0.5, 0.3, 0.15]))
    g = torch.Generator().manual_seed(0)
    # Mass 0.5 + 0.3 reaches 0.8: only tokens 1 and 2 can come out.
    drawn = {next_token(logits, Sampling(temperature=1.0, top_p=0.8), g) for _ in range(300)}
    assert drawn == {1, 2}
    drawn = {next_token(logits, Sampling(temperature=1.0, top_p=0.81), g) for _ in range(300)}
    assert drawn == {1, 2, 3}


def test_top_p_zero_still_keeps_the_most_likely_token():
    logits = torch.tensor([0.1, 3.0, 0.2])
    assert next_token(logits, Sampling(temperature=1.0, top_p=0.0), torch.Generator().manual_seed(0)) == 1


def test_stop_id_from_the_config_ends_generation(engine_of, loaded):
    plain = engine_of("memoryllm")
    prompt = random_ids(9, seed=6)
    tokens = _ids(plain, prompt)
    assert len(tokens) == GREEDY.max_new_tokens  # no stop id came out by itself
    # Make a token greedy decoding would emit (first seen at position ≥ 3) the end of sequence.
    cut = next(i for i in range(3, len(tokens)) if tokens[i] not in tokens[:i])
    eos = tokens[cut]
    stopping = engine_of("memoryllm", eos_token_id=eos)  # same seed: same weights, other config
    assert eos in stopping.stop_ids()
    assert torch.equal(stopping.model.lm_head.weight, plain.model.lm_head.weight)
    assert _ids(stopping, prompt) == tokens[:cut]


def test_generate_stop_ids_and_logits_out(engine_of):
    engine = engine_of("memoryllm")
    prompt = random_ids(9, seed=6)[None]
    tokens = list(generate(engine.model, engine.cache(), prompt, GREEDY))
    stop = tokens[4]
    cut = tokens.index(stop)
    logits: list[torch.Tensor] = []
    out = list(generate(engine.model, engine.cache(), prompt, GREEDY, stop_ids={stop}, logits_out=logits))
    assert out == tokens[:cut]
    assert len(logits) == cut + 1 and int(logits[-1].argmax()) == stop


@pytest.mark.parametrize("limit", [0, 1, 5])
def test_max_new_tokens_is_respected(engine_of, limit):
    engine = engine_of("memoryllm")
    prompt = random_ids(9, seed=6)
    full = _ids(engine, prompt)
    assert _ids(engine, prompt, Sampling(max_new_tokens=limit)) == full[:limit]


@pytest.mark.parametrize("kind", ["memoryllm", "memoryllm-7b", "mplus"])
def test_cached_generation_matches_a_no_cache_recompute(engine_of, kind):
    engine = engine_of(kind)
    for i, n in enumerate((5, 13)):
        engine.inject(random_ids(n, seed=20 + i), seed=20 + i)
    prompt = random_ids(7, seed=7)[None]
    retrieved: dict[int, torch.Tensor] = {}
    retriever = engine.retriever()
    assert (retriever is not None) == (kind == "mplus")

    def recording(layer, queries):
        retrieved[layer] = retriever(layer, queries)
        return retrieved[layer]

    step_logits: list[torch.Tensor] = []
    tokens = list(
        generate(
            engine.model,
            engine.cache(),
            prompt,
            Sampling(max_new_tokens=8),
            (),
            recording if retriever else None,
            logits_out=step_logits,
        )
    )
    assert len(tokens) == 8
    if retriever:
        assert sorted(retrieved) == list(range(engine.config.num_layers))
    for t in range(len(tokens)):
        # The whole sequence through a fresh cache (nothing left from earlier steps); M+ keeps the rows
        # its prefill retrieved, as the official decode steps do.
        sequence = torch.cat([prompt, torch.tensor([tokens[:t]], dtype=torch.long)], dim=1)
        cache = fresh_cache(engine)
        with torch.inference_mode():
            logits = engine.model(
                sequence, cache, retrieve=(lambda layer, q: retrieved[layer]) if retriever else None
            )[0, -1]
        torch.testing.assert_close(step_logits[t], logits, atol=1e-5, rtol=0)
        assert int(logits.argmax()) == tokens[t]


# --- streaming text ----------------------------------------------------------------------------------


def _utf8(ids: list[int]) -> str:
    return bytes(ids).decode("utf-8", errors="replace")


def test_stream_text_never_splits_a_character():
    text = "a é 日本 😀!"
    ids = list(text.encode("utf-8"))  # one token per byte: é, 日, 本 and 😀 span 2, 3, 3 and 4 tokens
    pieces = list(stream_text(iter(ids), _utf8))
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)
    assert pieces == ["a", " ", "é", " ", "日", "本", " ", "😀", "!"]


def test_stream_text_flushes_an_unfinished_character_at_the_end():
    ids = list("ok 日".encode())[:-1]  # generation stopped inside 日
    pieces = list(stream_text(iter(ids), _utf8))
    assert "".join(pieces) == _utf8(ids) == "ok \ufffd"


def test_stream_text_with_invalid_bytes_matches_the_full_decode():
    ids = [0x61, 0xE6, 0x62, 0x97, 0xF0, 0x9F, 0x98, 0x80, 0xC3]
    assert "".join(stream_text(iter(ids), _utf8)) == _utf8(ids)


def test_stream_text_with_the_real_tokenizer(engine_of):
    engine = engine_of("memoryllm")
    text = "Café, naïve — 日本語のテキスト 😀👩‍👧 and plain words."
    ids = engine.tokenizer.encode(text)
    decode = engine.tokenizer.decode
    # The byte-level BPE really does split some characters across tokens here.
    assert any(decode(ids[: i + 1]).endswith("\ufffd") for i in range(len(ids)))
    pieces = list(stream_text(iter(ids), decode))
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)


@pytest.mark.parametrize("kind", ["memoryllm", "mplus"])
def test_engine_stream_concatenates_to_the_decoded_ids(engine_of, kind):
    engine = engine_of(kind)
    prompt = random_ids(9, seed=8)
    hot = Sampling(temperature=1.0, max_new_tokens=24)
    ids = _ids(engine, prompt, hot, torch.Generator().manual_seed(3))
    pieces = list(engine.stream(prompt, hot, torch.Generator().manual_seed(3)))
    assert len(pieces) > 1
    assert "".join(pieces) == engine.tokenizer.decode(ids)


# --- prompts, stop ids and sampling defaults --------------------------------------------------------


def test_encode_chat_drops_bos_and_ends_with_the_assistant_header(engine_of):
    engine = engine_of("memoryllm")
    tok = engine.tokenizer.hf
    messages = [{"role": "user", "content": "Where did I put my keys?"}]
    ids = engine.tokenizer.encode_chat(messages)
    assert ids[0] != tok.bos_token_id and tok.bos_token_id == 1
    assert tok.bos_token_id not in ids
    header = engine.tokenizer.encode("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert ids[-len(header) :] == header
    assert tok.decode(ids).startswith("<|start_header_id|>user<|end_header_id|>\n\nWhere did I put my keys?")
    # plain text has no BOS either
    assert engine.tokenizer.encode("Where did I put my keys?")[0] != tok.bos_token_id


def test_stop_ids(engine_of):
    assert engine_of("memoryllm").stop_ids() == {2, 5}  # eos and <|eot_id|>
    assert engine_of("memoryllm-7b").stop_ids() == {2}


def test_sampling_from_generation_config(engine_of, tmp_path):
    gc = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "max_new_tokens": 33}
    assert Sampling.from_generation_config(gc) == Sampling(temperature=0.7, top_p=0.8, max_new_tokens=33)
    assert Sampling.from_generation_config({**gc, "do_sample": False}) == Sampling(max_new_tokens=33)
    assert Sampling.from_generation_config({}) == Sampling()
    assert Sampling.from_generation_config({"do_sample": True}).temperature == 1.0
    # Engines read their folder's generation_config.json.
    chat = engine_of("memoryllm")
    assert (chat.sampling.temperature, chat.sampling.top_p) == (0.6, 0.9)
    assert json.loads((chat.folder / "generation_config.json").read_text())["do_sample"] is True
    assert engine_of("memoryllm-7b").sampling.temperature == 0.0
    override = chat.sampling.with_overrides(temperature=0.0, top_p=None)
    assert (override.temperature, override.top_p) == (0.0, 0.9)


# --- the fixed-shape step and CUDA graphs ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memoryllm", "mplus"])
def test_fixed_shape_step_matches_the_forward(engine_of, kind):
    """`step` (what a CUDA graph replays) gives the forward's logits and cache rows, padding included."""
    engine = engine_of(kind)
    engine.inject(random_ids(11, seed=30), seed=30)
    prompt, token = random_ids(5, seed=31)[None], torch.tensor([[77]])
    model, cache = engine.model, engine.cache()
    with torch.inference_mode():
        cache.reset()
        expected = [model(prompt, cache, last_only=True)[0, -1], model(token, cache)[0, -1]]
        keys = [k[:, :, : cache.length].clone() for k in cache.k]
        cache.reset()
        start = cache.length
        padded = torch.cat([prompt, random_ids(3, seed=32)[None]], dim=1)  # 8 rows, 3 of them padding
        got = [model.step(padded, cache, torch.tensor([start]), torch.tensor([4]))[0, -1]]
        got.append(model.step(token, cache, torch.tensor([start + 5]), torch.tensor([0]))[0, -1])
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    for k, k_expected in zip(cache.k, keys, strict=True):
        torch.testing.assert_close(k[:, :, : start + 6], k_expected, atol=1e-5, rtol=0)


def _cuda_engine(loaded, kind, quant, dtype=None):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from memchat.engine.engine import Engine
    from memchat.engine.load import load

    folder = loaded(kind)[2]
    model, state = load(folder, device="cuda", quant=quant, dtype=dtype)
    return lambda graphs: Engine(model, clone_state(state), folder, loaded(kind)[3], cuda_graphs=graphs)


def _teacher_forced(engine, prompt, tokens) -> torch.Tensor:
    """Logits of the prompt's last row, then of each of `tokens` fed in turn: [1 + len(tokens), vocab]."""
    model, cache, graphs = engine.model, engine.cache(), engine.graphs()
    cache.reset()
    with torch.inference_mode():
        rows = [answer(model, cache, prompt.cuda(), graphs, engine.retriever()).float().clone()]
        for token in tokens:
            rows.append(answer(model, cache, torch.tensor([[token]], device="cuda"), graphs).float().clone())
    return torch.stack(rows)


@pytest.mark.parametrize("kind", ["memoryllm", "mplus"])
@pytest.mark.parametrize("quant", ["nf4", "int8", "none"])
def test_cuda_graphs_answer_as_the_eager_forward(loaded, kind, quant):
    """In bf16 the graphs' kernels (the prefix read by flash, the rest in fp32) round differently from
    the eager ones: both are held to an fp32 computation of the same weights, and the graphs may not be
    further from it than the eager forward is (with a margin of one bf16 step of the largest logit)."""
    engines = _cuda_engine(loaded, kind, quant)
    graphed, eager = engines(True), engines(False)
    reference = _cuda_engine(loaded, kind, quant, torch.float32)(False)
    assert graphed.graphs() is not None and eager.graphs() is None
    for engine in (graphed, eager, reference):
        for i, n in enumerate((5, 13)):
            engine.inject(random_ids(n, seed=40 + i), seed=40 + i)
    for prompt_len in (7, 3, 7):  # a second question, and the first again, reuse captured graphs
        prompt = random_ids(prompt_len, seed=prompt_len)[None]
        tokens = _ids(eager, prompt)  # near-ties in a random model may break either way: fed to all three
        truth = _teacher_forced(reference, prompt, tokens)
        eager_error = (_teacher_forced(eager, prompt, tokens) - truth).abs().max()
        graph_error = (_teacher_forced(graphed, prompt, tokens) - truth).abs().max()
        assert graph_error <= eager_error + truth.abs().max() * 2**-7, (graph_error, eager_error)
    # Row counts captured: prompts padded to 8 and 4, decoding 1; M+ retrieves in an eager prefill.
    assert sorted(graphed._graphs._graphs) == ([1] if kind == "mplus" else [1, 4, 8])


def test_cuda_graphs_follow_injections_and_a_grown_cache(loaded):
    engines = _cuda_engine(loaded, "memoryllm", "none")
    graphed, eager = engines(True), engines(False)
    prompt = random_ids(6, seed=50)
    first = graphed.graphs()
    for engine in (graphed, eager):
        engine.inject(random_ids(9, seed=51), seed=51)  # the prefix is updated in the same buffers
    assert graphed.graphs() is first
    assert _ids(graphed, prompt) == _ids(eager, prompt)
    graphed.cache().reserve(graphed.cache().capacity + 1)  # grown: new buffers, so new graphs
    assert graphed.graphs() is not first
    assert _ids(graphed, prompt) == _ids(eager, prompt)


def test_a_capture_that_fails_turns_the_graphs_off_and_answers_eagerly(loaded, monkeypatch, caplog):
    engines = _cuda_engine(loaded, "memoryllm", "none")
    graphed, eager = engines(True), engines(False)
    step = graphed.model.step

    def synchronising_step(*args):  # a host read, which no capture allows
        logits = step(*args)
        logits.sum().item()
        return logits

    monkeypatch.setattr(graphed.model, "step", synchronising_step)
    prompt = random_ids(6, seed=60)
    with caplog.at_level("WARNING"):
        assert _ids(graphed, prompt) == _ids(eager, prompt)
    assert graphed.graphs().failed and "without CUDA graphs" in caplog.text
    monkeypatch.undo()
    assert _ids(graphed, prompt) == _ids(eager, prompt)  # the GPU is still usable

"""The domain tokenizer round-trips any text, and training encodes turns and prompts exactly as the
engine does at inference."""

from __future__ import annotations

import json
import random

import pytest

from memchat.engine.tokenizer import Tokenizer
from memchat.train.domain import HELDOUT, Domain, splits
from memchat.train.text import ChatEncoder, build_tokenizer, render

TEXTS = [
    "I live in Lyon.",
    "  leading and trailing spaces  \n\ttabs\r\nand newlines\n",
    "Café, naïve, Øresund, señor, Ærø, çà et là",
    "日本語のテキストと中文文本，한국어 텍스트",
    "Emoji: 😀🎉👩‍👩‍👧‍👦 and flags 🇫🇷",
    "<|eot_id|> typed as text",
    "Zanzibar Quokkaville 1234567 $15.99",
]


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_round_trips(either_tokenizer_folder, text):
    tok = Tokenizer.from_folder(either_tokenizer_folder)
    assert tok.decode(tok.encode(text)) == text.replace("<|eot_id|>", "")  # a special token, skipped
    plain = ChatEncoder(either_tokenizer_folder)
    assert plain.decode(plain.encode([text])[0]) == text.replace("<|eot_id|>", "")


def test_tokenizer_is_trained_on_the_domain_without_heldout_values(tmp_path):
    folder = build_tokenizer(tmp_path, vocab_size=600, seed=0, episodes=2000)
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    assert len(vocab) == 600
    # Frequent domain words become single tokens ...
    enc = ChatEncoder(folder)
    assert len(enc.encode([" favourite"])[0]) == 1
    # ... held-out values are never merged whole (the tokenizer never saw them).
    held = [v for s in splits().values() for v in s[HELDOUT] if len(v) > 3 and " " not in v]
    whole = [v for v in held if f"Ġ{v}" in vocab or v in vocab]
    assert whole == []
    assert build_tokenizer(tmp_path / "again", 600, 0, 2000).joinpath("tokenizer.json").read_text() == (
        folder / "tokenizer.json"
    ).read_text()


def test_training_encodes_exactly_like_the_engine(either_tokenizer_folder):
    engine_tok = Tokenizer.from_folder(either_tokenizer_folder)
    enc = ChatEncoder(either_tokenizer_folder)
    rng = random.Random(0)
    for _ in range(20):
        ep = Domain().episode(rng, distance=2, lead=1)
        want = [engine_tok.encode(engine_tok.format_turn(t.user, t.assistant)) for t in ep.turns]
        assert enc.turns(list(ep.turns)) == want
        messages = [{"role": "user", "content": ep.turns[-1].user},
                    {"role": "assistant", "content": ep.turns[-1].assistant},
                    {"role": "user", "content": ep.question}]
        assert enc.prompts([messages])[0] == engine_tok.encode_chat(messages)
        assert render(messages, True) == engine_tok.hf.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        ).removeprefix("<|begin_of_text|>")
        # A prompt is its finished exchanges followed by the question's own prompt.
        assert enc.prompts([messages])[0] == enc.conversation(messages[:2]) + enc.prompts([messages[2:]])[0]
    assert enc.replies(["You live in Lyon."])[0][-1] in engine_tok.stop_ids()


def test_the_template_tokenizer_spells_the_chat_template_in_fewer_tokens(tmp_path):
    plain = ChatEncoder(build_tokenizer(tmp_path / "plain", 600, 0, 2000))
    template = ChatEncoder(build_tokenizer(tmp_path / "template", 600, 0, 2000, template=True))
    header = [template.tok.id_to_token(i) for i in template.prompts([[]])[0]]
    assert header == ["<|start_header_id|>", "assistant", "<|end_header_id|>", "ĊĊ"]
    assert len(plain.prompts([[]])[0]) == 2 + 3 + 2  # "ass ist ant", two newlines
    turns = list(Domain().episode(random.Random(0), distance=6, lead=1).turns)
    # 5 tokens fewer for "user", "assistant" and two blank lines, less the content merges this costs
    saved = [len(a) - len(b) for a, b in zip(plain.turns(turns), template.turns(turns), strict=True)]
    assert sum(saved) >= 3 * len(turns), saved

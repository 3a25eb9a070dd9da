"""`memchat eval retention`: the protocol's counting, its data files, the command end to end on the
tiny preset, and the nano preset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from memchat.config import load_config
from memchat.engine.load import LoadError, nano_candidates, presets, resolve
from memchat.eval.cli import eval_app, parse_distances
from memchat.eval.retention import (
    EvalError,
    Item,
    load_contexts,
    load_items,
    plot,
    run_retention,
)

torch.set_num_threads(1)


class FakeTokenizer:
    has_chat_template = True

    def format_turn(self, user: str, assistant: str) -> str:
        return f"<{user}|{assistant}>"

    def encode(self, text: str):
        return text

    def offsets(self, text: str):
        return [(i, i + 1) for i in range(len(text))]

    def encode_prompt(self, messages):
        return messages[-1]["content"]

    def decode(self, ids):
        return "".join(ids)


class FakeConfig:
    max_injection_tokens = 10_000


class FakeState(list):
    def clone(self) -> FakeState:
        return FakeState(self)


class FakeEngine:
    """Remembers an injected fact until two more contexts were injected after it."""

    def __init__(self):
        self.tokenizer, self.config = FakeTokenizer(), FakeConfig()
        self.state = FakeState()
        self.seeds = []

    def inject(self, text, seed: int, origin: int = 0) -> None:
        self.seeds.append(seed)
        self.state.append(text)  # in place, as the engine rewrites its pool

    def generate_ids(self, question, sampling):
        assert sampling.temperature == 0
        for fact in reversed(self.state[-3:]):
            if "Lyon" in fact and question.startswith("Where"):
                return "You live in LYON."
        return "I don't know where you live."


def test_run_retention_counts_hits_control_and_abstain():
    engine = FakeEngine()
    items = [Item({"user": "I live in Lyon.", "assistant": "Got it."}, "Where do I live?", "lyon")] * 3
    result = run_retention(engine, items, ["chit", "chat", "more chat"], distances=[4, 0, 1, 2], seed=5)
    assert result.distances == [0, 1, 2, 4]
    assert result.recall == {0: 1.0, 1: 1.0, 2: 1.0, 4: 0.0}  # case-insensitive; forgotten after 2
    assert (result.control, result.abstain, result.n) == (0.0, 1.0, 3)
    assert engine.state == []  # put back as it was
    assert json.loads(json.dumps(result.to_json())) == {
        "recall": {"0": 1.0, "1": 1.0, "2": 1.0, "4": 0.0}, "control": 0.0, "abstain": 1.0, "update": None,
        "abstain_other": None, "n": 3}  # every item is the same fact: no other question to ask
    seeds = engine.seeds
    run_retention(FakeEngine(), items, ["chit", "chat", "more chat"], distances=[0, 1, 2, 4], seed=5)
    assert len(set(seeds)) == len(seeds)  # a fresh drop seed per injection ...
    other = FakeEngine()
    run_retention(other, items, ["chit", "chat", "more chat"], distances=[0, 1, 2, 4], seed=5)
    assert other.seeds == seeds  # ... fixed by --seed


def test_abstain_other_asks_the_next_items_question_right_after_a_context():
    class Blurts(FakeEngine):
        """Answers any question with the newest city it was told."""

        def generate_ids(self, question, sampling):
            for city in ("Lyon", "Oslo"):
                if self.state and city in self.state[-1]:
                    return f"You live in {city}."
            return "I don't know."

    lyon = Item({"user": "I live in Lyon.", "assistant": "Got it."}, "Where do I live?", "lyon")
    dog = Item("My dog is Rex.", "What is my dog called?", "Rex")
    told_rex = Item("Rex is my dog.", "Who is Rex?", "my dog")
    for engine, items, expected in [
        (FakeEngine(), [lyon, dog], (2, 1.0)),  # it says it does not know about the other fact
        (Blurts(), [lyon, dog], (2, 0.5)),  # after Lyon it says Lyon to "What is my dog called?"
        (FakeEngine(), [dog, told_rex], (0, None)),  # each context holds the other's answer: not asked
    ]:
        result = run_retention(engine, items, ["chit"], distances=[0], seed=1)
        assert (result.asked_other, result.abstain_other) == expected
        assert result.to_json()["abstain_other"] == expected[1]


def test_update_questions_need_the_newer_value_and_not_the_older():
    class Echo(FakeEngine):
        """Answers with every city told, oldest first, or only the newest one."""

        def __init__(self, newest_only: bool):
            super().__init__()
            self.newest_only = newest_only

        def generate_ids(self, question, sampling):
            cities = [c for fact in self.state for c in ("Lyon", "Paris") if c in fact]
            return "You live in " + " and ".join(cities[-1:] if self.newest_only else cities)

    told = {"user": "I live in Lyon.", "assistant": "Ok."}
    moved = {"user": "I moved to Paris.", "assistant": "Noted."}
    recall = Item(told, "Where do I live?", "Lyon")
    update = Item(moved, "Where do I live?", "Paris", before=told, stale="Lyon")
    for newest_only, expected in ((True, 1.0), (False, 0.0)):
        engine = Echo(newest_only)
        result = run_retention(engine, [recall, update, update], ["chit"], distances=[0])
        assert (result.n, result.updates, result.update, result.recall) == (1, 2, expected, {0: 1.0})
        assert result.to_json()["update"] == expected and engine.state == []


def test_data_files(tmp_path):
    items = tmp_path / "qa.jsonl"
    rows = [{"context": "Paris is in France.", "question": "Where is Paris?", "answer": "France"},
            {"context": {"user": "I live in Oslo.", "assistant": "Ok."}, "question": "Where?",
             "answer": "Oslo"}]
    items.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
    loaded = load_items(items)
    assert [i.answer for i in loaded] == ["France", "Oslo"] and loaded[1].context["user"] == "I live in Oslo."
    text = tmp_path / "d.txt"
    text.write_text("First paragraph\nstill first.\n\nSecond one.\n")
    assert load_contexts(text) == ["First paragraph\nstill first.", "Second one."]
    text.write_text("line one\nline two\n")
    assert load_contexts(text) == ["line one", "line two"]
    ctx = tmp_path / "d.jsonl"
    ctx.write_text('"plain"\n{"text": "t"}\n{"user": "u", "assistant": "a"}\n')
    assert load_contexts(ctx) == ["plain", "t", {"user": "u", "assistant": "a"}]
    update = {"before": "I live in Oslo.", "context": "I moved to Rome.", "question": "Where?",
              "answer": "Rome", "stale": "Oslo"}
    items.write_text(json.dumps(update) + "\n")
    assert load_items(items) == [Item("I moved to Rome.", "Where?", "Rome", "I live in Oslo.", "Oslo")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**update, "stale": None}) + "\n")
    with pytest.raises(EvalError, match="needs 'stale'"):
        load_items(bad)
    bad.write_text('{"context": "c", "question": "q"}\n')
    with pytest.raises(EvalError, match="bad.jsonl:1"):
        load_items(bad)
    bad.write_text("{not json\n")
    with pytest.raises(EvalError, match="not JSON"):
        load_items(bad)
    assert parse_distances("0, 4,16") == [0, 4, 16]
    with pytest.raises(EvalError):
        parse_distances("1,x")


def test_plot_writes_a_png_or_says_what_is_missing(tmp_path):
    from memchat.eval.retention import RetentionResult

    result = RetentionResult(4, [0, 1, 8], {0: 4, 1: 3, 8: 1}, 0, 2)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(EvalError, match=r"pip install 'memchat\[plot\]'"):
            plot(result, tmp_path / "r.png", "t")
    else:
        plot(result, tmp_path / "r.png", "t")
        assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def _invoke(home: Path, *args: str):
    # What the main CLI hands its sub-commands: the settings, here `memchat --home HOME --model tiny`.
    config = load_config({"model": "tiny"}, environ={}, home=home)
    result = CliRunner().invoke(eval_app, ["retention", *args], obj={"config": config})
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def test_eval_retention_json_on_the_tiny_preset(tmp_path):
    result = _invoke(tmp_path, "--n", "4", "--d", "0,1", "--json")
    line = [x for x in result.stdout.splitlines() if x.startswith("{")][-1]
    data = json.loads(line)
    assert set(data) == {"recall", "control", "abstain", "update", "abstain_other", "n"}
    assert data["n"] == 4 and set(data["recall"]) == {"0", "1"} and 0.0 <= data["update"] <= 1.0
    assert all(0.0 <= v <= 1.0 for v in [*data["recall"].values(), data["control"], data["abstain"]])
    # It used the model only: no memory (journal, state) was created under --home.
    assert not (tmp_path / "profiles").exists()


def test_eval_retention_table_with_own_data(tmp_path):
    data = tmp_path / "qa.jsonl"
    rows = [{"context": f"Fact number {i} is {w}.", "question": f"What is fact {i}?", "answer": w}
            for i, w in enumerate(["apple", "river", "candle"])]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = _invoke(tmp_path, "--data", str(data), "--n", "2", "--d", "0,2")
    assert "control (no context)" in result.stdout and "/2" in result.stdout


def test_nano_preset(monkeypatch, tmp_path):
    assert "nano" in presets()
    shipped = nano_candidates()[0]
    if (shipped / "config.json").is_file():
        assert resolve("nano") == shipped
    monkeypatch.setattr("memchat.engine.load.nano_candidates", lambda: [tmp_path / "none"])
    with pytest.raises(LoadError, match="memchat train nano"):
        resolve("nano")


def _shipped_nano() -> Path:
    folder = nano_candidates()[0]
    if not (folder / "config.json").is_file():
        pytest.skip(f"{folder} is not there (the trained model is not shipped yet)")
    return folder


def test_the_shipped_nano_model_loads():
    folder = _shipped_nano()
    from memchat.engine.engine import Engine

    engine = Engine.load("nano", device="cpu")
    assert engine.folder == folder and engine.tokenizer.has_chat_template
    assert sum(p.stat().st_size for p in folder.iterdir()) < 25 * 2**20


def test_the_shipped_nano_model_passes_the_engine_check_quantized():
    folder = _shipped_nano()
    from memchat.engine.engine import Engine

    engine = Engine.load("nano", device="cpu", quant="int8")
    tok = engine.tokenizer
    turn = tok.encode(tok.format_turn("I live in Vienna.", "Noted."))
    engine.inject(torch.tensor([turn]), seed=1, origin=1)
    ids = torch.tensor([tok.encode_chat([{"role": "user", "content": "Where do I live?"}])])
    reply = tok.decode(list(engine.generate_ids(ids)))
    assert engine.state.last_injection == 1 and reply.strip(), (folder, reply)


def test_the_shipped_nano_model_remembers(tmp_path):
    """A small eval, as CI can afford: 24 held-out questions per D, greedy and seeded, so the figures are
    the same on every run. The shipped model measures 0.775 at D = 0 and D = 4 on 200 (the README's
    table), 0.79 and 0.71 on these 24; the bounds sit below, to flag a model that stopped reading
    its memory, and abstain at the target (0.8; it measures 1.00)."""
    _shipped_nano()
    config = load_config({"model": "nano"}, environ={}, home=tmp_path)
    args = ["retention", "--n", "24", "--d", "0,4", "--json"]
    result = CliRunner().invoke(eval_app, args, obj={"config": config})
    assert result.exit_code == 0, (result.output, result.exception)
    data = json.loads([x for x in result.stdout.splitlines() if x.startswith("{")][-1])
    assert data["recall"]["0"] >= 0.4 and data["recall"]["4"] >= 0.4, data
    assert data["control"] <= 0.1 and data["abstain"] >= 0.8 and data["update"] >= 0.25, data

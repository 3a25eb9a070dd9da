"""The REPL's pieces in-process, without a model: slash commands, completion, multi-line input, the
recent-turn window and the input history."""

from __future__ import annotations

import io
from pathlib import Path

from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from rich.console import Console

from memchat.chat.commands import COMMANDS, run_command
from memchat.chat.repl import Chat, ChatCompleter, ChatHistory, fence_open, unfence
from memchat.config import Config


class NoModel:
    """Stands in for the memory in commands that never reach it."""

    def sampling(self, **overrides):
        return overrides


def chat(window: int = 2) -> tuple[Chat, io.StringIO]:
    screen = io.StringIO()
    return Chat(NoModel(), Config(window=window), Console(file=screen, width=200)), screen


def test_help_lists_every_command_with_the_first_line_of_its_docstring():
    c, screen = chat()
    assert run_command(c, "/help") is False
    text = screen.getvalue()
    for name, fn in COMMANDS.items():
        assert f"/{name}" in text and fn.__doc__.strip().splitlines()[0] in text
    expected = {"help", "stats", "forget", "ingest", "log", "incognito", "clear", "model", "exit"}
    assert expected <= set(COMMANDS)


def test_unknown_commands_get_the_closest_name_or_a_pointer_to_help():
    c, screen = chat()
    run_command(c, "/stast")
    run_command(c, "/zzzz")
    assert "unknown command /stast; did you mean /stats?" in screen.getvalue()
    assert "unknown command /zzzz; /help lists the commands" in screen.getvalue()


def test_exit_ends_the_repl_and_other_commands_do_not():
    c, _ = chat()
    assert run_command(c, "/exit") is True
    assert run_command(c, "/clear") is False


def test_the_window_keeps_the_last_exchanges_and_clear_empties_it_not_memory():
    c, screen = chat(window=2)
    for i in range(3):
        c.window.append((f"question {i}", f"answer {i}"))
    assert c.messages("now?") == [
        {"role": "user", "content": "question 1"},
        {"role": "assistant", "content": "answer 1"},
        {"role": "user", "content": "question 2"},
        {"role": "assistant", "content": "answer 2"},
        {"role": "user", "content": "now?"},
    ]
    run_command(c, "/clear")
    assert c.messages("now?") == [{"role": "user", "content": "now?"}]
    assert "memory is unchanged" in screen.getvalue()


def test_incognito_toggles_the_prompt_and_keeps_input_out_of_the_history_file(tmp_path):
    c, _ = chat()
    history = ChatHistory(tmp_path / "history", c)
    history.append_string("remembered")
    run_command(c, "/incognito")
    assert c.incognito and c.prompt == "incognito> "
    history.append_string("my secret")
    run_command(c, "/incognito")
    assert not c.incognito and c.prompt == "you> "
    history.append_string("remembered again")
    on_disk = (tmp_path / "history").read_text()
    assert "remembered" in on_disk and "remembered again" in on_disk and "my secret" not in on_disk
    assert list(history.get_strings())[-2] == "my secret"  # still recallable in this session


def test_a_fence_line_opens_a_block_that_enter_extends_until_the_closing_fence():
    assert not fence_open("hello")
    assert fence_open('"""')
    assert fence_open('"""\nfirst line')
    assert not fence_open('"""\nfirst line\nsecond line\n"""')
    assert unfence('"""\nfirst line\nsecond line\n"""') == "first line\nsecond line"
    assert unfence("plain\ntext") == "plain\ntext"


def complete(text: str) -> list[str]:
    return [c.text for c in ChatCompleter().get_completions(Document(text), CompleteEvent())]


def test_completion_of_commands_and_of_paths_after_ingest(tmp_path: Path):
    assert complete("/st") == ["/stats"]
    assert set(complete("/")) == {f"/{name}" for name in COMMANDS}
    assert complete("hello /st") == []
    (tmp_path / "notes.md").write_text("x")
    (tmp_path / "novel").mkdir()
    assert sorted(complete(f"/ingest {tmp_path}/no")) == ["tes.md", "vel"]

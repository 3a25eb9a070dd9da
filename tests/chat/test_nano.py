"""memchat-nano in the real REPL: a fact told ten turns earlier, long out of the prompt's window of recent
turns, is answered from memory. Runs once the trained model ships in assets/memchat-nano."""

from __future__ import annotations

import pytest

from memchat.engine.load import nano_candidates

from ._util import finish, ready

pytestmark = pytest.mark.skipif(
    not (nano_candidates()[0] / "config.json").is_file(), reason="memchat-nano is not shipped yet"
)
CHITCHAT = [
    "Can you suggest a warm recipe?", "I'm bored.", "How do I clean an oven?", "Tell me a joke.",
    "What should I read next?", "I painted my room.", "Any tips for sleeping better?", "Not much.",
    "How do I keep plants alive?", "What a long day.",
]


def test_nano_remembers_a_fact_told_ten_turns_earlier(tmp_path, terminal):
    chat = terminal(tmp_path / "home", MEMCHAT_MODEL="nano", MEMCHAT_MAX_NEW_TOKENS="40")
    chat.expect(ready())
    # Vienna is a held-out value, never seen in training: the answer at the end can only come from memory
    # (the prompt's window holds the last 4 turns). The reply here is injected with the message: if it
    # says where I live, it must not garble the value.
    chat.send("I live in Vienna.\r")
    chat.expect(ready())
    assert "live" not in chat.before or "Vienna" in chat.before
    for line in CHITCHAT:
        chat.send(line + "\r")
        chat.expect(ready())
    chat.send("Where do I live?\r")
    chat.expect(ready())
    assert "Vienna" in chat.before
    chat.send("/exit\r")
    assert finish(chat) == 0

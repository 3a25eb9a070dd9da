"""The REPL as a user drives it: a real pseudo-terminal, the tiny model, real keys (Enter is a carriage
return, Alt-Enter is Esc then Enter, Ctrl-C and Ctrl-D are signals and end-of-file)."""

from __future__ import annotations

import re
import time

import pexpect

from memchat.store import Journal, MemoryLayout, read_meta

from ._util import finish, memchat, ready, stats


def layout(home) -> MemoryLayout:
    return MemoryLayout(home / "profiles" / "default" / "tiny")


def test_ctrl_c_stops_a_reply_without_remembering_it_and_the_chat_goes_on(tmp_path, terminal):
    home = tmp_path / "home"
    # Greedy on the CPU, the tiny model runs for hours; in bf16 on a GPU it meets a stop id within
    # a second or two, before the Ctrl-C.
    chat = terminal(home, MEMCHAT_MAX_NEW_TOKENS="1000000", MEMCHAT_DEVICE="cpu")
    chat.expect("memory: empty")
    chat.expect(ready())
    chat.send("Tell me everything about my dog Biscuit\r")
    chat.expect("Biscuit")
    chat.expect(pexpect.TIMEOUT, timeout=1.5)  # read what streams meanwhile
    assert len(chat.before) > 200, chat.before  # the reply is streaming
    chat.sendintr()
    chat.expect("stopped")
    chat.expect(ready())
    chat.send("/stats\r")
    chat.expect(r"injections\s*│\s*0 \(0 tokens\)")
    chat.expect(ready())
    chat.sendintr()  # at the prompt: clears the line, the chat stays
    chat.expect(ready())
    chat.send("/exit\r")
    assert finish(chat) == 0
    assert stats(home)["injections"] == 0


def test_a_chat_remembers_its_turns_forgets_on_request_and_the_next_chat_sees_them(tmp_path, terminal):
    home = tmp_path / "home"
    chat = terminal(home)
    chat.expect(ready())
    chat.send("My dog is called Biscuit\r")
    chat.expect(ready())
    for line in ('"""', "first line of a note", "second line of a note", '"""'):
        chat.send(line + "\r")
    chat.expect(ready())
    chat.send("/incognito\r")
    chat.expect(ready("incognito>"))
    chat.send("my secret is pistachio\r")
    chat.expect(ready("incognito>"))
    chat.send("/incognito\r")
    chat.expect(ready())
    chat.send("/stats\r")
    chat.expect(r"injections\s*│\s*2 \(")
    chat.expect(ready())

    time.sleep(1.1)
    cut = time.strftime("%Y-%m-%d %H:%M:%S")
    time.sleep(1.1)
    chat.send("a line\x1b\rand another, typed with Alt-Enter\r")
    chat.expect(ready())
    chat.send(f"/forget {cut}\r")
    chat.expect("will forget 1 injection ")
    chat.expect(re.escape("forget them? [y/N]"))
    chat.send("y\r")
    chat.expect("forgot 1 injection")
    chat.expect("cleared the recent-turn window too")
    chat.expect(ready())
    chat.send("/stast\r")
    chat.expect(re.escape("did you mean /stats?"))
    chat.expect(ready())
    chat.send("Where do I live?\r")
    chat.expect(ready())
    chat.send("/exit\r")
    assert finish(chat) == 0

    data = stats(home)
    assert (data["injections"], data["forgotten"], data["pending"]) == (3, 1, 0), data
    with Journal(layout(home).journal) as journal:
        last = journal.last_id()
        texts = [row.text for row in journal.rows()]
    assert read_meta(layout(home).state)["journal_upto"] == str(last)  # /exit saved the state
    assert any("first line of a note\nsecond line of a note" in t and '"""' not in t for t in texts)
    assert not any("pistachio" in t or "Alt-Enter" in t for t in texts)  # incognito; forgotten
    log = memchat(home, "memory", "log").stdout
    assert "Biscuit" in log and "(forgotten)" in log

    again = terminal(home)
    again.expect(r"memory: 3 injections \(\d+ tokens\), last ")
    again.expect(ready())
    again.send("/log Biscuit\r")
    again.expect("Biscuit")
    again.expect(ready())
    again.sendeof()
    assert finish(again) == 0
    assert "pistachio" not in (layout(home).root / "history").read_text()

"""`memchat ingest --watch` in a real subprocess: files written and edited while it runs are ingested;
while a chat holds the memory the watcher only journals, and the chat applies the rows between turns."""

from __future__ import annotations

import re

from ._util import finish, ready, stats

DOG = "My dog is called Biscuit. He loves the beach and chases every ball he sees on the sand.\n"
CITY = "I live in Lyon, near the river. I work as a baker in the old town and start at five.\n"
BREAD = "\n\nMy favourite bread is a rye sourdough with walnuts, baked every Sunday morning for friends.\n"


def notes(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "dog.md").write_text(DOG)
    return folder


def test_watch_ingests_new_and_edited_files_until_ctrl_c(tmp_path, terminal):
    home, folder = tmp_path / "home", notes(tmp_path)
    watcher = terminal(home, "ingest", "--watch", str(folder))
    watcher.expect(re.escape("injected 1 chunk ("))
    watcher.expect("Ctrl-C stops")
    (folder / "city.md").write_text(CITY)
    watcher.expect(r"city\.md: 1 chunk,")
    watcher.expect(re.escape("injected 1 chunk ("))
    with open(folder / "dog.md", "a") as f:
        f.write(BREAD)
    watcher.expect(r"dog\.md: 1 chunk,")  # only the new paragraph, not the whole file again
    watcher.expect(re.escape("injected 1 chunk ("))
    (folder / ".draft.md").write_text(CITY + BREAD)  # hidden: never ingested
    data = stats(home)
    assert (data["injections"], data["pending"]) == (3, 0), data
    assert set(data["by_source"]) == {str(folder / "dog.md"), str(folder / "city.md")}
    watcher.sendintr()
    watcher.expect("stopped watching")
    assert finish(watcher) == 0
    assert stats(home)["injections"] == 3


def test_while_a_chat_holds_the_memory_the_watcher_queues_and_the_chat_applies(tmp_path, terminal):
    home, folder = tmp_path / "home", notes(tmp_path)
    chat = terminal(home)
    chat.expect(ready())
    watcher = terminal(home, "ingest", "--watch", str(folder))
    watcher.expect(re.escape("queued 1 chunk ("))
    watcher.expect("another memchat holds this memory")
    watcher.expect("Ctrl-C stops")
    (folder / "city.md").write_text(CITY)
    watcher.expect(r"city\.md: 1 chunk,")
    watcher.expect(re.escape("queued 1 chunk ("))
    data = stats(home)
    assert (data["injections"], data["pending"]) == (0, 2), data

    chat.send("Where do I live?\r")
    chat.expect(re.escape("applied 2 injections queued by other processes"))
    chat.expect(ready())
    data = stats(home)
    assert (data["injections"], data["pending"]) == (3, 0), data  # two files and the turn
    chat.send("/exit\r")
    assert finish(chat) == 0
    watcher.sendintr()
    watcher.expect("stopped watching")
    assert finish(watcher) == 0

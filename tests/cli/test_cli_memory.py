"""`memchat ingest`, `memory …` and `forget` as a user runs them: real subprocesses, real files, real
SQLite, the tiny model, and SIGKILL at random moments."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from memchat_run import run_memchat

NOTES = {
    "a.md": "# Pets\n\nMy dog is called Biscuit. He loves the beach and chases every ball he sees.\n",
    "b.txt": "I live in Lyon, near the river. I work as a baker in the old town and start at five.\n",
    "sub/c.md": "My sister Anna moves to Berlin next month. She will work as a nurse at the hospital.\n",
    "sub/d.py": "def greet(name):\n    return f'hello {name}, welcome back to the kitchen'\n",
}


def env_for(home: Path, model: str = "tiny", **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMCHAT_")}
    env.update(MEMCHAT_HOME=str(home), MEMCHAT_MODEL=model, MEMCHAT_SEED="11", OMP_NUM_THREADS="1", **extra)
    return env


def memchat(home: Path, *args: str, check: bool = True, input: str | None = None, model: str = "tiny",
            **extra: str):
    return run_memchat(args, env_for(home, model, **extra), input=input, check=check, timeout=300)


def stats(home: Path, model: str = "tiny", **extra: str) -> dict:
    return json.loads(memchat(home, "memory", "stats", "--json", model=model, **extra).stdout)


def write_notes(folder: Path, notes: dict[str, str] = NOTES, repeat: int = 1) -> Path:
    for name, text in notes.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text * repeat)
    return folder


def test_ingest_twice_injects_nothing_the_second_time_and_an_edit_only_its_new_chunk(tmp_path):
    home, notes = tmp_path / "home", write_notes(tmp_path / "notes")
    first = memchat(home, "ingest", str(notes))
    assert "from 4 files" in first.stdout, first.stdout
    before = stats(home)
    assert before["injections"] == 4 and before["pending"] == 0 and before["memory_digest"]
    second = memchat(home, "ingest", str(notes))
    assert "injected 0 chunks" in second.stdout and "4 unchanged" in second.stdout, second.stdout
    assert stats(home)["memory_digest"] == before["memory_digest"]
    (notes / "b.txt").write_text(NOTES["b.txt"] + "\n\nMy favourite bread is a rye sourdough with walnuts.\n")
    memchat(home, "ingest", str(notes))
    after = stats(home)
    assert after["injections"] == 5, after
    log = memchat(home, "memory", "log", "--search", "sourdough").stdout
    assert "sourdough" in log


@pytest.mark.parametrize("model", ["tiny", "tiny-mplus", "tiny-7b"])
def test_forget_since_gives_the_digest_of_a_memory_that_never_saw_the_rows(tmp_path, model):
    early, late = write_notes(tmp_path / "early", {"a.md": NOTES["a.md"]}), write_notes(
        tmp_path / "late", {"c.md": NOTES["sub/c.md"] * 6})
    memchat(tmp_path / "never", "ingest", str(early), model=model)
    expected = stats(tmp_path / "never", model)["memory_digest"]

    home = tmp_path / "home"
    memchat(home, "ingest", str(early), model=model)
    time.sleep(1.1)
    cut = time.strftime("%Y-%m-%d %H:%M:%S")
    time.sleep(1.1)
    memchat(home, "ingest", str(late), model=model)
    assert stats(home, model)["memory_digest"] != expected
    dry = memchat(home, "forget", "--since", cut, "--dry-run", model=model)
    assert "will forget 1 injection " in dry.stdout
    memchat(home, "forget", "--since", cut, "--yes", model=model)
    assert stats(home, model)["memory_digest"] == expected
    assert "Berlin" not in memchat(home, "memory", "log", "--search", "Berlin", model=model).stdout
    assert "ok" in memchat(home, "memory", "verify", model=model).stdout


@pytest.mark.parametrize("model", ["tiny", "tiny-mplus"])
def test_sigkill_at_any_moment_then_rerun_equals_an_uninterrupted_run(tmp_path, model):
    notes = write_notes(tmp_path / "notes", repeat=12)
    # M+ prunes a long-term row after 10 merges (one per two injections): write enough for that.
    for i in range(6 if model == "tiny" else 18):
        (notes / f"extra{i}.md").write_text(f"Note {i}. " + NOTES["a.md"] * 8)
    memchat(tmp_path / "clean", "ingest", str(notes), model=model)
    expected = stats(tmp_path / "clean", model)
    if model == "tiny-mplus":  # enough merges that long-term rows were pruned, as well as appended
        assert expected["ltm_rows_live"] < expected["ltm_rows_on_disk"], expected

    home = tmp_path / "killed"
    rng = random.Random(1234)
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-m", "memchat.cli", "ingest", str(notes)],
            env=env_for(home, model),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(2.0, 6.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    memchat(home, "ingest", str(notes), model=model)
    got = stats(home, model)
    assert (got["injections"], got["memory_digest"]) == (expected["injections"], expected["memory_digest"])


@pytest.mark.parametrize("since", ["not a time at all", "the day after tomorrow's cousin"])
def test_unparseable_since_is_one_clear_line_and_changes_nothing(tmp_path, since):
    proc = memchat(tmp_path / "home", "forget", "--since", since, "--yes", check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot read the time" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_files_are_reported_and_skipped(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "good.md").write_text(NOTES["a.md"])
    (notes / "fake.md").write_bytes(b"\x00\x01\x02binary\x00" * 100)
    with open(notes / "huge.txt", "wb") as f:
        f.truncate(2 * 1024**3)  # sparse: no disk used
    (notes / "latin1.txt").write_bytes(
        "Le café de ma grand-mère était très bon et très sucré.".encode("cp1252")
    )
    proc = memchat(tmp_path / "home", "ingest", str(notes), str(tmp_path / "missing"))
    out = proc.stdout + proc.stderr
    assert "binary" in out and "larger than" in out and "not found" in out, out
    assert "from 2 files" in proc.stdout, out
    log = memchat(tmp_path / "home", "memory", "log", "--search", "café").stdout
    assert "café" in log


def test_empty_folder_injects_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = memchat(tmp_path / "home", "ingest", str(tmp_path / "empty"))
    assert "injected 0 chunks" in proc.stdout
    assert stats(tmp_path / "home")["injections"] == 0


@pytest.mark.parametrize("model", ["tiny", "tiny-mplus"])
def test_export_then_import_into_another_profile(tmp_path, model):
    home = tmp_path / "home"
    memchat(home, "ingest", str(write_notes(tmp_path / "notes")), model=model)
    original = stats(home, model)
    memchat(home, "memory", "export", str(tmp_path / "m.tar"), model=model)
    memchat(home, "--profile", "copy", "memory", "import", str(tmp_path / "m.tar"), model=model)
    copy = json.loads(memchat(home, "--profile", "copy", "memory", "stats", "--json", model=model).stdout)
    assert copy["memory_digest"] == original["memory_digest"] and copy["injections"] == 4
    if model == "tiny-mplus":  # the long-term rows came along: the state opens without a rebuild
        assert copy["ltm_rows_live"] == original["ltm_rows_live"] > 0
        assert copy["ltm_rows_on_disk"] == original["ltm_rows_on_disk"] >= copy["ltm_rows_live"]
        verify = memchat(home, "--profile", "copy", "memory", "verify", model=model)
        assert "ok" in verify.stdout and "falling back" not in verify.stderr, verify.stderr
    again = memchat(home, "--profile", "copy", "memory", "import", str(tmp_path / "m.tar"), check=False,
                    model=model)
    assert again.returncode == 1 and "--force" in again.stderr


def test_a_forgotten_file_is_ingested_again(tmp_path):
    home, notes = tmp_path / "home", write_notes(tmp_path / "notes", {"a.md": NOTES["a.md"]})
    memchat(home, "ingest", str(notes))
    source = str((notes / "a.md").resolve())
    memchat(home, "forget", "--source", source, "--yes")
    assert stats(home)["injections"] == 0
    again = memchat(home, "ingest", str(notes))
    assert "from 1 file;" in again.stdout, again.stdout
    assert stats(home)["injections"] == 1



def test_a_memory_built_under_two_quantizations_says_so_in_stats_and_verify(tmp_path):
    # On the CPU, whatever the machine has: the setups named below are the CPU's defaults.
    home, cpu = tmp_path / "home", {"MEMCHAT_DEVICE": "cpu"}
    memchat(home, "ask", "--max-new-tokens", "1", "My dog is called Biscuit.", **cpu)
    memchat(home, "--quant", "int8", "ask", "--max-new-tokens", "1", "I live in Lyon.", **cpu)
    computed_with = stats(home, **cpu)["computed_with"]
    assert computed_with == [{"from_row": 1, "setup": "none float32 on cpu"},
                             {"from_row": 2, "setup": "int8 float32 on cpu"}]
    verify = memchat(home, "memory", "verify", check=False, **cpu)
    assert verify.returncode == 1
    assert "computed with int8 float32 on cpu, and this run's none float32 on cpu" in verify.stderr
    assert len(verify.stderr.strip().splitlines()) == 1
    # Forgetting the int8 turn rebuilds with this run's setup: one setup again, and verify agrees.
    memchat(home, "forget", "--source", "chat", "--yes", **cpu)
    memchat(home, "ask", "--max-new-tokens", "1", "My dog is called Biscuit.", **cpu)
    assert [c["setup"] for c in stats(home, **cpu)["computed_with"]] == ["none float32 on cpu"]
    assert "ok" in memchat(home, "memory", "verify", **cpu).stdout

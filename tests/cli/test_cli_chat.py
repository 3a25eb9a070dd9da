"""`memchat ask`, `model`, `config`, the default model, and start-up cost, as a script or a user runs
them: real subprocesses with the tiny model in a home of their own."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from memchat_run import run_memchat


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEMCHAT_", "HF_"))}
    env.update(MEMCHAT_HOME=str(home), MEMCHAT_MODEL="tiny", MEMCHAT_SEED="1", OMP_NUM_THREADS="1")
    env.update(HF_HOME=str(home / "hf"), **extra)
    return {k: v for k, v in env.items() if v is not None}


def memchat(home: Path, *args: str, input: str = "", **extra: str) -> subprocess.CompletedProcess:
    return run_memchat(args, env_for(home, **extra), input=input)  # stdin a pipe, as in a script


def stats(home: Path, **extra: str) -> dict:
    return json.loads(memchat(home, "memory", "stats", "--json", **extra).stdout)


@pytest.mark.parametrize(
    ("args", "torch_expected"),
    [(["--help"], False), (["memory", "stats", "--json"], False), (["model", "list"], True)],
)
def test_help_and_stats_start_without_torch(tmp_path, args, torch_expected):
    """`model list` reads the engine's presets, which does import torch: it shows the check can tell."""
    probe = (
        "import sys\n"
        f"sys.argv = ['memchat', *{args!r}]\n"
        "import memchat.cli\n"
        "try:\n    memchat.cli.main()\n"
        "except SystemExit:\n    pass\n"
        "print('torch loaded:', 'torch' in sys.modules, file=sys.stderr)\n"
    )
    env = env_for(tmp_path / "home")
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert f"torch loaded: {torch_expected}" in proc.stderr, proc.stderr


def test_ask_streams_the_answer_and_remembers_the_exchange_unless_told_not_to(tmp_path):
    home = tmp_path / "home"
    greedy = ["--temperature", "0", "--max-new-tokens", "12"]
    first = memchat(home, "ask", "What is my dog called?", "--no-remember", *greedy)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() and first.stdout.endswith("\n")
    assert stats(home)["injections"] == 0
    again = memchat(home, "ask", "What is my dog called?", *greedy)
    assert again.stdout == first.stdout  # --no-remember left memory as it was
    piped = memchat(home, "ask", "-", *greedy, input="My bird is called Kiwi.\n")
    assert piped.returncode == 0 and piped.stdout.strip(), piped.stderr
    assert stats(home)["injections"] == 2
    assert "Kiwi" in memchat(home, "memory", "log", "--search", "Kiwi").stdout


@pytest.mark.parametrize("model", ["tiny-7b", "tiny-mplus"])
def test_the_other_model_families_chat_remember_and_forget(tmp_path, model):
    """MemoryLLM-7B (no chat template: Question/Answer prompts) and M+ through ask, log and forget."""
    home = tmp_path / "home"
    turn = memchat(home, "ask", "My bird is called Kiwi and she sings every morning.", "--temperature", "0",
                   "--max-new-tokens", "8", MEMCHAT_MODEL=model)
    assert turn.returncode == 0 and turn.stdout.strip(), turn.stderr
    log = memchat(home, "memory", "log", "--search", "Kiwi", MEMCHAT_MODEL=model).stdout
    assert "Kiwi" in log and ("Question:" in log) == (model == "tiny-7b"), log
    forget = memchat(home, "forget", "--source", "chat", "--yes", MEMCHAT_MODEL=model)
    assert forget.returncode == 0, forget.stderr
    assert stats(home, MEMCHAT_MODEL=model)["injections"] == 0


def test_ask_without_a_question_or_with_bad_settings_is_one_line(tmp_path):
    empty = memchat(tmp_path / "home", "ask", input="  \n")
    assert empty.returncode == 1 and empty.stderr.strip() == "error: the question is empty"
    bad = memchat(tmp_path / "home", "ask", "hi", "--top-p", "3")
    assert bad.returncode == 1 and "top_p = 3.0 from flag: expected a number from 0 to 1" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_without_a_model_or_a_gpu_memchat_runs_the_nano_demo_model_and_says_so(tmp_path):
    home = tmp_path / "home"
    proc = memchat(home, "ask", "Where do I live?", MEMCHAT_MODEL=None, CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr
    assert "memchat-nano: a small demo model" in proc.stderr
    assert stats(home, MEMCHAT_MODEL=None, CUDA_VISIBLE_DEVICES="")["model"] == "nano"
    chosen = memchat(home, "ask", "hi", "--max-new-tokens", "2", MEMCHAT_MODEL="nano")
    assert chosen.returncode == 0 and "demo model" not in chosen.stderr  # chosen, so known


def test_the_chat_needs_a_terminal(tmp_path):
    proc = memchat(tmp_path / "home")
    assert proc.returncode == 1 and "memchat ask" in proc.stderr


def fake_download(hf_home: Path, repo: str) -> None:
    """A hub repo in the Hugging Face cache layout, as `snapshot_download` leaves it."""
    root = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    (root / "blobs").mkdir(parents=True)
    (root / "blobs" / "0123abcd").write_text("{}")
    (root / "snapshots" / "rev1").mkdir(parents=True)
    (root / "snapshots" / "rev1" / "config.json").symlink_to("../../blobs/0123abcd")
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("rev1")


def test_model_list_shows_the_presets_and_what_is_downloaded_and_pull_offline_is_one_line(tmp_path):
    home = tmp_path / "home"
    fake_download(home / "hf", "YuWangX/memoryllm-8b")
    listing = memchat(home, "model", "list").stdout
    rows = {line.removeprefix(" *").split()[0]: line for line in listing.splitlines() if line.strip()}
    for name in ("memoryllm-8b-chat", "memoryllm-8b", "mplus-8b", "memoryllm-7b", "tiny", "tiny-mplus"):
        assert name in rows, listing
    assert "downloaded" in rows["memoryllm-8b"] and "downloaded" not in rows["memoryllm-8b-chat"]
    assert "built in" in rows["tiny-7b"] and rows["tiny"].startswith(" *")  # the current model
    pull = memchat(home, "model", "pull", "mplus-8b", HF_HUB_OFFLINE="1")
    assert pull.returncode == 1
    assert len(pull.stderr.strip().splitlines()) == 1 and "offline" in pull.stderr, pull.stderr


def test_config_show_says_where_each_setting_comes_from(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('model = "tiny-7b"\nwindow = 7\ntemperature = 0.3\n')
    proc = memchat(home, "--model", "tiny", "config", "show", MEMCHAT_WINDOW="5")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.strip()}
    assert rows["model"][1:] == ["tiny", "flag"]
    assert rows["window"][1:] == ["5", "env", "MEMCHAT_WINDOW"]
    assert rows["temperature"][1:] == ["0.3", "config.toml"]
    assert rows["top_p"][-1] == "default"
    assert f"config.toml: {home / 'config.toml'}" in proc.stdout
    assert memchat(home, "config", "path").stdout.strip() == str(home / "config.toml")
    (home / "config.toml").write_text("windw = 3\n")
    broken = memchat(home, "config", "show")
    assert broken.returncode == 1
    assert re.search(r"unknown setting 'windw' \(did you mean 'window'\?\)", broken.stderr), broken.stderr

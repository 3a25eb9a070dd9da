"""Helpers for the chat tests: memchat in subprocesses and in pseudo-terminals, with the tiny model, in a
home of its own (MEMCHAT_HOME keeps the real data and config dirs out of it)."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pexpect
from memchat_run import run_memchat


def ready(prompt: str = "you>") -> re.Pattern[str]:
    """A prompt waiting for input. prompt_toolkit redraws the prompt with every key and once more on
    Enter, so the prompt's text alone would match the line just typed; each new prompt starts by
    turning bracketed paste on."""
    return re.compile(r"\x1b\[\?2004h[^\n]*?" + re.escape(prompt))


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEMCHAT_", "HF_"))}
    env.update(
        MEMCHAT_HOME=str(home),
        MEMCHAT_MODEL="tiny",
        MEMCHAT_SEED="1",
        MEMCHAT_TEMPERATURE="0",  # greedy: the tiny model then rarely stops before max_new_tokens
        MEMCHAT_MAX_NEW_TOKENS="24",
        OMP_NUM_THREADS="1",
        HF_HOME=str(home / "hf"),
        TERM="xterm-256color",
        PROMPT_TOOLKIT_NO_CPR="1",  # pexpect does not answer cursor-position requests
    )
    env.update(extra)
    return env


def memchat(home: Path, *args: str, check: bool = True, input: str | None = None, **extra: str):
    return run_memchat(args, env_for(home, **extra), input=input, check=check)


def stats(home: Path) -> dict:
    return json.loads(memchat(home, "memory", "stats", "--json").stdout)


def spawn(home: Path, *args: str, **extra: str) -> pexpect.spawn:
    """memchat in a pseudo-terminal; the terminal's own bytes can be cut mid-character by Ctrl-C, hence
    the lenient decoding."""
    return pexpect.spawn(
        sys.executable,
        ["-m", "memchat.cli", *args],
        env=env_for(home, **extra),
        dimensions=(40, 160),
        encoding="utf-8",
        codec_errors="replace",
        timeout=60,
    )


def finish(child: pexpect.spawn) -> int:
    """Wait for a child to end; its exit status."""
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


"""The one way the tests run `memchat` as a script would: a subprocess, stdin a pipe, output captured."""

from __future__ import annotations

import subprocess
import sys


def run_memchat(args: tuple[str, ...], env: dict[str, str], *, input: str | None = None, check: bool = False,
                timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "memchat.cli", *args], env=env, input=input,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"memchat {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc

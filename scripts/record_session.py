"""Record a real memchat chat session as an SVG picture for the README.

    python scripts/record_session.py [--model nano] [--out assets/session.svg]

The actual program runs in a tmux terminal (a fresh MEMCHAT_HOME, fixed seed, greedy decoding); the
script types into it like a user, then rich turns tmux's screen (with its colours) into SVG. Needs tmux.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.text import Text

WIDTH, HEIGHT = 100, 52
SESSION = "memchat-record"
# Facts, then more chit-chat than the prompt's window of recent turns holds, so the answers can only
# come from memory; Vienna is a value nano never saw in training.
SCRIPT = [
    "I live in Vienna.",
    "My dog is called Biscuit.",
    "Tell me a joke.",
    "How do I keep plants alive?",
    "What should I read next?",
    "I painted my room.",
    "Where do I live?",
    "What is my dog called?",
    "/stats",
]


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], check=True, capture_output=True, text=True).stdout


def wait_for_prompt(timeout: float = 120.0) -> None:
    """Until the chat shows an empty prompt again (the reply, or the command, is done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [line for line in tmux("capture-pane", "-t", SESSION, "-p").splitlines() if line.strip()]
        if lines and lines[-1].rstrip().endswith("you>"):
            return
        time.sleep(0.3)
    raise TimeoutError("the chat did not come back to its prompt")


def record(model: str, home: Path) -> str:
    env = {
        **os.environ,
        "MEMCHAT_HOME": str(home),
        "MEMCHAT_MODEL": model,
        "MEMCHAT_SEED": "1",
        "MEMCHAT_TEMPERATURE": "0",
        "MEMCHAT_MAX_NEW_TOKENS": "40",
    }
    command = " ".join([sys.executable, "-m", "memchat.cli"])
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", SESSION, "-x", str(WIDTH), "-y", str(HEIGHT), command],
        check=True,
        env=env,
    )
    try:
        wait_for_prompt()
        for line in SCRIPT:
            tmux("send-keys", "-t", SESSION, "-l", line)
            tmux("send-keys", "-t", SESSION, "Enter")
            time.sleep(0.5)
            wait_for_prompt()
        return tmux("capture-pane", "-t", SESSION, "-p", "-e")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", SESSION], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="nano")
    parser.add_argument("--out", type=Path, default=Path("assets/session.svg"))
    args = parser.parse_args()
    if shutil.which("tmux") is None:
        sys.exit("error: this script needs tmux (apt install tmux)")
    with tempfile.TemporaryDirectory() as home:
        screen = record(args.model, Path(home))
    console = Console(record=True, width=WIDTH, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(Text.from_ansi(screen.rstrip("\n")))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    console.save_svg(str(args.out), title=f"memchat --model {args.model}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

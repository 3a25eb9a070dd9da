"""scripts/chat_check.py, run as a user runs it, on the shipped nano model."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "scripts" / "chat_check.py"


def test_chat_check_counts_echoes_and_recalls_through_the_repl_turn(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data"),
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--n", "3", "--turns", "5"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    found = re.fullmatch(r"echoes (\d) of 3; recalls (\d) of 3 after 5 chat turns\n", proc.stdout)
    assert found, proc.stdout
    # Greedy and seeded: the shipped model echoes two of these three values ("Okay, noted." to the
    # third); five turns push the fact out of the prompt's window of 4, so a recall comes from memory.
    assert int(found[1]) >= 1 and int(found[2]) >= 1, proc.stdout
    assert not (tmp_path / "data").exists()  # each fact's memory lived in the script's temporary home

"""`memchat train nano` as a user runs it: a real process, stopped by SIGTERM the way a run started in the
background is stopped (SIGINT is ignored there), saves its state, and the same command resumes it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from memchat.train.trainer import MODEL_DIR, STATE_DIR


def _command(out: Path) -> list[str]:
    # save_every beyond the schedule: any state on disk was written by the stop itself.
    return [sys.executable, "-m", "memchat.cli", "train", "nano", "--out", str(out), "--size", "micro",
            "--steps", "100000", "--save-every", "100000", "--eval-every", "0", "--threads", "1"]


def _start(out: Path) -> subprocess.Popen:
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    # SIG_IGN for SIGINT, as a job started with `&` from a non-interactive shell has it.
    return subprocess.Popen(_command(out), env=env, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))


def _step_on_disk(out: Path) -> int:
    return json.loads((out / STATE_DIR / "state.json").read_text())["step"]


def _stop_after_some_steps(proc: subprocess.Popen) -> str:
    time.sleep(3)
    proc.send_signal(signal.SIGINT)  # ignored, as in the background
    time.sleep(0.5)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    return err


def test_sigterm_saves_and_the_same_command_resumes(tokenizer_folder, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tokenizer_folder, out / MODEL_DIR)  # the run's tokenizer, as a first start writes it
    proc = _start(out)
    assert proc.stderr.readline().startswith("starting:")  # the trainer is built and stepping
    err = _stop_after_some_steps(proc)
    assert "interrupted: saved at step" in err
    first = _step_on_disk(out)
    assert first > 0
    assert (out / MODEL_DIR / "model.safetensors").exists()

    proc = _start(out)
    assert proc.stderr.readline().startswith(f"resuming at step {first}")
    _stop_after_some_steps(proc)
    meta = json.loads((out / STATE_DIR / "state.json").read_text())
    assert meta["step"] > first and meta["seconds"] > 3


def test_a_gpu_asked_for_where_there_is_none_is_one_line(tmp_path):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    command = [*_command(tmp_path), "--device", "cuda"]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 1
    assert done.stderr.strip() == "error: no CUDA GPU here: train with --device cpu"
    assert not (tmp_path / STATE_DIR).exists()


def test_any_setting_can_be_given_and_a_wrong_one_is_one_line(tokenizer_folder, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tokenizer_folder, out / MODEL_DIR)
    command = [sys.executable, "-m", "memchat.cli", "train", "nano", "--out", str(out), "--size", "micro",
               "--steps", "2", "--eval-every", "0", "--threads", "1"]
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    bad = subprocess.run([*command, "--set", "asked_first=often"], capture_output=True, text=True, env=env)
    assert bad.returncode == 1
    assert bad.stderr.strip() == "error: --set asked_first=often: asked_first takes a value like 0.25"
    zero = subprocess.run([*command, "--set", "num_tokens=0"], capture_output=True, text=True, env=env)
    assert zero.returncode == 1
    assert zero.stderr.strip() == "error: --set num_tokens=0: num_tokens takes a whole number ≥ 1"
    assert not (out / STATE_DIR).exists()
    given = ["--set", "asked_first=0", "--set", "levels=[0, 1]", "--set", "num_blocks=6"]
    done = subprocess.run([*command, *given], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    settings = json.loads((out / STATE_DIR / "state.json").read_text())["train_config"]
    assert (settings["asked_first"], settings["levels"], settings["num_blocks"]) == (0, [0, 1], 6)
    assert json.loads((out / MODEL_DIR / "config.json").read_text())["num_blocks"] == 6

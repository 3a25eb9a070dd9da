"""`python -m memchat.engine.check`: passes on the official fixtures, fails on a tampered copy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from memchat.engine import check

from ._util import run_module

FIXTURE_NAMES = ("memoryllm-tiny", "mplus-tiny", "memoryllm-7b-tiny")


def _run_check(folder: Path):
    return run_module("-m", "memchat.engine.check", str(folder), env={"COLUMNS": "160"})


def _tampered(official, tmp_path: Path, edit) -> Path:
    folder = tmp_path / "tampered"
    shutil.copytree(official("memoryllm-tiny"), folder)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_check_passes_on_official_fixture(official, name):
    proc = _run_check(official(name))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all ok" in proc.stdout
    assert "MISS" not in proc.stdout


def test_check_fails_when_rope_scaling_is_tampered(official, tmp_path, capsys):
    def edit(config):
        # 1.8125 → 2.0: a plausible value that moves every rotary angle a little.
        config["rope_scaling"]["factor"] = 2.0

    # In process (main() is what the module runs) to spare one interpreter start.
    assert check.main([str(_tampered(official, tmp_path, edit))]) == 1
    out = capsys.readouterr().out
    assert "MISS" in out
    assert "missed" in out and "all ok" not in out


@pytest.fixture(scope="module")
def num_tokens_run(tmp_path_factory):
    """The check on a copy whose num_tokens is changed consistently (K=4 with 8 blocks keeps N=32, so
    the checkpoint still loads), run once for the tests below."""
    src = check_fixture_or_skip()
    folder = tmp_path_factory.mktemp("k4") / "memoryllm-tiny"
    shutil.copytree(src, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(num_tokens=4, num_blocks=8)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return _run_check(folder)


def check_fixture_or_skip() -> Path:
    from ._util import FIXTURES

    path = FIXTURES / "memoryllm-tiny"
    if not (path / "config.json").is_file():
        pytest.skip("official fixtures not present")
    return path


def test_check_fails_when_num_tokens_is_changed_consistently(num_tokens_run):
    assert num_tokens_run.returncode == 1, num_tokens_run.stdout + num_tokens_run.stderr
    assert "all ok" not in num_tokens_run.stdout


def test_check_reports_shape_mismatch_as_a_miss_not_a_crash(num_tokens_run):
    assert "Traceback" not in num_tokens_run.stderr, num_tokens_run.stderr[-2000:]
    assert "MISS" in num_tokens_run.stdout and "missed" in num_tokens_run.stdout


def test_usage_error_without_arguments_exits_2():
    proc = run_module("-m", "memchat.engine.check")
    assert proc.returncode == 2
    assert "usage" in proc.stderr


def test_usage_errors_in_process(tmp_path, capsys):
    assert check.main(["a", "b"]) == 2
    assert check.main([str(tmp_path)]) == 2  # a folder without config.json
    assert "not a checkpoint folder" in capsys.readouterr().err

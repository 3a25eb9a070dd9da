"""Settings: flag > environment > config.toml > default, where each came from, and clear errors."""

from __future__ import annotations

from pathlib import Path

import platformdirs
import pytest

from memchat.config import GPU_DEFAULT_MODEL, ConfigError, gpu_present, load_config


def write(home: Path, text: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(text)
    return home


@pytest.mark.parametrize(
    ("name", "flag", "env", "file", "default"),
    [
        # (given, expected) for the flag and the environment; (TOML literal, expected) for the file
        ("model", ("tiny", "tiny"), ("tiny-7b", "tiny-7b"), ('"tiny-mplus"', "tiny-mplus"), "nano"),
        ("profile", ("work", "work"), ("home", "home"), ('"travel"', "travel"), "default"),
        ("temperature", (0.2, 0.2), ("0.4", 0.4), ("0.6", 0.6), None),
        ("max_new_tokens", (64, 64), ("128", 128), ("256", 256), None),
        ("window", (1, 1), ("2", 2), ("3", 3), 4),
        ("snapshot_budget", ("1 GB", 1 << 30), ("2GB", 2 << 30), ('"3 GiB"', 3 << 30), None),
    ],
)
def test_each_layer_wins_over_the_ones_below(tmp_path, name, flag, env, file, default):
    home = write(tmp_path, f"{name} = {file[0]}\n")
    env_name = f"MEMCHAT_{name.upper()}"

    def resolved(flags: dict, environ: dict) -> tuple:
        config = load_config(flags, environ={"MEMCHAT_HOME": str(home), **environ}, gpu=False)
        return getattr(config, name), config.origins[name]

    assert resolved({name: flag[0]}, {env_name: env[0]}) == (flag[1], "flag")
    assert resolved({name: None}, {env_name: env[0]}) == (env[1], f"env {env_name}")
    assert resolved({}, {env_name: "  "}) == (file[1], str(home / "config.toml"))
    (home / "config.toml").unlink()
    assert resolved({}, {}) == (default, "default")


def test_the_file_is_in_memchat_home_when_set_and_the_home_flag_wins(tmp_path):
    config = load_config(environ={"MEMCHAT_HOME": str(tmp_path / "env")}, gpu=False)
    assert (config.path, config.home, config.origins["home"]) == (
        tmp_path / "env" / "config.toml", tmp_path / "env", "env MEMCHAT_HOME"
    )
    config = load_config(environ={"MEMCHAT_HOME": str(tmp_path / "env")}, home=tmp_path / "flag", gpu=False)
    assert (config.path, config.origins["home"]) == (tmp_path / "flag" / "config.toml", "flag")
    config = load_config(environ={}, gpu=False)
    assert config.path == Path(platformdirs.user_config_dir("memchat")) / "config.toml"
    assert (config.home, config.origins["home"]) == (None, "default")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('modle = "tiny"', "unknown setting 'modle' (did you mean 'model'?)"),
        ("colour = 3", "unknown setting 'colour' (known: model, profile,"),
        ("window = 2.5", "window = 2.5 from"),
        ("temperature = true", "expected a number from 0 to 100"),
        ("top_p = 1.5", "expected a number from 0 to 1"),
        ('snapshot_budget = "lots"', "expected a size"),
        ("model = ", "is not valid TOML"),
    ],
)
def test_a_bad_file_is_a_one_line_error_naming_the_file_and_the_fix(tmp_path, text, message):
    write(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as error:
        load_config(environ={"MEMCHAT_HOME": str(tmp_path)}, gpu=False)
    assert message in str(error.value) and "\n" not in str(error.value).strip()
    assert str(tmp_path / "config.toml") in str(error.value)


def test_bad_flags_and_environment_values_name_their_source(tmp_path):
    with pytest.raises(ConfigError, match=r"top_p = 2\.0 from flag: expected a number from 0 to 1"):
        load_config({"top_p": 2.0}, environ={"MEMCHAT_HOME": str(tmp_path)}, gpu=False)
    with pytest.raises(ConfigError, match="from env MEMCHAT_MAX_NEW_TOKENS: expected an integer of at least"):
        load_config(environ={"MEMCHAT_HOME": str(tmp_path), "MEMCHAT_MAX_NEW_TOKENS": "0"}, gpu=False)


def test_the_default_model_is_the_8b_chat_model_on_a_gpu_and_nano_on_a_cpu(tmp_path):
    environ = {"MEMCHAT_HOME": str(tmp_path)}
    on_gpu = load_config(environ=environ, gpu=True)
    assert (on_gpu.model, on_gpu.origins["model"]) == (GPU_DEFAULT_MODEL, "default")
    on_cpu = load_config(environ=environ, gpu=False)
    assert (on_cpu.model, on_cpu.origins["model"]) == ("nano", "default")
    # A GPU that looked usable: torch decides; without CUDA the default gives way, a chosen model stays.
    import torch

    assert on_gpu.for_this_machine().model == (GPU_DEFAULT_MODEL if torch.cuda.is_available() else "nano")
    chosen = load_config({"model": GPU_DEFAULT_MODEL}, environ=environ, gpu=True)
    assert chosen.for_this_machine().model == GPU_DEFAULT_MODEL


def test_hidden_gpus_are_no_gpu():
    assert not gpu_present({"CUDA_VISIBLE_DEVICES": ""})
    assert not gpu_present({"CUDA_VISIBLE_DEVICES": "-1"})


def test_generation_settings_go_to_the_sampler_with_none_for_the_checkpoint_default(tmp_path):
    config = load_config({"top_p": 0.5}, environ={"MEMCHAT_HOME": str(tmp_path)}, gpu=False)
    assert config.generation() == {"temperature": None, "top_p": 0.5, "max_new_tokens": None}
    assert config.override(max_new_tokens=9).generation()["max_new_tokens"] == 9

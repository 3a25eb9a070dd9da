"""Settings: a flag wins over the environment, which wins over config.toml, which wins over the default.

config.toml lives in `platformdirs.user_config_dir("memchat")`, or in the data home when `--home` or
`MEMCHAT_HOME` names one (that is how tests stay out of the real config dir). Its keys are the setting
names below, at the top level: `model = "tiny"`, `temperature = 0.7`, `snapshot_budget = "4 GB"`.
No torch here: every command reads its settings first.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from memchat.errors import MemchatError

GPU_DEFAULT_MODEL = "memoryllm-8b-chat"
# Without CUDA, memchat's own small demo model: an 8B model on the CPU by surprise would be a
# minutes-long load and a crawl.
CPU_DEFAULT_MODEL = "nano"
FILE_NAME = "config.toml"


class ConfigError(MemchatError):
    pass


def _text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected text")
    return value.strip()


def _number(kind: type, low: float, high: float | None = None) -> Callable[[object], Any]:
    what = f"{'an integer' if kind is int else 'a number'} " + (
        f"from {low:g} to {high:g}" if high is not None else f"of at least {low:g}"
    )

    def parse(value: object) -> Any:
        # TOML gives bools and floats as such; an integer setting takes neither, a number not a bool.
        exact = not isinstance(value, bool) and not (kind is int and isinstance(value, float))
        try:
            number = kind(value) if exact else None
        except (TypeError, ValueError):
            number = None
        if number is None or not low <= number <= (high if high is not None else number):
            raise ValueError(f"expected {what}")
        return number

    return parse


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _size(value: object) -> int:
    """Bytes from 8589934592, "8 GB" or "512MiB" (units of 1024, as --max-size counts them)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", str(value).upper())
    if isinstance(value, bool) or match is None:
        raise ValueError("expected a size such as 8589934592, '8 GB' or '512 MB'")
    return int(float(match[1]) * _UNITS[match[2]])


def _setting(default: Any, env: str, parse: Callable[[object], Any], help: str, unset: str = "") -> Any:
    """A setting's field; `unset` says what a value of None means."""
    return field(default=default, metadata={"env": env, "parse": parse, "help": help, "unset": unset})


@dataclass(frozen=True)
class Config:
    """The effective settings, with where each came from in `origins` ('flag', 'env NAME', the file, or
    'default')."""

    model: str | None = _setting(None, "MEMCHAT_MODEL", _text, "hub id, local folder or preset", "none")
    profile: str = _setting("default", "MEMCHAT_PROFILE", _text, "whose memory")
    device: str | None = _setting(None, "MEMCHAT_DEVICE", _text, "device: cuda, cuda:1 or cpu", "cuda if any")
    quant: str | None = _setting(None, "MEMCHAT_QUANT", _text, "weights: nf4, int8 or none", "nf4 on cuda")
    temperature: float | None = _setting(
        None, "MEMCHAT_TEMPERATURE", _number(float, 0, 100), "0 for greedy; else sampling", "the checkpoint's"
    )
    top_p: float | None = _setting(
        None, "MEMCHAT_TOP_P", _number(float, 0, 1), "nucleus sampling mass", "the checkpoint's"
    )
    max_new_tokens: int | None = _setting(
        None, "MEMCHAT_MAX_NEW_TOKENS", _number(int, 1), "longest reply, in tokens", "the checkpoint's"
    )
    window: int = _setting(4, "MEMCHAT_WINDOW", _number(int, 0), "recent exchanges the chat prompt carries")
    snapshot_budget: int | None = _setting(
        None, "MEMCHAT_SNAPSHOT_BUDGET", _size, "disk for snapshots that make forget fast", "memchat's (8 GB)"
    )
    seed: int | None = _setting(
        None, "MEMCHAT_SEED", _number(int, 0), "fixes the drop-seed salt (tests)", "random per memory"
    )
    home: Path | None = None  # --home or MEMCHAT_HOME: where data, and then config.toml, live
    path: Path = Path(FILE_NAME)  # the config file (it may not exist)
    origins: Mapping[str, str] = field(default_factory=dict)

    def override(self, **flags: Any) -> Config:
        """These settings with the given flags on top; a flag of None was not given."""
        given = {name: value for name, value in flags.items() if value is not None}
        values = {name: _parse(name, value, "flag") for name, value in given.items()}
        return replace(self, **values, origins={**self.origins, **dict.fromkeys(given, "flag")})

    def generation(self) -> dict[str, float | int | None]:
        """The sampling settings, None where the checkpoint's default applies."""
        return {"temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": self.max_new_tokens}

    def for_this_machine(self) -> Config:
        """These settings before a model loads: the GPU default was picked without torch, so it gives way
        to the CPU default where torch finds no CUDA. A model the user chose stays."""
        if self.origins.get("model") != "default" or self.model != GPU_DEFAULT_MODEL:
            return self
        from memchat.service.memory import cuda_available

        return self if cuda_available() else replace(self, model=CPU_DEFAULT_MODEL)


SETTINGS = tuple(f for f in fields(Config) if f.metadata)
_BY_NAME = {spec.name: spec for spec in SETTINGS}


def setting_help(name: str) -> str:
    """The help line of a setting with its environment variable, for the command-line flags."""
    spec = _BY_NAME[name]
    text = spec.metadata["help"]
    return f"{text[0].upper()}{text[1:]}. \\[env: {spec.metadata['env']}]"  # \\[ is a literal [ to rich


def config_path(home: Path | None = None) -> Path:
    if home is not None:
        return home / FILE_NAME
    from platformdirs import user_config_dir

    return Path(user_config_dir("memchat")) / FILE_NAME


def load_config(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] = os.environ,
    home: Path | str | None = None,
    gpu: bool | None = None,
) -> Config:
    """Settings from the defaults, then config.toml, then the environment, then `flags` (None: not given).

    `home` is the --home flag; `gpu` says whether CUDA is there, for the default model (None: look).
    """
    origins = dict.fromkeys((f.name for f in SETTINGS), "default")
    given = home or environ.get("MEMCHAT_HOME") or None
    origins["home"] = "flag" if home else "env MEMCHAT_HOME" if given else "default"
    home = Path(given).expanduser() if given else None
    path = config_path(home)
    values: dict[str, Any] = {}
    for name, value in read_file(path).items():
        values[name], origins[name] = _parse(name, value, str(path)), str(path)
    for spec in SETTINGS:
        raw = environ.get(spec.metadata["env"], "")
        if raw.strip():
            where = f"env {spec.metadata['env']}"
            values[spec.name], origins[spec.name] = _parse(spec.name, raw, where), where
    config = Config(**values, home=home, path=path, origins=origins).override(**(flags or {}))
    if config.model is None:
        default = GPU_DEFAULT_MODEL if (gpu_present(environ) if gpu is None else gpu) else CPU_DEFAULT_MODEL
        config = replace(config, model=default)
    return config


def read_file(path: Path) -> dict[str, Any]:
    """The settings of a config.toml; an unknown key is an error with a suggestion (typos hide silently)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read {path}: {error}") from None
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None
    for key in data:
        if key not in _BY_NAME:
            close = difflib.get_close_matches(key, _BY_NAME, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(_BY_NAME)}"
            raise ConfigError(f"{path}: unknown setting '{key}' ({hint})")
    return data


def _parse(name: str, value: object, where: str) -> Any:
    try:
        return _BY_NAME[name].metadata["parse"](value)
    except ValueError as error:
        raise ConfigError(f"{name} = {value!r} from {where}: {error}") from None


def gpu_present(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether an NVIDIA GPU looks usable, without importing torch (a second that `memory stats` must
    not pay); loading confirms it with torch before it counts on CUDA."""
    if environ.get("CUDA_VISIBLE_DEVICES", "0").strip() in ("", "-1"):
        return False
    return any(Path("/dev").glob("nvidia[0-9]*")) or shutil.which("nvidia-smi") is not None

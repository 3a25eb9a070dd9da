"""Find a checkpoint (local folder, preset or hub id) and load it tensor by tensor.

Weights stream from safetensors shard by shard, large tensors in row blocks, each cast (and for the
backbone linears quantized) on arrival, so peak CPU memory stays near one block rather than the
39 GB fp32 model. The memory state is returned apart from the weights.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from memchat.engine.config import ADAPTER_DECODE, ADAPTER_INJECT, MemoryConfig
from memchat.engine.model import LoRALinear, MemoryModel
from memchat.engine.quantize import check_mode, default_mode, quantized_linear
from memchat.engine.rowlog import RowLog
from memchat.engine.state import MemoryState, initial_state
from memchat.errors import MemchatError

HUB_PRESETS = {
    "memoryllm-8b-chat": "YuWangX/memoryllm-8b-chat",
    "memoryllm-8b": "YuWangX/memoryllm-8b",
    "mplus-8b": "YuWangX/mplus-8b",
    "memoryllm-7b": "YuWangX/memoryllm-7b",
}
TINY_PRESETS = {"tiny": "memoryllm", "tiny-mplus": "mplus", "tiny-7b": "memoryllm-7b"}
# memchat's own small CPU model (trained by `memchat train nano`), shipped in the repository's
# assets/memchat-nano; a wheel installs it under <prefix>/share/memchat/memchat-nano.
NANO_PRESET = "nano"
NANO_DIR = "memchat-nano"
HUB_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken"]
_BACKBONE_LINEAR = re.compile(
    r"^model\.layers\.\d+\.(self_attn|mlp)\.(q|k|v|o|gate|up|down)_proj(\.base_layer)?$"
)
# Tensors above this size are read in row blocks to bound peak CPU memory.
_BLOCK_BYTES = 256 << 20


class LoadError(MemchatError, RuntimeError):
    """A checkpoint that cannot be found or loaded; the message says what to do."""


def presets() -> dict[str, str]:
    """Every preset name with what it stands for."""
    return {
        **HUB_PRESETS,
        NANO_PRESET: f"memchat's small CPU model ({NANO_DIR})",
        **{name: f"built-in {kind} test model" for name, kind in TINY_PRESETS.items()},
    }


def nano_candidates() -> list[Path]:
    """Where the nano model may be: the source checkout (editable install), then the installed data."""
    import sys

    import memchat

    return [
        Path(memchat.__file__).resolve().parents[1] / "assets" / NANO_DIR,
        Path(sys.prefix) / "share" / "memchat" / NANO_DIR,
    ]


def nano_folder() -> Path:
    for folder in nano_candidates():
        if (folder / "config.json").is_file():
            return folder
    raise LoadError(
        f"the nano model is not installed ({nano_candidates()[0]} is missing); train one with "
        f"`memchat train nano --out DIR` and pass --model DIR/model"
    )


def resolve(source: str, cache_dir: Path | None = None) -> Path:
    """A local folder for `source`: a folder path, a preset name, or a Hugging Face hub id."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if source in TINY_PRESETS:
        return _tiny_folder(source, cache_dir)
    if source == NANO_PRESET:
        return nano_folder()
    repo = HUB_PRESETS.get(source, source)
    if path.exists() or not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise LoadError(
            f"'{source}' is neither a model folder, a preset ({', '.join(presets())}) nor a hub id"
        )
    return download(repo)


def download(repo: str) -> Path:
    """Fetch a hub checkpoint into the standard Hugging Face cache (with progress bars)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo, allow_patterns=HUB_FILES))
    except RepositoryNotFoundError:
        raise LoadError(
            f"no model '{repo}' on the Hugging Face hub; pass a local folder with --model PATH"
        ) from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise LoadError(
            f"cannot download '{repo}' ({type(e).__name__}): are you offline? Download it "
            f"elsewhere and pass the folder with --model PATH"
        ) from None


def _tiny_folder(preset: str, cache_dir: Path | None) -> Path:
    """Tiny checkpoints are written once per cache dir; a temp dir and a rename keep writers apart."""
    from memchat.engine.tiny import write_tiny_checkpoint

    root = cache_dir or _cache_root()
    folder = root / "models" / preset
    if (folder / "config.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{preset}-"))
    write_tiny_checkpoint(tmp, TINY_PRESETS[preset])
    try:
        os.rename(tmp, folder)
    except OSError:  # another process got there first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _cache_root() -> Path:
    from platformdirs import user_cache_dir

    home = os.environ.get("MEMCHAT_HOME")
    return Path(home) / "cache" if home else Path(user_cache_dir("memchat"))


def weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    single = folder / "model.safetensors"
    if single.exists():
        return [single]
    if any(folder.glob("*.bin")):
        raise LoadError(f"{folder} has only pickle (.bin) weights; memchat loads safetensors only")
    raise LoadError(f"{folder} has no model.safetensors or model.safetensors.index.json")


def build_model(cfg: MemoryConfig) -> MemoryModel:
    """The model skeleton on the meta device: no memory is spent until tensors arrive."""
    with torch.device("meta"):
        model = MemoryModel(cfg)
        if cfg.lora is not None:
            adapters = (ADAPTER_INJECT, ADAPTER_DECODE) if cfg.add_decoder_lora else (ADAPTER_INJECT,)
            for block in model.layers:
                for parent in (block.self_attn, block.mlp):
                    for name in cfg.lora.targets:
                        base = getattr(parent, name, None)
                        if base is not None:
                            setattr(
                                parent,
                                name,
                                LoRALinear(
                                    base,
                                    base.in_features,
                                    base.out_features,
                                    cfg.lora.r,
                                    cfg.lora.scale,
                                    adapters,
                                ),
                            )
    return model


def load(
    folder: Path,
    device: torch.device | str | None = None,
    quant: str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[MemoryModel, MemoryState]:
    """Load weights and initial memory state from a checkpoint folder."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LoadError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    quant = check_mode(quant or default_mode(device))
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    cfg = MemoryConfig.from_file(folder)
    model = build_model(cfg)
    files = weight_files(folder)
    _check_keys(model, cfg, files)
    return model, populate(model, _stream(files, dtype, device), quant, dtype, device)


def populate(
    model: MemoryModel,
    tensors: Iterable[tuple[str, Tensor]],
    quant: str,
    dtype: torch.dtype,
    device: torch.device,
) -> MemoryState:
    """Move named tensors into the meta-device skeleton (quantizing backbone linears as they arrive) and
    build the initial memory state from the state tensors among them."""
    state_tensors: dict[str, Tensor] = {}
    keys = state_keys(model.config)
    for name, tensor in tensors:
        if name in keys:
            state_tensors[name] = tensor
        else:
            _assign(model, name, tensor, quant, dtype, device)
    model.eval().requires_grad_(False)
    return initial_state(model.config, state_tensors)


def state_keys(cfg: MemoryConfig) -> set[str]:
    """Checkpoint keys that hold the initial memory state rather than weights."""
    if not cfg.is_mplus:
        return {"memory", "initialized"}
    return {"memory"} | {
        f"{kind}.{i}"
        for kind in ("ltm", "ltm_keys", "ltm_ages", "ltm_recall_frequencies")
        for i in range(cfg.num_layers)
    }


def _check_keys(model: MemoryModel, cfg: MemoryConfig, files: list[Path]) -> None:
    from safetensors import safe_open

    found: set[str] = set()
    for file in files:
        with safe_open(file, "pt") as f:
            found.update(f.keys())
    expected = set(model.state_dict()) | state_keys(cfg)
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        parts = [
            f"{label} keys: {', '.join(keys[:8])}{' …' if len(keys) > 8 else ''} ({len(keys)})"
            for label, keys in (("missing", missing), ("unexpected", unexpected))
            if keys
        ]
        raise LoadError(f"checkpoint does not match its config.json: {'; '.join(parts)}")


def load_initial_state(
    folder: Path, cfg: MemoryConfig, dtype: torch.dtype, device: torch.device, log: RowLog | None = None
) -> MemoryState:
    """The checkpoint's own memory state again (what an empty journal folds to), without the weights;
    M+ long-term rows are appended to `log` (empty, or a new in-RAM log by default)."""
    from safetensors import safe_open

    keys, tensors = state_keys(cfg), {}
    for file in weight_files(folder):
        with safe_open(file, "pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                if name in keys:
                    tensors[name] = _read(f.get_slice(name), name, dtype, device)
    return initial_state(cfg, tensors, log)


def _stream(files: list[Path], dtype: torch.dtype, device: torch.device) -> Iterator[tuple[str, Tensor]]:
    """(name, tensor) one at a time, each read in row blocks and cast on arrival."""
    from safetensors import safe_open

    for file in files:
        with safe_open(file, "pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                yield name, _read(f.get_slice(name), name, dtype, device)


def _read(piece, name: str, dtype: torch.dtype, device: torch.device) -> Tensor:
    shape = piece.get_shape()
    first = piece[:1] if shape else piece[...]
    # Floating weights take the compute dtype; ages and recall frequencies keep theirs (the state
    # converts them), and the long-term memory lives in CPU RAM, as in the official code.
    keep = not first.is_floating_point() or re.match(r"^ltm_(ages|recall_frequencies)\.", name)
    target = first.dtype if keep else dtype
    where = torch.device("cpu") if name.startswith("ltm") else device
    if not shape:
        return first.to(where, target)
    out = torch.empty(shape, dtype=target, device=where)
    step = max(1, _BLOCK_BYTES // max(1, first.numel() * first.element_size()))
    for start in range(0, shape[0], step):
        out[start : start + step] = piece[start : start + step].to(where, target)
    return out


def _assign(
    model: MemoryModel, name: str, tensor: Tensor, quant: str, dtype: torch.dtype, device: torch.device
) -> None:
    module_path, _, param = name.rpartition(".")
    parent_path, _, child = module_path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    if quant != "none" and param == "weight" and _BACKBONE_LINEAR.match(module_path):
        setattr(parent, child, quantized_linear(tensor, quant, dtype, device))
        return
    module: nn.Module = model.get_submodule(module_path) if module_path else model
    module._parameters[param] = nn.Parameter(tensor.to(device), requires_grad=False)

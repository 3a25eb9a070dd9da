"""memchat-nano: the shape of the small MemoryLLM we train, a fresh model of that shape, and its export
as a checkpoint folder in the official layout (what `--model nano` loads from assets/memchat-nano).

The model is the engine's own MemoryModel in the MemoryLLM-8B layout (dual LoRA adapters: `default`
writes memory, `decoder_adapter` reads it), built by the engine's loader; only the sizes differ.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from memchat.engine.config import MemoryConfig
from memchat.engine.load import build_model
from memchat.engine.model import MemoryModel
from memchat.engine.tiny import checkpoint_config, write_checkpoint

# Sizes (config.json fields). The memory pool is num_blocks × num_tokens = 32 × 8 = 256 rows per layer:
# an injection replaces 8 random rows, so a row survives d later injections with probability
# (1 - 8/256)^d: 0.60 after 16 turns, 0.36 after 32 — and a fact has 8 rows per layer. A larger pool keeps
# rows longer but dilutes attention: with 512 rows the model had learnt no copying after 3,500 steps.
NANO: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "num_tokens": 8,
    "num_blocks": 32,
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "lora_config": {
        "inference_mode": False,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "r": 16,
        "target_modules": ["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj"],
    },
}
# A model small enough for unit tests and smoke runs.
MICRO: dict[str, Any] = {
    **NANO,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "num_tokens": 4,
    "num_blocks": 8,
    "lora_config": {**NANO["lora_config"], "r": 4, "lora_alpha": 4},
}
SIZES = {"nano": NANO, "micro": MICRO}
NANO_VOCAB = 1024
NAME = "memchat-nano"


def nano_config(
    sizes: dict[str, Any], vocab_size: int, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """config.json of a model of `sizes`: the MemoryLLM-8B layout of tiny.py with these overrides."""
    config = checkpoint_config("memoryllm", vocab_size, vocab_size=vocab_size, **sizes)
    if extra:
        config["memchat"] = extra
    return config


def generation_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """Greedy decoding: a small model answers facts best without sampling; a turn ends at <|eot_id|>."""
    eot = 5
    return {"bos_token_id": config["bos_token_id"], "pad_token_id": config["pad_token_id"],
            "eos_token_id": [config["eos_token_id"], eot], "do_sample": False, "max_new_tokens": 64,
            "transformers_version": config["transformers_version"]}


def fresh_model(
    config: dict[str, Any], seed: int, device: torch.device | str = "cpu", tied: bool = False
) -> tuple[MemoryModel, nn.Parameter]:
    """A trainable model and initial memory pool [L, N, d] on `device`, initialised on the CPU from a
    private generator (the same weights whatever the device); `tied`: the output head is the input
    embedding's parameter."""
    cfg = MemoryConfig.from_dict(config)
    model = build_model(cfg).to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    residual_scale = 1 / math.sqrt(2 * cfg.num_layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(_initial(name, p, g, residual_scale))
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.requires_grad_(True).train()
    memory = torch.randn(cfg.num_layers, cfg.memory_rows, cfg.hidden_size, generator=g) * 0.02
    return model.to(device), nn.Parameter(memory.to(device))


def _initial(name: str, p: Tensor, g: torch.Generator, residual_scale: float) -> Tensor:
    if name.endswith("layernorm.weight") or name == "model.norm.weight":
        return torch.ones_like(p)
    if ".lora_B." in name:
        return torch.zeros_like(p)  # adapters start as no-ops, as LoRA does
    if ".lora_A." in name:
        return torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1])
    # Fan-in scale, so that attention scores start far enough from uniform for heads to specialise;
    # projections that add into the residual stream start smaller, as in GPT-2.
    std = 1 / math.sqrt(p.shape[-1])
    residual = "o_proj" in name or "down_proj" in name
    return torch.randn(p.shape, generator=g) * (std * residual_scale if residual else std)


def export(folder: Path, config: dict[str, Any], model: MemoryModel, memory: Tensor) -> Path:
    """Write config.json, generation_config.json and model.safetensors (official key names, the memory
    pool as `memory`); the tokenizer files are already in `folder`."""
    tensors = {name: t.detach().cpu().clone().contiguous() for name, t in model.state_dict().items()}
    tensors["memory"] = memory.detach().cpu().clone().contiguous()
    tensors["initialized"] = torch.tensor(1, dtype=torch.uint8)
    write_checkpoint(folder, config, tensors, generation_defaults(config))
    return Path(folder)

"""One config for every memory model we run, read from a checkpoint's config.json as published.

Three families share one implementation and differ only by switches decided here:
MemoryLLM (the 8B `main`-branch code), M+ (MemoryLLM plus a long-term memory with a retriever) and the
paper's MemoryLLM-7B (`memoryllm-7b` branch: no LoRA, interpolated RoPE positions, one shared drop).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memchat.errors import MemchatError

ADAPTER_INJECT = "default"
ADAPTER_DECODE = "decoder_adapter"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# The 8B models were trained with injections of at most 512 tokens; the config does not record it.
DEFAULT_MAX_INJECTION_TOKENS = 512


class ConfigError(MemchatError, ValueError):
    """A config.json value we cannot run; the message names the field."""


@dataclass(frozen=True)
class LoraConfig:
    r: int
    alpha: float
    targets: tuple[str, ...]

    @property
    def scale(self) -> float:
        return self.alpha / self.r


@dataclass(frozen=True)
class MemoryConfig:
    # Llama backbone
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    # MemoryLLM: the memory pool holds num_blocks blocks of K = num_tokens rows per layer
    num_tokens: int
    num_blocks: int
    add_bos_embedding: bool = True
    drop_memory_per_layer: bool = True
    lora: LoraConfig | None = None
    add_decoder_lora: bool = False
    # MemoryLLM-7B: rotary angles use positions scaled by this factor (position interpolation)
    position_scale: float = 1.0
    # The 8B code adds the positional embedding on the uninitialised first injection, the 7B code does not
    pos_emb_on_first_injection: bool = True
    # M+ long-term memory; num_ltm_blocks == 0 means plain MemoryLLM
    num_ltm_blocks: int = 0
    update_ltm_frequency: int = 1
    decay_frequency: float = 1.0
    initial_rf_when_moving_stm_to_ltm: float = 1.0
    selector_hidden_dim: int = 0
    num_selector_layers: int = 1
    selector_layers: tuple[int, ...] = ()
    add_encoder_retriever: bool = False
    max_injection_tokens: int = DEFAULT_MAX_INJECTION_TOKENS
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_mplus(self) -> bool:
        return self.num_ltm_blocks > 0

    @property
    def memory_rows(self) -> int:
        """N: rows per layer of the memory pool (for M+, of the short-term memory)."""
        return (self.num_blocks - self.num_ltm_blocks) * self.num_tokens

    @property
    def ltm_rows_retrieved(self) -> int:
        """k: long-term rows M+ puts in each layer's prefix."""
        return self.num_ltm_blocks * self.num_tokens

    @property
    def drop_count(self) -> int:
        # The official code truncates a float product; for odd shapes it can be one short of K.
        return int(self.memory_rows * (1 / (self.num_blocks - self.num_ltm_blocks)))

    @property
    def answer_adapter(self) -> str:
        return ADAPTER_DECODE if self.add_decoder_lora else ADAPTER_INJECT

    @property
    def prefix_rows(self) -> int:
        """P of an answering call: the BOS row, the retrieved long-term rows and the memory pool."""
        return int(self.add_bos_embedding) + self.ltm_rows_retrieved + self.memory_rows

    @classmethod
    def from_file(cls, path: str | Path) -> MemoryConfig:
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: not found; a memory model folder needs a config.json") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> MemoryConfig:
        return _parse(raw)


def _require(raw: dict[str, Any], name: str) -> Any:
    if name not in raw or raw[name] is None:
        raise ConfigError(f"config.json: missing field '{name}'")
    return raw[name]


def _check(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"config.json: unsupported {name}={value!r} (supported: {expected})")


def _is_7b_branch(raw: dict[str, Any]) -> bool:
    # The memoryllm-7b branch saves its own config class; the 8B and M+ code save LlamaConfig.
    return raw.get("model_type") == "memoryllm"


def _is_mplus(raw: dict[str, Any]) -> bool:
    return "MPlus" in (raw.get("architectures") or []) or bool(raw.get("num_ltm_blocks"))


def _eos_ids(raw: dict[str, Any]) -> tuple[int, ...]:
    eos = raw.get("eos_token_id")
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, list) else (int(eos),)


def _parse_lora(raw: dict[str, Any]) -> LoraConfig | None:
    lc = raw.get("lora_config")
    if not lc:
        return None
    targets = tuple(lc.get("target_modules") or ("q_proj", "v_proj"))
    unknown = [t for t in targets if t not in LORA_TARGETS]
    _check(not unknown, "lora_config.target_modules", unknown, ", ".join(LORA_TARGETS))
    r = int(_require(lc, "r"))
    _check(r > 0, "lora_config.r", r, "a positive integer")
    return LoraConfig(r=r, alpha=float(lc.get("lora_alpha", 8)), targets=targets)


def _rope_scaling(raw: dict[str, Any]) -> dict[str, Any] | None:
    rs = raw.get("rope_scaling")
    if not rs:
        return None
    kind = rs.get("rope_type", rs.get("type"))
    # Dynamic NTK rescales every position by the length of the call, so the memory prefix would change
    # with each prompt's length and could not be cached; no published memory model uses it.
    supported = ("linear", "llama3", "yarn", "longrope")
    _check(kind in supported, "rope_scaling.type", kind, ", ".join(supported))
    return {**rs, "rope_type": kind}


def _position_scale(raw: dict[str, Any], rope_scaling: dict | None, memory_rows: int, k: int) -> float:
    """MemoryLLM-7B squeezes the memory prefix into the pretrained context by scaling positions."""
    if not _is_7b_branch(raw) or rope_scaling is not None or not raw.get("interpolate_position_ids"):
        return 1.0
    original = int(raw["max_position_embeddings"])
    longest = max(original, memory_rows + k)
    return original / longest


def _parse(raw: dict[str, Any]) -> MemoryConfig:
    is_7b, is_mplus = _is_7b_branch(raw), _is_mplus(raw)
    _check(raw.get("hidden_act", "silu") == "silu", "hidden_act", raw.get("hidden_act"), "silu")
    _check(int(raw.get("pretraining_tp", 1)) == 1, "pretraining_tp", raw.get("pretraining_tp"), "1")
    _check(not raw.get("tie_word_embeddings", False), "tie_word_embeddings", True, "false")
    for bias in ("attention_bias", "mlp_bias"):
        # The 7B code builds no biases whatever the field says.
        _check(is_7b or not raw.get(bias, False), bias, raw.get(bias), "false")

    hidden, heads = int(_require(raw, "hidden_size")), int(_require(raw, "num_attention_heads"))
    kv_heads = int(raw.get("num_key_value_heads") or heads)
    if is_7b:
        _check(kv_heads == heads, "num_key_value_heads", kv_heads, f"{heads} (the 7B code has no GQA)")
    _check(heads % kv_heads == 0, "num_key_value_heads", kv_heads, f"a divisor of {heads}")
    head_dim = int(raw.get("head_dim") or hidden // heads)
    if not is_mplus:
        # MemoryLLM ignores head_dim and splits the hidden size.
        _check(head_dim == hidden // heads, "head_dim", head_dim, str(hidden // heads))

    K, blocks = int(_require(raw, "num_tokens")), int(_require(raw, "num_blocks"))
    _check(K > 0, "num_tokens", K, "a positive integer")
    ltm_blocks = int(raw.get("num_ltm_blocks") or 0) if is_mplus else 0
    _check(blocks - ltm_blocks > 0, "num_blocks", blocks, f"more than num_ltm_blocks={ltm_blocks}")
    memory_rows = (blocks - ltm_blocks) * K
    drop = int(memory_rows * (1 / (blocks - ltm_blocks)))
    # The official update keeps N - drop rows and appends K; any other drop would resize the pool.
    _check(drop == K, "num_blocks", blocks, f"a value for which int(N * (1/num_blocks)) == num_tokens={K}")
    rope_scaling = _rope_scaling(raw)
    if not is_mplus and rope_scaling is not None:
        kind = rope_scaling["rope_type"]
        _check(kind == "linear", "rope_scaling.type", kind, "linear (MemoryLLM)")

    lora = None if is_7b else _parse_lora(raw)
    add_bos = bool(raw.get("add_bos_embedding", True))
    cfg: dict[str, Any] = dict(
        vocab_size=int(_require(raw, "vocab_size")),
        hidden_size=hidden,
        intermediate_size=int(_require(raw, "intermediate_size")),
        num_layers=int(_require(raw, "num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        # The 7B code never reads rope_theta: its base is fixed.
        rope_theta=10000.0 if is_7b else float(raw.get("rope_theta", 10000.0)),
        rope_scaling=rope_scaling,
        max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
        bos_token_id=raw.get("bos_token_id"),
        eos_token_ids=_eos_ids(raw),
        num_tokens=K,
        num_blocks=blocks,
        add_bos_embedding=add_bos,
        # M+ always drops per layer; the 7B code always shares one drop.
        drop_memory_per_layer=is_mplus or (bool(raw.get("drop_memory_per_layer", True)) and not is_7b),
        lora=lora,
        add_decoder_lora=bool(raw.get("add_decoder_lora", False)) and lora is not None,
        position_scale=_position_scale(raw, rope_scaling, memory_rows, K),
        pos_emb_on_first_injection=not is_7b,
        raw=raw,
    )
    if is_mplus:
        cfg.update(_parse_mplus(raw, ltm_blocks, hidden))
    return MemoryConfig(**cfg)


def _parse_mplus(raw: dict[str, Any], ltm_blocks: int, hidden: int) -> dict[str, Any]:
    mode = raw.get("update_ltm_mode", "immediate")
    _check(mode == "immediate", "update_ltm_mode", mode, "immediate")
    _check(bool(raw.get("add_selector", True)), "add_selector", raw.get("add_selector"), "true")
    sel_layers = int(raw.get("num_selector_layers", 1))
    _check(sel_layers in (1, 2), "num_selector_layers", sel_layers, "1, 2")
    layers = raw.get("selector_layers")
    n_layers = int(raw["num_hidden_layers"])
    # A layer without a selector cannot retrieve; the official code would fail there too.
    _check(
        layers is None or sorted(layers) == list(range(n_layers)), "selector_layers", layers, "every layer"
    )
    initial = int(raw.get("ltm_initial_size", 1))
    _check(initial > 0, "ltm_initial_size", initial, "at least 1 (retrieval needs rows to choose from)")
    return dict(
        num_ltm_blocks=ltm_blocks,
        update_ltm_frequency=int(_require(raw, "update_ltm_frequency")),
        decay_frequency=float(raw.get("decay_frequency", 1)),
        initial_rf_when_moving_stm_to_ltm=float(_require(raw, "initial_rf_when_moving_stm_to_ltm")),
        selector_hidden_dim=int(_require(raw, "selector_hidden_dim")),
        num_selector_layers=sel_layers,
        selector_layers=tuple(range(n_layers)),
        add_encoder_retriever=bool(raw.get("add_encoder_retriever", False)),
    )

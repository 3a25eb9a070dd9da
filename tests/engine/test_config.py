"""MemoryConfig: what each family's config.json means, and the values we refuse (naming the field)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memchat.engine.config import ADAPTER_DECODE, ConfigError, MemoryConfig
from memchat.engine.load import load


def _raw(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def test_official_memoryllm_config(official):
    cfg = MemoryConfig.from_file(official("memoryllm-tiny"))
    assert not cfg.is_mplus
    shape = (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
    assert shape == (3, 64, 4, 2, 16)
    assert (cfg.num_tokens, cfg.memory_rows, cfg.drop_count) == (8, 32, 8)
    assert cfg.lora is not None and cfg.lora.r == 4 and cfg.lora.scale == 2.0
    assert cfg.answer_adapter == ADAPTER_DECODE
    assert cfg.rope_scaling["rope_type"] == "linear" and cfg.rope_theta == 500000.0
    assert cfg.position_scale == 1.0
    assert cfg.prefix_rows == 33  # README: the answering forward has P = 1 + N = 33
    assert cfg.eos_token_ids == (2,)


def test_official_mplus_config(official):
    cfg = MemoryConfig.from_file(official("mplus-tiny"))
    assert cfg.is_mplus
    assert (cfg.num_tokens, cfg.memory_rows, cfg.ltm_rows_retrieved) == (4, 16, 8)
    assert cfg.prefix_rows == 25  # README: T = 32, P = 25 for the 7-token prompt
    assert cfg.drop_memory_per_layer  # M+ always draws one permutation per layer
    assert (cfg.update_ltm_frequency, cfg.selector_hidden_dim, cfg.num_selector_layers) == (2, 16, 2)
    assert cfg.rope_scaling["rope_type"] == "llama3"


def test_official_7b_config(official):
    cfg = MemoryConfig.from_file(official("memoryllm-7b-tiny"))
    assert cfg.lora is None and not cfg.add_decoder_lora
    assert cfg.num_kv_heads == cfg.num_heads == 4
    assert not cfg.drop_memory_per_layer  # one permutation shared by all layers
    assert cfg.rope_theta == 10000.0
    # O = 21, M = max(21, (num_blocks + 1) * K) = 40
    assert cfg.position_scale == 21 / 40
    assert cfg.prefix_rows == 33


def test_7b_ignores_rope_theta_and_interpolates_only_without_rope_scaling(official):
    raw = _raw(official("memoryllm-7b-tiny"))
    assert MemoryConfig.from_dict({**raw, "rope_theta": 500000.0}).rope_theta == 10000.0
    assert MemoryConfig.from_dict({**raw, "interpolate_position_ids": False}).position_scale == 1.0
    linear = {**raw, "rope_scaling": {"type": "linear", "factor": 2.0}}
    assert MemoryConfig.from_dict(linear).position_scale == 1.0
    # The 8B layout never interpolates positions, whatever the flag says.
    raw8 = _raw(official("memoryllm-tiny"))
    assert MemoryConfig.from_dict({**raw8, "interpolate_position_ids": True}).position_scale == 1.0


def _set(path: str, value):
    def edit(raw: dict) -> None:
        *parents, leaf = path.split(".")
        node = raw
        for p in parents:
            node = node[p]
        node[leaf] = value

    return edit


# (kind, edit, the field the message must name)
UNSUPPORTED = [
    ("memoryllm", _set("hidden_act", "gelu"), "hidden_act"),
    ("memoryllm-7b", _set("hidden_act", "gelu"), "hidden_act"),
    ("mplus", _set("update_ltm_mode", "lazy"), "update_ltm_mode"),
    ("memoryllm", _set("rope_scaling", {"type": "foo", "factor": 2.0}), "rope_scaling"),
    ("mplus", _set("rope_scaling", {"rope_type": "foo", "factor": 2.0}), "rope_scaling"),
    # MemoryLLM's own rotary class knows linear and dynamic only.
    ("memoryllm", _set("rope_scaling", {"rope_type": "yarn", "factor": 2.0}), "rope_scaling"),
    ("memoryllm", _set("num_key_value_heads", 3), "num_key_value_heads"),
    ("mplus", _set("num_key_value_heads", 3), "num_key_value_heads"),
    ("memoryllm-7b", _set("num_key_value_heads", 2), "num_key_value_heads"),
    ("memoryllm", _set("pretraining_tp", 2), "pretraining_tp"),
    ("memoryllm", _set("tie_word_embeddings", True), "tie_word_embeddings"),
    ("memoryllm", _set("attention_bias", True), "attention_bias"),
    ("memoryllm", _set("lora_config.target_modules", ["q_proj", "lm_head"]), "target_modules"),
    ("memoryllm", _set("num_tokens", 0), "num_tokens"),
    # int(392 * (1/49)) == 7, not 8: the update would shrink the pool.
    ("memoryllm", _set("num_blocks", 49), "num_blocks"),
    ("mplus", _set("num_blocks", 2), "num_blocks"),  # no short-term memory left beside 2 LTM blocks
    ("mplus", _set("num_selector_layers", 3), "num_selector_layers"),
    ("mplus", _set("selector_layers", [0]), "selector_layers"),
    ("mplus", _set("ltm_initial_size", 0), "ltm_initial_size"),
    ("mplus", _set("add_selector", False), "add_selector"),
]


@pytest.mark.parametrize(
    ("kind", "edit", "field"), UNSUPPORTED, ids=[f"{k}-{f}-{i}" for i, (k, _, f) in enumerate(UNSUPPORTED)]
)
def test_unsupported_value_names_the_field(tiny_checkpoint, kind, edit, field):
    raw = _raw(tiny_checkpoint(kind))
    MemoryConfig.from_dict(raw)  # the untouched config is fine
    edit(raw)
    with pytest.raises(ConfigError, match=field):
        MemoryConfig.from_dict(raw)


def test_load_refuses_an_unsupported_config_before_reading_weights(tiny_checkpoint, tmp_path):
    src = tiny_checkpoint("memoryllm")
    raw = _raw(src)
    raw["hidden_act"] = "gelu"
    (tmp_path / "config.json").write_text(json.dumps(raw))
    # No weights at all in this folder: the config error must come first.
    with pytest.raises(ConfigError, match="hidden_act"):
        load(tmp_path, device="cpu")


@pytest.mark.parametrize("field", ["hidden_size", "num_tokens", "num_blocks", "vocab_size"])
def test_missing_required_field_is_named(tiny_checkpoint, field):
    raw = _raw(tiny_checkpoint("memoryllm"))
    del raw[field]
    with pytest.raises(ConfigError, match=f"'{field}'"):
        MemoryConfig.from_dict(raw)


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config.json"):
        MemoryConfig.from_file(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="JSON"):
        MemoryConfig.from_file(tmp_path)


def test_eos_list_and_decoder_adapter_switch(tiny_checkpoint):
    raw = _raw(tiny_checkpoint("memoryllm"))
    assert MemoryConfig.from_dict({**raw, "eos_token_id": [2, 5]}).eos_token_ids == (2, 5)
    assert MemoryConfig.from_dict({**raw, "add_decoder_lora": False}).answer_adapter == "default"
    # The 7B branch never reads lora_config, even when one is present.
    raw7 = _raw(tiny_checkpoint("memoryllm-7b"))
    cfg7 = MemoryConfig.from_dict({**raw7, "lora_config": raw["lora_config"], "add_decoder_lora": True})
    assert cfg7.lora is None and cfg7.answer_adapter == "default"

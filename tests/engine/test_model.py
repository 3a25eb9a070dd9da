"""Rotary embeddings from first principles (the README's rules), and what a RoPE setting changes."""

from __future__ import annotations

import json
import math

import pytest
import torch

from memchat.engine.config import ConfigError, MemoryConfig
from memchat.engine.model import KVCache, LoRALinear, Rope, attend, attend_after_prefix, rope_frequencies

from ._util import plain_logits, random_ids


def _cfg(tiny_checkpoint, kind, **overrides) -> MemoryConfig:
    raw = json.loads((tiny_checkpoint(kind) / "config.json").read_text())
    return MemoryConfig.from_dict({**raw, **overrides})


def _plain_inv_freq(theta: float, head_dim: int) -> torch.Tensor:
    inv = [1.0 / theta ** (2 * i / head_dim) for i in range(head_dim // 2)]
    return torch.tensor(inv, dtype=torch.float64)


def test_llama3_frequencies_follow_the_three_bands(tiny_checkpoint):
    cfg = _cfg(tiny_checkpoint, "mplus")
    rs = cfg.rope_scaling
    factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    original = rs["original_max_position_embeddings"]
    expected = []
    for inv in _plain_inv_freq(cfg.rope_theta, cfg.head_dim).tolist():
        wavelength = 2 * math.pi / inv
        if wavelength < original / high:
            expected.append(inv)
        elif wavelength > original / low:
            expected.append(inv / factor)
        else:
            s = (original / wavelength - low) / (high - low)
            expected.append((1 - s) * inv / factor + s * inv)
    inv_freq, scaling = rope_frequencies(cfg)
    assert scaling == 1.0
    expected = torch.tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(inv_freq.double(), expected, rtol=1e-6, atol=0)
    # All three bands occur at this head size, so each branch above was exercised.
    plain = _plain_inv_freq(cfg.rope_theta, cfg.head_dim)
    ratio = (inv_freq.double() / plain).tolist()
    assert any(abs(r - 1) < 1e-6 for r in ratio) and any(abs(r - 1 / factor) < 1e-6 for r in ratio)
    assert any(1 / factor + 1e-3 < r < 1 - 1e-3 for r in ratio)


def test_linear_scaling_divides_positions_by_the_factor(tiny_checkpoint):
    cfg = _cfg(tiny_checkpoint, "memoryllm")
    factor = cfg.rope_scaling["factor"]
    assert factor == 1.8125
    plain = Rope(_cfg(tiny_checkpoint, "memoryllm", rope_scaling=None))
    positions = torch.arange(50)
    cos, sin = Rope(cfg)(positions, torch.float64)
    cos0, sin0 = plain(positions.double() / factor, torch.float64)
    torch.testing.assert_close(cos, cos0, atol=1e-5, rtol=0)
    torch.testing.assert_close(sin, sin0, atol=1e-5, rtol=0)


def test_7b_interpolation_scales_positions_in_float32(tiny_checkpoint):
    cfg = _cfg(tiny_checkpoint, "memoryllm-7b", rope_theta=500000.0)
    # O = 21, M = max(21, (4 + 1) * 8) = 40, the base is fixed at 10000 whatever rope_theta says.
    assert cfg.position_scale == 21 / 40 and cfg.rope_theta == 10000.0
    positions = torch.arange(60)
    angle = (positions.float() * torch.tensor(21 / 40, dtype=torch.float32))[:, None] * _plain_inv_freq(
        10000.0, cfg.head_dim
    ).float()[None]
    cos, sin = Rope(cfg)(positions, torch.float32)
    torch.testing.assert_close(cos, torch.cat([angle, angle], -1).cos(), atol=1e-6, rtol=0)
    torch.testing.assert_close(sin, torch.cat([angle, angle], -1).sin(), atol=1e-6, rtol=0)


def test_rope_setting_reaches_the_logits(engine_of):
    # Same weights (same seed), other RoPE: the answering logits must move, or the tests above prove
    # nothing.
    prompt = random_ids(7, seed=1)
    a = plain_logits(engine_of("memoryllm"), prompt)
    b = plain_logits(engine_of("memoryllm", rope_scaling=None), prompt)
    assert (a - b).abs().max() > 1e-2


def test_dynamic_ntk_scaling_is_refused_by_name(tiny_checkpoint):
    # Dynamic NTK would make every cached memory prefix depend on the prompt's length.
    raw = json.loads((tiny_checkpoint("memoryllm") / "config.json").read_text())
    raw["rope_scaling"] = {"type": "dynamic", "rope_type": "dynamic", "factor": 2.0}
    with pytest.raises(ConfigError, match="rope_scaling"):
        MemoryConfig.from_dict(raw)


def test_kv_cache_growth_keeps_its_rows(tiny_checkpoint):
    cfg = _cfg(tiny_checkpoint, "memoryllm")
    cache = KVCache(cfg, 10, torch.float32, "cpu")
    k = torch.randn(1, cfg.num_kv_heads, 10, cfg.head_dim)
    cache.write(0, 0, k, -k)
    cache.length = 10
    cache.reserve(5)
    assert cache.capacity >= 15
    assert torch.equal(cache.k[0][:, :, :10], k) and torch.equal(cache.v[0][:, :, :10], -k)
    cache.reserve(0)
    assert cache.capacity == 20  # grows by doubling, and only when needed


def test_kv_cache_growth_doubles_the_room_after_the_memory_prefix_not_the_prefix(tiny_checkpoint):
    cfg = _cfg(tiny_checkpoint, "memoryllm")
    cache = KVCache(cfg, 110, torch.float32, "cpu")
    cache.prefix_len, cache.length = 100, 110
    cache.reserve(1)
    assert cache.capacity == 120
    cache.length = 120
    cache.reserve(50)
    assert cache.capacity == 170  # what the prompt needs, when that is more than double


@pytest.mark.parametrize("heads, kv_heads, n", [(4, 4, 1), (8, 2, 1), (8, 2, 6)])
def test_attention_after_a_prefix_equals_masked_attention(heads, kv_heads, n):
    """The prefix read without a mask and merged by log-sum-exp gives the masked attention's rows."""
    g = torch.Generator().manual_seed(heads + n)
    prefix, capacity, start = 40, 64, 50  # rows 40…49 written earlier, the new ones from 50, the rest unused
    q = torch.randn(1, heads, n, 16, generator=g)
    keys, values = (torch.randn(1, kv_heads, capacity, 16, generator=g) for _ in range(2))
    mask = torch.arange(capacity) <= (start + torch.arange(n))[:, None]
    got = attend_after_prefix(q, keys, values, mask, prefix)
    torch.testing.assert_close(got, attend(q, keys, values, mask), atol=1e-5, rtol=0)


def _lora(dtype: torch.dtype = torch.float32) -> LoRALinear:
    torch.manual_seed(0)
    base = torch.nn.Linear(24, 40, bias=False)
    layer = LoRALinear(base, 24, 40, r=4, scale=2.0, adapters=("default", "decoder_adapter"))
    for name, p in layer.named_parameters():
        if "lora_B" in name:  # LoRA starts B at zero; a test of the adapter needs it non-zero
            torch.nn.init.normal_(p)
    return layer.to(dtype).requires_grad_(True)


@pytest.mark.parametrize("rows", [3, 200])
def test_lora_linear_equals_base_plus_scaled_adapter_with_or_without_folding(rows):
    # 24·40/(24+40) = 15 rows is where folding starts to pay: 3 rows run the three matmuls, 200 the fold.
    layer = _lora()
    x = torch.randn(2, rows, 24, requires_grad=True)
    assert layer._folds(x) == (rows > 15)
    for adapter in ("default", "decoder_adapter"):
        A, B = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
        params = [x, layer.base_layer.weight, A, B]
        expected = x @ layer.base_layer.weight.T + 2.0 * (x @ A.T) @ B.T
        want = torch.autograd.grad(expected.square().sum(), params)
        got = layer(x, adapter)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        for g, w in zip(torch.autograd.grad(got.square().sum(), params), want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
    other = layer(x, "decoder_adapter") - layer(x, "default")
    assert other.abs().max() > 0.1  # the adapters differ, so each was the one applied


def test_lora_folds_only_a_plain_float32_weight():
    x = torch.randn(1, 200, 24)
    assert not _lora(torch.bfloat16)._folds(x.bfloat16())
    quantized = _lora()
    quantized.base_layer = type("Quantized", (torch.nn.Linear,), {})(24, 40, bias=False)
    assert not quantized._folds(x)

"""nf4 / int8 (bitsandbytes, here on the CPU) against the unquantized model.

Tolerances, from first principles (tiny MemoryLLM: 2 layers, d=64, Gaussian weights):

* nf4 stores each weight as one of 16 levels placed at the quantiles of N(0,1), scaled by the absmax of
  its 64-weight block. For Gaussian weights the absmax of 64 draws is about 2.4σ and the levels near zero
  are ~0.08·absmax ≈ 0.2σ apart (wider in the tails), so the rounding error is ≈ spacing/√12 ≈ 0.06–0.1σ:
  a relative Frobenius error of ~9% per weight matrix. A linear's output on a generic input inherits
  that relative error. Logits pass through 2 layers of chained linears (v→o, gate/up→down, and q/k moving
  the attention weights); independent errors add in quadrature, and the unquantized embeddings, memory
  prefix, norms, LoRA adapters and lm_head dilute them, so we expect 10–20% on the logits and the deltas
  and allow 35%.
* int8 (LLM.int8, no fp16 weights) rounds each weight row to 127 levels of its absmax (~2.7σ for 64–128
  Gaussian draws): spacing ≈ 0.021σ, error ≈ 0.006σ, i.e. ~0.6% per matrix; activations are also
  rounded per row to int8 (another ~0.6%) after a cast to fp16 (2^-11, negligible). Through the same
  chain that is ~1–3%; we allow 6%.
* Greedy agreement: a random 512-token vocabulary has a top-1/top-2 gap of roughly σ/√(2 ln 512) ≈ 0.28σ of
  the logit spread, so a ~15% logit perturbation flips the argmax at a sizeable minority of positions;
  we require agreement at most (> half) of them for nf4 and at ≥ 90% for int8.
* A meaningful bound must exclude an unrelated model: two independent checkpoints have uncorrelated
  logits of similar norm, so their relative error is ≈ √2 ≈ 1.4 (4× the nf4 bound) and their argmaxes agree
  at ~1/512 of the positions.
"""

from __future__ import annotations

import logging

import pytest
import torch

from memchat.engine.generate import Sampling, generate
from memchat.engine.load import load
from memchat.engine.model import KVCache
from memchat.engine.quantize import quantized_linear

from ._util import random_ids

TOLERANCE = {"nf4": 0.35, "int8": 0.06}
TOP1_AGREEMENT = {"nf4": 0.5, "int8": 0.9}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@torch.inference_mode()
def _run(folder, quant: str):
    model, state = load(folder, device="cpu", quant=quant, dtype=torch.float32)
    cfg = model.config
    cache = KVCache(cfg, cfg.prefix_rows + 128, model.dtype, model.device)
    model.fill_prefix(cache, state.memory.unsqueeze(1))
    prompt = random_ids(96, seed=11)[None]
    logits = model(prompt, cache)[0]
    delta = model.inject(random_ids(24, seed=12)[None], state.memory.unsqueeze(1))
    return model, state, logits, delta


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from memchat.engine.tiny import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("quant")
    folder = write_tiny_checkpoint(root / "seed0", "memoryllm", seed=0)
    other = write_tiny_checkpoint(root / "seed1", "memoryllm", seed=1)
    return {
        "none": _run(folder, "none"),
        "nf4": _run(folder, "nf4"),
        "int8": _run(folder, "int8"),
        "other": _run(other, "none"),
    }


@pytest.mark.parametrize("quant", ["nf4", "int8"])
def test_quantized_logits_and_delta_stay_close(runs, quant):
    _, _, ref_logits, ref_delta = runs["none"]
    model, _, logits, delta = runs[quant]
    assert not torch.equal(logits, ref_logits)  # the quantized weights are really used
    assert _rel(logits, ref_logits) < TOLERANCE[quant]
    assert _rel(delta, ref_delta) < TOLERANCE[quant]
    agree = float((logits.argmax(-1) == ref_logits.argmax(-1)).double().mean())
    assert agree > TOP1_AGREEMENT[quant]


@pytest.mark.parametrize("quant", ["nf4", "int8"])
def test_quantized_model_generates(runs, quant):
    model, state, _, _ = runs[quant]
    cfg = model.config
    cache = KVCache(cfg, cfg.prefix_rows + 32, model.dtype, model.device)
    with torch.inference_mode():
        model.fill_prefix(cache, state.memory.unsqueeze(1))
    tokens = list(generate(model, cache, random_ids(7, seed=5)[None], Sampling(max_new_tokens=6)))
    assert len(tokens) == 6 and all(0 <= t < cfg.vocab_size for t in tokens)


def test_tolerance_excludes_an_unrelated_checkpoint(runs):
    _, _, ref_logits, ref_delta = runs["none"]
    _, _, logits, delta = runs["other"]
    # Same config, other random weights: far outside even the loose nf4 bound.
    assert _rel(logits, ref_logits) > 3 * TOLERANCE["nf4"]
    assert _rel(delta, ref_delta) > 3 * TOLERANCE["nf4"]
    agree = float((logits.argmax(-1) == ref_logits.argmax(-1)).double().mean())
    assert agree < 0.1


def test_nf4_is_measurably_coarser_than_int8(runs):
    # nf4 has 16 levels per 64-block, int8 255 per row: an order of magnitude apart in weight error.
    ref = runs["none"][2]
    assert _rel(runs["nf4"][2], ref) > 3 * _rel(runs["int8"][2], ref)


def test_bnb_int8_cast_notice_is_kept_out_of_the_chat_other_bnb_warnings_are_not(caplog):
    # On CUDA bnb logs this on every int8 matmul with bf16 inputs; the CPU path never does, so the
    # record is sent the way bnb sends it.
    quantized_linear(torch.randn(64, 64), "int8", torch.float32, torch.device("cpu"))
    bnb_log = logging.getLogger("bitsandbytes.autograd._functions")
    with caplog.at_level(logging.WARNING):
        bnb_log.warning("MatMul8bitLt: inputs will be cast from %s to float16 during quantization", "bf16")
        bnb_log.warning("some other bnb warning")
    assert [r.getMessage() for r in caplog.records if r.name == bnb_log.name] == ["some other bnb warning"]

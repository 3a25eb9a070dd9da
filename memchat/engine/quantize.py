"""bitsandbytes quantization of the backbone linears; everything that holds memory stays unquantized."""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from memchat.errors import MemchatError

QUANT_MODES = ("nf4", "int8", "none")


class QuantError(MemchatError, ValueError):
    pass


def check_mode(mode: str) -> str:
    if mode not in QUANT_MODES:
        raise QuantError(f"unknown quantization '{mode}' (choose one of: {', '.join(QUANT_MODES)})")
    return mode


def default_mode(device: torch.device) -> str:
    return "nf4" if device.type == "cuda" else "none"


def _no_cast_notice(record: logging.LogRecord) -> bool:
    """bnb's int8 matmul takes fp16 inputs and logs so on every call with bf16 ones: the cast is its
    design, nothing for the user to act on, and it would scroll through the chat."""
    return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


def quantized_linear(
    weight: Tensor, mode: str, compute_dtype: torch.dtype, device: torch.device
) -> nn.Module:
    """A linear layer holding `weight` [out, in] quantized on `device` (quantization happens on the move)."""
    import bitsandbytes as bnb

    out_features, in_features = weight.shape
    if mode == "nf4":
        layer = bnb.nn.Linear4bit(
            in_features,
            out_features,
            bias=False,
            compute_dtype=compute_dtype,
            quant_type="nf4",
            device="meta",
        )
        layer.weight = bnb.nn.Params4bit(weight.to(compute_dtype), requires_grad=False, quant_type="nf4")
    elif mode == "int8":
        logging.getLogger("bitsandbytes.autograd._functions").addFilter(_no_cast_notice)
        layer = bnb.nn.Linear8bitLt(
            in_features, out_features, bias=False, has_fp16_weights=False, device="meta"
        )
        layer.weight = bnb.nn.Int8Params(
            weight.to(compute_dtype), requires_grad=False, has_fp16_weights=False
        )
    else:
        raise QuantError(f"'{mode}' is not a quantized mode")
    return layer.to(device)

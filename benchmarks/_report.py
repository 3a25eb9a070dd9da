"""What the benchmarks share: a clock that waits for the GPU, and how every benchmark ends (a readable
table, then one JSON object as the last line)."""

from __future__ import annotations

import json

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued kernels, so a timer read after it counts their work."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def print_figures(figures: dict) -> None:
    width = max(map(len, figures))
    for key, value in figures.items():
        shown = f"{value:.4g}" if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}")
    print(json.dumps(figures))

"""How every benchmark ends: a readable table, then one JSON object as the last line."""

from __future__ import annotations

import json


def print_figures(figures: dict) -> None:
    width = max(map(len, figures))
    for key, value in figures.items():
        shown = f"{value:.4g}" if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}")
    print(json.dumps(figures))

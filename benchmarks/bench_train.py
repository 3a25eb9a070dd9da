"""Training speed of memchat-nano: one optimizer step (inject, answer, backward, clip, AdamW) per distance.

    python benchmarks/bench_train.py                       # nano, batch 16, D = 0, 8, 32, 2 threads
    python benchmarks/bench_train.py --size micro --distances 0,4
    python benchmarks/bench_train.py --device cuda

A step at distance D injects the lead turns, the fact and D distractor turns for every episode of the
batch, so its cost grows with D. Measured in one run against a baseline beside it: the same steps with
the LoRA adapters applied as three matmuls (`LoRALinear._folds` off) against folded into the weight,
the engine's path for many rows. The two run interleaved on the same batches from a fresh model (speed
depends on shapes, not on what the weights learnt); figures are medians. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _report import print_figures, sync

from memchat.engine.model import LoRALinear
from memchat.train.domain import TRAIN
from memchat.train.trainer import TrainConfig, Trainer, _domain, sample_batch


def step_seconds(trainer: Trainer, distance: int, index: int) -> float:
    tc = trainer.tc
    batch = sample_batch(_domain(TRAIN, tc.made_up_share), trainer.encoder, trainer.cfg, tc, tc.seed, index,
                         distance, tc.batch, show_fact=tc.show_fact)
    sync(trainer.model.device)
    start = time.perf_counter()
    trainer.optimize(batch)
    sync(trainer.model.device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="nano")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--distances", default="0,8,32")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per distance and variant")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folds = LoRALinear._folds
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer.open(Path(tmp), TrainConfig(size=args.size, batch=args.batch), device=args.device)
        figures: dict = {"size": args.size, "batch": args.batch, "device": args.device,
                         "threads": args.threads}
        for distance in [int(d) for d in args.distances.split(",")]:
            times: dict[str, list[float]] = {"folded": [], "unfolded": []}
            for index in range(args.steps + 1):  # the first pair warms up
                for variant in times:
                    LoRALinear._folds = folds if variant == "folded" else lambda self, x: False
                    seconds = step_seconds(trainer, distance, index)
                    if index:
                        times[variant].append(seconds)
            LoRALinear._folds = folds
            folded, unfolded = (statistics.median(times[v]) for v in ("folded", "unfolded"))
            figures[f"D={distance} step ms, folded"] = round(folded * 1000, 1)
            figures[f"D={distance} step ms, unfolded"] = round(unfolded * 1000, 1)
            figures[f"D={distance} speed-up"] = round(unfolded / folded, 3)
    print_figures(figures)


if __name__ == "__main__":
    main()

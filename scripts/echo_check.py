"""How often a model's acknowledgement of a told fact echoes the value right (docs/nano-training.md).

    python scripts/echo_check.py [--model nano] [--n 40] [--seed 0]

The chat injects the model's own replies into memory, so a garbled echo ("you live in Vionna") becomes
a garbled memory. Each of n held-out facts is told as a chat's first message, nothing in memory; the
greedy reply counts when it holds the value (case-insensitive).
"""

from __future__ import annotations

import argparse

from memchat.engine.engine import Engine
from memchat.engine.generate import Sampling
from memchat.engine.load import resolve
from memchat.train.domain import HELDOUT, Domain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nano")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    engine = Engine.load(resolve(args.model), None, None)
    hits = 0
    for item in Domain(HELDOUT).items(args.n, args.seed):
        prompt = engine.tokenizer.encode_prompt([{"role": "user", "content": item["context"]["user"]}])
        ids = engine.generate_ids(prompt, Sampling(temperature=0.0, max_new_tokens=24))
        hits += item["answer"].lower() in engine.tokenizer.decode(list(ids)).lower()
    print(f"echoes {hits} of {args.n}")


if __name__ == "__main__":
    main()

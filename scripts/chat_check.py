"""How a model does in a chat as the REPL holds it (docs/nano-training.md): its echoes, and its recall.

    python scripts/chat_check.py [--model nano] [--n 40] [--seed 0] [--turns 10]

Each of n held-out facts is told as the first message of a fresh memory (in a temporary home), then
`--turns` chit-chat messages, then the fact's question, each through the REPL's own turn: greedy reply
from the window of recent exchanges and memory, then the exchange injected with that reply. Two counts:
the acknowledgement holds the value (an echo: the chat injects the model's own replies, so a garbled
echo, "you live in Vionna", becomes a garbled memory), and the final answer holds it (case-insensitive).
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

from rich.console import Console

from memchat.chat.repl import Chat
from memchat.config import Config
from memchat.service.memory import Memory, Options
from memchat.train.domain import HELDOUT, Domain

CHITCHAT = [
    "Can you suggest a warm recipe?", "I'm bored.", "How do I clean an oven?", "Tell me a joke.",
    "What should I read next?", "I painted my room.", "Any tips for sleeping better?", "Not much.",
    "How do I keep plants alive?", "What a long day.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nano")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--turns", type=int, default=10, help=f"chit-chat messages (at most {len(CHITCHAT)})")
    args = parser.parse_args()
    config = Config().override(temperature=0, max_new_tokens=40)
    echoes = recalls = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, item in enumerate(Domain(HELDOUT).items(args.n, args.seed)):
            with Memory.open(Options(home=Path(tmp, str(i)), model=args.model, seed=i)) as memory:
                chat = Chat(memory, config, Console(file=io.StringIO()))
                value = item["answer"].lower()
                chat.turn(item["context"]["user"])
                echoes += value in chat.window[-1][1].lower()
                for text in [*CHITCHAT[: args.turns], item["question"]]:
                    chat.turn(text)
                recalls += value in chat.window[-1][1].lower()
    print(f"echoes {echoes} of {args.n}; recalls {recalls} of {args.n} after {args.turns} chat turns")


if __name__ == "__main__":
    main()

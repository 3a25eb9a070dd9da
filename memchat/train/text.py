"""Text → token ids for training: the domain's BPE tokenizer, and chat turns and prompts encoded exactly as
the engine encodes them at inference (`Tokenizer.format_turn`, `Tokenizer.encode_chat`), only faster.

The tokenizer files are written by memchat/engine/tiny.py's `write_tokenizer` (Llama-3 specials and chat
template), trained on the training split of the domain only: held-out values never shape its merges.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer

from memchat.engine.tiny import BOS_ID, EOS_ID, EOT_ID, train_tokenizer, write_tokenizer
from memchat.train.domain import Domain, Turn

START, END, EOT = "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"
PAD_ID = EOS_ID  # padding is never read (causal attention, masked losses); any id would do


def build_tokenizer(
    folder: Path, vocab_size: int, seed: int = 0, episodes: int = 20000, template: bool = False
) -> Path:
    """Train the byte-level BPE tokenizer on domain text and write it, with its config files, to `folder`.

    `template`: the corpus also holds the chat template once per episode, as every turn carries it, and
    words are split as Llama-3 splits them, so that "user", "assistant" and the blank line after each
    take one token each rather than 2, 3 and 2: 5 of a turn's 36 tokens."""
    corpus = Domain().corpus(episodes, seed)
    if template:
        turn = render([{"role": "user", "content": ""}, {"role": "assistant", "content": ""}], False)
        corpus = itertools.chain(corpus, itertools.repeat(turn, episodes))
    tok = train_tokenizer(corpus, vocab_size, llama3_split=template)
    write_tokenizer(folder, tok.to_str(pretty=True))
    return Path(folder)


def render(messages: Sequence[dict[str, str]], generation_prompt: bool) -> str:
    """The Llama-3 chat template (tiny.LLAMA3_CHAT_TEMPLATE) without the leading BOS."""
    text = "".join(f"{START}{m['role']}{END}\n\n{m['content'].strip()}{EOT}" for m in messages)
    return text + (f"{START}assistant{END}\n\n" if generation_prompt else "")


def turn_messages(turn: Turn) -> list[dict[str, str]]:
    return [{"role": "user", "content": turn.user}, {"role": "assistant", "content": turn.assistant}]


class ChatEncoder:
    """Batched encoding with the tokenizer of a checkpoint folder."""

    def __init__(self, folder: Path):
        self.tok = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
        self.bos, self.eos, self.eot = BOS_ID, EOS_ID, EOT_ID

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def turns(self, turns: Sequence[Turn]) -> list[list[int]]:
        """What the chat injects for each exchange (`Tokenizer.format_turn`, then `encode`)."""
        return self.encode([render(turn_messages(t), generation_prompt=False) for t in turns])

    def conversation(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Finished exchanges as they stand in a prompt before the next question."""
        return self.encode([render(messages, generation_prompt=False)])[0]

    def prompts(self, conversations: Sequence[Sequence[dict[str, str]]]) -> list[list[int]]:
        """Prompt ids for the next assistant reply (`Tokenizer.encode_chat`)."""
        return self.encode([render(m, generation_prompt=True) for m in conversations])

    def replies(self, texts: Sequence[str]) -> list[list[int]]:
        """An assistant reply as generated: its content tokens, then <|eot_id|>."""
        return [ids + [self.eot] for ids in self.encode([t.strip() for t in texts])]

    def spans(self, texts: Sequence[str], phrases: Sequence[str]) -> list[list[bool]]:
        """Per token of `replies(texts)`: does it overlap the first occurrence of its phrase?"""
        out = []
        for e, text, phrase in zip(
            self.tok.encode_batch([t.strip() for t in texts], add_special_tokens=False), texts, phrases,
            strict=True,
        ):
            start = text.strip().lower().find(phrase.lower())
            end = start + len(phrase)
            out.append([start >= 0 and a < end and b > start for a, b in e.offsets] + [False])
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

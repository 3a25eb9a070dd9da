"""The checkpoint's tokenizer, as memchat uses it: plain text for injections, the chat template for
prompts (without the tokenizer's BOS: the model has its own learned BOS row), and stop tokens."""

from __future__ import annotations

from pathlib import Path


class Tokenizer:
    def __init__(self, hf) -> None:
        self.hf = hf

    @classmethod
    def from_folder(cls, folder: Path) -> Tokenizer:
        from transformers import AutoTokenizer
        from transformers.utils import logging

        # Only the tokenizer files matter here; the model-type notice about config.json is noise.
        previous = logging.get_verbosity()
        logging.set_verbosity_error()
        try:
            return cls(AutoTokenizer.from_pretrained(folder))
        finally:
            logging.set_verbosity(previous)

    def encode(self, text: str) -> list[int]:
        """Token ids of plain text, without special tokens: what an injection takes."""
        return list(self.hf(text, add_special_tokens=False)["input_ids"])

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span of each token of `text`, for cutting text at token boundaries."""
        return list(self.hf(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"])

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=True)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.hf, "chat_template", None))

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt for the next assistant reply, BOS removed."""
        text = self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = self.encode(text)
        return ids[1:] if ids and ids[0] == self.hf.bos_token_id else ids

    def encode_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """Prompt ids for the next reply: the chat template, or for a pretrained model without one (such as
        MemoryLLM-7B) the plain "Question: … Answer:" form its README uses."""
        if self.has_chat_template:
            return self.encode_chat(messages)
        return self.encode(plain_prompt(messages))

    def format_turn(self, user: str, assistant: str) -> str:
        """One exchange as text to inject, in the form the model reads conversations."""
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        if not self.has_chat_template:
            return plain_prompt(messages)
        text = self.hf.apply_chat_template(messages, tokenize=False)
        bos = self.hf.bos_token or ""
        return text[len(bos):] if bos and text.startswith(bos) else text

    def stop_ids(self) -> set[int]:
        """End of text and, for Llama-3 chat models, end of turn."""
        stop = {self.hf.eos_token_id} - {None}
        eot = self.hf.convert_tokens_to_ids("<|eot_id|>")
        if isinstance(eot, int) and eot != self.hf.unk_token_id:
            stop.add(eot)
        return stop


def plain_prompt(messages: list[dict[str, str]]) -> str:
    """Question/Answer text of a conversation, ending with an open answer when the user spoke last."""
    lines = []
    for m in messages:
        lines.append(f"Question: {m['content']}" if m["role"] == "user" else f"Answer: {m['content']}")
    if messages and messages[-1]["role"] == "user":
        lines.append("Answer:")
    return "\n".join(lines)

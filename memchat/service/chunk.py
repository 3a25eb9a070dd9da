"""Cut text into injections: at most the model's injection length, at least 16 tokens where the text
allows, ending at paragraph, then sentence, then word boundaries.

The text is tokenized once; chunk boundaries are token positions mapped back to character offsets, so
a chunk is a slice of the original text and re-chunking the same text gives the same chunks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

MIN_TOKENS = 16  # below this the official models were never trained to inject
_PARAGRAPH = re.compile(r"\n\s*\n\s*$")
_SENTENCE = re.compile(r"[.!?。！？:;]['\")\]]*\s*$")
_SPACE = re.compile(r"\s$")

# (text) -> list of (start, end) character offsets, one per token
Offsets = Callable[[str], Sequence[tuple[int, int]]]


def chunk_text(text: str, offsets: Offsets, max_tokens: int, min_tokens: int = MIN_TOKENS) -> list[str]:
    """Consecutive slices of `text` (whitespace at the cut stripped) of at most `max_tokens` tokens."""
    spans = [s for s in offsets(text) if s[1] > s[0]]
    if not spans:
        return [text.strip()] if text.strip() else []
    cuts, start = [], 0
    while len(spans) - start > max_tokens:
        end = _best_cut(text, spans, start + min_tokens, start + max_tokens)
        cuts.append((start, end))
        start = end
    if cuts and len(spans) - start < min_tokens:
        # Too short to stand alone: take it into the previous chunk rather than drop it, and move that
        # chunk's start forward so neither goes over the limit.
        prev_start, _ = cuts.pop()
        middle = _best_cut(
            text, spans, max(prev_start + min_tokens, len(spans) - max_tokens), len(spans) - min_tokens
        )
        cuts.extend([(prev_start, middle)])
        start = middle
    cuts.append((start, len(spans)))
    chunks = [text[spans[a][0] : spans[b - 1][1]].strip() for a, b in cuts]
    return [c for c in chunks if c]


def _best_cut(text: str, spans: Sequence[tuple[int, int]], lo: int, hi: int) -> int:
    """A token index in [lo, hi] to cut before: the last paragraph end, else sentence end, else word end."""
    lo = max(1, min(lo, hi))
    for boundary in (_PARAGRAPH, _SENTENCE, _SPACE):
        for cut in range(hi, lo - 1, -1):
            # The text between the two tokens (whitespace the tokenizer left out) counts as the boundary.
            gap_end = spans[cut][0] if cut < len(spans) else len(text)
            if boundary.search(text[max(0, spans[cut - 1][0]) : gap_end]):
                return cut
    return hi

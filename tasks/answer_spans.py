"""Where a sample's gold answer sits in its prompt, in token positions (eviction maps, distillation targets).

The answer is looked up in the per-token decoded text with whitespace removed, so tokenizers that drop or
mark leading spaces (SentencePiece's "▁") find it as well as byte-level BPE does. A task whose answer appears
verbatim in its context (the synthetic needles, passkeys and values) gets every occurrence's tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

from tasks.prompts import Tokenizer

Span = tuple[int, int]  # [first, end) token positions


def answer_token_spans(prompt_ids: Sequence[int], answers: Sequence[str], tokenizer: Tokenizer) -> tuple[Span, ...]:
    """Sorted, merged [first, end) token spans covering every occurrence of every answer in the prompt."""
    pieces = ["".join(tokenizer.decode([token]).split()) for token in prompt_ids]
    owner = [position for position, piece in enumerate(pieces) for _ in piece]  # character -> token
    text = "".join(pieces)
    spans: list[Span] = []
    for answer in answers:
        needle = "".join(answer.split())
        if not needle:
            continue
        start = text.find(needle)
        while start >= 0:
            spans.append((owner[start], owner[start + len(needle) - 1] + 1))
            start = text.find(needle, start + 1)
    merged: list[Span] = []
    for first, end in sorted(spans):
        if merged and first <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((first, end))
    return tuple(merged)

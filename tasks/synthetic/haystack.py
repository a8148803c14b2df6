"""Filler text sized in characters (about one token per step), with sentences (needles) inserted at depths."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Sequence

# The classic passkey / RULER "noise" filler
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


def noise_text(chars: int) -> str:
    """The noise sentence repeated, cut to `chars` characters."""
    return " ".join(itertools.repeat(NOISE, chars // (len(NOISE) + 1) + 1))[:chars]


def sentence_stream_text(make_sentence: Callable[[int], str], chars: int) -> str:
    """make_sentence(0), make_sentence(1), ... joined by spaces and cut to `chars` characters."""
    pieces, total = [], 0
    for number in itertools.count():
        if total >= chars:
            break
        pieces.append(make_sentence(number))
        total += len(pieces[-1]) + 1
    return " ".join(pieces)[:chars]


def insert_at_depths(text: str, inserts: Sequence[tuple[float, str]]) -> str:
    """Put each (depth, sentence) at the last sentence start at or before depth * len(text).

    Sentences landing on the same start keep their given order.
    """
    starts = [0] + [i + 2 for i in range(len(text) - 1) if text[i : i + 2] == ". "]
    if text.endswith("."):
        starts.append(len(text))
    placed: dict[int, list[str]] = {}
    for depth, sentence in inserts:
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"Needle depth must be within [0, 1], got {depth}.")
        placed.setdefault(starts[bisect.bisect_right(starts, depth * len(text)) - 1], []).append(sentence)
    pieces, previous = [], 0
    for start in sorted(placed):
        pieces += [text[previous:start].rstrip(), " ".join(placed[start])]
        previous = start
    return " ".join(piece for piece in [*pieces, text[previous:]] if piece)

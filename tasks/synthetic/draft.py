"""The shape every synthetic generator shares: random content drawn first, then rendered at any size."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class SyntheticParams:
    """What a synthetic task is generated from (besides the sample index)."""

    context_length: int = 2048  # prompt tokens, chat wrapper included
    needle_depth: float | None = None  # 0 = start, 1 = end; None: a random depth per needle
    seed: int = 42
    haystack: str | None = None  # niah tasks: "noise" or "needle" (distractor needles); None: the task default

    def __post_init__(self) -> None:
        if self.context_length < 1:
            raise ValueError(f"context_length must be a positive token count, got {self.context_length}.")
        if self.needle_depth is not None and not 0.0 <= self.needle_depth <= 1.0:
            raise ValueError(f"needle_depth must be within [0, 1] or null (random), got {self.needle_depth}.")


@dataclass(frozen=True)
class Draft:
    """One sample's random content; `render(filler_size)` gives (prompt body, answer prefix)."""

    render: Callable[[int], tuple[str, str]]
    answers: tuple[str, ...]
    # each answer's depth in the haystack (0 = start, 1 = end: what `needle_depth` sets), in `answers` order;
    # None where an answer has no one place (variable tracking's names run through a chain of statements)
    answer_depths: tuple[float, ...] | None = None


Drafter = Callable[[random.Random, SyntheticParams], Draft]


def depths(rng: random.Random, params: SyntheticParams, count: int) -> list[float]:
    """Needle depths: all at the configured depth, or independent uniform draws (in draw order)."""
    if params.needle_depth is not None:
        return [params.needle_depth] * count
    return [rng.random() for _ in range(count)]

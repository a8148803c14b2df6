"""Spearman rank correlation, for the diagnostics that ask whether two rankings agree (a policy's scores against
the attention it predicts), and the split-half reliability of a ranking by mean score over prompts (does a
generation rank its candidates alike on other prompts?)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

SPLITS = 200  # random halvings averaged by split_half
NULL_DRAWS = 200  # candidate-shuffled copies behind permutation_p
NULL_SPLITS = 20  # halvings per shuffled copy (the null's mean needs fewer than the observed value)


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks (0-based, float64) along the last dimension; tied values share the mean of their ranks."""
    values = values.double()
    order = values.argsort(dim=-1, stable=True)
    ranks = torch.empty_like(values)
    ranks.scatter_(-1, order, torch.arange(values.shape[-1], dtype=torch.float64).expand_as(values).contiguous())
    flat_values, flat_ranks = values.reshape(-1, values.shape[-1]), ranks.reshape(-1, values.shape[-1])
    for row_values, row_ranks in zip(flat_values, flat_ranks):
        unique, inverse = row_values.unique(return_inverse=True)
        if len(unique) < len(row_values):  # ties: each gets its group's mean rank
            means = torch.zeros(len(unique), dtype=torch.float64).index_add_(0, inverse, row_ranks)
            means /= torch.bincount(inverse, minlength=len(unique))
            row_ranks.copy_(means[inverse])
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman correlation along the last dimension (NaN where either side is constant)."""
    ranks_a, ranks_b = average_ranks(a), average_ranks(b)
    ranks_a = ranks_a - ranks_a.mean(dim=-1, keepdim=True)
    ranks_b = ranks_b - ranks_b.mean(dim=-1, keepdim=True)
    return (ranks_a * ranks_b).sum(dim=-1) / (ranks_a.norm(dim=-1) * ranks_b.norm(dim=-1))


def spearman_brown(r: float, factor: float) -> float:
    """The reliability of a mean over `factor` times as many prompts, from that of the shorter mean."""
    return factor * r / (1 + (factor - 1) * r)


def projections(r: float, prompts: int) -> list[float]:
    """The correlation expected between two independent draws of `prompts` prompts, and of 2x and 4x that many,
    from the split-half correlation `r` (halves of prompts // 2). NaN where r <= 0: no positive reliability to
    project (the formula diverges or flips sign there)."""
    if math.isnan(r) or r <= 0:
        return [math.nan] * 3
    half = prompts // 2
    return [spearman_brown(r, multiple * prompts / half) for multiple in (1, 2, 4)]


def split_half(scores: torch.Tensor, seed: int, splits: int = SPLITS) -> float:
    """Mean Spearman between the candidates' means on two random halves of the prompts (scores: prompts x
    candidates; an odd prompt out is left out of each split), over SPLITS splits; NaN splits (a constant half)
    are skipped."""
    generator = random.Random(seed)
    prompts = list(range(scores.shape[0]))
    values = []
    for _ in range(splits):
        generator.shuffle(prompts)
        half = len(prompts) // 2
        first, second = scores[prompts[:half]].mean(dim=0), scores[prompts[half : 2 * half]].mean(dim=0)
        values.append(float(spearman(first, second)))
    values = [value for value in values if not math.isnan(value)]
    return sum(values) / len(values) if values else float("nan")


def permutation_p(scores: torch.Tensor, observed: float, seed: int) -> float:
    """How often candidates with no lasting differences give a split-half correlation of at least `observed`:
    each prompt's scores (scores: prompts x candidates) are shuffled across the candidates, which keeps every
    prompt's spread and breaks any candidate's consistency, NULL_DRAWS times (add-one smoothed)."""
    generator = torch.Generator().manual_seed(seed)
    at_least = 0
    for draw in range(NULL_DRAWS):
        order = torch.rand(scores.shape, generator=generator).argsort(dim=1)
        shuffled = scores.gather(1, order)
        if split_half(shuffled, seed=draw, splits=NULL_SPLITS) >= observed:
            at_least += 1
    return (at_least + 1) / (NULL_DRAWS + 1)


@dataclass(frozen=True)
class RankingReliability:
    """How far a ranking of candidates by mean score repeats on other prompts: the split-half correlation, its
    permutation p and its projections to whole draws (NaN where undefined)."""

    prompts: int
    candidates: int  # those with a score on every prompt (a failed candidate's NaN leaves it out)
    split_half: float
    p: float
    projections: list[float]

    @classmethod
    def of(cls, scores: torch.Tensor, seed: int) -> RankingReliability:
        """From `scores` (prompts x candidates; NaN where a candidate failed)."""
        scores = scores[:, ~scores.isnan().any(dim=0)]
        r = split_half(scores, seed=seed)
        p = math.nan if math.isnan(r) else permutation_p(scores, r, seed=seed)
        return cls(scores.shape[0], scores.shape[1], r, p, projections(r, scores.shape[0]))

    def cells(self) -> list[str]:
        """Markdown cells: split-half, p, then the projections to the same size, 2x and 4x ("n/a" where NaN)."""
        formats = [".2f", ".3f"] + [".2f"] * len(self.projections)
        values = [self.split_half, self.p, *self.projections]
        return [
            "n/a" if math.isnan(value) else format(value, spec) for value, spec in zip(values, formats, strict=True)
        ]

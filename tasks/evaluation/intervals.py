"""Intervals and tests behind every claim an evaluation table makes.

- One policy's task score: a Wilson interval when the task's metric is 0/1 (a bootstrap of 4/4 would say
  [100, 100]), else a percentile bootstrap over its prompts.
- Two policies on the same prompts: the interval of the per-prompt difference (paired bootstrap), and for
  0/1 metrics the exact McNemar test on the discordant prompts. Overlapping marginal intervals do not mean
  "no difference": pairing removes the prompt-to-prompt spread both policies share.
- Several tasks: a stratified bootstrap (prompts resampled within each task, tasks weighted equally), for
  the mean, a mean difference and a ratio of means.

Scores go in as per-prompt values in [0, 1] and come out in points (x 100), like task scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_LEVEL = 0.95


@dataclass(frozen=True)
class BootstrapSettings:
    """How every bootstrap of a run draws: recorded in results.json so its intervals can be reproduced."""

    seed: int = 0
    resamples: int = DEFAULT_RESAMPLES
    level: float = DEFAULT_LEVEL


def _rounded(low: float, high: float) -> tuple[float, float]:
    return round(float(low), 2), round(float(high), 2)


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return _rounded(low, high)


def stratified_resampled_means(strata: Sequence[np.ndarray], settings: BootstrapSettings) -> np.ndarray:
    """(resamples, strata, columns) means of each stratum's rows, resampled with replacement within the
    stratum; every column of a stratum uses the same rows (the pairing). `strata[s]` is (n_s, columns)."""
    if not strata or any(len(stratum) == 0 for stratum in strata):
        raise ValueError("a bootstrap needs at least one stratum and one prompt in each")
    generator = np.random.default_rng(settings.seed)
    means = []
    for stratum in strata:
        rows = generator.integers(0, len(stratum), size=(settings.resamples, len(stratum)))
        means.append(stratum[rows].mean(axis=1))  # (resamples, columns)
    return np.stack(means, axis=1)


def bootstrap_interval(
    sample_scores: Sequence[float], settings: BootstrapSettings = BootstrapSettings()
) -> tuple[float, float]:
    """(low, high) of 100 x the mean sample score: a percentile bootstrap over the prompts."""
    return stratified_interval([sample_scores], settings)


def stratified_interval(
    strata: Sequence[Sequence[float]], settings: BootstrapSettings = BootstrapSettings()
) -> tuple[float, float]:
    """Interval of 100 x the equal-weight mean of the strata (tasks) means."""
    columns = [np.asarray(values, dtype=np.float64)[:, None] for values in strata]
    means = stratified_resampled_means(columns, settings)[..., 0].mean(axis=1)
    return _percentiles(100.0 * means, settings.level)


def paired_difference_interval(
    strata: Sequence[tuple[Sequence[float], Sequence[float]]], settings: BootstrapSettings = BootstrapSettings()
) -> tuple[float, float]:
    """Interval of 100 x (mean of a - mean of b), each stratum a pair of per-prompt score lists on the same
    prompts in the same order; strata weighted equally."""
    return _rounded(*_paired_statistic(strata, settings, lambda a, b: 100.0 * (a - b)))


def ratio_of_means_interval(
    strata: Sequence[tuple[Sequence[float], Sequence[float]]], settings: BootstrapSettings = BootstrapSettings()
) -> tuple[float, float] | None:
    """Interval of mean(a) / mean(b) (equal-weight means over strata), paired; None when b's mean can be 0."""
    ratio = _paired_statistic(strata, settings, lambda a, b: a / np.where(b > 0, b, np.nan))
    return None if any(math.isnan(bound) for bound in ratio) else (round(ratio[0], 4), round(ratio[1], 4))


def _paired_statistic(
    strata: Sequence[tuple[Sequence[float], Sequence[float]]],
    settings: BootstrapSettings,
    statistic: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> tuple[float, float]:
    columns = []
    for first, second in strata:
        if len(first) != len(second):
            raise ValueError(f"paired scores need the same prompts: {len(first)} vs {len(second)} values")
        columns.append(np.stack([np.asarray(first, np.float64), np.asarray(second, np.float64)], axis=1))
    means = stratified_resampled_means(columns, settings).mean(axis=1)  # (resamples, 2)
    values = statistic(means[:, 0], means[:, 1])
    if np.isnan(values).any():
        return math.nan, math.nan
    tail = (1.0 - settings.level) / 2
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def wilson_interval(successes: int, trials: int, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """Wilson score interval of a proportion, in points: not degenerate at 0/n or n/n (4/4 -> [51.0, 100])."""
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"wilson_interval needs 0 <= successes <= trials and trials >= 1, got {successes}/{trials}")
    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    share = successes / trials
    scale = 1 + z * z / trials
    centre = (share + z * z / (2 * trials)) / scale
    half = z / scale * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials))
    return _rounded(100 * max(0.0, centre - half), 100 * min(1.0, centre + half))


def mcnemar_exact_p(first_only: int, second_only: int) -> float:
    """Two-sided exact McNemar p-value: the discordant prompts (right under one policy only) split as a
    fair coin would, Binomial(b + c, 1/2). No discordant prompt: p = 1."""
    if first_only < 0 or second_only < 0:
        raise ValueError(f"discordant counts must be >= 0, got {first_only} and {second_only}")
    discordant = first_only + second_only
    tail = sum(math.comb(discordant, k) for k in range(min(first_only, second_only) + 1))
    return min(1.0, 2 * tail / 2**discordant)

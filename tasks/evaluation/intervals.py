"""95% bootstrap intervals of a task score: how far the score of a few dozen prompts can be trusted.

A percentile bootstrap over the samples, with a fixed seed so a rerun prints the same table. With 30
binary samples an interval is about +-17 points wide: two policies whose intervals overlap are not
told apart by the evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


def bootstrap_interval(sample_scores: Sequence[float], seed: int = 0) -> tuple[float, float]:
    """(low, high) of 100 x the mean sample score, rounded to 2 decimals like the score itself."""
    values = np.asarray(sample_scores, dtype=np.float64)
    if values.size == 0:
        raise ValueError("bootstrap_interval needs at least one sample score.")
    rows = np.random.default_rng(seed).integers(0, values.size, size=(RESAMPLES, values.size))
    means = 100.0 * values[rows].mean(axis=1)
    tail = (1.0 - LEVEL) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return round(float(low), 2), round(float(high), 2)

"""Does a generation's ranking of its candidates repeat on other prompts? (the training signal's noise)

Reads a run's metrics.jsonl (`candidates/prompt_scores`: every candidate's score on each prompt a generation
drew). For each generation it splits the prompts into two random halves many times and correlates (Spearman)
the candidates' mean scores on one half with those on the other. Then it projects that split-half correlation
to the whole draw with the Spearman-Brown formula, r_n = n r / (1 + (n - 1) r): the correlation expected
between two independent draws of the generation's size, and of twice or four times that size. Near 0 the
search ranks its candidates by the prompts it happened to draw; near 1 the ranking is the candidates' own.

    python scripts/signal_reliability.py runs/efficacy-readout-3/seed1/metrics.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

import torch

SPLITS = 200


def ranks(values: torch.Tensor) -> torch.Tensor:
    """Average ranks along the last dimension (ties share their mean rank)."""
    order = values.argsort(dim=-1)
    ranked = torch.empty_like(values)
    ranked.scatter_(-1, order, torch.arange(values.shape[-1], dtype=values.dtype).expand_as(values).clone())
    for row in range(values.shape[0]):  # ties: the mean of their ranks
        for value in values[row].unique():
            tied = values[row] == value
            ranked[row, tied] = ranked[row, tied].mean()
    return ranked


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman correlation of two (candidates,) vectors; nan when either is constant."""
    ra, rb = ranks(a.double()[None])[0], ranks(b.double()[None])[0]
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denominator if denominator else float("nan")


def spearman_brown(r: float, factor: float) -> float:
    """The reliability of a mean over `factor` times as many prompts, from that of the shorter mean."""
    return factor * r / (1 + (factor - 1) * r)


def split_half(scores: torch.Tensor, seed: int) -> float:
    """Mean Spearman between the candidates' means on two random halves of the prompts (scores: prompts x
    candidates), over SPLITS splits."""
    generator = random.Random(seed)
    prompts = list(range(scores.shape[0]))
    values = []
    for _ in range(SPLITS):
        generator.shuffle(prompts)
        half = len(prompts) // 2
        first, second = scores[prompts[:half]].mean(dim=0), scores[prompts[half : 2 * half]].mean(dim=0)
        values.append(spearman(first, second))
    values = [value for value in values if not math.isnan(value)]
    return sum(values) / len(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", type=Path)
    args = parser.parse_args()
    print("| generation | prompts | candidates | split-half Spearman | projected: same size | x2 | x4 |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for line in args.metrics.read_text().splitlines():
        record = json.loads(line)
        by_prompt = record.get("candidates/prompt_scores")
        if not by_prompt:
            continue
        rows = [[float("nan") if s is None else s for s in scores] for scores in by_prompt.values()]
        scores = torch.tensor(rows, dtype=torch.float64)
        scores = scores[:, ~scores.isnan().any(dim=0)]  # failed candidates out
        r = split_half(scores, seed=record["generation"])
        projected = [spearman_brown(r, 2 * k) for k in (1, 2, 4)] if not math.isnan(r) else [math.nan] * 3
        print(
            f"| {record['generation']} | {scores.shape[0]} | {scores.shape[1]} | {r:.2f} | "
            + " | ".join(f"{value:.2f}" for value in projected)
            + " |"
        )


if __name__ == "__main__":
    main()

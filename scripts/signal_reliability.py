"""Does a generation's ranking of its candidates repeat on other prompts? (the training signal's noise)

Reads a run's metrics.jsonl (`candidates/prompt_scores`: every candidate's score on each prompt a generation
drew). It ranks candidates by their raw mean score over the prompts, not by fitness: the two agree for one task
under evo.objective=budget (the efficacy runs); with several tasks the prompts are pooled unnormalised, and under
memory_penalty the retained ratio is left out. For each generation it splits the prompts into two random halves many times and correlates (Spearman)
the candidates' mean scores on one half with those on the other. Then it projects that split-half correlation
to the whole draw with the Spearman-Brown formula, r_n = n r / (1 + (n - 1) r): the correlation expected
between two independent draws of the generation's size, and of twice or four times that size (n/a where the
split-half correlation is not positive). Near 0 the
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

from tasks.evaluation.rank_correlation import spearman

SPLITS = 200


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


def split_half(scores: torch.Tensor, seed: int) -> float:
    """Mean Spearman between the candidates' means on two random halves of the prompts (scores: prompts x
    candidates; an odd prompt out is left out of each split), over SPLITS splits; NaN splits (a constant half)
    are skipped."""
    generator = random.Random(seed)
    prompts = list(range(scores.shape[0]))
    values = []
    for _ in range(SPLITS):
        generator.shuffle(prompts)
        half = len(prompts) // 2
        first, second = scores[prompts[:half]].mean(dim=0), scores[prompts[half : 2 * half]].mean(dim=0)
        values.append(float(spearman(first, second)))
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
        projected = projections(r, scores.shape[0])
        split = "n/a" if math.isnan(r) else f"{r:.2f}"
        print(
            f"| {record['generation']} | {scores.shape[0]} | {scores.shape[1]} | {split} | "
            + " | ".join("n/a" if math.isnan(value) else f"{value:.2f}" for value in projected)
            + " |"
        )


if __name__ == "__main__":
    main()

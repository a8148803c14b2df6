"""Does a generation's ranking of its candidates repeat on other prompts? (the training signal's noise)

Reads a run's metrics.jsonl (`candidates/prompt_scores`: every candidate's score on each prompt a generation
drew). It ranks candidates by their raw mean score over the prompts, not by fitness: the two agree for one task
under evo.objective=budget (the efficacy runs); with several tasks the prompts are pooled unnormalised, and under
memory_penalty the retained ratio is left out. For each generation it splits the prompts into two random halves many times and correlates (Spearman)
the candidates' mean scores on one half with those on the other. Then it projects that split-half correlation
to the whole draw with the Spearman-Brown formula, r_n = n r / (1 + (n - 1) r): the correlation expected
between two independent draws of the generation's size, and of twice or four times that size (n/a where the
split-half correlation is not positive), and p: how often candidates with no lasting differences (each prompt's
scores shuffled across the candidates) reach that correlation; with 16 candidates on 8 prompts such noise gives
0.00 +- 0.20. Near 0 the
search ranks its candidates by the prompts it happened to draw; near 1 the ranking is the candidates' own.

    python scripts/signal_reliability.py runs/efficacy-readout-3/seed1/metrics.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from tasks.evaluation.rank_correlation import RankingReliability


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", type=Path)
    args = parser.parse_args()
    print(
        "| generation | prompts | candidates | split-half Spearman | p (no lasting differences) | projected: same size | x2 | x4 |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for line in args.metrics.read_text().splitlines():
        record = json.loads(line)
        by_prompt = record.get("candidates/prompt_scores")
        if not by_prompt:
            continue
        rows = [[math.nan if score is None else score for score in scores] for scores in by_prompt.values()]
        reliability = RankingReliability.of(torch.tensor(rows, dtype=torch.float64), seed=record["generation"])
        cells = [str(record["generation"]), str(reliability.prompts), str(reliability.candidates), *reliability.cells()]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

"""Fitness: mean over tasks of the task score divided by the full-cache score of the same prompts.

A ratio of means per task (as the reference), with the denominator floored so a sample of prompts on
which the full cache scored ~0 cannot explode the fitness. Candidates that raised or produced a
non-finite score rank last; the run goes on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from namm.evolution.scoring import CandidateScores, ScoringOutcome

log = logging.getLogger(__name__)


def normalised_task_scores(scores: CandidateScores, reference_floor: float) -> dict[str, torch.Tensor]:
    """task -> (P,) score / max(full-cache score, floor)."""
    return {
        task: values.double() / max(float(scores.reference_scores[task]), reference_floor)
        for task, values in scores.task_scores.items()
    }


def candidate_fitness(scores: CandidateScores, reference_floor: float) -> torch.Tensor:
    """(P,) mean over tasks of the normalised scores (NaN where any task score is NaN)."""
    normalised = normalised_task_scores(scores, reference_floor)
    total = torch.zeros(scores.num_candidates, dtype=torch.float64)
    for task in sorted(normalised):  # element-wise adds in one fixed order: no reduction kernel decides
        total = total + normalised[task]
    return total / len(normalised)


@dataclass
class PopulationFitness:
    """What the searcher ranks, plus which candidates failed and why."""

    values: torch.Tensor  # (P,) float64; failed candidates hold `failed_value`
    ok: torch.Tensor  # (P,) bool: the candidate was scored and its fitness is finite
    failures: dict[int, str]  # candidate index -> reason
    failed_value: float | None  # the penalty given to failures (below every finite fitness), None if none failed


def population_fitness(outcome: ScoringOutcome, reference_floor: float, generation: int) -> PopulationFitness:
    """Fitness of every candidate; failures get a value below the worst finite one and a warning.

    Raises RuntimeError when no candidate could be scored: the scorer itself is broken.
    """
    values = torch.full((outcome.num_candidates,), float("nan"), dtype=torch.float64)
    failures = dict(outcome.errors)
    if outcome.scores is not None:
        values[outcome.scored_rows] = candidate_fitness(outcome.scores, reference_floor)
    for row in torch.nonzero(~torch.isfinite(values)).flatten().tolist():
        failures.setdefault(row, f"non-finite fitness {values[row].item()} (a task score or reference is NaN/inf)")
    ok = torch.isfinite(values)
    if not bool(ok.any()):
        first = failures[min(failures)]
        raise RuntimeError(
            f"generation {generation}: all {outcome.num_candidates} candidates failed to score; first error: {first}"
        )
    failed_value = None
    if failures:
        failed_value = float(values[ok].min()) - 1.0
        values[~ok] = failed_value
        for row in sorted(failures):
            log.warning(
                "generation %d: candidate %d failed, given the worst fitness %.4g: %s",
                generation,
                row,
                failed_value,
                failures[row],
            )
    return PopulationFitness(values=values, ok=ok, failures=failures, failed_value=failed_value)

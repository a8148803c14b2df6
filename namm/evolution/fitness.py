"""Fitness: what a candidate's scores are worth under the run's objective, and how candidates are ranked.

Each task's score is divided by the full-cache score of the same prompts (a ratio of means, as the
reference). On a handful of prompts that reference can be near zero, so the denominator is floored at
`reference_floor_share` of the task's full-cache score on the fixed validation prompts (a stable estimate
of the pool-wide reference: a lucky candidate on a hard draw earns at most 1 / share), and at the absolute
`reference_floor`. The objective then adds its memory term. Candidates that raised or produced a
non-finite score rank last; the run goes on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from namm.evolution.config import EvoConfig, Objective
from namm.evolution.scorer_protocol import CandidateScores, ScoringOutcome

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitnessRule:
    """The evo settings fitness depends on (recorded in checkpoints with the rest of the config)."""

    objective: Objective = Objective.score
    memory_weight: float = 0.0
    reference_floor: float = 1.0
    reference_floor_share: float = 0.5

    @classmethod
    def of(cls, evo: EvoConfig) -> FitnessRule:
        return cls(evo.objective, evo.memory_weight, evo.reference_floor, evo.reference_floor_share)

    def denominator(self, scores: CandidateScores, task: str) -> float:
        relative = self.reference_floor_share * float(scores.pool_references[task])
        return max(float(scores.reference_scores[task]), relative, self.reference_floor)


def normalised_task_scores(scores: CandidateScores, rule: FitnessRule) -> dict[str, torch.Tensor]:
    """task -> (P,) score / floored full-cache score."""
    return {task: values.double() / rule.denominator(scores, task) for task, values in scores.task_scores.items()}


def normalised_score(scores: CandidateScores, rule: FitnessRule) -> torch.Tensor:
    """(P,) mean over tasks of the normalised scores (NaN where any task score is NaN)."""
    normalised = normalised_task_scores(scores, rule)
    total = torch.zeros(scores.num_candidates, dtype=torch.float64)
    for task in sorted(normalised):  # element-wise adds in one fixed order: no reduction kernel decides
        total = total + normalised[task]
    return total / len(normalised)


def candidate_fitness(scores: CandidateScores, rule: FitnessRule) -> torch.Tensor:
    """(P,) the objective: the normalised score, minus memory_weight x retained ratio for memory_penalty."""
    fitness = normalised_score(scores, rule)
    if rule.objective == Objective.memory_penalty:
        fitness = fitness - rule.memory_weight * scores.retained_ratio.double()
    return fitness


def selection_ranks(fitness: torch.Tensor, retained_ratio: torch.Tensor) -> torch.Tensor:
    """(P,) float64 ranks, 0 for the worst: higher fitness first, an equal fitness goes to the smaller
    retained ratio, then to the lower index. Every searcher here ranks its population, so giving it these
    ranks makes ties mean "keeps less memory" instead of whatever order a sort left them in."""
    order = sorted(range(len(fitness)), key=lambda row: (float(fitness[row]), -float(retained_ratio[row]), -row))
    ranks = torch.empty(len(fitness), dtype=torch.float64)
    ranks[order] = torch.arange(len(fitness), dtype=torch.float64)
    return ranks


@dataclass
class PopulationFitness:
    """What the searcher ranks, plus which candidates failed and why."""

    values: torch.Tensor  # (P,) float64; failed candidates hold `failed_value`
    ok: torch.Tensor  # (P,) bool: the candidate was scored and its fitness is finite
    failures: dict[int, str]  # candidate index -> reason
    failed_value: float | None  # the penalty given to failures (below every finite fitness), None if none failed
    ranks: torch.Tensor  # (P,) what the searcher sees (`selection_ranks`)


def population_fitness(outcome: ScoringOutcome, rule: FitnessRule, generation: int) -> PopulationFitness:
    """Fitness of every candidate; failures get a value below the worst finite one and a warning.

    Raises RuntimeError when no candidate could be scored: the scorer itself is broken.
    """
    values = torch.full((outcome.num_candidates,), float("nan"), dtype=torch.float64)
    retained = torch.ones(outcome.num_candidates, dtype=torch.float64)  # failures: as if they kept everything
    failures = dict(outcome.errors)
    if outcome.scores is not None:
        values[outcome.scored_rows] = candidate_fitness(outcome.scores, rule)
        retained[outcome.scored_rows] = outcome.scores.retained_ratio.double()
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
    return PopulationFitness(values, ok, failures, failed_value, selection_ranks(values, retained))

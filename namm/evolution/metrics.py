"""Per-generation and validation metrics as flat dicts (the same keys go to W&B and metrics.jsonl)."""

from __future__ import annotations

import math
from typing import Any

import torch

from namm.evolution.config import Objective
from namm.evolution.fitness import (
    FitnessRule,
    PopulationFitness,
    candidate_fitness,
    normalised_score,
    normalised_task_scores,
)
from namm.evolution.scorer_protocol import ScoringOutcome

TIMING_KEYS = ("speed/seconds_per_generation", "speed/tokens_per_second")  # differ between identical runs


def _summary(prefix: str, values: torch.Tensor) -> dict[str, float]:
    values = values.double()
    return {
        f"{prefix}/mean": float(values.mean()),
        f"{prefix}/best": float(values.max()),
        f"{prefix}/worst": float(values.min()),
        f"{prefix}/std": float(values.std(unbiased=False)),
    }


def centre_movement(before: torch.Tensor, after: torch.Tensor) -> dict[str, float]:
    """How far one step moved the search centre: L2, and relative to the previous centre's norm (its RMS
    when the norm is zero would be 0, so the relative figure is then the L2 itself)."""
    step = float((after.double() - before.double()).norm())
    norm = float(before.double().norm())
    return {"search/centre_step": step, "search/centre_step_relative": step / norm if norm > 0 else step}


def candidate_lists(outcome: ScoringOutcome, fitness: PopulationFitness, rule: FitnessRule) -> dict[str, Any]:
    """Every candidate's fitness, normalised score and retained ratio, in population order (None where it
    failed; a candidate whose score was NaN keeps its retained ratio), and how many distinct fitness values the population shows (how graded the signal is)."""
    normalised: list[float | None] = [None] * outcome.num_candidates
    retained: list[float | None] = [None] * outcome.num_candidates
    if outcome.scores is not None:
        rows = outcome.scored_rows.tolist()
        for row, value, ratio in zip(
            rows, normalised_score(outcome.scores, rule).tolist(), outcome.scores.retained_ratio.tolist()
        ):
            normalised[row], retained[row] = value, ratio
    ok = fitness.ok.tolist()
    return {
        "candidates/fitness": [value if good else None for value, good in zip(fitness.values.tolist(), ok)],
        "candidates/normalised_score": [value if good else None for value, good in zip(normalised, ok)],
        "candidates/retained_ratio": retained,
        "candidates/prompt_scores": prompt_scores(outcome),
        "fitness/distinct_values": len(set(fitness.values[fitness.ok].tolist())),
    }


def prompt_scores(outcome: ScoringOutcome) -> dict[str, list[float | None]]:
    """Every candidate's score on each prompt ("task:index"), in population order (None where it failed or was not
    finite): which prompts a generation drew, and whether candidates rank alike on different prompts (the
    signal's noise)."""
    if outcome.scores is None or outcome.scores.prompts is None:
        return {}
    rows = outcome.scored_rows.tolist()
    by_prompt = {}
    for record in outcome.scores.prompts:
        scores: list[float | None] = [None] * outcome.num_candidates
        for row, score in zip(rows, record.scores):
            scores[row] = score if math.isfinite(score) else None
        by_prompt[f"{record.task}:{record.index}"] = scores
    return by_prompt


def generation_metrics(
    generation: int,
    outcome: ScoringOutcome,
    fitness: PopulationFitness,
    step_size: float,
    seconds: float,
    rule: FitnessRule,
) -> dict[str, Any]:
    """Statistics over the candidates that scored (failed ones are only counted), and the per-candidate lists."""
    record: dict[str, Any] = {
        "generation": generation,
        "objective": rule.objective.value,
        "failed_candidates": len(fitness.failures),
    }
    record.update(_summary("fitness", fitness.values[fitness.ok]))
    record.update(candidate_lists(outcome, fitness, rule))
    if rule.objective == Objective.memory_penalty:
        record["fitness/memory_weight"] = rule.memory_weight  # the curriculum's value at this generation
    scores = outcome.scores
    if scores is not None:
        ok = fitness.ok[outcome.scored_rows]
        record.update(_summary("normalised_score", normalised_score(scores, rule)[ok]))
        normalised = normalised_task_scores(scores, rule)
        for task in sorted(scores.task_scores):
            record[f"task/{task}/score_mean"] = float(scores.task_scores[task][ok].double().mean())
            record[f"task/{task}/score_best"] = float(scores.task_scores[task][ok].double().max())
            record[f"task/{task}/normalised_mean"] = float(normalised[task][ok].mean())
            record[f"task/{task}/reference"] = float(scores.reference_scores[task])
        ratio = scores.retained_ratio[ok].double()
        record["retained_ratio/mean"] = float(ratio.mean())
        record["retained_ratio/min"] = float(ratio.min())
        record["retained_ratio/max"] = float(ratio.max())
        per_layer = scores.retained_ratio_per_layer[ok].double().mean(dim=0)
        record.update({f"retained_ratio/layer_{layer}": float(value) for layer, value in enumerate(per_layer)})
        record["tokens_processed"] = int(scores.tokens_processed)
        record["speed/tokens_per_second"] = scores.tokens_processed / max(outcome.seconds, 1e-9)
    record["search/step_size"] = step_size
    record["speed/seconds_per_generation"] = seconds
    return record


def validation_metrics(outcome: ScoringOutcome, rule: FitnessRule) -> dict[str, Any] | None:
    """Metrics of the centre on the validation prompts; None when its evaluation failed."""
    scores = outcome.scores
    if scores is None:
        return None
    fitness = float(candidate_fitness(scores, rule)[0])
    if not torch.isfinite(torch.tensor(fitness)):
        return None
    tasks = sorted(scores.task_scores)
    reference_total = sum(scores.reference_scores[task] for task in tasks)
    record: dict[str, Any] = {
        "validation/fitness": fitness,
        "validation/retained_ratio": float(scores.retained_ratio[0]),
        "validation/normalised_score": float(normalised_score(scores, rule)[0]),
        # the plain task scores over the full cache's on these prompts (no floor; None when the full cache
        # scored 0): what the closing summary reports
        "validation/score_vs_full_cache": (
            sum(float(scores.task_scores[task][0]) for task in tasks) / reference_total if reference_total else None
        ),
    }
    for task in sorted(scores.task_scores):
        record[f"validation/{task}/score"] = float(scores.task_scores[task][0])
        record[f"validation/{task}/reference"] = float(scores.reference_scores[task])
    return record


def generation_line(record: dict[str, Any], generations: int) -> str:
    """One readable log line per generation."""
    parts = [
        f"gen {record['generation']}/{generations}",
        f"fitness mean {record['fitness/mean']:.4f} best {record['fitness/best']:.4f} worst {record['fitness/worst']:.4f}",
    ]
    if "retained_ratio/mean" in record:
        parts.append(
            f"retained {record['retained_ratio/mean']:.3f} "
            f"[{record['retained_ratio/min']:.3f}, {record['retained_ratio/max']:.3f}]"
        )
    parts.append(f"step {record['search/step_size']:.4g}")
    speed = f"{record['speed/seconds_per_generation']:.1f} s"
    if "speed/tokens_per_second" in record:
        speed += f", {record['speed/tokens_per_second']:.0f} tok/s"
    parts.append(speed)
    if "validation/fitness" in record:
        best = " (new best)" if record.get("validation/is_best") else ""
        parts.append(f"val {record['validation/fitness']:.4f}{best}")
    if record["failed_candidates"]:
        parts.append(f"{record['failed_candidates']} failed")
    return " | ".join(parts)

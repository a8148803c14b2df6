"""Per-sample records -> per-(policy, task) results and per-policy aggregates (task means, suite averages).

One weighting rule for every aggregate: tasks weigh equally (the LongBench convention for the mean score),
so the mean score, the retained ratios and the live KV bytes of a policy average the same tasks the same
way, and the stratified bootstrap resamples prompts within each task.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import mean
from typing import Any

from tasks.evaluation.comparisons import TaskScores
from tasks.evaluation.intervals import (
    BootstrapSettings,
    bootstrap_interval,
    ratio_of_means_interval,
    stratified_interval,
    wilson_interval,
)
from tasks.longbench import SUITES
from tasks.runner import PreparedTask
from tasks.task_scores import category_means, length_buckets, longbench_en_mean, scores_are_binary, task_score

WEIGHTING = "tasks weighted equally (score, retained ratios and live KV bytes alike)"


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def task_scores(task: PreparedTask, records: Sequence[dict[str, Any]]) -> TaskScores:
    """A policy's per-prompt scores on a task, with whether the task's metric is 0/1 (from the metric, and
    checked against the scores: a 0/1 metric that gave 0.5 is a bug, not a rounding)."""
    binary = scores_are_binary(task.spec, task.samples)
    scores = [record["score"] for record in records]
    if binary and any(score not in (0.0, 1.0) for score in scores):
        raise ValueError(f"{task.spec.name}: metric {task.spec.metric} is 0/1 but a sample scored otherwise")
    return TaskScores(scores, [record["prompt_sha"] for record in records], binary)


def score_interval(scores: TaskScores, settings: BootstrapSettings) -> tuple[tuple[float, float], str]:
    """Wilson for a 0/1 metric (exact at 0/n and n/n), else a percentile bootstrap; and which it was."""
    if scores.binary:
        return wilson_interval(int(sum(scores.scores)), len(scores.scores), settings.level), "wilson"
    return bootstrap_interval(scores.scores, settings), "bootstrap"


def task_result(
    policy: str,
    task: PreparedTask,
    records: Sequence[dict[str, Any]],
    fresh: frozenset[int],
    settings: BootstrapSettings,
) -> dict[str, Any]:
    """Score, memory and speed of one policy on one task (records in sample order). Speed counts only the
    samples run now (`fresh`): a record read back from the sample store carries an old timing."""
    timed = [record for record in records if record["index"] in fresh]
    seconds = sum(record["seconds"] for record in timed)
    tokens = sum(record["tokens_seen"] for record in timed)
    layers = len(records[0]["retained_ratio_per_layer"])
    ratios = [record["retained_ratio"] for record in records]
    scores = task_scores(task, records)
    interval, method = score_interval(scores, settings)
    result = {
        "policy": policy,
        "task": task.spec.name,
        "category": task.spec.category,
        "score": task_score(scores.scores),
        "score_interval": list(interval),
        "interval_method": method,
        "binary_metric": scores.binary,
        "num_samples": len(records),
        "prompt_retained_ratio": mean(record["prompt_retained_ratio"] for record in records),
        "retained_ratio": mean(ratios),
        "retained_ratio_min": min(ratios),
        "retained_ratio_max": max(ratios),
        "retained_ratio_per_layer": [
            mean(r["retained_ratio_per_layer"][layer] for r in records) for layer in range(layers)
        ],
        "reused_samples": len(records) - len(timed),
        "tokens": tokens,
        "seconds": seconds,
        "reconstruction_seconds": sum(record.get("reconstruction_seconds", 0.0) for record in timed),
        "reconstruction_tokens": sum(record.get("reconstruction_tokens", 0) for record in timed),
        "tokens_per_second": tokens / seconds if seconds > 0 else None,
        "samples_per_second": len(timed) / seconds if seconds > 0 else None,
        "mean_peak_live_kv_bytes": mean(record["peak_live_kv_bytes"] for record in records),
        "peak_live_kv_bytes": max(record["peak_live_kv_bytes"] for record in records),
        "peak_storage_bytes": max(record["batch_peak_storage_bytes"] for record in records),
        "peak_overhead_bytes": max(record["batch_peak_overhead_bytes"] for record in records),
        "peak_batch_rows": max(record["batch_rows"] for record in records),
        "length_buckets": None,
    }
    if all(sample.length is not None for sample in task.samples) and task.spec.name.endswith("_e"):
        lengths = {sample.index: sample.length for sample in task.samples}
        buckets = length_buckets(scores.scores, [lengths[r["index"]] for r in records])
        result["length_buckets"] = {name: _finite_or_none(value) for name, value in buckets.items()}
    return result


def add_relative_scores(
    results: list[dict[str, Any]], scores: Mapping[tuple[str, str], TaskScores], reference: str = "full"
) -> None:
    """`relative_to_full`: the policy's mean sample score over the full cache's, on the same samples (a ratio
    of means from unrounded scores; None without a full-cache run or when it scored 0)."""
    for result in results:
        base = scores.get((reference, result["task"]))
        own = scores[(result["policy"], result["task"])]
        result["relative_to_full"] = sum(own.scores) / sum(base.scores) if base and sum(base.scores) > 0 else None


def weak_full_tasks(results: Sequence[dict[str, Any]], threshold: float, reference: str = "full") -> list[str]:
    """Tasks where the full cache scores below `threshold`: a ratio to it, or a loss against it, says little."""
    return [r["task"] for r in results if r["policy"] == reference and r["score"] < threshold]


def _task_mean(results: Sequence[dict[str, Any]], key: str) -> float:
    return mean(r[key] for r in results)


def policy_aggregate(
    results: Sequence[dict[str, Any]],
    scores: Mapping[str, TaskScores],
    full: Mapping[str, TaskScores] | None,
    settings: BootstrapSettings,
) -> dict[str, Any]:
    """One policy's averages over the tasks it ran, tasks weighted equally: mean score with its stratified
    bootstrap interval, relative to full as a ratio of means (with its paired interval), category means,
    the LongBench suite averages (tasks.task_scores) when their tasks are all present, memory and speed."""
    task_scores_ = {r["task"]: r["score"] for r in results}
    by_category: dict[str, list[float]] = {}
    for r in results:
        by_category.setdefault(r["category"], []).append(r["score"])
    tasks = [r["task"] for r in results]
    raw_means = [sum(scores[t].scores) / len(scores[t].scores) for t in tasks]
    relative = relative_interval = None
    if full is not None:
        full_mean = mean(sum(full[t].scores) / len(full[t].scores) for t in tasks)
        if full_mean > 0:
            relative = mean(raw_means) / full_mean
            pairs = [(scores[t].scores, full[t].scores) for t in tasks]
            relative_interval = ratio_of_means_interval(pairs, settings)
    # one task: its own interval (Wilson for a 0/1 metric); several: the stratified bootstrap
    mean_interval = (
        list(results[0]["score_interval"])
        if len(results) == 1
        else list(stratified_interval([scores[t].scores for t in tasks], settings))
    )
    seconds = sum(r["seconds"] for r in results)
    all_longbench = all(name in task_scores_ for name in SUITES["longbench"])
    return {
        "mean_score": round(100 * mean(raw_means), 2),
        "mean_score_interval": mean_interval,
        "mean_relative_to_full": relative,
        "relative_to_full_interval": None if relative_interval is None else list(relative_interval),
        "category_means": {category: round(mean(values), 2) for category, values in by_category.items()},
        "longbench_en_mean": longbench_en_mean(task_scores_)
        if all(n in task_scores_ for n in SUITES["longbench_en"])
        else None,
        "longbench_leaderboard": category_means(task_scores_) if all_longbench else None,
        "prompt_retained_ratio": _task_mean(results, "prompt_retained_ratio"),
        "retained_ratio": _task_mean(results, "retained_ratio"),
        "tokens_per_second": sum(r["tokens"] for r in results) / seconds if seconds > 0 else None,
        "reused_samples": sum(r["reused_samples"] for r in results),
        "mean_peak_live_kv_bytes": _task_mean(results, "mean_peak_live_kv_bytes"),
        "peak_live_kv_bytes": max(r["peak_live_kv_bytes"] for r in results),
        "peak_storage_bytes": max(r["peak_storage_bytes"] for r in results),
        "peak_overhead_bytes": max(r["peak_overhead_bytes"] for r in results),
        "num_tasks": len(results),
        "num_samples": sum(r["num_samples"] for r in results),
    }

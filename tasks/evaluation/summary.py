"""Per-sample records -> per-(policy, task) results and per-policy aggregates (task means, suite averages)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import mean
from typing import Any

from tasks.evaluation.intervals import bootstrap_interval
from tasks.longbench import SUITES
from tasks.runner import PreparedTask
from tasks.scoring import category_means, length_buckets, longbench_en_mean, task_score


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def task_result(policy: str, task: PreparedTask, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Score, memory and speed of one policy on one task (records in sample order)."""
    seconds = sum(record["seconds"] for record in records)
    tokens = sum(record["tokens_seen"] for record in records)
    layers = len(records[0]["retained_ratio_per_layer"])
    ratios = [record["retained_ratio"] for record in records]
    result = {
        "policy": policy,
        "task": task.spec.name,
        "category": task.spec.category,
        "score": task_score([record["score"] for record in records]),
        "score_interval": list(bootstrap_interval([record["score"] for record in records])),
        "num_samples": len(records),
        "retained_ratio": mean(ratios),
        "retained_ratio_min": min(ratios),
        "retained_ratio_max": max(ratios),
        "retained_ratio_per_layer": [
            mean(r["retained_ratio_per_layer"][layer] for r in records) for layer in range(layers)
        ],
        "tokens": tokens,
        "seconds": seconds,
        "reconstruction_seconds": sum(record.get("reconstruction_seconds", 0.0) for record in records),
        "reconstruction_tokens": sum(record.get("reconstruction_tokens", 0) for record in records),
        "tokens_per_second": tokens / seconds if seconds > 0 else None,
        "samples_per_second": len(records) / seconds if seconds > 0 else None,
        "mean_peak_live_kv_bytes": mean(record["peak_live_kv_bytes"] for record in records),
        "peak_live_kv_bytes": max(record["peak_live_kv_bytes"] for record in records),
        "peak_storage_bytes": max(record["batch_peak_storage_bytes"] for record in records),
        "peak_overhead_bytes": max(record["batch_peak_overhead_bytes"] for record in records),
        "peak_batch_rows": max(record["batch_rows"] for record in records),
        "length_buckets": None,
    }
    if all(sample.length is not None for sample in task.samples) and task.spec.name.endswith("_e"):
        buckets = length_buckets(
            [record["score"] for record in records], [task.samples[r["index"]].length for r in records]
        )
        result["length_buckets"] = {name: _finite_or_none(value) for name, value in buckets.items()}
    return result


def add_relative_scores(results: list[dict[str, Any]], reference: str = "full") -> None:
    """`relative_to_full`: the task score over the full cache's score on the same samples (None without one)."""
    full = {r["task"]: r["score"] for r in results if r["policy"] == reference}
    for result in results:
        base = full.get(result["task"])
        result["relative_to_full"] = result["score"] / base if base else None


def policy_aggregate(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One policy's averages over the tasks it ran: plain task mean, category means over the tasks present,
    and the LongBench suite averages (tasks.scoring) when their tasks are all present."""
    scores = {r["task"]: r["score"] for r in results}
    by_category: dict[str, list[float]] = {}
    for r in results:
        by_category.setdefault(r["category"], []).append(r["score"])
    relative = [r["relative_to_full"] for r in results if r.get("relative_to_full") is not None]
    seconds = sum(r["seconds"] for r in results)
    samples = sum(r["num_samples"] for r in results)
    all_longbench = all(name in scores for name in SUITES["longbench"])
    return {
        "mean_score": round(mean(scores.values()), 2),
        "mean_relative_to_full": mean(relative) if len(relative) == len(results) else None,
        "category_means": {category: round(mean(values), 2) for category, values in by_category.items()},
        "longbench_en_mean": longbench_en_mean(scores) if all(n in scores for n in SUITES["longbench_en"]) else None,
        "longbench_leaderboard": category_means(scores) if all_longbench else None,
        "retained_ratio": sum(r["retained_ratio"] * r["num_samples"] for r in results) / samples,
        "tokens_per_second": sum(r["tokens"] for r in results) / seconds if seconds > 0 else None,
        "mean_peak_live_kv_bytes": sum(r["mean_peak_live_kv_bytes"] * r["num_samples"] for r in results) / samples,
        "peak_live_kv_bytes": max(r["peak_live_kv_bytes"] for r in results),
        "peak_storage_bytes": max(r["peak_storage_bytes"] for r in results),
        "peak_overhead_bytes": max(r["peak_overhead_bytes"] for r in results),
        "num_tasks": len(results),
        "num_samples": samples,
    }

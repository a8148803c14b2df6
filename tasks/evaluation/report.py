"""results.json, results.csv and the markdown table printed at the end, written atomically."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from namm.atomic_io import atomic_write_text

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
CSV_COLUMNS = (
    "policy", "task", "score", "relative_to_full", "num_samples", "retained_ratio", "budget", "budget_target",
    "within_tolerance", "tokens_per_second", "mean_peak_live_kv_mib", "peak_live_kv_mib", "peak_storage_mib",
    "peak_overhead_mib",
)  # fmt: skip
MEMORY_FIELDS = ("mean_peak_live_kv", "peak_live_kv", "peak_storage", "peak_overhead")  # *_bytes -> *_mib


def _mib(source: dict[str, Any]) -> dict[str, float]:
    """The memory figures in MiB (live KV bytes: what a policy gives back; storage and overhead apart)."""
    return {f"{name}_mib": round(source[f"{name}_bytes"] / 2**20, 3) for name in MEMORY_FIELDS}


def results_csv(document: dict[str, Any]) -> str:
    """One row per (policy, task), then one `mean` row per policy."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for result in document["results"]:
        writer.writerow(result | _mib(result))
    for policy, aggregate in document["aggregates"].items():
        writer.writerow(
            {
                "policy": policy,
                "task": "mean",
                "score": aggregate["mean_score"],
                "relative_to_full": aggregate["mean_relative_to_full"],
                "num_samples": aggregate["num_samples"],
                "retained_ratio": aggregate["retained_ratio"],
                "tokens_per_second": aggregate["tokens_per_second"],
                **_mib(aggregate),
            }
        )
    return buffer.getvalue()


def write_results(document: dict[str, Any], run_dir: Path) -> None:
    atomic_write_text(run_dir / RESULTS_JSON, json.dumps(document, indent=1, allow_nan=False) + "\n")
    atomic_write_text(run_dir / RESULTS_CSV, results_csv(document))


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(document: dict[str, Any]) -> str:
    """Policies as rows; each task's score, the task mean (and the 16-task mean when it exists), speed, and
    memory: live KV MiB (mean over samples of each one's peak: what the policy gives back) and the largest
    batch's allocated storage."""
    tasks = list(document["tasks"])
    by_key = {(r["policy"], r["task"]): r for r in document["results"]}
    aggregates = document["aggregates"]
    show_longbench = any(a["longbench_en_mean"] is not None for a in aggregates.values())
    header = ["policy", "budget", "retained", *tasks, "mean"]
    header += ["LB-16 mean"] if show_longbench else []
    header += ["rel. to full", "tok/s", "peak live KV MiB", "peak storage MiB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for policy, aggregate in aggregates.items():
        results = [by_key[(policy, task)] for task in tasks]
        budgets = {r["budget"] for r in results}
        if budgets == {None}:
            budget = "-"
        elif len(budgets) == 1:
            budget = _number(budgets.pop(), 3) + (" (matched)" if results[0]["budget_target"] is not None else "")
        else:
            budget = "matched" if results[0]["budget_target"] is not None else "per task"
        row = [policy, budget, _number(aggregate["retained_ratio"], 3)]
        row += [_number(r["score"]) for r in results]
        row += [_number(aggregate["mean_score"])]
        row += [_number(aggregate["longbench_en_mean"])] if show_longbench else []
        row += [
            _number(aggregate["mean_relative_to_full"], 3),
            _number(aggregate["tokens_per_second"], 0),
            _number(aggregate["mean_peak_live_kv_bytes"] / 2**20, 1),
            _number(aggregate["peak_storage_bytes"] / 2**20, 1),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)

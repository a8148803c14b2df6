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
    "policy", "task", "family", "score", "score_low", "score_high", "relative_to_full", "num_samples", "retained_ratio", "budget", "budget_target",
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
        low, high = result["score_interval"]
        writer.writerow(result | _mib(result) | {"score_low": low, "score_high": high})
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


def budget_text(results: list[dict[str, Any]]) -> str:
    """The budget column: the budget run, `(matched)` only when every task landed within the tolerance of
    the NAMM's ratio, else the closest ratio reached against the target."""
    budgets = {r["budget"] for r in results}
    if budgets == {None}:
        return "-"
    matched = [r for r in results if r["budget_target"] is not None]
    text = _number(budgets.pop(), 3) if len(budgets) == 1 else "per task"
    missed = [r for r in matched if not r["within_tolerance"]]
    if missed:
        closest = "; ".join(
            f"{r['task']}: closest {r['retained_ratio']:.3f} vs the NAMM's {r['budget_target']:.3f}" for r in missed
        )
        return f"{text} (not matched: {closest})"
    return f"{text} (matched)" if matched else text


def _score_cell(result: dict[str, Any]) -> str:
    low, high = result["score_interval"]
    return f"{result['score']:.2f} [{low:.1f}, {high:.1f}]"


def markdown_table(document: dict[str, Any]) -> str:
    """Policies as rows; each task's score with its 95% bootstrap interval, the task mean (and the 16-task
    mean when it exists), speed, and memory: live KV MiB (mean over samples of each one's peak: what the
    policy gives back) and the largest batch's allocated storage."""
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
        row = [policy, budget_text(results), _number(aggregate["retained_ratio"], 3)]
        row += [_score_cell(r) for r in results]
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

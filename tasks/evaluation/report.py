"""results.json, results.csv, comparisons.csv and the tables printed at the end, written atomically."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from namm.atomic_io import atomic_write_text
from tasks.evaluation.budget_matching import MATCH_TARGETS, MatchTarget
from tasks.evaluation.comparisons import ALL_TASKS
from tasks.evaluation.plots import matched_quantity

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
COMPARISONS_CSV = "comparisons.csv"
CSV_COLUMNS = (
    "policy", "task", "family", "score", "score_low", "score_high", "interval_method", "relative_to_full",
    "vs_full_difference", "vs_full_low", "vs_full_high", "vs_full_p", "vs_full_significant", "num_samples",
    "prompt_retained_ratio", "retained_ratio", "budget", "budget_target", "within_tolerance", "tokens_per_second",
    "reused_samples", "mean_peak_live_kv_mib", "peak_live_kv_mib", "peak_storage_mib", "peak_overhead_mib",
)  # fmt: skip
COMPARISON_COLUMNS = (
    "policy", "reference", "task", "num_prompts", "difference", "low", "high", "test", "mcnemar_p", "policy_only",
    "reference_only", "significant",
)  # fmt: skip
MEMORY_FIELDS = ("mean_peak_live_kv", "peak_live_kv", "peak_storage", "peak_overhead")  # *_bytes -> *_mib
WEAK_MARK = "†"
CLAIM_MARK = "*"


def _mib(source: dict[str, Any]) -> dict[str, float]:
    """The memory figures in MiB (live KV bytes: what a policy gives back; storage and overhead apart)."""
    return {f"{name}_mib": round(source[f"{name}_bytes"] / 2**20, 3) for name in MEMORY_FIELDS}


def comparisons_by(document: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(policy, reference, task) -> comparison; `task` is a task name or `mean`."""
    return {(c["policy"], c["reference"], c["task"]): c for c in document["comparisons"]}


def overall(document: dict[str, Any], policy: str, reference: str) -> dict[str, Any] | None:
    """A policy's comparison with `reference` over all tasks (the task's own one when a single task ran)."""
    found = comparisons_by(document)
    tasks = list(document["tasks"])
    return found.get((policy, reference, ALL_TASKS)) or (
        found.get((policy, reference, tasks[0])) if len(tasks) == 1 else None
    )


def _vs_full_columns(comparison: dict[str, Any] | None) -> dict[str, Any]:
    if comparison is None:
        return {}
    low, high = comparison["interval"]
    return {
        "vs_full_difference": comparison["difference"],
        "vs_full_low": low,
        "vs_full_high": high,
        "vs_full_p": comparison["mcnemar_p"],
        "vs_full_significant": comparison["significant"],
    }


def results_csv(document: dict[str, Any]) -> str:
    """One row per (policy, task), then one `mean` row per policy."""
    found = comparisons_by(document)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for result in document["results"]:
        low, high = result["score_interval"]
        vs_full = _vs_full_columns(found.get((result["policy"], "full", result["task"])))
        writer.writerow(result | _mib(result) | vs_full | {"score_low": low, "score_high": high})
    for policy, aggregate in document["aggregates"].items():
        low, high = aggregate["mean_score_interval"]
        writer.writerow(
            {
                "policy": policy,
                "task": ALL_TASKS,
                "score": aggregate["mean_score"],
                "score_low": low,
                "score_high": high,
                "interval_method": "stratified_bootstrap",
                "relative_to_full": aggregate["mean_relative_to_full"],
                "num_samples": aggregate["num_samples"],
                "prompt_retained_ratio": aggregate["prompt_retained_ratio"],
                "retained_ratio": aggregate["retained_ratio"],
                "tokens_per_second": aggregate["tokens_per_second"],
                "reused_samples": aggregate["reused_samples"],
                **_vs_full_columns(overall(document, policy, "full")),
                **_mib(aggregate),
            }
        )
    return buffer.getvalue()


def comparisons_csv(document: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COMPARISON_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for comparison in document["comparisons"]:
        low, high = comparison["interval"]
        writer.writerow(comparison | {"low": low, "high": high})
    return buffer.getvalue()


def write_results(document: dict[str, Any], run_dir: Path) -> None:
    atomic_write_text(run_dir / RESULTS_JSON, json.dumps(document, indent=1, allow_nan=False) + "\n")
    atomic_write_text(run_dir / RESULTS_CSV, results_csv(document))
    atomic_write_text(run_dir / COMPARISONS_CSV, comparisons_csv(document))


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def budget_text(results: list[dict[str, Any]], quantity: MatchTarget = MATCH_TARGETS["prompt_end"]) -> str:
    """The budget column: the budget run, `(matched: <quantity>)` only when every task landed within the
    tolerance of the NAMM's ratio, else the closest ratio reached against the target."""
    budgets = {r["budget"] for r in results}
    if budgets == {None}:
        return "-"
    matched = [r for r in results if r["budget_target"] is not None]
    text = _number(budgets.pop(), 3) if len(budgets) == 1 else "per task"
    missed = [r for r in matched if not r["within_tolerance"]]
    if missed:
        closest = "; ".join(
            f"{r['task']}: closest {r[quantity.ratio]:.3f} vs the NAMM's {r['budget_target']:.3f}" for r in missed
        )
        return f"{text} (not matched: {closest})"
    return f"{text} (matched: {quantity.label})" if matched else text


def _interval(bounds: Sequence[float] | None, digits: int = 1) -> str:
    return "" if bounds is None else f" [{bounds[0]:.{digits}f}, {bounds[1]:.{digits}f}]"


def _score_cell(result: dict[str, Any]) -> str:
    return f"{result['score']:.2f}{_interval(result['score_interval'])}"


def comparison_cell(comparison: dict[str, Any] | None) -> str:
    """`+6.7 [0.0, 13.3] p=0.25`, with `*` when a difference is claimed."""
    if comparison is None:
        return "-"
    text = f"{comparison['difference']:+.1f}{_interval(comparison['interval'])}"
    if comparison["mcnemar_p"] is not None:
        text += f" p={comparison['mcnemar_p']:.3g}"
    return text + (f" {CLAIM_MARK}" if comparison["significant"] else "")


def _references(document: dict[str, Any]) -> list[str]:
    """The policies every other one is compared with: the full cache, then each NAMM."""
    labels = [policy["label"] for policy in document["policies"]]
    return [label for label in labels if label == "full" or label in document["namms"]]


def _row_line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _header_lines(header: Sequence[str]) -> list[str]:
    return [_row_line(header), "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]


def main_table(document: dict[str, Any]) -> str:
    """Policies as rows: budget, memory (retained ratio at the end of the prompt and of generation, peak live
    KV), each task's score with its 95% interval, the task mean with its interval, the ratio to the full
    cache, the paired difference with the full cache and with each NAMM over all tasks, speed."""
    tasks = list(document["tasks"])
    weak = set(document["weak_full_tasks"])
    by_key = {(r["policy"], r["task"]): r for r in document["results"]}
    aggregates = document["aggregates"]
    references = _references(document)
    quantity = matched_quantity(document)
    show_longbench = any(a["longbench_en_mean"] is not None for a in aggregates.values())
    header = ["policy", "budget", "retained (prompt end)", "retained (gen. end)", "peak live KV MiB"]
    header += [f"{task}{WEAK_MARK if task in weak else ''}" for task in tasks] + ["mean"]
    header += ["LB-16 mean"] if show_longbench else []
    header += ["rel. to full"] + [f"vs {reference}" for reference in references] + ["tok/s"]
    lines = _header_lines(header)
    for policy, aggregate in aggregates.items():
        results = [by_key[(policy, task)] for task in tasks]
        row = [
            policy,
            budget_text(results, quantity),
            _number(aggregate["prompt_retained_ratio"], 3),
            _number(aggregate["retained_ratio"], 3),
            _number(aggregate["mean_peak_live_kv_bytes"] / 2**20, 1),
        ]
        row += [_score_cell(r) for r in results]
        row += [f"{aggregate['mean_score']:.2f}{_interval(aggregate['mean_score_interval'])}"]
        row += [_number(aggregate["longbench_en_mean"])] if show_longbench else []
        row += [_number(aggregate["mean_relative_to_full"], 3) + _interval(aggregate["relative_to_full_interval"], 3)]
        row += [
            "" if policy == reference else comparison_cell(overall(document, policy, reference))
            for reference in references
        ]
        row += [_number(aggregate["tokens_per_second"], 0) + (" (reused)" if aggregate["reused_samples"] else "")]
        lines.append(_row_line(row))
    return "\n".join(lines)


def comparison_table(document: dict[str, Any]) -> str:
    """Per task: every policy's paired difference with each reference (empty when there is no reference)."""
    tasks = list(document["tasks"])
    found = comparisons_by(document)
    rows = [(c["policy"], c["reference"]) for c in document["comparisons"] if c["task"] == tasks[0]]
    if not rows:
        return ""
    lines = _header_lines(["policy vs reference", *tasks])
    for policy, reference in rows:
        lines.append(
            _row_line(
                [f"{policy} vs {reference}", *(comparison_cell(found.get((policy, reference, t))) for t in tasks)]
            )
        )
    return "\n".join(lines)


def held_out_line(document: dict[str, Any]) -> str:
    notes = []
    for label, record in document["held_out"].items():
        if record["status"] == "unrecorded":
            notes.append(f"{label}: NOT CHECKED (its checkpoint does not record its training prompts)")
        elif record["overlap"]:
            notes.append(f"{label}: SCORED ON {len(record['overlap'])} TRAINED-ON PROMPT(S) (trained_prompts=allow)")
        elif record["status"] != "untrained":
            skipped = f", {len(record['skipped'])} trained-on prompt(s) skipped" if record["skipped"] else ""
            incomplete = " (its init_from ancestor recorded none)" if record["status"] == "incomplete" else ""
            notes.append(f"{label}: no trained or validation prompt among these{skipped}{incomplete}")
    return "Held-out: " + "; ".join(notes) + "." if notes else ""


def footer(document: dict[str, Any]) -> str:
    statistics = document["settings"]["statistics"]
    level = round(100 * statistics["level"])
    lines = [
        (
            f"Scores: 100 x mean sample score, [{level}% interval]: Wilson for 0/1 metrics, else a percentile "
            f"bootstrap over prompts (seed {statistics['seed']}, {statistics['resamples']} resamples)."
        ),
        (
            f"mean, retained ratios, live KV: {document['settings']['weighting']}; the mean's interval is a "
            "stratified bootstrap (prompts resampled within each task; one task: its own interval). rel. to full: "
            "the ratio of mean scores, paired interval."
        ),
        (
            "vs X: paired difference in points (policy - X) on the same prompts, with its paired bootstrap interval "
            f"(McNemar exact p for a 0/1 task); {CLAIM_MARK} = a difference is claimed (McNemar p < "
            f"{1 - statistics['level']:.2g} for a 0/1 task, else the paired interval excludes 0). Overlapping score "
            "intervals do not mean 'no difference'; only these columns test one."
        ),
    ]
    if document["weak_full_tasks"]:
        lines.append(
            f"{WEAK_MARK} the full cache scores below {statistics['weak_full_score']:g} here: ratios to it and losses "
            "against it say little about the policy."
        )
    if any(r["budget_target"] is not None for r in document["results"]):
        lines.append(f"(matched): budget set so the baseline's {matched_quantity(document).label} equals the NAMM's.")
    if any(a["reused_samples"] for a in document["aggregates"].values()):
        lines.append("tok/s counts the samples run now; (reused): some results were read back from an earlier run.")
    lines.append(held_out_line(document))
    return "\n".join(line for line in lines if line)


def depth_table_text(task: str, table: dict[str, Any]) -> str:
    """One task's scores by answer depth (tasks.evaluation.answer_depth): policies as rows, depth bins as
    columns, each headed by its share of the haystack and its sample count."""
    bins = table["bins"]
    header = ["policy"] + [
        f"{100 * b / bins:g}-{100 * (b + 1) / bins:g}% (n={n})" for b, n in enumerate(table["samples"])
    ]
    lines = _header_lines(header)
    for policy, cells in table["scores"].items():
        lines.append(_row_line([policy, *(_depth_cell(cell) for cell in cells)]))
    apart = table["without_depth"]
    note = f"; {apart} sample(s) with several answers or no known depth left out" if apart else ""
    return f"{task}: score by the answer's depth in the haystack (0% = its start){note}:\n\n" + "\n".join(lines)


def _depth_cell(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "-"
    low, high = cell["interval"]
    return f"{cell['score']:.1f} [{low:.0f}, {high:.0f}]"


def markdown_table(document: dict[str, Any]) -> str:
    """The main table, its footer, the per-task paired differences and the scores by answer depth."""
    parts = [main_table(document), footer(document)]
    per_task = comparison_table(document)
    if per_task:
        parts.append("Paired differences per task (policy - reference, points):\n\n" + per_task)
    parts += [depth_table_text(task, table) for task, table in document.get("answer_depth", {}).items()]
    return "\n\n".join(parts)

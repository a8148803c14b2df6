"""PNG plots of an evaluation: score against memory (retained ratio and live KV MiB) per policy, and per-task bars."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from namm.atomic_io import atomic_write
from tasks.evaluation.budget_matching import MATCH_TARGETS, MatchTarget

SCORE_VS_RATIO = "score_vs_retained_ratio.png"
TASK_BARS = "task_scores.png"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def save_figure(figure: Any, path: Path) -> None:
    """Render to a temporary file and rename it into place, so a kill never leaves half a PNG."""
    atomic_write(path, lambda file: figure.savefig(file, dpi=120, format="png"))


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def matched_quantity(document: dict[str, Any]) -> MatchTarget:
    """The ratio matched budgets target (the x-axis of the ratio plots, so "matched" means what it shows)."""
    return MATCH_TARGETS[document["settings"]["match_on"]]


def plot_score_vs_ratio(document: dict[str, Any], path: Path) -> None:
    """Score against memory, two panels: the retained ratio budgets are matched on, and live KV MiB (each
    sample's peak, mean over samples: what the policy gives back, not what storage allocated). One colour per
    policy: a small dot per task, a large marker for the policy's mean over tasks."""
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    colours = plt.get_cmap("tab10")
    quantity = matched_quantity(document)
    memory_axes = (
        (axes[0], lambda source: source[quantity.ratio], f"retained KV-cache ratio: {quantity.label} (kept / seen)"),
        (axes[1], lambda source: source["mean_peak_live_kv_bytes"] / 2**20, "peak live KV MiB (mean per sample)"),
    )
    for axis, memory, label in memory_axes:
        for number, (policy, aggregate) in enumerate(document["aggregates"].items()):
            colour = colours(number % 10)
            tasks = [r for r in document["results"] if r["policy"] == policy]
            axis.scatter([memory(r) for r in tasks], [r["score"] for r in tasks], color=colour, s=14, alpha=0.5)
            axis.scatter(  # shrinking, distinct markers: policies at the same point stay visible
                memory(aggregate),
                aggregate["mean_score"],
                color=colour,
                marker=MARKERS[number % len(MARKERS)],
                s=max(30, 170 - 20 * number),
                edgecolor="black",
                label=policy,
                zorder=3 + number,
            )
        axis.set_xlabel(label)
        axis.set_xlim(left=0)
        axis.grid(alpha=0.3)
    axes[0].set_xlim(0, 1.05)
    axes[0].set_ylabel("score (mean over tasks, equally weighted; small dots: single tasks)")
    axes[0].legend(fontsize=8, loc="best")
    figure.suptitle(f"{document['model']['name']}: score vs memory (live KV bytes)")
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)


def plot_task_bars(document: dict[str, Any], path: Path) -> None:
    """Grouped bars: one group per task, one bar per policy."""
    plt = pyplot()
    tasks = list(document["tasks"])
    policies = list(document["aggregates"])
    scores = {(r["policy"], r["task"]): r["score"] for r in document["results"]}
    width = 0.8 / len(policies)
    figure, axis = plt.subplots(figsize=(max(6.5, 1.1 * len(tasks) * max(1, len(policies) / 4)), 4.5))
    colours = plt.get_cmap("tab10")
    for number, policy in enumerate(policies):
        offsets = [task + (number - (len(policies) - 1) / 2) * width for task in range(len(tasks))]
        bars = axis.bar(
            offsets, [scores[(policy, task)] for task in tasks], width=width, label=policy, color=colours(number % 10)
        )
        axis.bar_label(bars, fmt="%.0f", fontsize=7)  # a zero score still shows as a number
    axis.set_xticks(
        range(len(tasks)), tasks, rotation=30 if len(tasks) > 4 else 0, ha="right" if len(tasks) > 4 else "center"
    )
    axis.set_ylabel("score")
    axis.set_ylim(0, 1.2 * max([1.0, *scores.values()]))  # headroom for the labels and the legend
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8, ncols=min(4, len(policies)))
    axis.set_title(f"{document['model']['name']}: scores per task")
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)


def front_file(task: str) -> str:
    return f"front_{task}.png"


def plot_front(document: dict[str, Any], task: str, path: Path) -> None:
    """One task's score-memory front: score (with its 95% interval) against the retained ratio budgets are
    matched on, on that task. A baseline's budget points are joined by a line, each NAMM is a star, the full
    cache a square."""
    plt = pyplot()
    ratio = matched_quantity(document).ratio
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    colours = plt.get_cmap("tab10")
    rows = [r for r in document["results"] if r["task"] == task]
    families = list(dict.fromkeys(r["family"] for r in rows))
    for number, family in enumerate(families):
        points = sorted((r for r in rows if r["family"] == family), key=lambda r: r[ratio])
        colour = colours(number % 10)
        for point in points:
            low, high = point["score_interval"]
            axis.errorbar(
                point[ratio],
                point["score"],
                yerr=[[point["score"] - low], [high - point["score"]]],
                color=colour,
                capsize=3,
                alpha=0.6,
            )
        marker = {"namm": "*", "full": "s"}.get(family, "o")
        line = "none" if family in ("namm", "full") else "-"
        axis.plot(
            [p[ratio] for p in points],
            [p["score"] for p in points],
            color=colour,
            marker=marker,
            markersize=12 if marker == "*" else 6,
            linestyle=line,
            label=family if family != "namm" or len(points) == 1 else f"namm ({len(points)} runs)",
        )
    axis.set_xlim(0, 1.05)
    axis.set_ylim(-5, 105)
    axis.set_xlabel(f"retained KV-cache ratio on this task: {matched_quantity(document).label} (live tokens / seen)")
    axis.set_ylabel("score (95% interval: Wilson for 0/1 metrics, else bootstrap)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="best")
    samples = rows[0]["num_samples"] if rows else 0
    axis.set_title(f"{document['model']['name']}: {task} ({samples} prompts)")
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)


def depth_file(task: str) -> str:
    return f"answer_depth_{task}.png"


def plot_answer_depth(document: dict[str, Any], task: str, path: Path) -> None:
    """One task's scores by answer depth (results.json `answer_depth`): each policy's score per depth bin with
    its 95% interval, the bins at their centres."""
    plt = pyplot()
    table = document["answer_depth"][task]
    bins = table["bins"]
    centres = [100 * (b + 0.5) / bins for b in range(bins)]
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    colours = plt.get_cmap("tab10")
    for number, (policy, cells) in enumerate(table["scores"].items()):
        shown = [(x, cell) for x, cell in zip(centres, cells) if cell is not None]
        offset = (number - (len(table["scores"]) - 1) / 2) * 1.5  # side by side, so equal scores stay apart
        axis.errorbar(
            [x + offset for x, _ in shown],
            [cell["score"] for _, cell in shown],
            yerr=[
                [cell["score"] - cell["interval"][0] for _, cell in shown],
                [cell["interval"][1] - cell["score"] for _, cell in shown],
            ],
            color=colours(number % 10),
            marker=MARKERS[number % len(MARKERS)],
            capsize=3,
            label=policy,
        )
    axis.set_xticks(
        centres, [f"{100 * b / bins:g}-{100 * (b + 1) / bins:g}%\nn={n}" for b, n in enumerate(table["samples"])]
    )
    axis.set_xlim(0, 100)
    axis.set_ylim(-5, 105)
    axis.set_xlabel("the answer's depth in the haystack (0% = its start)")
    axis.set_ylabel("score (95% interval)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="best")
    axis.set_title(f"{document['model']['name']}: {task} by answer depth")
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)


def write_plots(document: dict[str, Any], run_dir: Path) -> list[str]:
    """Both plots into the run directory, one front per task when the budgets were swept, and one answer-depth
    plot per task that has a depth table; returns their file names."""
    plot_score_vs_ratio(document, run_dir / SCORE_VS_RATIO)
    plot_task_bars(document, run_dir / TASK_BARS)
    written = [SCORE_VS_RATIO, TASK_BARS]
    if document["settings"]["front_budgets"] is not None:
        for task in document["tasks"]:
            plot_front(document, task, run_dir / front_file(task))
            written.append(front_file(task))
    for task in document["answer_depth"]:
        plot_answer_depth(document, task, run_dir / depth_file(task))
        written.append(depth_file(task))
    return written

"""The baselines grid (scripts/baselines_experiment.sh) as one table and one front plot per task.

    python scripts/baselines_table.py                      # reads results/baselines/*/results.json
    python scripts/baselines_table.py --results-dir results/baselines --out results/baselines

Each evaluate.py run of the grid holds one (task, schedule, allocation) with every baseline at each ratio of
the front (`h2o@0.25`). This script joins them: per task, one row per baseline and allocation, one column
per (schedule, ratio) with the score and its 95% interval, then the peak live KV bytes, and which baseline
is strongest in each schedule at each ratio (the bar a NAMM must clear). Writes table.md and
front-<task>.png; runs that have not finished (no results.json) are simply absent.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from namm.atomic_io import atomic_write, atomic_write_text

SCHEDULES = ("prefill", "post_prefill")
MIB = 2**20


@dataclass(frozen=True)
class GridPoint:
    """One baseline at one ratio in one schedule on one task."""

    task: str
    schedule: str
    policy: str  # the policy's name, with "+adakv" / "+pyramid" when its budget is allocated
    ratio: float  # the budget ratio it ran at
    score: float
    interval: tuple[float, float]
    retained: float  # the measured retained ratio once the prompt is in
    peak_live_mib: float
    num_samples: int


def read_points(results_dir: Path) -> tuple[list[GridPoint], dict[tuple[str, str], GridPoint]]:
    """Every budgeted point of every finished run, and the full cache's point per (task, schedule)."""
    points: list[GridPoint] = []
    full: dict[tuple[str, str], GridPoint] = {}
    for path in sorted(results_dir.glob("*/results.json")):
        document = json.loads(path.read_text())
        schedule = document["engine"]["schedule"]
        allocation = {entry["label"]: entry["allocation"] for entry in document["policies"]}
        for row in document["results"]:
            label = row["policy"]
            name = label.split("@")[0]
            if name != "full" and row["budget"] is None:
                continue  # a token budget has no place on a ratio front (the grid runs ratios only)
            suffix = "" if allocation[label] == "none" else f"+{allocation[label]}"
            point = GridPoint(
                task=row["task"],
                schedule=schedule,
                policy=name + suffix,
                ratio=1.0 if name == "full" else row["budget"],
                score=row["score"],
                interval=tuple(row["score_interval"]),
                retained=row["prompt_retained_ratio"],
                peak_live_mib=row["mean_peak_live_kv_bytes"] / MIB,
                num_samples=row["num_samples"],
            )
            if name == "full":
                full[(point.task, schedule)] = point
            else:
                points.append(point)
    return points, full


def strongest(points: list[GridPoint]) -> dict[tuple[str, str, float], list[GridPoint]]:
    """Per (task, schedule, ratio): the baselines with the highest score (all of them on a tie)."""
    groups: dict[tuple[str, str, float], list[GridPoint]] = defaultdict(list)
    for point in points:
        groups[(point.task, point.schedule, point.ratio)].append(point)
    return {key: [p for p in group if p.score == max(q.score for q in group)] for key, group in groups.items()}


def _cell(point: GridPoint | None) -> str:
    if point is None:
        return "-"
    low, high = point.interval
    return f"{point.score:.0f} [{low:.0f}, {high:.0f}]"


def task_table(task: str, points: list[GridPoint], full: dict[tuple[str, str], GridPoint]) -> str:
    """One task's markdown: scores per baseline x (schedule, ratio), peak live KV, strongest per column."""
    mine = [p for p in points if p.task == task]
    columns = sorted({(p.schedule, p.ratio) for p in mine}, key=lambda c: (SCHEDULES.index(c[0]), c[1]))
    by_key = {(p.policy, p.schedule, p.ratio): p for p in mine}
    policies = sorted({p.policy for p in mine})
    samples = sorted({p.num_samples for p in mine} | {f.num_samples for (t, _), f in full.items() if t == task})
    lines = [f"### {task} ({'/'.join(map(str, samples))} prompts)", ""]
    header = [f"{schedule} @{ratio:g}" for schedule, ratio in columns]
    lines += ["| policy | " + " | ".join(header) + " |", "|---|" + "---:|" * len(columns)]
    full_cells = [_cell(full.get((task, schedule))) for schedule, _ in columns]
    lines.append("| full | " + " | ".join(full_cells) + " |")
    for policy in policies:
        cells = [_cell(by_key.get((policy, schedule, ratio))) for schedule, ratio in columns]
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    live = []
    for schedule, ratio in columns:
        column = [p.peak_live_mib for p in mine if (p.schedule, p.ratio) == (schedule, ratio)]
        live.append(f"{min(column):.1f}-{max(column):.1f}")
    lines.append("| peak live KV MiB | " + " | ".join(live) + " |")
    best = strongest(mine)
    tops = [", ".join(p.policy for p in best[(task, schedule, ratio)]) for schedule, ratio in columns]
    lines += ["| **strongest** | " + " | ".join(tops) + " |", ""]
    return "\n".join(lines)


MARKERS = "osv^DPX*hd<"  # 11 markers beside 10 colours: (colour, marker) pairs repeat only after 110 policies


def policy_styles(policies: list[str]) -> dict[str, dict[str, str]]:
    """One style per policy, the same in every panel (a panel without kvzip must not shift the others'
    colours): a colour and marker per base policy, told apart where lines overlap (several at 0), and a dashed
    line for its budget-allocated variant (`h2o+adakv`), so a policy and its allocation share a colour."""
    bases = sorted({name.split("+")[0] for name in policies})
    index = {base: position for position, base in enumerate(bases)}
    styles = {}
    for name in sorted(set(policies)):
        position = index[name.split("+")[0]]
        styles[name] = {
            "color": f"C{position % 10}",
            "marker": MARKERS[position % len(MARKERS)],
            "linestyle": "--" if "+" in name else "-",
        }
    return styles


def plot_front(task: str, points: list[GridPoint], full: dict[tuple[str, str], GridPoint], path: Path) -> None:
    """Score against measured retained ratio, one panel per schedule, one line per baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = [p for p in points if p.task == task]
    schedules = [s for s in SCHEDULES if any(p.schedule == s for p in mine)]
    styles = policy_styles([p.policy for p in mine])
    figure, axes = plt.subplots(1, len(schedules), figsize=(6 * len(schedules), 4.5), squeeze=False)
    for axis, schedule in zip(axes[0], schedules):
        for policy, style in styles.items():
            line = sorted((p for p in mine if p.policy == policy and p.schedule == schedule), key=lambda p: p.ratio)
            if line:
                axis.plot([p.retained for p in line], [p.score for p in line], label=policy, **style)
        if (task, schedule) in full:
            axis.axhline(full[(task, schedule)].score, color="black", linewidth=1, label="full cache")
        axis.set(title=f"{task}, schedule={schedule}", xlabel="retained ratio (prompt end)", ylabel="score")
        axis.set_ylim(-3, 103)
        axis.grid(alpha=0.3)
    for axis in axes[0]:
        axis.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=110))
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results-dir", type=Path, default=Path("results/baselines"))
    parser.add_argument("--out", type=Path, default=None, help="where table.md and the plots go (default: results-dir)")
    args = parser.parse_args()
    out = args.out or args.results_dir
    points, full = read_points(args.results_dir)
    if not points:
        raise SystemExit(
            f"no finished run (*/results.json) under {args.results_dir}: run scripts/baselines_experiment.sh"
        )
    tasks = sorted({p.task for p in points})
    text = "\n".join(task_table(task, points, full) for task in tasks)
    atomic_write_text(out / "table.md", text)
    for task in tasks:
        plot_front(task, points, full, out / f"front-{task}.png")
    print(text)


if __name__ == "__main__":
    main()

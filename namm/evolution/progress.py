"""Local progress for users without W&B: `metrics.jsonl` (one line per generation) and a PNG plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from namm.atomic_io import atomic_write, atomic_write_text

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "progress.png"


class MetricsLog:
    """Append-only JSON lines; on resume, lines past the checkpoint's generation are dropped."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / METRICS_FILE

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a kill: it and anything after it are stale
        return records

    def keep_up_to(self, generation: int) -> None:
        """Forget generations the checkpoint does not cover (written just before a kill)."""
        kept = [record for record in self.read() if record["generation"] <= generation]
        atomic_write_text(self.path, "".join(json.dumps(record) + "\n" for record in kept))

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(r["generation"], r[key]) for r in records if key in r and r[key] is not None and math.isfinite(r[key])]
    return [g for g, _ in points], [v for _, v in points]


def plot_progress(records: list[dict[str, Any]], path: Path) -> None:
    """Fitness (population and validation) and retained-cache ratio per generation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, (fitness_axis, ratio_axis) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    generations, worst = _series(records, "fitness/worst")
    _, best = _series(records, "fitness/best")
    if generations:
        fitness_axis.fill_between(generations, worst, best, alpha=0.2, label="population best-worst")
    fitness_axis.plot(*_series(records, "fitness/mean"), marker="o", label="population mean")
    fitness_axis.plot(*_series(records, "validation/fitness"), marker="s", label="centre, validation")
    objective = next((r["objective"] for r in records if "objective" in r), "score")
    fitness_axis.set_ylabel(f"fitness (objective {objective})")
    fitness_axis.legend(loc="best", fontsize="small")
    fitness_axis.grid(alpha=0.3)
    generations, low = _series(records, "retained_ratio/min")
    _, high = _series(records, "retained_ratio/max")
    if generations:
        ratio_axis.fill_between(generations, low, high, alpha=0.2, label="population min-max")
    ratio_axis.plot(*_series(records, "retained_ratio/mean"), marker="o", label="population mean")
    ratio_axis.plot(*_series(records, "validation/retained_ratio"), marker="s", label="centre, validation")
    ratio_axis.set_ylabel("retained cache ratio")
    ratio_axis.set_xlabel("generation")
    ratio_axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    ratio_axis.legend(loc="best", fontsize="small")
    ratio_axis.grid(alpha=0.3)
    figure.tight_layout()
    atomic_write(path, lambda file: figure.savefig(file, dpi=100, format="png"))
    plt.close(figure)

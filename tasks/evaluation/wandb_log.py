"""Optional W&B logging of an evaluation: the results table, per-policy aggregates as summary metrics, plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from namm.evolution.config import LoggerConfig, WandbMode
from namm.evolution.wandb_run import effective_mode
from tasks.evaluation.report import CSV_COLUMNS


def log_to_wandb(config: LoggerConfig, document: dict[str, Any], run_dir: Path, name: str) -> str | None:
    """Log one finished evaluation as its own W&B run (online, or offline without credentials); returns its id."""
    mode = effective_mode(config)
    if mode == WandbMode.disabled:
        return None
    import wandb

    run = wandb.init(
        project=config.project,
        entity=config.entity,
        group=config.group,
        tags=[*config.tags, "evaluation"],
        name=name,
        dir=str(run_dir),
        mode=mode.value,
        job_type="evaluation",
        config={key: document[key] for key in ("model", "namms", "engine", "settings", "tasks", "policies")},
    )
    try:
        rows = [[result.get(column) for column in CSV_COLUMNS] for result in document["results"]]
        run.log({"results": wandb.Table(columns=list(CSV_COLUMNS), data=rows)})
        for plot in document["files"]["plots"]:
            run.log({Path(plot).stem: wandb.Image(str(run_dir / plot))})
        for policy, aggregate in document["aggregates"].items():
            for key in (
                "mean_score",
                "mean_relative_to_full",
                "retained_ratio",
                "tokens_per_second",
                "longbench_en_mean",
            ):
                if aggregate[key] is not None:
                    run.summary[f"{policy}/{key}"] = aggregate[key]
        return run.id
    finally:
        run.finish()

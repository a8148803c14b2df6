"""`python evaluate.py`, top to bottom: check every input (cheap), load the model once, run each policy on
each task's samples (resuming from what is already on disk), then write results.json/.csv, plots and the
table, and optionally log to W&B.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from namm.engine import EngineConfig
from namm.errors import ConfigError
from namm.evolution.checkpoint import library_versions
from namm.models import ModelConfig, check_model_config, load_model
from namm.typed_config import typed_config
from tasks.config import TaskConfig, task_config
from tasks.evaluation.config import NAMM_POLICY, EvaluateConfig, validate_evaluate_config
from tasks.evaluation.contenders import (
    Contender,
    contender_names,
    front_points,
    plan_contenders,
    wants_matched_budgets,
)
from tasks.evaluation.namm_source import NAMMSource, check_checkpoint_choice, resolve_namm_sources
from tasks.evaluation.plots import write_plots
from tasks.evaluation.policy_runs import EvaluationContext, PolicyTaskRun, mean_ratio, run_matched, run_policy
from tasks.evaluation.report import RESULTS_CSV, RESULTS_JSON, markdown_table, write_results
from tasks.evaluation.schema import SCHEMA_VERSION
from tasks.evaluation.summary import add_relative_scores, policy_aggregate, task_result
from tasks.evaluation.wandb_log import log_to_wandb
from tasks.preparation import prepare_tasks
from tasks.references import (
    ReferenceCache,
    ReferenceContext,
    ReferenceScores,
    default_reference_dir,
    engine_generator_record,
)
from tasks.runner import PreparedTask
from tasks.task_data import check_task_data

log = logging.getLogger(__name__)


@dataclass
class EvaluationPlan:
    """A checked request: everything decided before the model loads."""

    config: EvaluateConfig
    tasks: TaskConfig
    model: ModelConfig
    contenders: list[Contender]
    matched: bool  # budgeted baselines run at the (one) NAMM's retained ratio
    engine: EngineConfig

    @property
    def namms(self) -> list[NAMMSource]:
        """The NAMMs among the contenders, in order (empty when none runs)."""
        return [contender.namm for contender in self.contenders if contender.namm is not None]


def resolve_engine_config(settings: dict[str, Any] | None, namms: list[NAMMSource]) -> EngineConfig:
    """Explicit (non-null) `engine.*` values, else the checkpoints' training settings (which must agree), else
    the engine defaults."""
    explicit = {key: value for key, value in (settings or {}).items() if value is not None}
    schedules = [namm.training_engine for namm in namms if namm.training_engine is not None]
    trained = dict(schedules[0]) if schedules else {}
    for other in schedules[1:]:
        differing = sorted(key for key in trained if other.get(key) != trained[key] and key not in explicit)
        if differing:
            raise ConfigError(
                f"the NAMMs were trained with different engine settings ({differing}); every policy runs on one "
                f"schedule, so give it explicitly (e.g. engine.{differing[0]}=...)"
            )
    config = typed_config(EngineConfig, trained | explicit, "engine")
    for namm in namms:
        namm.config.check_update_interval(config.update_interval)
    return config


def plan_evaluation(cfg: DictConfig) -> EvaluationPlan:
    """Every check that does not need the model: config values, checkpoint, policies, budgets, task data.
    A bad input raises ConfigError (or CheckpointError) naming the setting and the fix."""
    config = validate_evaluate_config(cfg)
    tasks = task_config(config.task)
    model = typed_config(ModelConfig, config.model, "model")
    check_model_config(model)
    runs_namm = NAMM_POLICY in contender_names(config)
    check_checkpoint_choice(config.checkpoint, config.checkpoints, runs_namm)
    labelled = []
    if runs_namm:
        labelled = resolve_namm_sources(
            config.checkpoint, config.checkpoints, config.train_dir, config.checkpoint_params, config.namm
        )
    contenders = plan_contenders(config, labelled)
    namms = [source for _, source in labelled]
    matched = wants_matched_budgets(config, contenders, namms)
    if config.front:
        contenders = front_points(contenders, config.front_budgets, keep_own=matched)
    engine = resolve_engine_config(config.engine, namms)
    check_task_data(tasks)
    return EvaluationPlan(config, tasks, model, contenders, matched, engine)


def run_task_policies(
    context: EvaluationContext, plan: EvaluationPlan, task: PreparedTask
) -> list[tuple[Contender, PolicyTaskRun]]:
    """Every contender on one task; the NAMM runs before the baselines whose budget it sets."""
    runs: list[tuple[Contender, PolicyTaskRun]] = []
    namm_records = None
    for contender in plan.contenders:
        if plan.matched and contender.matchable:
            config = plan.config
            run = run_matched(context, contender, task, namm_records, config.budget_tolerance, config.budget_attempts)
            if not run.within_tolerance:
                log.warning(
                    "%s on %s: retained ratio %.4f is %.1f%% away from the NAMM's %.4f after %d run(s); compare with care",
                    contender.label,
                    task.spec.name,
                    mean_ratio(run.records),
                    100 * min(attempt["relative_gap"] for attempt in run.attempts),
                    run.budget_target,
                    len(run.attempts),
                )
        else:
            run = run_policy(context, contender, contender.config, task)
        if contender.is_namm:
            namm_records = run.records
        if contender.config.name == "full":
            share_full_cache_scores(context, task, run.records)
        runs.append((contender, run))
    return runs


def share_full_cache_scores(context: EvaluationContext, task: PreparedTask, records: list[dict[str, Any]]) -> None:
    """Add the full-cache scores to the reference cache training reads (same key: task settings, weights,
    dtype, device type, engine chunking), so a training run on these prompts does not compute them again."""
    generator = engine_generator_record(context.engine_config)
    cache = ReferenceCache(default_reference_dir(), ReferenceContext.of(context.loaded, generator))
    scores = ReferenceScores()
    for record in records:
        scores.put(task.spec.name, record["index"], record["score"])
    cache.save(task.settings, scores)


def result_row(contender: Contender, task: PreparedTask, run: PolicyTaskRun, run_dir: Path) -> dict[str, Any]:
    row = task_result(contender.label, task, run.records)
    row.update(
        family=contender.config.name,
        budget=run.policy.budget_ratio if contender.budgeted else None,
        budget_target=run.budget_target,
        budget_attempts=run.attempts,
        within_tolerance=run.within_tolerance,
        samples_file=str(run.samples_file.relative_to(run_dir)),
    )
    return row


def build_document(
    plan: EvaluationPlan, context: EvaluationContext, tasks: list[PreparedTask], rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """results.json (see tasks/evaluation/schema.py); `files.plots` is filled in once the plots exist."""
    add_relative_scores(rows)
    loaded = context.loaded
    first_weight = next(loaded.model.parameters())
    namms = {c.label: c.namm.describe() for c in plan.contenders if c.namm is not None}
    transfer = None
    foreign = sorted({namm.trained_on for namm in plan.namms if namm.trained_on not in (None, loaded.name)})
    if foreign:
        transfer = {"from_model": ", ".join(foreign), "to_model": loaded.name}
    return {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": list(sys.argv),
        "run_dir": str(context.run_dir),
        "model": {
            "name": loaded.name,
            "dtype": str(first_weight.dtype).removeprefix("torch."),
            "device": str(first_weight.device),
            "max_context": loaded.max_context,
            "chat_template": loaded.chat_template,
            "seed": plan.model.seed,
        },
        "namms": namms,
        "transfer": transfer,
        "engine": asdict(plan.engine),
        "settings": {
            "batch_size": plan.config.batch_size,
            "match_budget": plan.matched,
            "budget_tolerance": plan.config.budget_tolerance,
            "budget_attempts": plan.config.budget_attempts,
            "front_budgets": sorted(plan.config.front_budgets) if plan.config.front else None,
            "versions": library_versions(),
        },
        "tasks": {task.spec.name: {**task.settings.to_dict(), "num_samples": len(task.samples)} for task in tasks},
        "policies": [{**c.describe(), "matched_budget": plan.matched and c.budgeted} for c in plan.contenders],
        "results": rows,
        "aggregates": {c.label: policy_aggregate([r for r in rows if r["policy"] == c.label]) for c in plan.contenders},
        "files": {"csv": RESULTS_CSV, "plots": []},
    }


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the evaluation `cfg` (a composed conf/evaluate.yaml) describes; returns the results document."""
    started = time.perf_counter()
    plan = plan_evaluation(cfg)
    config = plan.config
    for namm in plan.namms:
        if namm.trained_on and namm.trained_on != plan.model.name:
            log.info("zero-shot transfer: a NAMM evolved on %s, evaluated on %s", namm.trained_on, plan.model.name)
    run_dir = Path(config.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    loaded = load_model(plan.model)
    tasks = prepare_tasks(plan.tasks, loaded)
    rows: list[dict[str, Any]] = []
    total = len(plan.contenders) * sum(len(task.samples) for task in tasks)
    with (
        logging_redirect_tqdm(),
        tqdm(total=total, unit="sample", disable=not config.progress, dynamic_ncols=True) as bar,
    ):
        context = EvaluationContext(loaded, asdict(plan.model), plan.engine, run_dir, config.batch_size, bar)
        for task in tasks:
            rows += [
                result_row(contender, task, run, run_dir) for contender, run in run_task_policies(context, plan, task)
            ]

    document = build_document(plan, context, tasks, rows)
    if config.plots:
        document["files"]["plots"] = write_plots(document, run_dir)
    write_results(document, run_dir)
    print(f"\n{markdown_table(document)}\n")
    print(
        f"Evaluated {len(plan.contenders)} polic{'y' if len(plan.contenders) == 1 else 'ies'} on {len(tasks)} task(s) "
        f"in {time.perf_counter() - started:.0f} s. Results: {run_dir / RESULTS_JSON}, {run_dir / RESULTS_CSV}"
        + "".join(f", {run_dir / plot}" for plot in document["files"]["plots"]),
        flush=True,
    )
    log_to_wandb(config.logger, document, run_dir, config.name)
    return document

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
from namm.models import ModelConfig, check_model_config, load_model, max_context_without_weights
from namm.typed_config import typed_config
from tasks.evaluation.answer_depth import depth_table
from tasks.evaluation.budget_matching import MATCH_TARGETS
from tasks.evaluation.comparisons import TaskScores, all_comparisons
from tasks.evaluation.config import NAMM_POLICY, EvaluateConfig, validate_evaluate_config
from tasks.evaluation.contenders import (
    Contender,
    contender_names,
    front_points,
    plan_contenders,
    wants_matched_budgets,
)
from tasks.evaluation.eviction_maps import write_eviction_maps
from tasks.evaluation.held_out import HeldOutRecord, check_before_loading, hold_out
from tasks.evaluation.intervals import BootstrapSettings
from tasks.evaluation.namm_source import NAMMSource, check_checkpoint_choice, resolve_namm_sources
from tasks.evaluation.plots import write_plots
from tasks.evaluation.policy_runs import EvaluationContext, PolicyTaskRun, mean_ratio, run_matched, run_policy
from tasks.evaluation.report import COMPARISONS_CSV, RESULTS_CSV, RESULTS_JSON, markdown_table, write_results
from tasks.evaluation.run_identity import score_inputs
from tasks.evaluation.schema import SCHEMA_VERSION
from tasks.evaluation.summary import (
    WEIGHTING,
    add_relative_scores,
    policy_aggregate,
    task_result,
    task_scores,
    weak_full_tasks,
)
from tasks.evaluation.wandb_log import log_to_wandb
from tasks.preparation import check_prompt_lengths, prepare_tasks
from tasks.references import (
    ReferenceCache,
    ReferenceContext,
    ReferenceScores,
    default_reference_dir,
    engine_generator_record,
)
from tasks.runner import PreparedTask
from tasks.task_config import TaskConfig, task_config
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
    skip_lines: dict[str, set[int]]  # LongBench lines a NAMM trained on (trained_prompts=skip), by task

    @property
    def namms(self) -> list[NAMMSource]:
        """The NAMMs among the contenders, in order (empty when none runs)."""
        return [contender.namm for contender in self.contenders if contender.namm is not None]

    @property
    def labelled_namms(self) -> list[tuple[str, NAMMSource]]:
        return [(contender.label, contender.namm) for contender in self.contenders if contender.namm is not None]

    @property
    def bootstrap(self) -> BootstrapSettings:
        statistics = self.config.statistics
        return BootstrapSettings(statistics.seed, statistics.resamples, statistics.level)


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
        namm.pretrained.config.check_update_interval(config.update_interval)
    return config


def plan_evaluation(cfg: DictConfig) -> EvaluationPlan:
    """Every check that does not need the model: config values, checkpoint, policies, budgets, task data.
    A bad input raises ConfigError (or CheckpointError) naming the setting and the fix."""
    config = validate_evaluate_config(cfg)
    tasks = task_config(config.task)
    model = typed_config(ModelConfig, config.model, "model")
    check_model_config(model)
    check_prompt_lengths(tasks, model.name, max_context_without_weights(model))
    runs_namm = NAMM_POLICY in contender_names(config)
    check_checkpoint_choice(config.checkpoint, config.checkpoints, runs_namm)
    labelled = []
    if runs_namm:
        labelled = resolve_namm_sources(
            config.checkpoint, config.checkpoints, config.train_dir, config.checkpoint_params, config.namm
        )
    namms = [source for _, source in labelled]
    engine = resolve_engine_config(config.engine, namms)
    contenders = plan_contenders(config, labelled, engine)
    matched = wants_matched_budgets(config, contenders, namms)
    if config.front:
        contenders = front_points(contenders, config.front_budgets, keep_own=matched)
    check_task_data(tasks)
    skip_lines = check_before_loading(tasks, labelled, config.trained_prompts)
    return EvaluationPlan(config, tasks, model, contenders, matched, engine, skip_lines)


def run_task_policies(
    context: EvaluationContext, plan: EvaluationPlan, task: PreparedTask
) -> list[tuple[Contender, PolicyTaskRun]]:
    """Every contender on one task; the NAMM runs before the baselines whose budget it sets."""
    runs: list[tuple[Contender, PolicyTaskRun]] = []
    namm_records = None
    quantity = MATCH_TARGETS[plan.config.match_on]
    for contender in plan.contenders:
        if plan.matched and contender.matchable:
            config = plan.config
            run = run_matched(
                context, contender, task, namm_records, config.budget_tolerance, config.budget_attempts, quantity
            )
            if not run.within_tolerance:
                log.warning(
                    "%s on %s: %s %.4f is %.1f%% away from the NAMM's %.4f after %d run(s); compare with care",
                    contender.label,
                    task.spec.name,
                    quantity.label,
                    mean_ratio(run.records, quantity),
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


def result_row(
    contender: Contender, task: PreparedTask, run: PolicyTaskRun, run_dir: Path, settings: BootstrapSettings
) -> dict[str, Any]:
    row = task_result(contender.label, task, run.records, run.fresh, settings)
    row.update(
        family=contender.config.name,
        budget=run.policy.budget_ratio if contender.budgeted else None,
        budget_target=run.budget_target,
        budget_attempts=run.attempts,
        within_tolerance=run.within_tolerance,
        samples_file=str(run.samples_file.relative_to(run_dir)),
    )
    return row


def prompt_lengths(task: PreparedTask) -> dict[str, int]:
    """The truncation actually applied (`max_prompt_tokens` is the budget asked for; a chat wrapper can make a
    prompt shorter still): how many prompts were cut and the longest prompt that ran."""
    return {
        "num_samples": len(task.samples),
        "truncated_samples": sum(sample.truncated for sample in task.samples),
        "longest_prompt_tokens": max(len(sample.prompt_ids) for sample in task.samples),
    }


def build_document(
    plan: EvaluationPlan,
    context: EvaluationContext,
    tasks: list[PreparedTask],
    rows: list[dict[str, Any]],
    scores: dict[tuple[str, str], TaskScores],
    held_out: dict[str, HeldOutRecord],
    depth_tables: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """results.json (see tasks/evaluation/schema.py); `files.plots` is filled in once the plots exist."""
    add_relative_scores(rows, scores)
    settings = plan.bootstrap
    by_policy = {c.label: {t.spec.name: scores[(c.label, t.spec.name)] for t in tasks} for c in plan.contenders}
    references = [c.label for c in plan.contenders if c.config.name == "full" or c.is_namm]
    full = by_policy.get("full")
    loaded = context.loaded
    first_weight = next(loaded.model.parameters())
    namms = {c.label: c.namm.describe() for c in plan.contenders if c.namm is not None}
    transfer = None
    foreign = sorted({n.pretrained.trained_on for n in plan.namms} - {None, loaded.name})
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
            "weights": loaded.weights_id,
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
            "match_on": plan.config.match_on,
            "matched_quantity": MATCH_TARGETS[plan.config.match_on].label,
            "trained_prompts": plan.config.trained_prompts,
            "weighting": WEIGHTING,
            "statistics": asdict(plan.config.statistics),
            "versions": library_versions(),
            "score_inputs": context.score_inputs,
        },
        "held_out": {label: record.to_dict() for label, record in held_out.items()},
        "weak_full_tasks": weak_full_tasks(rows, plan.config.statistics.weak_full_score),
        "tasks": {task.spec.name: {**task.settings.to_dict(), **prompt_lengths(task)} for task in tasks},
        "policies": [{**c.describe(), "matched_budget": plan.matched and c.budgeted} for c in plan.contenders],
        "results": rows,
        "aggregates": {
            c.label: policy_aggregate([r for r in rows if r["policy"] == c.label], by_policy[c.label], full, settings)
            for c in plan.contenders
        },
        "comparisons": [comparison.to_dict() for comparison in all_comparisons(by_policy, references, settings)],
        "answer_depth": depth_tables,
        "files": {"csv": RESULTS_CSV, "comparisons_csv": COMPARISONS_CSV, "plots": []},
    }


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the evaluation `cfg` (a composed conf/evaluate.yaml) describes; returns the results document."""
    started = time.perf_counter()
    plan = plan_evaluation(cfg)
    config = plan.config
    for namm in plan.namms:
        trained_on = namm.pretrained.trained_on
        if trained_on and trained_on != plan.model.name:
            log.info("zero-shot transfer: a NAMM evolved on %s, evaluated on %s", trained_on, plan.model.name)
    run_dir = Path(config.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    loaded = load_model(plan.model)
    tasks = prepare_tasks(plan.tasks, loaded, skip_lines=plan.skip_lines)
    tasks, held_out = hold_out(tasks, plan.labelled_namms, config.trained_prompts)
    rows: list[dict[str, Any]] = []
    scores: dict[tuple[str, str], TaskScores] = {}
    depth_tables: dict[str, dict[str, Any]] = {}
    total = len(plan.contenders) * sum(len(task.samples) for task in tasks)
    with (
        logging_redirect_tqdm(),
        tqdm(total=total, unit="sample", disable=not config.progress, dynamic_ncols=True) as bar,
    ):
        inputs = score_inputs(loaded, config.batch_size)
        context = EvaluationContext(loaded, asdict(plan.model), inputs, plan.engine, run_dir, config.batch_size, bar)
        maps: list[str] = []
        for task in tasks:
            runs = run_task_policies(context, plan, task)
            for contender, run in runs:
                rows.append(result_row(contender, task, run, run_dir, plan.bootstrap))
                scores[(contender.label, task.spec.name)] = task_scores(task, run.records)
            if config.eviction_maps:
                maps += write_eviction_maps(context, task, runs, config.eviction_maps)
            if config.answer_depth_bins:
                records = {contender.label: run.records for contender, run in runs}
                table = depth_table(task, records, config.answer_depth_bins, plan.bootstrap)
                if table is not None:
                    depth_tables[task.spec.name] = table.to_dict()

    document = build_document(plan, context, tasks, rows, scores, held_out, depth_tables)
    if config.plots:
        document["files"]["plots"] = write_plots(document, run_dir)
    if maps:
        document["files"]["eviction_maps"] = maps
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

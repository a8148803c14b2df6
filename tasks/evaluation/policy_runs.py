"""Run one policy over one task's samples through the engine, batch by batch, resuming from the sample store."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import mean
from typing import Any

from tqdm.auto import tqdm

from namm.engine import EngineConfig, GenerationResult, GenerationSettings, MemoryEngine
from namm.models import LoadedModel
from namm.policies import PolicyConfig
from tasks.evaluation.budget_matching import UpdateSchedule, relative_gap, solve_budget
from tasks.evaluation.contenders import Contender, build_contender_policy
from tasks.evaluation.sample_store import SampleStore, prompt_digest
from tasks.fingerprints import settings_digest
from tasks.generators import engine_generator
from tasks.runner import PreparedTask, run_task

SAMPLES_DIR = "samples"


class TimedEngine:
    """The runner's generator seam over the engine, timing the generate calls only."""

    def __init__(self, engine: MemoryEngine) -> None:
        self.generate = engine_generator(engine)
        self.seconds = 0.0

    def __call__(self, prompts: list[list[int]], settings: GenerationSettings) -> list[GenerationResult]:
        start = time.perf_counter()
        results = self.generate(prompts, settings)
        self.seconds += time.perf_counter() - start
        return results


@dataclass
class EvaluationContext:
    """What every policy run shares: the model, engine schedule, output folder, batching and progress bar."""

    loaded: LoadedModel
    model_settings: dict[str, Any]  # the model config as run (part of every sample store's key)
    engine_config: EngineConfig
    run_dir: Path
    batch_size: int
    bar: tqdm


@dataclass
class PolicyTaskRun:
    """The records of one (policy, task) run and the budget it ran at (None: not budgeted or unmatched)."""

    records: list[dict[str, Any]]
    policy: PolicyConfig
    samples_file: Path
    budget_target: float | None = None
    attempts: list[dict[str, float]] | None = None
    within_tolerance: bool | None = None


def store_for(
    context: EvaluationContext, contender: Contender, policy: PolicyConfig, task: PreparedTask
) -> SampleStore:
    """Keyed by everything that changes a sample's output, so changed settings never reuse old records."""
    key = {
        "policy": _policy_key(policy),
        "namm": contender.namm.fingerprint() if contender.namm is not None else None,
        "engine": asdict(context.engine_config),
        "model": context.model_settings,
        "task": task.settings.key(),
    }
    digest = settings_digest(key, 12, default=str)
    return SampleStore(context.run_dir / SAMPLES_DIR / contender.label / f"{task.spec.name}-{digest}.jsonl")


def _policy_key(policy: PolicyConfig) -> dict[str, Any]:
    """The policy's part of a sample store's key, with the ratio under `budget`, its name before the key was
    renamed `budget_ratio`, so that stores written before the rename keep their file names and are reused."""
    values = asdict(policy)
    return {"budget": values.pop("budget_ratio"), **values}


def _record(
    task: PreparedTask, index: int, prediction: str, score: float, result: GenerationResult, seconds: float, rows: int
) -> dict[str, Any]:
    sample = task.samples[index]
    return {
        "index": index,
        "prompt_sha": prompt_digest(sample.prompt_ids),
        "prediction": prediction,
        "answers": list(sample.answers),
        "score": score,
        "retained_ratio": result.retained_ratio,
        "retained_ratio_per_layer": list(result.retained_ratio_per_layer),
        "prompt_tokens": result.prompt_length,
        "generated_tokens": len(result.token_ids),
        "tokens_seen": result.tokens_seen,
        "last_update": result.update_positions[-1] if result.update_positions else 0,
        "peak_live_kv_bytes": result.memory.live_kv_bytes.peak,
        "final_live_kv_bytes": result.memory.live_kv_bytes.final,
        "batch_peak_storage_bytes": result.memory.batch_storage_bytes.peak,
        "batch_peak_overhead_bytes": result.memory.batch_overhead_bytes.peak,
        "batch_rows": rows,
        "seconds": seconds / rows,  # this sample's share of its batch's generate time
    }


def run_policy(
    context: EvaluationContext, contender: Contender, policy: PolicyConfig, task: PreparedTask
) -> PolicyTaskRun:
    """Every sample of `task` under `policy`; samples already in the store are not run again (but count as
    progress: the bar's total counts every sample of every policy).

    Sample indices are positions in `task.samples` (prepared tasks hold their samples in index order)."""
    indices = list(range(len(task.samples)))
    store = store_for(context, contender, policy, task)
    store.open({index: prompt_digest(sample.prompt_ids) for index, sample in enumerate(task.samples)})
    todo = store.missing(indices)
    bar = context.bar
    bar.update(len(indices) - len(todo))  # already on disk
    bar.set_description(f"{contender.label} {task.spec.name}")
    if todo:
        generate = TimedEngine(
            MemoryEngine(context.loaded.model, build_contender_policy(contender, policy), context.engine_config)
        )
        tokenizer = context.loaded.tokenizer
        for start in range(0, len(todo), context.batch_size):
            batch = todo[start : start + context.batch_size]
            generate.seconds = 0.0
            run = run_task(task, generate, tokenizer, batch, batch_size=len(batch))
            store.append(
                [
                    _record(task, index, prediction, score, result, generate.seconds, len(batch))
                    for index, prediction, score, result in zip(
                        run.indices, run.predictions, run.sample_scores, run.generations
                    )
                ]
            )
            bar.update(len(batch))
    return PolicyTaskRun(store.ordered(indices), policy, store.path)


def schedules_of(records: Sequence[dict[str, Any]]) -> list[UpdateSchedule]:
    return [UpdateSchedule(record["tokens_seen"], record["last_update"]) for record in records]


def mean_ratio(records: Sequence[dict[str, Any]]) -> float:
    return mean(record["retained_ratio"] for record in records)


def run_matched(
    context: EvaluationContext,
    contender: Contender,
    task: PreparedTask,
    namm_records: Sequence[dict[str, Any]],
    tolerance: float,
    attempts: int,
) -> PolicyTaskRun:
    """Run a budgeted baseline at the budget whose retained ratio matches the NAMM's on this task.

    The first budget is solved on the NAMM's own update schedule; if the achieved ratio misses the
    tolerance, the next is solved on the schedule this baseline actually had (a fixed-point step)."""
    target = mean_ratio(namm_records)
    schedules = schedules_of(namm_records)
    tried: list[tuple[float, PolicyTaskRun]] = []
    for _ in range(attempts):
        budget = solve_budget(target, schedules)
        if any(budget == previous for previous, _ in tried):
            break  # the schedule has settled: another run would repeat this one
        if tried:
            context.bar.total += len(task.samples)  # a calibration run the progress total did not count
        run = run_policy(context, contender, contender.with_budget(budget), task)
        tried.append((budget, run))
        if relative_gap(mean_ratio(run.records), target) <= tolerance:
            break
        schedules = schedules_of(run.records)
    _, best = min(tried, key=lambda item: relative_gap(mean_ratio(item[1].records), target))
    best.budget_target = target
    best.attempts = [
        {
            "budget": budget,
            "retained_ratio": mean_ratio(run.records),
            "relative_gap": relative_gap(mean_ratio(run.records), target),
        }
        for budget, run in tried
    ]
    best.within_tolerance = relative_gap(mean_ratio(best.records), target) <= tolerance
    return best

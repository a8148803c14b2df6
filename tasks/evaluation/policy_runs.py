"""Run one policy over one task's samples through the engine, batch by batch, resuming from the sample store."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from statistics import mean
from typing import Any

from tqdm.auto import tqdm

from namm.engine import EngineConfig, GenerationResult, GenerationSettings, MemoryEngine
from namm.models import LoadedModel
from namm.policies import PolicyConfig
from tasks.evaluation.budget_matching import MatchTarget, UpdateSchedule, relative_gap, solve_budget
from tasks.evaluation.contenders import Contender, build_contender_policy
from tasks.evaluation.sample_store import SampleStore
from tasks.fingerprints import prompt_digest, settings_digest
from tasks.generators import engine_generator
from tasks.runner import PreparedTask, run_task
from tasks.task_spec import Sample

SAMPLES_DIR = "samples"
log = logging.getLogger(__name__)


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
    score_inputs: dict[str, Any]  # tasks.evaluation.run_identity.score_inputs (part of every key too)
    engine_config: EngineConfig
    run_dir: Path
    batch_size: int
    bar: tqdm


@dataclass
class PolicyTaskRun:
    """The records of one (policy, task) run and the budget it ran at (None: not budgeted or unmatched).
    `fresh`: the sample indices run now; the others were read back from the store (their timings are old)."""

    records: list[dict[str, Any]]
    policy: PolicyConfig
    samples_file: Path
    fresh: frozenset[int] = frozenset()
    budget_target: float | None = None
    attempts: list[dict[str, float]] | None = None
    within_tolerance: bool | None = None


def store_for(
    context: EvaluationContext, contender: Contender, policy: PolicyConfig, task: PreparedTask
) -> SampleStore:
    """Keyed by everything that changes a sample's output, so changed settings never reuse old records."""
    key = {
        "policy": asdict(policy),
        "namm": contender.namm.fingerprint() if contender.namm is not None else None,
        "engine": asdict(context.engine_config),
        "model": context.model_settings,
        "inputs": context.score_inputs,
        "task": task.settings.key(),
    }
    digest = settings_digest(key, 12, default=str)
    return SampleStore(context.run_dir / SAMPLES_DIR / contender.label / f"{task.spec.name}-{digest}.jsonl")


def _record(
    sample: Sample, prediction: str, score: float, result: GenerationResult, seconds: float, rows: int
) -> dict[str, Any]:
    prompt_updates = [position for position in result.update_positions if position <= result.prompt_length]
    return {
        "index": sample.index,
        "prompt_sha": prompt_digest(sample.prompt_ids),
        "prediction": prediction,
        "answers": list(sample.answers),
        "score": score,
        "retained_ratio": result.retained_ratio,
        "retained_ratio_per_layer": list(result.retained_ratio_per_layer),
        "prompt_tokens": result.prompt_length,
        "prompt_retained_ratio": result.prompt_retained_ratio,
        "prompt_last_update": prompt_updates[-1] if prompt_updates else 0,
        "generated_tokens": len(result.token_ids),
        "tokens_seen": result.tokens_seen,
        "last_update": result.update_positions[-1] if result.update_positions else 0,
        "peak_live_kv_bytes": result.memory.live_kv_bytes.peak,
        "final_live_kv_bytes": result.memory.live_kv_bytes.final,
        "batch_peak_storage_bytes": result.memory.batch_storage_bytes.peak,
        "batch_peak_overhead_bytes": result.memory.batch_overhead_bytes.peak,
        "batch_rows": rows,
        "seconds": seconds / rows,  # this sample's share of its batch's generate time
        "reconstruction_tokens": result.reconstruction.tokens if result.reconstruction else 0,
        "reconstruction_seconds": result.reconstruction.seconds / rows if result.reconstruction else 0.0,
    }


def run_policy(
    context: EvaluationContext, contender: Contender, policy: PolicyConfig, task: PreparedTask
) -> PolicyTaskRun:
    """Every sample of `task` under `policy`; samples already in the store are not run again (but count as
    progress: the bar's total counts every sample of every policy).

    Records carry the sample's own index (its data line or synthetic number), which is not its position in
    `task.samples` when trained-on samples were skipped."""
    positions = {sample.index: position for position, sample in enumerate(task.samples)}
    indices = list(positions)
    store = store_for(context, contender, policy, task)
    store.open({sample.index: prompt_digest(sample.prompt_ids) for sample in task.samples})
    todo = store.missing(indices)
    bar = context.bar
    bar.update(len(indices) - len(todo))  # already on disk
    bar.set_description(f"{contender.label} {task.spec.name}")
    if todo:
        tokenizer = context.loaded.tokenizer
        memory_policy = build_contender_policy(contender, policy)
        memory_policy.use_tokenizer(partial(tokenizer.encode, add_special_tokens=False))
        generate = TimedEngine(MemoryEngine(context.loaded.model, memory_policy, context.engine_config))
        for start in range(0, len(todo), context.batch_size):
            batch = todo[start : start + context.batch_size]
            generate.seconds = 0.0
            run = run_task(task, generate, tokenizer, [positions[index] for index in batch], batch_size=len(batch))
            store.append(
                [
                    _record(task.samples[positions[index]], prediction, score, result, generate.seconds, len(batch))
                    for index, prediction, score, result in zip(
                        run.indices, run.predictions, run.sample_scores, run.generations
                    )
                ]
            )
            bar.update(len(batch))
    records = store.ordered(indices)
    log_reconstruction_cost(contender.label, task.spec.name, records)
    return PolicyTaskRun(records, policy, store.path, fresh=frozenset(todo))


def log_reconstruction_cost(label: str, task: str, records: Sequence[dict[str, Any]]) -> None:
    """A reconstructing policy's (kvzip) extra forwards: what share of its time they took."""
    extra = sum(record.get("reconstruction_seconds", 0.0) for record in records)
    if extra:
        total = sum(record["seconds"] for record in records)
        tokens = sum(record.get("reconstruction_tokens", 0) for record in records)
        prompts = sum(record["prompt_tokens"] for record in records)
        log.info(
            "%s on %s: reconstruction fed %d tokens (%.2fx the prompts) in %.1f s, %.0f%% of its %.1f s",
            label, task, tokens, tokens / prompts, extra, 100 * extra / total, total,
        )  # fmt: skip


def schedules_of(records: Sequence[dict[str, Any]], target: MatchTarget) -> list[UpdateSchedule]:
    return [UpdateSchedule(record[target.tokens_seen], record[target.last_update]) for record in records]


def mean_ratio(records: Sequence[dict[str, Any]], target: MatchTarget) -> float:
    """The task's mean over samples of the matched ratio."""
    return mean(record[target.ratio] for record in records)


def run_matched(
    context: EvaluationContext,
    contender: Contender,
    task: PreparedTask,
    namm_records: Sequence[dict[str, Any]],
    tolerance: float,
    attempts: int,
    quantity: MatchTarget,
) -> PolicyTaskRun:
    """Run a budgeted baseline at the budget whose retained ratio (`quantity`) matches the NAMM's on this task.

    The first budget is solved on the NAMM's own update schedule; if the achieved ratio misses the
    tolerance, the next is solved on the schedule this baseline actually had (a fixed-point step)."""
    ratio = partial(mean_ratio, target=quantity)
    target = ratio(namm_records)
    schedules = schedules_of(namm_records, quantity)
    tried: list[tuple[float, PolicyTaskRun]] = []
    for _ in range(attempts):
        budget = solve_budget(target, schedules)
        if any(budget == previous for previous, _ in tried):
            break  # the schedule has settled: another run would repeat this one
        if tried:
            context.bar.total += len(task.samples)  # a calibration run the progress total did not count
        run = run_policy(context, contender, contender.with_budget(budget), task)
        tried.append((budget, run))
        if relative_gap(ratio(run.records), target) <= tolerance:
            break
        schedules = schedules_of(run.records, quantity)
    _, best = min(tried, key=lambda item: relative_gap(ratio(item[1].records), target))
    best.budget_target = target
    best.attempts = [
        {
            "budget": budget,
            "retained_ratio": ratio(run.records),
            "relative_gap": relative_gap(ratio(run.records), target),
        }
        for budget, run in tried
    ]
    best.within_tolerance = relative_gap(ratio(best.records), target) <= tolerance
    return best

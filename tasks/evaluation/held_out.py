"""Held-out by construction: no evaluated prompt may be one a NAMM was trained or validated on.

A checkpoint records its training pool and validation prompts (tasks/provenance.py). Before the model
loads, the prompts an evaluation will build are compared by identity (task, synthetic seed, index); once
they are tokenized, by prompt hash as well. `trained_prompts` decides what an overlap does: `refuse` (the
default) stops with the fix, `skip` drops those prompts from every policy's run (LongBench takes the next
lines instead, so `num_samples` still holds), `allow` runs them, warns, and records them in results.json.
A checkpoint written before the record existed cannot be checked: the evaluation warns and says so.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from namm.errors import ConfigError
from tasks.evaluation.namm_source import NAMMSource
from tasks.provenance import PromptKey, TrainedPrompts
from tasks.runner import PreparedTask
from tasks.synthetic import SYNTHETIC_TASKS
from tasks.task_config import TaskConfig

log = logging.getLogger(__name__)

UNTRAINED = "untrained"  # the zero NAMM: nothing to hold out
UNRECORDED = "unrecorded"  # its checkpoint predates the record: cannot be checked
INCOMPLETE = "incomplete"  # started from a run without a record: checked against what is known
CHECKED = "checked"


@dataclass
class HeldOutRecord:
    """What results.json says about one NAMM's evaluation prompts."""

    status: str
    mode: str
    overlap: list[dict[str, Any]] = field(default_factory=list)  # run anyway (trained_prompts=allow)
    skipped: list[dict[str, Any]] = field(default_factory=list)  # dropped from every policy (trained_prompts=skip)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def trained_prompts(source: NAMMSource) -> TrainedPrompts | None:
    """The prompts it was trained and validated on (None: untrained, or not recorded by its checkpoint)."""
    provenance = source.pretrained.training.get("provenance")
    return None if provenance is None else TrainedPrompts.from_record(provenance)


def _status(source: NAMMSource, prompts: TrainedPrompts | None) -> str:
    if source.is_zero:
        return UNTRAINED
    if prompts is None:
        return UNRECORDED
    return CHECKED if prompts.complete else INCOMPLETE


def planned_identities(config: TaskConfig, task: str) -> list[PromptKey] | None:
    """The identities the task config will build (None: LongBench with num_samples=null, known once read)."""
    if config.num_samples is None:
        return None
    seed = config.seed if task in SYNTHETIC_TASKS else None
    return [PromptKey(task, seed, index) for index in range(config.num_samples)]


def _refusal(label: str, found: dict[str, list[int]]) -> ConfigError:
    listed = "; ".join(f"{task}: {len(indices)} prompt(s), e.g. index {indices[:5]}" for task, indices in found.items())
    return ConfigError(
        f"{label} was trained or validated on prompts this evaluation would score ({listed}). Evaluate on held-out "
        "prompts: a synthetic task with another task.seed (conf/eval_task/ gives every synthetic task one), "
        "LongBench with trained_prompts=skip (takes the next lines); or trained_prompts=allow to run them anyway "
        "(recorded in results.json)."
    )


def check_before_loading(config: TaskConfig, namms: list[tuple[str, NAMMSource]], mode: str) -> dict[str, set[int]]:
    """Refuse a planned overlap before the model loads (mode `refuse`); returns the LongBench lines to skip
    (mode `skip`), by task. Warns about every NAMM whose prompts cannot be checked."""
    skip: dict[str, set[int]] = {}
    for label, source in namms:
        prompts = trained_prompts(source)
        status = _status(source, prompts)
        if status == UNRECORDED:
            log.warning(
                "%s: its checkpoint does not record which prompts it was trained on, so this evaluation CANNOT "
                "CHECK that its prompts are held out (results.json says so); retrain, or evaluate on a task or "
                "seed it cannot have seen",
                label,
            )
        if status == INCOMPLETE:
            log.warning(
                "%s started from a run that recorded no prompts: held-out is checked against its own only", label
            )
        if prompts is None:
            continue
        found: dict[str, list[int]] = {}
        for task in config.tasks:
            if task not in SYNTHETIC_TASKS and mode == "skip":
                skip.setdefault(task, set()).update(prompts.indices_of(task, None))
                continue
            planned = planned_identities(config, task) or []
            hits = [key.index for key in planned if key in prompts.by_key]
            if hits:
                found[task] = hits
        if found and mode == "refuse":
            raise _refusal(label, found)
    return skip


def hold_out(
    tasks: list[PreparedTask], namms: list[tuple[str, NAMMSource]], mode: str
) -> tuple[list[PreparedTask], dict[str, HeldOutRecord]]:
    """After tokenizing, before scoring: find each NAMM's trained prompts among the tasks' samples (by
    identity or hash); refuse, drop them from every task (skip), or keep them and record them (allow)."""
    records: dict[str, HeldOutRecord] = {}
    dropped: dict[str, set[int]] = {}
    for label, source in namms:
        prompts = trained_prompts(source)
        record = HeldOutRecord(_status(source, prompts), mode)
        records[label] = record
        if prompts is None:
            continue
        found = {task.spec.name: task_found for task in tasks if (task_found := prompts.find(task))}
        if not found:
            continue
        if mode == "refuse":
            raise _refusal(label, {task: [index for index, _ in hits] for task, hits in found.items()})
        entries = [
            {"task": task, "index": index, "split": match.split, "prompt_sha": match.prompt_sha}
            for task, hits in found.items()
            for index, match in hits
        ]
        if mode == "skip":
            record.skipped = entries
            for entry in entries:
                dropped.setdefault(entry["task"], set()).add(entry["index"])
        else:
            record.overlap = entries
            log.warning(
                "trained_prompts=allow: %s IS SCORED ON %d PROMPT(S) IT WAS TRAINED OR VALIDATED ON (%s); its "
                "scores there are not held-out results (listed under held_out in results.json)",
                label,
                len(entries),
                ", ".join(f"{task}: {len(hits)}" for task, hits in found.items()),
            )
    kept = []
    for task in tasks:
        samples = tuple(sample for sample in task.samples if sample.index not in dropped.get(task.spec.name, set()))
        if not samples:
            raise ConfigError(
                f"trained_prompts=skip leaves no prompt of {task.spec.name}: every one was trained on. Raise "
                "task.num_samples (LongBench) or use another task.seed (synthetic)."
            )
        if len(samples) < len(task.samples):
            log.warning(
                "%s: %d trained-on prompt(s) skipped for every policy", task.spec.name, len(task.samples) - len(samples)
            )
        kept.append(dataclasses.replace(task, samples=samples))
    return kept, records

"""Paired comparisons on shared prompts: every policy against the full cache and against each NAMM.

Every policy runs the same prompts in the same order, so a comparison uses the per-prompt differences:
a task's difference (policy - reference, in points) gets a paired bootstrap interval, and for a 0/1 metric
the exact McNemar test on the prompts only one of the two got right. Across tasks, the mean difference
gets a stratified paired bootstrap (prompts resampled within each task, tasks weighted equally, as in the
mean score). A difference is claimed (`significant`) when McNemar's p < 1 - level (0/1 metrics: a
bootstrap of a few discordant prompts is too narrow), else when the paired interval excludes 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from tasks.evaluation.intervals import BootstrapSettings, mcnemar_exact_p, paired_difference_interval

ALL_TASKS = "mean"  # the `task` of a comparison over every task


@dataclass(frozen=True)
class TaskScores:
    """One policy's per-prompt scores (in [0, 1]) on one task, in prompt order, with the prompts' hashes."""

    scores: list[float]
    prompt_shas: list[str]
    binary: bool


@dataclass(frozen=True)
class Comparison:
    policy: str
    reference: str
    task: str  # a task, or ALL_TASKS
    num_prompts: int
    difference: float  # points: policy - reference (tasks weighted equally for ALL_TASKS)
    interval: tuple[float, float]  # paired bootstrap, points
    test: str  # mcnemar | paired_bootstrap: what `significant` rests on
    significant: bool
    policy_only: int | None = None  # 0/1 metrics: prompts only the policy got right
    reference_only: int | None = None  # ... only the reference got right
    mcnemar_p: float | None = None

    def to_dict(self) -> dict:
        record = asdict(self)
        record["interval"] = list(self.interval)
        return record


def _check_pairs(policy: str, reference: str, task: str, first: TaskScores, second: TaskScores) -> None:
    if first.prompt_shas != second.prompt_shas:
        raise ValueError(f"{policy} and {reference} did not run the same prompts of {task}; they cannot be paired")


def compare_task(
    policy: str, reference: str, task: str, first: TaskScores, second: TaskScores, settings: BootstrapSettings
) -> Comparison:
    """`policy` against `reference` on one task's shared prompts."""
    _check_pairs(policy, reference, task, first, second)
    n = len(first.scores)
    difference = round(100 * (sum(first.scores) - sum(second.scores)) / n, 2)
    interval = paired_difference_interval([(first.scores, second.scores)], settings)
    if first.binary:
        policy_only = sum(a > b for a, b in zip(first.scores, second.scores))
        reference_only = sum(b > a for a, b in zip(first.scores, second.scores))
        p = mcnemar_exact_p(policy_only, reference_only)
        return Comparison(
            policy, reference, task, n, difference, interval, "mcnemar", p < 1 - settings.level, policy_only,
            reference_only, p,
        )  # fmt: skip
    excludes_zero = interval[0] > 0 or interval[1] < 0
    return Comparison(policy, reference, task, n, difference, interval, "paired_bootstrap", excludes_zero)


def compare_all_tasks(
    policy: str,
    reference: str,
    first: Mapping[str, TaskScores],
    second: Mapping[str, TaskScores],
    settings: BootstrapSettings,
) -> Comparison:
    """The mean difference over tasks (equal weights), with a stratified paired bootstrap interval."""
    tasks = list(first)
    for task in tasks:
        _check_pairs(policy, reference, task, first[task], second[task])
    means = [(sum(first[t].scores) - sum(second[t].scores)) / len(first[t].scores) for t in tasks]
    interval = paired_difference_interval([(first[t].scores, second[t].scores) for t in tasks], settings)
    return Comparison(
        policy,
        reference,
        ALL_TASKS,
        sum(len(first[t].scores) for t in tasks),
        round(100 * sum(means) / len(means), 2),
        interval,
        "paired_bootstrap",
        interval[0] > 0 or interval[1] < 0,
    )


def all_comparisons(
    scores: Mapping[str, Mapping[str, TaskScores]], references: Sequence[str], settings: BootstrapSettings
) -> list[Comparison]:
    """Every policy of `scores` (policy -> task -> scores) against each of `references` it is not, per task
    and over all tasks."""
    found = []
    for reference in references:
        for policy, per_task in scores.items():
            if policy == reference:
                continue
            found += [
                compare_task(policy, reference, task, per_task[task], scores[reference][task], settings)
                for task in per_task
            ]
            if len(per_task) > 1:
                found.append(compare_all_tasks(policy, reference, per_task, scores[reference], settings))
    return found

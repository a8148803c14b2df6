"""From predictions to LongBench numbers: per-sample scores, task scores and the usual averages."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import mean

from tasks.longbench import CATEGORIES, LONGBENCH_TASKS, SUITES
from tasks.metrics import BINARY_METRICS, METRICS, CodeSimBackend
from tasks.task_spec import Sample, TaskSpec


def postprocess(prediction: str, spec: TaskSpec) -> str:
    """Official eval.py: few-shot predictions keep only their first line (the model continues the pattern)."""
    return prediction.lstrip("\n").split("\n")[0] if spec.first_line_cut else prediction


def score_prediction(
    prediction: str, sample: Sample, spec: TaskSpec, code_sim_backend: CodeSimBackend = "difflib"
) -> float:
    """A sample's score in [0, 1]: the metric's best over the gold answers (or over all of them at once)."""
    metric = METRICS[spec.metric]
    text = postprocess(prediction, spec)
    kwargs = {"all_classes": sample.all_classes, "code_sim_backend": code_sim_backend}
    if spec.answers_all_required:
        return metric(text, sample.answers, **kwargs)
    return max([0.0, *(metric(text, answer, **kwargs) for answer in sample.answers)])


def scores_are_binary(spec: TaskSpec, samples: Sequence[Sample]) -> bool:
    """Whether every sample score of this task is 0 or 1, by its metric (not by looking at scores): a binary
    metric applied to one answer at a time (the best of them), or to a single required answer."""
    if spec.metric not in BINARY_METRICS:
        return False
    return not spec.answers_all_required or all(len(sample.answers) == 1 for sample in samples)


def task_score(sample_scores: Sequence[float]) -> float:
    """100 x mean, rounded to 2 decimals (Python's round, as official)."""
    if not sample_scores:
        raise ValueError("task_score needs at least one sample score.")
    return round(100 * sum(sample_scores) / len(sample_scores), 2)


def _require(task_scores: Mapping[str, float], names: Sequence[str], what: str) -> None:
    missing = [name for name in names if name not in task_scores]
    if missing:
        raise ValueError(f"{what} needs scores for {missing}.")


def longbench_en_mean(task_scores: Mapping[str, float]) -> float:
    """Plain mean over the 16 English + code tasks: the KV-cache papers' "Avg" (SnapKV, PyramidKV, AdaKV)."""
    _require(task_scores, SUITES["longbench_en"], "The 16-task mean")
    return round(mean(task_scores[name] for name in SUITES["longbench_en"]), 2)


def category_means(task_scores: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """Leaderboard averages: per language, each category's mean and their macro mean ("Avg"), rounded to 2.

    Code counts toward both languages.
    """
    result: dict[str, dict[str, float]] = {}
    for language in ("en", "zh"):
        names = [name for name in SUITES["longbench"] if LONGBENCH_TASKS[name].language in (language, "code")]
        _require(task_scores, names, f"The {language} category means")
        by_category = {
            category: mean(task_scores[n] for n in names if LONGBENCH_TASKS[n].category == category)
            for category in CATEGORIES
        }
        by_category["Avg"] = mean(by_category.values())
        result[language] = {name: round(value, 2) for name, value in by_category.items()}
    return result


E_BUCKETS: tuple[tuple[str, float], ...] = (("0-4k", 4000), ("4-8k", 8000), ("8k+", math.inf))


def length_buckets(sample_scores: Sequence[float], lengths: Sequence[int]) -> dict[str, float]:
    """LongBench-E: task score per bucket of the records' `length` field (words or chars, not tokens); NaN if empty."""
    if len(sample_scores) != len(lengths):
        raise ValueError(f"{len(sample_scores)} scores but {len(lengths)} lengths.")
    buckets: dict[str, list[float]] = {name: [] for name, _ in E_BUCKETS}
    for score, length in zip(sample_scores, lengths):
        buckets[next(name for name, upper in E_BUCKETS if length < upper)].append(score)
    return {name: round(100 * mean(scores), 2) if scores else math.nan for name, scores in buckets.items()}

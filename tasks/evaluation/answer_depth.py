"""Scores by where the gold answer sits in the haystack: the needle-in-a-haystack depth table.

Why: a policy that evicts during prefill decides before the question arrives, so what it loses depends on where
the answer was. One score per task hides that; this table shows it, and shows where a NAMM differs from a
baseline.

The depth is the generator's (`Sample.answer_depths`: 0 = the haystack's start, 1 = its end; what
`task.needle_depth` fixes), so a depth sweep lands in the bins it names. Only synthetic tasks have depths. A
sample with several gold answers (niah_multivalue's values lie at several depths, variable tracking's chain
runs through the haystack) has no single depth and is counted apart, not guessed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tasks.evaluation.intervals import BootstrapSettings
from tasks.evaluation.summary import score_interval, task_scores
from tasks.runner import PreparedTask
from tasks.task_scores import task_score

_EDGE = 1e-9  # a configured depth on a bin edge (0.57 x 100 bins = 56.99999...) falls in the bin it names


@dataclass(frozen=True)
class DepthBin:
    """One policy's score over one depth bin's samples."""

    score: float  # 100 x mean sample score
    interval: tuple[float, float]  # Wilson for a 0/1 metric, else a percentile bootstrap, as the main table


@dataclass(frozen=True)
class DepthTable:
    """One task's scores by answer depth: bin b covers depths [b / bins, (b + 1) / bins), the last one
    including 1."""

    bins: int
    samples: tuple[int, ...]  # samples per bin
    without_depth: int  # samples with several answers or no known depth
    scores: Mapping[str, tuple[DepthBin | None, ...]]  # policy -> per bin (None: an empty bin)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bins": self.bins,
            "samples": list(self.samples),
            "without_depth": self.without_depth,
            "scores": {
                policy: [
                    None if cell is None else {"score": cell.score, "interval": list(cell.interval)} for cell in row
                ]
                for policy, row in self.scores.items()
            },
        }


def answer_depths(task: PreparedTask) -> dict[int, float]:
    """Sample index -> its single answer's depth in [0, 1]; samples with several answers or no known depth are
    left out (so a LongBench task gives {})."""
    return {
        sample.index: sample.answer_depths[0]
        for sample in task.samples
        if sample.answer_depths is not None and len(sample.answers) == 1
    }


def depth_bin(depth: float, bins: int) -> int:
    """The bin of a depth in [0, 1]."""
    return min(int(depth * bins + _EDGE), bins - 1)


def depth_table(
    task: PreparedTask,
    records_by_policy: Mapping[str, Sequence[Mapping[str, Any]]],
    bins: int,
    settings: BootstrapSettings,
) -> DepthTable | None:
    """Every policy's score per depth bin, from its sample records (each with `index`, `score` in [0, 1] and
    `prompt_sha`); None when no sample has a depth. Every policy must have run the same samples."""
    depths = answer_depths(task)
    if not depths:
        return None
    ran = {policy: sorted(record["index"] for record in records) for policy, records in records_by_policy.items()}
    indices = next(iter(ran.values()), [])
    if any(policy_indices != indices for policy_indices in ran.values()):
        raise ValueError(f"{task.spec.name}: the policies ran different samples, so their depth bins differ: {ran}")
    bin_of = {index: depth_bin(depths[index], bins) for index in indices if index in depths}
    counts = tuple(sum(b == chosen for b in bin_of.values()) for chosen in range(bins))
    scores = {
        policy: tuple(
            _cell(task, [record for record in records if bin_of.get(record["index"]) == chosen], settings)
            for chosen in range(bins)
        )
        for policy, records in records_by_policy.items()
    }
    return DepthTable(bins, counts, len(indices) - len(bin_of), scores)


def _cell(task: PreparedTask, records: Sequence[Mapping[str, Any]], settings: BootstrapSettings) -> DepthBin | None:
    """A bin's score as the main table computes a task's: the same mean, rounding, 0/1 check and interval."""
    if not records:
        return None
    scores = task_scores(task, records)
    interval, _ = score_interval(scores, settings)
    return DepthBin(task_score(scores.scores), interval)

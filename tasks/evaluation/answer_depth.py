"""Scores by where the gold answer sits in the prompt: the needle-in-a-haystack depth table.

Why: a policy that evicts during prefill decides before the question arrives, so what it loses depends on where
the answer was. Keeping the newest tokens saves late needles and drops early ones; key novelty keeps some of
each. One score per task hides that; this table shows it, and shows where a NAMM differs from a baseline.

Only synthetic tasks get a table: their answer is written into the prompt, so its position is defined. The
depth is where the answer first occurs (a passkey is written twice in one sentence). A sample with several
gold answers (niah_multivalue's values sit at several depths) or none found has no depth; it is counted apart,
not guessed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tasks.answer_spans import answer_token_spans
from tasks.prompts import Tokenizer
from tasks.runner import PreparedTask


@dataclass(frozen=True)
class DepthTable:
    """One task's scores by answer depth: bin b covers depths [b / bins, (b + 1) / bins)."""

    bins: int
    samples: list[int]  # samples per bin
    without_depth: int  # samples with several answers, or none found in the prompt
    scores: dict[str, list[float | None]]  # policy -> 100 x mean sample score per bin (None: empty bin)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def answer_depths(task: PreparedTask, tokenizer: Tokenizer) -> dict[int, float]:
    """Sample index -> where its answer first occurs, as a share of the prompt's tokens in [0, 1); samples with
    several answers or none found in the prompt are left out. Empty for a task that is not synthetic."""
    if task.settings.data_source != "synthetic":
        return {}
    depths = {}
    for sample in task.samples:
        if len(sample.answers) != 1:
            continue
        spans = answer_token_spans(sample.prompt_ids, sample.answers, tokenizer)
        if spans:
            depths[sample.index] = spans[0][0] / len(sample.prompt_ids)
    return depths


def depth_bin(depth: float, bins: int) -> int:
    """The bin of a depth in [0, 1)."""
    return min(int(depth * bins), bins - 1)


def depth_table(
    depths: Mapping[int, float], records_by_policy: Mapping[str, Sequence[Mapping[str, Any]]], bins: int
) -> DepthTable | None:
    """The table of every policy's sample records (each with `index` and `score` in [0, 1]) over `bins` equal
    depth bins; None when no sample has a depth."""
    if not depths:
        return None
    indices = sorted({record["index"] for records in records_by_policy.values() for record in records})
    counts = [0] * bins
    for index in indices:
        if index in depths:
            counts[depth_bin(depths[index], bins)] += 1
    scores = {}
    for policy, records in records_by_policy.items():
        sums = [0.0] * bins
        for record in records:
            if record["index"] in depths:
                sums[depth_bin(depths[record["index"]], bins)] += record["score"]
        scores[policy] = [100 * total / count if count else None for total, count in zip(sums, counts)]
    return DepthTable(bins, counts, sum(index not in depths for index in indices), scores)

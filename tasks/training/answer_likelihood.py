"""The `answer_likelihood` training signal: how likely a candidate's pruned cache leaves the gold answer,
relative to the full cache, from one teacher-forced forward (no decoding).

Per prompt, the gold answer's tokens follow the prompt as input; a cache's answer likelihood is the geometric
mean of their probabilities, exp(mean log-prob). A candidate scores 100 x min(1, its likelihood / the full
cache's) = 100 x exp(min(0, mean log-prob - the full cache's)), so 100 means "kept everything the answer needs". The cap at 1 is deliberate: a candidate whose
eviction happens to sharpen one answer cannot buy back a lost needle on another prompt, and candidates that
lose nothing tie at 100, where the memory term and the retained-ratio tie-break rank them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from namm.engine import EngineConfig
from namm.evolution.scorer_protocol import mean_in_order
from tasks.references import engine_generator_record

#: the gold continuation's format, recorded in the reference cache's key (a change recomputes references)
GOLD_FORMAT = "answers-joined-v1"


def teacher_forced_generator_record(config: EngineConfig) -> dict[str, Any]:
    """The reference context's `generator` for the full cache's answer likelihoods (exp of the mean log-prob,
    in [0, 1] like a task score): stored beside the task-score references under the same key rules, in their
    own file (this record changes the key)."""
    return {**engine_generator_record(config), "name": "engine_teacher_forced", "gold": GOLD_FORMAT}


def mean_logprob(token_logprobs: Sequence[float]) -> float:
    """The answer's mean token log-prob (float64, summed in order): log of its geometric-mean probability."""
    return mean_in_order([float(value) for value in token_logprobs])


def log_likelihood(likelihood: float) -> float:
    """Back to a mean log-prob from the [0, 1] likelihood the reference files store (an answer whose
    probability underflowed to 0 gives -inf: every candidate then matches the full cache)."""
    return math.log(likelihood) if likelihood > 0 else -math.inf


def likelihood_score(candidate: float, full_cache: float) -> float:
    """100 x min(1, exp(candidate - full cache)) for two mean log-probs: the task-score units that fitness
    divides by the reference (100, the full cache against itself)."""
    return 100.0 * math.exp(min(0.0, candidate - full_cache))

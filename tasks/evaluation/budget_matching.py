"""Matched budgets: the budget ratio at which a baseline holds the NAMM's retained-cache ratio.

The ratio is read at one of two moments (`match_on`): `prompt_end` (default), once the whole prompt is in
and before the first new token, or `generation_end`, after the last one. The prompt-end ratio is what the
cache holds while every answer token is decoded, and it does not depend on the answer: at the end of
generation the generated tokens form an unevicted tail, so a policy whose answer rambles looks more frugal.

A budgeted policy keeps `max(1, ceil(budget * U))` tokens per head at its last update before that moment
(U tokens seen then) and every one of the T tokens that arrive afterwards, so its ratio is
(kept + T) / (U + T): the unevicted tail makes it larger than the budget. Given each sample's (U, T), the
ratio is a known non-decreasing step function of the budget, solved here by bisection. At the end of
generation U and T depend a little on what the policy generates, so the evaluation loop re-solves with the
baseline's own schedule when the first run misses the tolerance; at the end of the prompt they do not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import mean


@dataclass(frozen=True)
class MatchTarget:
    """Which per-sample record fields hold the matched ratio and its schedule."""

    ratio: str
    tokens_seen: str
    last_update: str
    label: str  # how the table and the plots name the matched quantity


MATCH_TARGETS = {
    "prompt_end": MatchTarget("prompt_retained_ratio", "prompt_tokens", "prompt_last_update", "end-of-prompt ratio"),
    "generation_end": MatchTarget("retained_ratio", "tokens_seen", "last_update", "end-of-generation ratio"),
}


@dataclass(frozen=True)
class UpdateSchedule:
    """One sample's run: tokens it saw in all and tokens seen at its last eviction (0: none happened)."""

    tokens_seen: int
    last_update: int


def sample_ratio(budget: float, schedule: UpdateSchedule) -> float:
    """Retained ratio a budgeted policy ends with on this schedule (same double arithmetic as the engine)."""
    if schedule.last_update == 0:
        return 1.0
    kept = max(1, math.ceil(schedule.last_update * budget)) + schedule.tokens_seen - schedule.last_update
    return kept / schedule.tokens_seen


def predicted_ratio(budget: float, schedules: Sequence[UpdateSchedule]) -> float:
    return mean(sample_ratio(budget, schedule) for schedule in schedules)


def solve_budget(target: float, schedules: Sequence[UpdateSchedule], smallest: float = 1e-6) -> float:
    """The budget in [smallest, 1] whose predicted mean ratio is closest to `target`."""
    if not schedules:
        raise ValueError("solve_budget needs the schedule of at least one sample.")
    low, high = smallest, 1.0
    if predicted_ratio(low, schedules) >= target:
        return low
    if predicted_ratio(high, schedules) < target:
        return high
    for _ in range(60):  # invariant: f(low) < target <= f(high)
        middle = (low + high) / 2
        if predicted_ratio(middle, schedules) >= target:
            high = middle
        else:
            low = middle
    below, above = predicted_ratio(low, schedules), predicted_ratio(high, schedules)
    if target - below < above - target:
        return low
    return 1.0 if predicted_ratio(1.0, schedules) == above else high  # keeping all: say 1.0, not 0.998


def relative_gap(achieved: float, target: float) -> float:
    """|achieved - target| / target: the quantity `budget_tolerance` bounds."""
    return abs(achieved - target) / target

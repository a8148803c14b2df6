"""The statistics behind every table claim, against hand-computed cases: Wilson at 0 and n, the exact
McNemar test, paired and stratified bootstrap intervals, ratios of means, and which metrics are 0/1."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest

from namm.errors import ConfigError
from tasks.evaluation.comparisons import TaskScores, compare_all_tasks, compare_task
from tasks.evaluation.config import EvaluateConfig, StatisticsConfig
from tasks.evaluation.intervals import (
    BootstrapSettings,
    bootstrap_interval,
    mcnemar_exact_p,
    paired_difference_interval,
    ratio_of_means_interval,
    stratified_interval,
    wilson_interval,
)
from tasks.evaluation.summary import task_result
from tasks.longbench import LONGBENCH_TASKS
from tasks.synthetic import SYNTHETIC_TASKS
from tasks.task_scores import scores_are_binary
from tasks.task_spec import Sample

# the example: the full cache gets 20 of 30 prompts; a policy loses 6 of those and wins none
FULL = [1.0] * 20 + [0.0] * 10
POLICY = [1.0] * 14 + [0.0] * 16


def test_wilson_is_not_degenerate_at_zero_and_n():
    assert wilson_interval(0, 30) == (0.0, 11.35)  # a bootstrap says [0, 0]
    assert wilson_interval(4, 4) == (51.01, 100.0)  # a bootstrap says [100, 100]


@pytest.mark.parametrize(("successes", "trials"), [(1, 10), (20, 30), (29, 30)])
def test_wilson_bounds_solve_the_score_equation(successes, trials):
    """Independent characterisation: each bound p solves (k/n - p)^2 = z^2 p (1 - p) / n."""
    z = NormalDist().inv_cdf(0.975)
    share = successes / trials
    for bound in wilson_interval(successes, trials):
        p = bound / 100
        assert (share - p) ** 2 == pytest.approx(z * z * p * (1 - p) / trials, abs=2e-4)


def test_exact_mcnemar_by_hand():
    assert mcnemar_exact_p(0, 6) == pytest.approx(0.03125)  # 2 / 2^6: the 20/30 example, p = 0.031
    assert mcnemar_exact_p(4, 0) == pytest.approx(0.125)  # 4 prompts can never reach p < 0.05
    assert mcnemar_exact_p(2, 8) == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert mcnemar_exact_p(3, 3) == 1.0 and mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(1, 9) == mcnemar_exact_p(9, 1)


def test_pairing_tells_apart_what_overlapping_marginal_intervals_do_not():
    full, policy = bootstrap_interval(FULL), bootstrap_interval(POLICY)
    assert policy[1] > full[0]  # the marginal intervals overlap
    low, high = paired_difference_interval([(FULL, POLICY)])
    # the resampled difference is 100/30 x Binomial(30, 0.2): its 2.5% and 97.5% quantiles are 2 and 10 prompts
    assert low == pytest.approx(100 * 2 / 30, abs=100 / 30) and high == pytest.approx(100 * 10 / 30, abs=100 / 30)
    assert low > 0
    comparison = compare_task(
        "full", "policy", "passkey", TaskScores(FULL, ["x"] * 30, True), _scores(POLICY), SETTINGS
    )
    assert (comparison.policy_only, comparison.reference_only) == (6, 0)
    assert comparison.mcnemar_p == pytest.approx(0.03125) and comparison.significant
    assert comparison.difference == 20.0 and comparison.test == "mcnemar"


SETTINGS = BootstrapSettings()


def _scores(values, binary=True):
    return TaskScores(list(values), ["x"] * len(values), binary)


def test_four_discordant_prompts_are_not_a_claim_even_when_the_bootstrap_excludes_zero():
    first, second = [1.0] * 4 + [0.0] * 26, [0.0] * 30
    comparison = compare_task("streaming", "full", "passkey", _scores(first), _scores(second), SETTINGS)
    assert comparison.interval[0] > 0  # the bootstrap rarely draws none of the 4: too narrow
    assert comparison.mcnemar_p == pytest.approx(0.125) and not comparison.significant


def test_a_continuous_metric_is_claimed_by_the_paired_interval():
    first = [0.5 + 0.01 * i for i in range(20)]
    second = [value - 0.1 for value in first]
    comparison = compare_task("a", "b", "qasper", _scores(first, False), _scores(second, False), SETTINGS)
    assert comparison.interval == (10.0, 10.0) and comparison.significant and comparison.mcnemar_p is None
    same = compare_task("a", "b", "qasper", _scores(first, False), _scores(first, False), SETTINGS)
    assert same.interval == (0.0, 0.0) and not same.significant


def test_pairs_of_other_prompts_are_refused():
    with pytest.raises(ValueError, match="same prompts"):
        compare_task("a", "b", "t", TaskScores([1.0], ["p"], True), TaskScores([1.0], ["q"], True), SETTINGS)


def test_stratified_intervals_weigh_tasks_equally():
    # task A: 10 prompts, the policy wins every one; task B: 30 prompts, no difference. Tasks weigh equally:
    # +50 points exactly (within each task nothing varies, so no width); weighting samples would say +25.
    strata = [([1.0] * 10, [0.0] * 10), ([0.5] * 30, [0.5] * 30)]
    assert paired_difference_interval(strata) == (50.0, 50.0)
    assert stratified_interval([[1.0] * 10, [0.0] * 30]) == (50.0, 50.0)
    first = {"a": _scores([1.0] * 10), "b": _scores([0.5] * 30, False)}
    second = {"a": _scores([0.0] * 10), "b": _scores([0.5] * 30, False)}
    overall = compare_all_tasks("p", "full", first, second, SETTINGS)
    assert overall.difference == 50.0 and overall.significant and overall.num_prompts == 40


def test_relative_to_full_is_a_ratio_of_means():
    # per-task ratios 0.5 and 1.0 average to 0.75; the ratio of the task means is 0.35 / 0.6
    strata = [([0.5] * 4, [1.0] * 4), ([0.2] * 3, [0.2] * 3)]
    low, high = ratio_of_means_interval(strata)
    assert low == high == pytest.approx(0.35 / 0.6, abs=1e-4)
    assert ratio_of_means_interval([([1.0, 0.0], [0.0, 0.0])]) is None  # the full cache scored nothing


def test_the_bootstrap_seed_and_resamples_are_settings():
    values = [(i * 7 % 30) / 29 for i in range(30)]
    assert bootstrap_interval(values, BootstrapSettings(seed=3)) == bootstrap_interval(
        values, BootstrapSettings(seed=3)
    )
    assert bootstrap_interval(values, BootstrapSettings(seed=3)) != bootstrap_interval(
        values, BootstrapSettings(seed=4)
    )


def test_binary_metrics_come_from_the_metric_not_the_scores():
    one = (Sample(0, (1,), ("a",)),)
    four = (Sample(0, (1,), ("a", "b", "c", "d")),)
    assert scores_are_binary(SYNTHETIC_TASKS["passkey"].spec, one)
    assert scores_are_binary(SYNTHETIC_TASKS["niah_single"].spec, one)
    assert not scores_are_binary(SYNTHETIC_TASKS["niah_multivalue"].spec, four)  # a share of 4 values
    assert not scores_are_binary(LONGBENCH_TASKS["qasper"], one)  # token F1


class _Task:
    """What task_result reads of a prepared task."""

    def __init__(self, samples):
        self.spec = SYNTHETIC_TASKS["passkey"].spec
        self.samples = samples


def _record(index, score, seconds=0.5):
    return {
        "index": index, "prompt_sha": f"h{index}", "score": score, "retained_ratio": 0.5, "prompt_retained_ratio": 0.4,
        "retained_ratio_per_layer": [0.5, 0.5], "tokens_seen": 100, "seconds": seconds, "peak_live_kv_bytes": 10,
        "batch_peak_storage_bytes": 20, "batch_peak_overhead_bytes": 5, "batch_rows": 2,
    }  # fmt: skip


def test_a_task_row_uses_wilson_for_a_binary_task_and_times_fresh_samples_only():
    task = _Task(tuple(Sample(i, (i,), ("1",)) for i in range(4)))
    records = [_record(i, 1.0) for i in range(4)]
    row = task_result("h2o", task, records, frozenset({0, 1}), SETTINGS)
    assert row["score"] == 100.0 and row["score_interval"] == [51.01, 100.0] and row["interval_method"] == "wilson"
    assert row["reused_samples"] == 2 and row["tokens_per_second"] == pytest.approx(200 / 1.0)
    assert task_result("h2o", task, records, frozenset(), SETTINGS)["tokens_per_second"] is None
    with pytest.raises(ValueError, match="is 0/1"):
        task_result("h2o", task, [_record(0, 0.5)], frozenset(), SETTINGS)
    assert not math.isnan(row["prompt_retained_ratio"])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"match_on": "peak"}, "match_on must be one of"),
        ({"trained_prompts": "ignore"}, "trained_prompts must be one of"),
        ({"statistics": StatisticsConfig(resamples=10)}, "statistics.resamples must be >= 100"),
        ({"statistics": StatisticsConfig(weak_full_score=150)}, "statistics.weak_full_score is a score"),
    ],
)
def test_bad_statistics_and_matching_settings_name_the_key(settings, message):
    with pytest.raises(ConfigError, match=message):
        EvaluateConfig(**settings)

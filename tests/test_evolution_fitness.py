"""Fitness normalisation, failure handling and guarded scoring, against hand-computed values."""

import logging

import pytest
import torch

from namm.evolution.config import Objective
from namm.evolution.fitness import FitnessRule, candidate_fitness, population_fitness, selection_ranks
from namm.evolution.scorer_protocol import CandidateScores, PromptRecord, ScoringOutcome, score_guarded

SCORE = FitnessRule(Objective.score, reference_floor=1.0, reference_floor_share=0.0)


def scores(alpha, beta, references=(40.0, 0.5), pools=(40.0, 0.5), retained=None) -> CandidateScores:
    count = len(alpha)
    return CandidateScores(
        task_scores={
            "alpha": torch.tensor(alpha, dtype=torch.float64),
            "beta": torch.tensor(beta, dtype=torch.float64),
        },
        reference_scores={"alpha": references[0], "beta": references[1]},
        pool_references={"alpha": pools[0], "beta": pools[1]},
        retained_ratio=torch.full((count,), 0.5) if retained is None else torch.tensor(retained, dtype=torch.float64),
        retained_ratio_per_layer=torch.full((count, 2), 0.5),
        tokens_processed=10 * count,
    )


def test_fitness_is_mean_over_tasks_of_score_over_floored_reference():
    # alpha: 50/40 = 1.25, 20/40 = 0.5; beta: reference 0.5 is floored to 1.0 -> 10/1, 0/1
    fitness = candidate_fitness(scores([50.0, 20.0], [10.0, 0.0]), SCORE)
    assert fitness.tolist() == pytest.approx([(1.25 + 10.0) / 2, (0.5 + 0.0) / 2])


def test_floor_does_not_touch_references_above_it():
    fitness = candidate_fitness(scores([40.0], [3.0], references=(40.0, 2.0)), SCORE)
    assert fitness.tolist() == pytest.approx([(1.0 + 1.5) / 2])


def test_a_near_zero_draw_is_floored_at_a_share_of_the_validation_reference():
    # beta's full cache scored 2 on this draw but 60 on the validation prompts: the floor is 0.5 x 60 = 30,
    # so a candidate scoring 24 earns 0.8 on beta, not 12.
    rule = FitnessRule(Objective.score, reference_floor=1.0, reference_floor_share=0.5)
    fitness = candidate_fitness(scores([40.0], [24.0], references=(40.0, 2.0), pools=(40.0, 60.0)), rule)
    assert fitness.tolist() == pytest.approx([(1.0 + 0.8) / 2])


def test_memory_weight_changes_the_ranking():
    # candidate 0 scores more but keeps everything; candidate 1 scores a little less at a quarter of the cache
    both = scores([40.0, 36.0], [0.5, 0.5], references=(40.0, 0.5), pools=(40.0, 0.5), retained=[1.0, 0.25])
    plain = candidate_fitness(both, SCORE)
    penalised = candidate_fitness(both, FitnessRule(Objective.memory_penalty, 0.5, 1.0, 0.0))
    assert plain.tolist() == pytest.approx([(1.0 + 0.5) / 2, (0.9 + 0.5) / 2])
    assert penalised.tolist() == pytest.approx([0.75 - 0.5, 0.7 - 0.125])
    assert plain.argmax() == 0 and penalised.argmax() == 1


def test_ties_go_to_the_smaller_retained_ratio_then_the_lower_index():
    fitness = torch.tensor([1.0, 1.0, 1.0, 0.5, 2.0], dtype=torch.float64)
    retained = torch.tensor([0.9, 0.3, 0.3, 0.1, 1.0], dtype=torch.float64)
    ranks = selection_ranks(fitness, retained)
    # best first: 4 (fitness 2), then among the tied 1.0s: 1 and 2 (0.3; index 1 first), then 0, then 3
    assert ranks.tolist() == [1.0, 3.0, 2.0, 0.0, 4.0]


def test_failed_and_nan_candidates_rank_last_with_a_warning(caplog):
    scored = scores([40.0, 20.0, 30.0], [1.0, 1.0, float("nan")], references=(40.0, 1.0))
    outcome = ScoringOutcome(4, torch.tensor([0, 2, 3]), scored, errors={1: "ValueError: boom"})
    with caplog.at_level(logging.WARNING):
        result = population_fitness(outcome, SCORE, generation=7)
    ok_values = [(1.0 + 1.0) / 2, (0.5 + 1.0) / 2]  # candidates 0 and 2
    assert result.ok.tolist() == [True, False, True, False]
    assert result.values[[0, 2]].tolist() == pytest.approx(ok_values)
    assert result.failed_value == pytest.approx(min(ok_values) - 1.0)
    assert result.values[[1, 3]].tolist() == pytest.approx([min(ok_values) - 1.0] * 2)
    assert set(result.failures) == {1, 3}
    messages = [r.getMessage() for r in caplog.records]
    assert any("generation 7: candidate 1 failed" in m and "boom" in m for m in messages)
    assert any("generation 7: candidate 3 failed" in m and "non-finite" in m for m in messages)


def test_all_candidates_failing_stops_the_run():
    outcome = ScoringOutcome(2, torch.zeros(0, dtype=torch.long), None, errors={0: "A", 1: "B"})
    with pytest.raises(RuntimeError, match="all 2 candidates failed.*first error: A"):
        population_fitness(outcome, SCORE, generation=1)


class RowSensitiveScorer:
    """Raises for any batch holding a row whose first parameter is positive."""

    param_count = 3

    def __init__(self):
        self.calls = []

    def score(self, parameters, split, generation, prompts=None):
        self.calls.append(len(parameters))
        if bool((parameters[:, 0] > 0).any()):
            raise ValueError("positive first parameter")
        count = len(parameters)
        return scores([float(v) for v in parameters[:, 1]], [1.0] * count, references=(1.0, 1.0))

    def normalisation_state(self):
        return {}

    def load_normalisation_state(self, state):
        pass


def test_guarded_scoring_isolates_the_failing_candidates():
    scorer = RowSensitiveScorer()
    parameters = torch.tensor([[-1.0, 10.0, 0.0], [1.0, 20.0, 0.0], [-1.0, 30.0, 0.0], [2.0, 40.0, 0.0]])
    outcome = score_guarded(scorer, parameters, "train", 1)
    assert scorer.calls == [4, 1, 1, 1, 1]  # the batch, then one by one
    assert outcome.scored_rows.tolist() == [0, 2]
    assert outcome.scores.task_scores["alpha"].tolist() == [10.0, 30.0]
    assert sorted(outcome.errors) == [1, 3]
    assert "ValueError: positive first parameter" in outcome.errors[1]


def test_malformed_scores_count_as_a_failure():
    class WrongShape(RowSensitiveScorer):
        def score(self, parameters, split, generation, prompts=None):
            return scores([1.0, 2.0, 3.0], [1.0, 1.0, 1.0])  # always 3 rows

    outcome = score_guarded(WrongShape(), torch.zeros(2, 3), "train", 1)
    assert outcome.scores is None and "malformed" in outcome.errors[0]


def test_interrupts_are_not_swallowed():
    class Killed(RowSensitiveScorer):
        def score(self, parameters, split, generation, prompts=None):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score_guarded(Killed(), torch.zeros(2, 3), "train", 1)


def test_merge_offsets_actor_chunks():
    first = ScoringOutcome(2, torch.tensor([0]), scores([1.0], [1.0]), errors={1: "x"}, seconds=2.0)
    second = ScoringOutcome(3, torch.tensor([0, 2]), scores([2.0, 3.0], [1.0, 1.0]), errors={1: "y"}, seconds=5.0)
    merged = ScoringOutcome.merge([first, second])
    assert merged.num_candidates == 5
    assert merged.scored_rows.tolist() == [0, 2, 4]
    assert merged.errors == {1: "x", 3: "y"}
    assert merged.scores.task_scores["alpha"].tolist() == [1.0, 2.0, 3.0]
    assert merged.scores.tokens_processed == 30
    assert merged.seconds == 5.0


def record(task, index, scores, reference=50.0, ratio=(0.5,), per_layer=((0.5, 0.5),)):
    layers = [list(layer) for layer in per_layer]
    return PromptRecord(task, index, list(scores), reference, 45.0, list(ratio), layers, 10)


def test_stacked_candidates_keep_their_per_prompt_scores_in_order_and_drop_them_when_prompts_differ(caplog):
    first = CandidateScores.from_prompts([record("alpha", 1, [1.0]), record("alpha", 0, [2.0])])
    second = CandidateScores.from_prompts(
        [
            record("alpha", 0, [3.0, 4.0], ratio=(0.25, 0.75), per_layer=((0.0, 0.5), (1.0, 1.0))),
            record("alpha", 1, [5.0, 6.0], ratio=(0.25, 0.75), per_layer=((0.0, 0.5), (1.0, 1.0))),
        ]
    )
    stacked = CandidateScores.concat([first, second])
    assert [(r.index, r.scores, r.retained_ratio, r.tokens) for r in stacked.prompts] == [
        (0, [2.0, 3.0, 4.0], [0.5, 0.25, 0.75], 20),
        (1, [1.0, 5.0, 6.0], [0.5, 0.25, 0.75], 20),
    ]
    other = CandidateScores.from_prompts([record("alpha", 2, [7.0]), record("alpha", 0, [8.0])])
    with caplog.at_level(logging.WARNING):
        assert CandidateScores.concat([first, other]).prompts is None  # the generation's scores still stack
    assert "scored on different prompts" in caplog.text


def test_scores_from_prompts_are_means_per_task_in_float64():
    records = [
        record("beta", 3, [30.0, 0.0], 20.0, (0.25, 1.0), ((0.0, 0.5), (1.0, 1.0))),
        record("alpha", 1, [10.0, 40.0], 60.0, (0.5, 1.0), ((0.5, 0.5), (1.0, 1.0))),
        record("alpha", 0, [20.0, 10.0], 40.0, (1.0, 1.0), ((1.0, 1.0), (1.0, 1.0))),
    ]
    scores = CandidateScores.from_prompts(records)
    assert scores.task_scores["alpha"].tolist() == [15.0, 25.0] and scores.task_scores["beta"].tolist() == [30.0, 0.0]
    assert scores.reference_scores == {"alpha": 50.0, "beta": 20.0}
    assert scores.retained_ratio.dtype == torch.float64
    assert scores.retained_ratio.tolist() == pytest.approx([(0.25 + 0.5 + 1.0) / 3, 1.0])
    assert scores.retained_ratio_per_layer[0].tolist() == pytest.approx([0.5, 2 / 3])
    assert scores.tokens_processed == 30


def test_prompt_shards_join_to_the_unsplit_scores_bit_for_bit():
    generator = torch.Generator().manual_seed(0)
    values = torch.rand(9, 3, generator=generator, dtype=torch.float64).tolist()
    records = [
        record("alpha" if i % 2 else "beta", i, [100 * v[0]], 100 * v[1], (v[2],), ((v[2], v[0]),))
        for i, v in enumerate(values)
    ]
    whole = CandidateScores.from_prompts(records)
    shards = [CandidateScores.from_prompts(records[i::3]) for i in range(3)]
    outcome = ScoringOutcome.join_prompt_shards([ScoringOutcome(1, torch.tensor([0]), shard) for shard in shards])
    joined = outcome.scores
    assert joined.retained_ratio.equal(whole.retained_ratio)
    assert joined.retained_ratio_per_layer.equal(whole.retained_ratio_per_layer)
    assert all(joined.task_scores[t].equal(whole.task_scores[t]) for t in whole.task_scores)
    assert joined.reference_scores == whole.reference_scores


def test_a_failed_prompt_shard_fails_the_candidate():
    good = ScoringOutcome(1, torch.tensor([0]), CandidateScores.from_prompts([record("alpha", 0, [1.0])]))
    bad = ScoringOutcome(1, torch.zeros(0, dtype=torch.long), None, errors={0: "ValueError: boom"})
    outcome = ScoringOutcome.join_prompt_shards([good, bad])
    assert outcome.scores is None and outcome.errors == {0: "ValueError: boom"}

"""What metrics.jsonl records about the search itself (fake scorer): every candidate's numbers, how far the
centre moved, the step size, and the settings that move the search (relative sigma, memory-weight curriculum)."""

import json
from dataclasses import replace

import pytest
import torch
from evolution_fake_scorer import fake_train_config

from namm.evolution.checkpoint import LATEST, PREVIOUS, load_checkpoint, save_checkpoint
from namm.evolution.config import ConfigError
from namm.evolution.trainer import train


def lines(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_each_generation_records_every_candidate_the_centre_step_and_the_step_size(tmp_path):
    run_dir = tmp_path / "run"
    train(fake_train_config(run_dir, evo={"generations": 2, "popsize": 6}))
    start, first, second = lines(run_dir)
    previous, latest = load_checkpoint(run_dir / PREVIOUS), load_checkpoint(run_dir / LATEST)
    assert previous.generation == 1 and latest.generation == 2
    # the start is the zero vector (init zeros): the first step's relative figure falls back to the L2
    c1, c2 = previous.center.double(), latest.center.double()
    assert first["search/centre_step"] == pytest.approx(float(c1.norm()))
    assert first["search/centre_step_relative"] == pytest.approx(float(c1.norm()))
    assert second["search/centre_step"] == pytest.approx(float((c2 - c1).norm()))
    assert second["search/centre_step_relative"] == pytest.approx(float((c2 - c1).norm() / c1.norm()))
    # CMA-ES (separable): sigma and the covariance diagonal's range, as the checkpoint holds them
    assert start["search/sigma"] == pytest.approx(0.3)  # the initial step size, before any step
    state = latest.searcher_state
    assert second["search/sigma"] == pytest.approx(float(state["sigma"]))
    assert second["search/covariance_diagonal_min"] == pytest.approx(float(state["C"].min()))
    assert second["search/covariance_diagonal_max"] == pytest.approx(float(state["C"].max()))
    for record in (first, second):
        fitness = record["candidates/fitness"]
        assert (
            len(fitness) == len(record["candidates/normalised_score"]) == len(record["candidates/retained_ratio"]) == 6
        )
        assert fitness == pytest.approx(record["candidates/normalised_score"])  # objective score: no memory term
        assert record["fitness/distinct_values"] == len(set(fitness)) == 6
        assert max(fitness) == record["fitness/best"] and min(fitness) == record["fitness/worst"]
        assert sum(record["candidates/retained_ratio"]) / 6 == pytest.approx(record["retained_ratio/mean"])
        # every prompt the generation drew, each candidate's score on it: their means are the task's scores
        by_prompt = record["candidates/prompt_scores"]
        assert set(by_prompt) == {"alpha:0", "alpha:1", "beta:0", "beta:1"} and all(
            len(scores) == 6 for scores in by_prompt.values()
        )
        normalised = [0.0] * 6  # each candidate's own column, through the task's denominator, is its normalised score
        for task in ("alpha", "beta"):
            rows = [scores for prompt, scores in by_prompt.items() if prompt.startswith(f"{task}:")]
            means = [sum(column) / len(rows) for column in zip(*rows)]
            denominator = record[f"task/{task}/score_mean"] / record[f"task/{task}/normalised_mean"]
            normalised = [total + mean / denominator / 2 for total, mean in zip(normalised, means)]
        assert normalised == pytest.approx(record["candidates/normalised_score"])


def test_the_memory_weight_curriculum_sets_training_fitness_and_validation_keeps_the_objective(tmp_path):
    run_dir = tmp_path / "run"
    evo = {
        "generations": 3,
        "eval_interval": 1,
        "objective": "memory_penalty",
        "memory_weight": 1.0,
        "memory_weight_curriculum": [[2, 3.0], [3, 0.25]],
    }
    train(fake_train_config(run_dir, evo=evo))
    records = lines(run_dir)[1:]
    assert [record["fitness/memory_weight"] for record in records] == [1.0, 3.0, 0.25]
    for record, weight in zip(records, (1.0, 3.0, 0.25), strict=True):
        expected = [
            s - weight * r for s, r in zip(record["candidates/normalised_score"], record["candidates/retained_ratio"])
        ]
        assert record["candidates/fitness"] == pytest.approx(expected)
        validation = record["validation/normalised_score"] - 1.0 * record["validation/retained_ratio"]
        assert record["validation/fitness"] == pytest.approx(validation)  # evo.memory_weight, not the curriculum


def test_sigma_relative_scales_the_initial_step_to_the_start(tmp_path):
    first = tmp_path / "first"
    train(fake_train_config(first, evo={"generations": 1, "searcher": "snes"}))
    state = replace(load_checkpoint(first / LATEST), best_params=torch.tensor([0.5, -1.0, 2.0, 0.0, 0.25, -0.75]))
    save_checkpoint(state, first / LATEST)  # a start with a scale
    centre = state.best_params.double()
    run_dir = tmp_path / "relative"  # another searcher: only the centre carries over, the step size is new
    train(fake_train_config(run_dir, init_from=str(first / LATEST), evo={"generations": 1, "sigma_relative": 0.5}))
    start = lines(run_dir)[0]
    assert start["search/sigma"] == pytest.approx(0.5 * float(centre.pow(2).mean().sqrt()), rel=1e-6)
    with pytest.raises(ConfigError, match="evo.sigma_relative .* all zero"):
        train(fake_train_config(tmp_path / "zeros", evo={"sigma_relative": 0.5}))


@pytest.mark.parametrize(
    ("evo", "message"),
    [
        ({"objective": "memory_penalty", "memory_weight_curriculum": [[3, 0.2], [1, 0.5]]}, "increasing integers"),
        ({"objective": "memory_penalty", "memory_weight_curriculum": [[1, -0.5]]}, "finite numbers >= 0"),
        ({"objective": "memory_penalty", "memory_weight_curriculum": [[1]]}, r"\[generation, weight\] pairs"),
        ({"memory_weight_curriculum": [[1, 0.5]]}, "needs evo.objective=memory_penalty"),
        ({"sigma_relative": 0.0}, "evo.sigma_relative must be a finite number > 0"),
    ],
)
def test_bad_search_settings_fail_before_the_scorer_is_built(tmp_path, evo, message):
    with pytest.raises(ConfigError, match=message):
        train(fake_train_config(tmp_path / "run", evo=evo, scorer={"trace_dir": str(tmp_path / "trace")}))
    assert not (tmp_path / "trace").exists()


def test_candidate_lists_hold_none_for_a_failed_candidate(tmp_path):
    run_dir = tmp_path / "run"
    train(fake_train_config(run_dir, evo={"generations": 1}, scorer={"nan_candidate": 2}))
    record = lines(run_dir)[1]
    assert record["candidates/fitness"][2] is None and record["candidates/normalised_score"][2] is None
    assert record["candidates/retained_ratio"][2] is not None  # it ran; its score was NaN
    beta = [scores for prompt, scores in record["candidates/prompt_scores"].items() if prompt.startswith("beta:")]
    assert beta and all(scores[2] is None and scores[1] is not None for scores in beta)
    assert record["fitness/distinct_values"] == 7
    assert torch.isfinite(torch.tensor([v for v in record["candidates/fitness"] if v is not None])).all()

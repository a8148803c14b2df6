"""Searcher state dicts: saving after k steps and loading into a fresh searcher continues bit-exactly."""

import io

import pytest
import torch
from evolution_fake_scorer import fake_train_config

from namm.evolution.config import ConfigError, Searcher, validate_train_config
from namm.evolution.fitness import FitnessRule
from namm.evolution.problem import EvolutionProblem
from namm.evolution.rng_state import capture_rng_state, restore_rng_state
from namm.evolution.searchers import (
    build_searcher,
    load_searcher_state,
    searcher_centre,
    searcher_sigma,
    searcher_state,
    start_from_distribution,
    step_size,
)

SEARCHERS = list(Searcher)


def make(tmp_path, searcher: Searcher, centre=None):
    cfg = fake_train_config(
        tmp_path, evo={"searcher": searcher.value, "center_learning_rate": 0.05, "stdev_learning_rate": 0.1}
    )
    config = validate_train_config(cfg)
    problem = EvolutionProblem(cfg, 6, seed=3, rule=FitnessRule.of(config.evo))
    centre = torch.zeros(6) if centre is None else centre
    return problem, build_searcher(problem, config.evo, centre)


def run(problem, searcher, first_generation: int, steps: int) -> None:
    for generation in range(first_generation, first_generation + steps):
        problem.generation = generation
        searcher.step()


def through_disk(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("searcher_name", SEARCHERS, ids=lambda s: s.value)
def test_state_round_trip_continues_bit_exactly(tmp_path, searcher_name):
    problem, searcher = make(tmp_path, searcher_name)
    run(problem, searcher, 1, 2)
    saved = through_disk(
        {"searcher": searcher_state(searcher, searcher_name), "rng": capture_rng_state(problem.generator)}
    )
    run(problem, searcher, 3, 2)
    expected_centre, expected_sigma = searcher_centre(searcher), searcher_sigma(searcher)

    problem_b, searcher_b = make(tmp_path, searcher_name)
    load_searcher_state(searcher_b, saved["searcher"], searcher_name)
    restore_rng_state(saved["rng"], problem_b.generator)
    run(problem_b, searcher_b, 3, 2)
    assert torch.equal(searcher_centre(searcher_b), expected_centre)
    assert torch.equal(searcher_sigma(searcher_b), expected_sigma)
    assert searcher_b._steps_count == searcher._steps_count == 4

    # the state is what makes it exact: a fresh searcher with the same RNG diverges
    problem_c, searcher_c = make(tmp_path, searcher_name)
    restore_rng_state(saved["rng"], problem_c.generator)
    run(problem_c, searcher_c, 3, 2)
    assert not torch.equal(searcher_centre(searcher_c), expected_centre)


def test_cmaes_state_holds_the_documented_fields(tmp_path):
    problem, searcher = make(tmp_path, Searcher.cmaes_separable)
    run(problem, searcher, 1, 1)
    state = searcher_state(searcher, Searcher.cmaes_separable)
    assert {"m", "sigma", "C", "A", "p_sigma", "p_c", "steps_count"} <= set(state)
    assert state["C"].shape == (6,)  # separable: the diagonal only
    problem, searcher = make(tmp_path, Searcher.cmaes_full)
    assert searcher_state(searcher, Searcher.cmaes_full)["C"].shape == (6, 6)


def test_step_size_starts_at_sigma(tmp_path):
    for name in SEARCHERS:
        _, searcher = make(tmp_path, name)
        assert step_size(searcher) == pytest.approx(0.3), name


def test_loading_a_different_searcher_is_refused(tmp_path):
    _, searcher = make(tmp_path, Searcher.snes)
    state = searcher_state(searcher, Searcher.snes)
    _, cma = make(tmp_path, Searcher.cmaes_separable)
    with pytest.raises(ConfigError, match="holds a snes searcher"):
        load_searcher_state(cma, state, Searcher.cmaes_separable)


@pytest.mark.parametrize("searcher_name", [Searcher.cmaes_separable, Searcher.pgpe], ids=lambda s: s.value)
def test_new_stage_keeps_the_distribution_but_moves_the_centre(tmp_path, searcher_name):
    problem, searcher = make(tmp_path, searcher_name)
    run(problem, searcher, 1, 3)
    state = searcher_state(searcher, searcher_name)
    centre = torch.arange(6, dtype=torch.float32)
    _, fresh = make(tmp_path, searcher_name, centre=centre)
    start_from_distribution(fresh, state, searcher_name, centre)
    assert torch.equal(searcher_centre(fresh), centre)
    assert torch.equal(searcher_sigma(fresh), searcher_sigma(searcher))
    assert fresh._steps_count == 0

"""Searcher state dicts: saving after k steps and loading into a fresh searcher continues bit-exactly."""

import io
import re
from pathlib import Path

import pytest
import torch
from evolution_fake_scorer import fake_train_config

from namm.evolution.config import ConfigError, validate_train_config
from namm.evolution.fitness import FitnessRule
from namm.evolution.problem import EvolutionProblem
from namm.evolution.rng_state import capture_rng_state, restore_rng_state
from namm.evolution.searchers import available_searchers, build_searcher
from namm.evolution.searchers import registry as searcher_registry

SEARCHERS = ["cmaes_full", "cmaes_separable", "pgpe", "snes", "xnes"]


def test_every_conf_evo_yaml_is_a_registered_searcher():
    names = sorted(path.stem for path in (Path(__file__).parents[1] / "conf" / "evo").glob("*.yaml"))
    assert names == SEARCHERS
    assert set(SEARCHERS) <= set(available_searchers())


def make(tmp_path, searcher: str, centre=None):
    cfg = fake_train_config(
        tmp_path, evo={"searcher": searcher, "center_learning_rate": 0.05, "stdev_learning_rate": 0.1}
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


@pytest.mark.parametrize("searcher_name", SEARCHERS)
def test_state_round_trip_continues_bit_exactly(tmp_path, searcher_name):
    problem, searcher = make(tmp_path, searcher_name)
    run(problem, searcher, 1, 2)
    saved = through_disk({"searcher": searcher.state_dict(), "rng": capture_rng_state(problem.generator)})
    run(problem, searcher, 3, 2)
    expected_centre, expected_sigma = searcher.centre(), searcher.sigma()

    problem_b, searcher_b = make(tmp_path, searcher_name)
    searcher_b.load_state_dict(saved["searcher"])
    restore_rng_state(saved["rng"], problem_b.generator)
    run(problem_b, searcher_b, 3, 2)
    assert torch.equal(searcher_b.centre(), expected_centre)
    assert torch.equal(searcher_b.sigma(), expected_sigma)
    assert searcher_b.steps == searcher.steps == 4

    # the state is what makes it exact: a fresh searcher with the same RNG diverges
    problem_c, searcher_c = make(tmp_path, searcher_name)
    restore_rng_state(saved["rng"], problem_c.generator)
    run(problem_c, searcher_c, 3, 2)
    assert not torch.equal(searcher_c.centre(), expected_centre)


def test_cmaes_state_holds_the_documented_fields(tmp_path):
    problem, searcher = make(tmp_path, "cmaes_separable")
    run(problem, searcher, 1, 1)
    state = searcher.state_dict()
    assert {"m", "sigma", "C", "A", "p_sigma", "p_c", "steps_count"} <= set(state)
    assert state["C"].shape == (6,)  # separable: the diagonal only
    problem, searcher = make(tmp_path, "cmaes_full")
    assert searcher.state_dict()["C"].shape == (6, 6)


def test_step_size_starts_at_sigma(tmp_path):
    for name in SEARCHERS:
        _, searcher = make(tmp_path, name)
        assert searcher.step_size() == pytest.approx(0.3), name


def test_loading_a_different_searcher_is_refused(tmp_path):
    _, searcher = make(tmp_path, "snes")
    state = searcher.state_dict()
    _, cma = make(tmp_path, "cmaes_separable")
    with pytest.raises(ConfigError, match="holds a snes searcher"):
        cma.load_state_dict(state)


@pytest.mark.parametrize("searcher_name", ["cmaes_separable", "pgpe"])
def test_new_stage_keeps_the_distribution_but_moves_the_centre(tmp_path, searcher_name):
    problem, searcher = make(tmp_path, searcher_name)
    run(problem, searcher, 1, 3)
    state = searcher.state_dict()
    centre = torch.arange(6, dtype=torch.float32)
    _, fresh = make(tmp_path, searcher_name, centre=centre)
    fresh.start_from(state, centre)
    assert torch.equal(fresh.centre(), centre)
    assert torch.equal(fresh.sigma(), searcher.sigma())
    assert fresh.steps == 0


def test_the_evotorch_internals_the_adapter_relies_on_still_exist(tmp_path):
    """Fails when an EvoTorch upgrade renames what `evotorch_internals` touches (so resume would break)."""
    from evotorch.optimizers import ClipUp

    from namm.evolution.searchers.evotorch_internals import PRIVATE_ATTRIBUTES

    for name in SEARCHERS:
        problem, searcher = make(tmp_path, name)
        run(problem, searcher, 1, 1)
        objects = [searcher.algorithm, getattr(searcher.algorithm, "_optimizer", None)]
        for owner, attributes in PRIVATE_ATTRIBUTES.items():
            for target in [item for item in objects if isinstance(item, owner)]:
                missing = [attribute for attribute in attributes if not hasattr(target, attribute)]
                assert not missing, f"{name}: EvoTorch's {owner.__name__} no longer has {missing}"
        if name == "pgpe":
            assert isinstance(searcher.algorithm._optimizer, ClipUp)
        if name not in ("cmaes_full", "cmaes_separable"):  # the public status reads the private distribution
            assert torch.equal(searcher.centre(), searcher.algorithm._distribution.mu)


def test_only_the_adapter_touches_evotorch_private_attributes():
    from namm.evolution.searchers.evotorch_internals import PRIVATE_ATTRIBUTES

    names = {attribute for attributes in PRIVATE_ATTRIBUTES.values() for attribute in attributes}
    package = Path(__file__).parents[1] / "namm" / "evolution"
    for path in package.rglob("*.py"):
        if path.name == "evotorch_internals.py":
            continue
        used = sorted(name for name in names if re.search(rf"\.{name}\b", path.read_text()))
        assert not used, f"{path} touches EvoTorch internals {used}; go through evotorch_internals"


def test_the_committed_searcher_state_loads_into_a_fresh_searcher(tmp_path):
    """results/cpu-memory/latest.pt was written before searchers were registered classes."""
    from namm.evolution.checkpoint import load_checkpoint

    saved = load_checkpoint(Path(__file__).parents[1] / "results" / "cpu-memory" / "latest.pt").searcher_state
    cfg = fake_train_config(tmp_path, scorer={"dimension": 4172})
    config = validate_train_config(cfg)
    problem = EvolutionProblem(cfg, 4172, seed=0, rule=FitnessRule.of(config.evo))
    searcher = build_searcher(problem, config.evo, torch.zeros(4172))
    searcher.load_state_dict(saved)
    assert torch.equal(searcher.centre(), saved["m"]) and torch.equal(searcher.sigma(), saved["sigma"])
    assert searcher.steps == saved["steps_count"] == 6
    resaved = searcher.state_dict()
    assert resaved.keys() == saved.keys() and all(
        torch.equal(resaved[key], saved[key]) for key in saved if isinstance(saved[key], torch.Tensor)
    )


def test_a_searcher_written_as_contributing_says_trains_and_resumes_bit_exactly(tmp_path, monkeypatch):
    """tests/evolution_cem_searcher.py follows CONTRIBUTING's "Add a searcher" (one module; its yaml is the
    evo node below): it registers on import, its options are checked, and the generic state round trip holds.
    It registers into a copy of the registry, so later tests see only the shipped searchers."""
    available_searchers()  # the shipped ones, registered before the copy
    monkeypatch.setattr(searcher_registry, "_SEARCHERS", dict(searcher_registry._SEARCHERS))
    import evolution_cem_searcher  # noqa: F401  (registers "cem")

    assert "cem" in available_searchers()
    with pytest.raises(ConfigError, match="evo.popsize must be >= 4 for cem"):
        validate_train_config(fake_train_config(tmp_path, evo={"searcher": "cem", "popsize": 2}))
    test_state_round_trip_continues_bit_exactly(tmp_path, "cem")

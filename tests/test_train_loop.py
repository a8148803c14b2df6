"""The training loop with the deterministic fake scorer: resume, failures, outputs, start points."""

import json
import logging

import pytest
import torch
from evolution_fake_scorer import fake_train_config

from namm.evolution.checkpoint import BEST, LATEST, PREVIOUS, load_checkpoint
from namm.evolution.config import ConfigError
from namm.evolution.metrics import TIMING_KEYS
from namm.evolution.trainer import train


def records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def generation_records(run_dir):
    """The per-generation records (the generation-0 record holds only the start's validation)."""
    return [record for record in records(run_dir) if record["generation"] > 0]


def identical(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(identical(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b))
    return a == b


def assert_same_state(a, b):
    for key in (
        "generation",
        "center",
        "sigma",
        "best_params",
        "best_validation_fitness",
        "best_generation",
        "searcher_state",
        "rng_state",
        "normalisation_state",
    ):
        assert identical(getattr(a, key), getattr(b, key)), key


@pytest.mark.parametrize("searcher", ["cmaes_separable", "pgpe"])
def test_kill_and_resume_is_bit_exact(tmp_path, monkeypatch, searcher):
    evo = {"searcher": searcher, "center_learning_rate": 0.05, "stdev_learning_rate": 0.1}
    straight = tmp_path / "straight"
    train(fake_train_config(straight, evo=evo))

    killed = tmp_path / "killed"
    monkeypatch.setenv("FAKE_SCORER_INTERRUPT_AT", "3")
    with pytest.raises(KeyboardInterrupt):
        train(fake_train_config(killed, evo=evo))
    assert load_checkpoint(killed / LATEST).generation == 2
    monkeypatch.delenv("FAKE_SCORER_INTERRUPT_AT")
    train(fake_train_config(killed, evo=evo, resume="auto"))

    assert_same_state(load_checkpoint(straight / LATEST), load_checkpoint(killed / LATEST))
    assert_same_state(load_checkpoint(straight / BEST), load_checkpoint(killed / BEST))
    assert records(straight) == records(killed)
    assert [r["generation"] for r in records(killed)] == [0, 1, 2, 3, 4]


def test_resume_from_corrupted_latest_uses_the_previous_one_and_stays_exact(tmp_path, monkeypatch, caplog):
    straight = tmp_path / "straight"
    train(fake_train_config(straight))
    killed = tmp_path / "killed"
    monkeypatch.setenv("FAKE_SCORER_INTERRUPT_AT", "3")
    with pytest.raises(KeyboardInterrupt):
        train(fake_train_config(killed))
    monkeypatch.delenv("FAKE_SCORER_INTERRUPT_AT")
    latest = killed / LATEST
    latest.write_bytes(latest.read_bytes()[:-64])  # truncated, as by a crash of the file system
    with caplog.at_level(logging.WARNING):
        train(fake_train_config(killed, resume="auto"))
    assert any(
        f"falling back to the previous good checkpoint {killed / PREVIOUS}" in r.getMessage() for r in caplog.records
    )
    assert_same_state(load_checkpoint(straight / LATEST), load_checkpoint(killed / LATEST))
    assert records(straight) == records(killed)  # generation 2 was redone, not duplicated


def test_nan_candidate_gets_the_worst_fitness_and_the_run_goes_on(tmp_path, caplog):
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        summary = train(fake_train_config(run_dir, scorer={"nan_candidate": 3}))
    assert summary.generation == 4
    assert [r["failed_candidates"] for r in generation_records(run_dir)] == [1, 1, 1, 1]
    warnings = [r.getMessage() for r in caplog.records if "failed, given the worst fitness" in r.getMessage()]
    assert len(warnings) == 4 and all("candidate 3 failed" in m and "non-finite" in m for m in warnings)


def test_raising_candidates_get_the_worst_fitness_and_the_run_goes_on(tmp_path, caplog):
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        summary = train(fake_train_config(run_dir, scorer={"raise_when_first_param_above": 0.0}))
    assert summary.generation == 4
    failed = [r["failed_candidates"] for r in generation_records(run_dir)]
    assert 0 < sum(failed) < 4 * 8
    warnings = [r.getMessage() for r in caplog.records if "failed, given the worst fitness" in r.getMessage()]
    assert len(warnings) == sum(failed)
    assert all("ValueError: fake failure: a first parameter above 0.0" in m for m in warnings)


def test_outputs_metrics_plot_and_checkpoints(tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(fake_train_config(run_dir, evo={"generations": 3, "eval_interval": 2}))
    lines = records(run_dir)
    assert [r["generation"] for r in lines] == [0, 1, 2, 3]
    validated = [r["generation"] for r in lines if "validation/fitness" in r]
    assert validated == [0, 2, 3]  # the start, every eval_interval, and after the last generation
    first = lines[1]
    for key in (
        "fitness/mean",
        "fitness/best",
        "fitness/worst",
        "fitness/std",
        "task/alpha/score_mean",
        "task/beta/reference",
        "retained_ratio/mean",
        "retained_ratio/min",
        "retained_ratio/max",
        "retained_ratio/layer_2",
        "search/step_size",
        "failed_candidates",
    ):
        assert key in first, key
    assert first["fitness/worst"] <= first["fitness/mean"] <= first["fitness/best"]
    assert (run_dir / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    latest = load_checkpoint(run_dir / LATEST)
    assert latest.generation == 3 and latest.center.shape == (6,)
    assert latest.config["evo"]["searcher"] == "cmaes_separable"
    assert set(latest.versions) >= {"torch", "evotorch", "python"}
    assert (run_dir / LATEST).stat().st_size < 100_000  # no model weights
    best = load_checkpoint(run_dir / BEST)
    assert best.best_validation_fitness == max(r["validation/fitness"] for r in lines if "validation/fitness" in r)
    assert torch.equal(best.best_params, best.center)
    out = capsys.readouterr().out
    assert f"python evaluate.py checkpoint={run_dir}" in out and str(run_dir / "metrics.jsonl") in out


def test_existing_run_is_not_overwritten_and_changed_settings_do_not_resume(tmp_path):
    run_dir = tmp_path / "run"
    train(fake_train_config(run_dir, evo={"generations": 2}))
    with pytest.raises(ConfigError, match="already holds a run.*resume=auto"):
        train(fake_train_config(run_dir, evo={"generations": 2}))
    with pytest.raises(ConfigError, match="evo.popsize: 8 -> 10"):
        train(fake_train_config(run_dir, resume="auto", evo={"generations": 3, "popsize": 10}))
    summary = train(fake_train_config(run_dir, resume="auto", evo={"generations": 3}))  # more generations: fine
    assert summary.generation == 3


def test_slurm_requeue_implies_resume(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    train(fake_train_config(run_dir, evo={"generations": 2}))
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert train(fake_train_config(run_dir, evo={"generations": 3})).generation == 3


def test_init_from_starts_at_the_saved_centre(tmp_path):
    first = tmp_path / "stage1"
    train(fake_train_config(first, evo={"generations": 2}))
    centre = load_checkpoint(first / BEST).best_params
    second = tmp_path / "stage2"
    # another searcher and a tiny step size: every first-generation candidate sits on the saved centre
    train(fake_train_config(second, init_from=str(first), evo={"searcher": "snes", "sigma": 1e-7, "generations": 1}))
    expected = torch.sigmoid(centre.double().mean()).item()  # the fake's retained ratio
    start, first_generation = records(second)
    assert start["generation"] == 0 and start["validation/retained_ratio"] == pytest.approx(expected, abs=1e-6)
    assert first_generation["retained_ratio/mean"] == pytest.approx(expected, abs=1e-5)
    wrong = tmp_path / "wrong"
    with pytest.raises(ConfigError, match="centre has 6 parameters"):
        train(fake_train_config(wrong, init_from=str(first), scorer={"dimension": 5}))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"evo": {"sigma": -1.0}}, "evo.sigma"),
        ({"evo": {"popsize": 1}}, "evo.popsize must be >= 2"),
        ({"evo": {"searcher": "pgpe", "popsize": 7}}, "even for pgpe"),
        ({"evo": {"num_actors": 9}}, "must not exceed evo.popsize"),
        ({"resume": "/no/such/run"}, "resume must be"),
        ({"init_from": "/no/such/ckpt.pt"}, "init_from"),
        (
            {"scorer": {"_target_": "no_such_module.build"}},
            "scorer._target_='no_such_module.build' could not be imported",
        ),
    ],
)
def test_bad_settings_fail_before_the_scorer_is_built(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train(
            fake_train_config(tmp_path / "run", scorer={"trace_dir": str(tmp_path / "trace")}, **overrides)
            if "scorer" not in overrides
            else fake_train_config(tmp_path / "run", **overrides)
        )
    assert not (tmp_path / "trace").exists()  # no scorer (model) was built


def test_init_from_another_model_is_refused_unless_asked_for(tmp_path):
    first = tmp_path / "stage1"
    train(fake_train_config(first, model={"name": "tiny-llama"}, evo={"generations": 1}))
    other = {"name": "tiny-qwen2"}
    with pytest.raises(ConfigError, match="trained on model 'tiny-llama'.*init_from_any_model=true"):
        train(fake_train_config(tmp_path / "refused", init_from=str(first), model=other))
    assert not (tmp_path / "refused").exists()  # refused before anything was built or written
    with pytest.raises(ConfigError, match="init_from_any_model=true"):  # same name, other random weights
        train(fake_train_config(tmp_path / "reseeded", init_from=str(first), model={"name": "tiny-llama", "seed": 1}))
    summary = train(
        fake_train_config(tmp_path / "transfer", init_from=str(first), init_from_any_model=True, model=other)
    )
    assert summary.generation == 4


def test_a_validation_tie_goes_to_the_centre_that_keeps_less():
    from namm.evolution.trainer import BestCentre

    start = BestCentre(torch.zeros(3), validation_fitness=1.0, generation=0, validation_retained_ratio=1.0)
    assert start.beaten_by(1.0, 0.5)  # same score, half the memory
    assert not start.beaten_by(1.0, 1.0) and not start.beaten_by(0.99, 0.1)
    assert start.beaten_by(1.01, 1.0)
    assert BestCentre(torch.zeros(3)).beaten_by(0.0, 1.0)  # nothing validated yet


def test_the_memory_weight_steers_the_search_towards_keeping_less(tmp_path):
    """On the fake (retained ratio = sigmoid(mean of the vector)), the same search with a memory term ends
    with a centre that keeps less, and every generation records its objective."""
    evo = {"generations": 4, "eval_interval": 4}
    train(fake_train_config(tmp_path / "score", evo=evo))
    train(fake_train_config(tmp_path / "memory", evo={**evo, "objective": "memory_penalty", "memory_weight": 4.0}))
    plain, penalised = (load_checkpoint(tmp_path / name / LATEST) for name in ("score", "memory"))
    assert float(penalised.center.mean()) < float(plain.center.mean()) - 0.05
    lines = [json.loads(line) for line in (tmp_path / "memory" / "metrics.jsonl").read_text().splitlines()]
    assert {line["objective"] for line in lines if "fitness/mean" in line} == {"memory_penalty"}
    last = lines[-1]  # fitness = normalised score - 4 x retained ratio, for the population's mean
    assert last["fitness/mean"] == pytest.approx(last["normalised_score/mean"] - 4.0 * last["retained_ratio/mean"])


def test_a_run_saved_before_the_objective_settings_existed_resumes_with_the_old_behaviour():
    from namm.evolution.resume import config_differences

    saved = {"evo": {"popsize": 8, "sigma": 0.065}}  # saved before evo.objective, evo.init, ... were added
    old_behaviour = {
        "evo": {
            "popsize": 8,
            "sigma": 0.065,
            "objective": "score",
            "init": "zeros",
            "reference_floor_share": 0.0,
            "memory_weight": 0.5,  # unused by objective=score
            "init_margin": 0.2,  # unused by init=zeros
        }
    }
    assert config_differences(saved, old_behaviour) == []
    today = {"evo": {**old_behaviour["evo"], "objective": "memory_penalty", "init": "keep_all"}}
    assert config_differences(saved, today) == [
        "evo.init: 'zeros' -> 'keep_all'",
        "evo.objective: 'score' -> 'memory_penalty'",
    ]


def test_the_searcher_ranks_by_fitness_then_memory_and_the_start_record_names_the_objective(tmp_path, monkeypatch):
    """What the searcher is given is `selection_ranks`, not the raw fitness: a 0..P-1 ordering per generation."""
    from evotorch import SolutionBatch

    from namm.evolution import problem as problem_module

    given, computed = [], []
    set_evals = SolutionBatch.set_evals
    population_fitness = problem_module.population_fitness

    def recording_set_evals(batch, evals, *args, **kwargs):
        given.append(torch.as_tensor(evals).clone().double())
        return set_evals(batch, evals, *args, **kwargs)

    def recording_fitness(outcome, rule, generation):
        fitness = population_fitness(outcome, rule, generation)
        computed.append(fitness)
        return fitness

    monkeypatch.setattr(SolutionBatch, "set_evals", recording_set_evals)
    monkeypatch.setattr(problem_module, "population_fitness", recording_fitness)
    run_dir = tmp_path / "run"
    train(fake_train_config(run_dir, evo={"generations": 2}))
    assert len(given) == len(computed) == 2
    for evals, fitness in zip(given, computed, strict=True):
        assert torch.equal(evals, fitness.ranks) and not torch.equal(evals, fitness.values.double())
        assert sorted(evals.tolist()) == list(range(len(evals)))
    assert records(run_dir)[0]["objective"] == "score"  # the fake trains the score objective

"""The real training scorer on a tiny model: population batching, prompt splits, and train.py end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from namm.engine import EngineConfig
from namm.evolution.config import register_configs
from namm.evolution.scoring import TRAIN_SPLIT, VALIDATION_SPLIT
from namm.models import ModelConfig
from namm.network.config import NAMMConfig
from tasks.config import TaskConfig
from tasks.evolution_scorer import TaskScorer, TaskScorerConfig

CONF = str(Path(__file__).resolve().parents[1] / "conf")
TINY = [
    "model=tiny-llama",
    "task.context_length=600",
    "task.num_samples=6",
    "evo.popsize=3",
    "evo.prompts_per_task=1",
    "evo.validation_prompts=2",
    "engine.update_interval=128",
    "logger.mode=disabled",
]


def tiny_config(tmp_path: Path, *extra: str):
    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose("train", overrides=[*TINY, f"out_dir={tmp_path}", *extra], return_hydra_config=True)


@pytest.fixture()
def scorer(tmp_path, monkeypatch):
    monkeypatch.setenv("NAMM_REFERENCE_CACHE", str(tmp_path / "references"))
    cfg = tiny_config(tmp_path)
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    return TaskScorer(cfg)


def test_splits_are_disjoint_and_training_draws_are_seeded(scorer):
    task = scorer.tasks[0]
    validation = scorer.indices(task, VALIDATION_SPLIT, 0)
    draws = [scorer.indices(task, TRAIN_SPLIT, generation) for generation in range(6)]
    assert len(validation) == 2
    assert all(not set(draw) & set(validation) for draw in draws)
    assert draws[0] == scorer.indices(task, TRAIN_SPLIT, 0)
    assert len({tuple(draw) for draw in draws}) > 1


def test_population_rows_equal_each_candidate_alone_and_zero_keeps_everything(scorer):
    task = scorer.tasks[0]
    index = scorer.indices(task, TRAIN_SPLIT, 0)[0]
    scorer._calibrate()
    generator = torch.Generator().manual_seed(0)
    population = torch.randn(3, scorer.param_count, generator=generator) * 0.5
    population[0] = 0.0
    batched, _ = scorer._run_population(task, index, population)
    for row in range(3):
        alone, _ = scorer._run_population(task, index, population[row : row + 1])
        assert batched[row].token_ids == alone[0].token_ids
        assert batched[row].retained_ratio == pytest.approx(alone[0].retained_ratio)
    full = scorer.full_engine.generate([list(task.samples[index].prompt_ids)], scorer._decode_settings(task))[0]
    assert batched[0].token_ids == full.token_ids
    assert batched[0].retained_ratio == 1.0
    assert min(result.retained_ratio for result in batched[1:]) < 1.0


def test_scores_have_one_entry_per_candidate_and_references(scorer):
    scores = scorer.score(torch.zeros(2, scorer.param_count), TRAIN_SPLIT, 0)
    scores.check(2)
    name = scorer.tasks[0].spec.name
    torch.testing.assert_close(scores.task_scores[name], torch.full((2,), scores.reference_scores[name]))
    assert scorer.normalisation_state()["count"] > 0


def test_train_py_runs_end_to_end_on_a_tiny_model(tmp_path, monkeypatch):
    import subprocess
    import sys

    monkeypatch.setenv("NAMM_REFERENCE_CACHE", str(tmp_path / "references"))
    run = tmp_path / "run"
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "train.py", *TINY, "evo.generations=2", f"out_dir={run}"]
    done = subprocess.run(command, check=False, cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["generation"] for line in lines if "fitness/mean" in line] == [1, 2]
    assert (run / "latest.pt").is_file() and (run / "best.pt").is_file()
    assert "python evaluate.py checkpoint=" in done.stdout


def test_the_typed_scorer_config_is_what_the_run_config_says(tmp_path):
    """scripts/device_check.py builds a TaskScorerConfig without Hydra; training converts its run config."""
    expected = TaskScorerConfig(
        model=ModelConfig(name="tiny-llama"),
        task=TaskConfig(name="passkey", tasks=["passkey"], num_samples=6, context_length=600),
        namm=NAMMConfig(),
        engine=EngineConfig(update_interval=128),
        prompts_per_task=1,
        validation_prompts=2,
        seed=0,
    )
    assert TaskScorerConfig.from_run_config(tiny_config(tmp_path)) == expected
    with pytest.raises(ValueError, match="prompts_per_task must be >= 1"):
        TaskScorerConfig(model=ModelConfig(name="tiny-llama"), task=TaskConfig(), prompts_per_task=0)

"""The real training scorer on a tiny model: population batching, prompt splits, and train.py end to end."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from sweep_helpers import run_multirun

from namm.engine import EngineConfig
from namm.evolution.checkpoint import load_checkpoint, read_provenance
from namm.evolution.config import register_configs
from namm.evolution.scorer_protocol import TRAIN_SPLIT, VALIDATION_SPLIT, CandidateScores, Signal
from namm.models import ModelConfig
from namm.network.config import NAMMConfig
from namm.population_batches import PopulationBatches
from tasks.task_config import TaskConfig
from tasks.training.task_scorer import TaskScorer, TaskScorerConfig

CONF = str(Path(__file__).resolve().parents[1] / "conf")
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "longbench"
TINY = [
    "~experiment",  # the schema's plain defaults, not the demo's
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


def test_the_scorer_records_its_training_pool_and_validation_prompts(scorer):
    task = scorer.tasks[0]
    by_split = {entry["split"]: entry for entry in scorer.prompt_provenance()["prompts"]}
    train, validation = by_split[TRAIN_SPLIT]["indices"], by_split[VALIDATION_SPLIT]["indices"]
    assert validation == scorer.indices(task, VALIDATION_SPLIT, 0) and not set(train) & set(validation)
    assert set(train) | set(validation) == set(range(6))  # the whole pool a generation may draw from
    assert by_split[TRAIN_SPLIT]["seed"] == 42 and by_split[TRAIN_SPLIT]["task"] == "passkey"
    expected = [hashlib.sha256(json.dumps(list(task.samples[i].prompt_ids)).encode()).hexdigest()[:16] for i in train]
    assert by_split[TRAIN_SPLIT]["prompt_sha"] == expected


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
    full = scorer.full_engine.generate([list(task.samples[index].prompt_ids)], scorer._generation_settings(task))[0]
    assert batched[0].token_ids == full.token_ids
    assert batched[0].retained_ratio == 1.0
    assert min(result.retained_ratio for result in batched[1:]) < 1.0


def test_scores_have_one_entry_per_candidate_and_references(scorer):
    scores = scorer.score(torch.zeros(2, scorer.param_count), TRAIN_SPLIT, 0)
    scores.check(2)
    name = scorer.tasks[0].spec.name
    torch.testing.assert_close(
        scores.task_scores[name], torch.full((2,), scores.reference_scores[name], dtype=torch.float64)
    )
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
    provenance = read_provenance(load_checkpoint(run / "latest.pt"))
    assert {(entry["split"], len(entry["indices"])) for entry in provenance["prompts"]} == {
        ("train", 4),
        ("validation", 2),
    }
    # references: computed once before generation 1 (the start's validation, 2 draws of 1 prompt), one file
    computed = re.search(r"computed (\d+) full-cache reference scores; every worker uses them", done.stdout)
    assert computed is not None, done.stdout[-3000:]
    (file,) = [path for path in (tmp_path / "references").rglob("passkey-*.json") if "settings" not in path.name]
    assert len(json.loads(file.read_text())["lb/passkey"]) == int(computed.group(1)) >= 2
    context = json.loads(file.with_suffix(".settings.json").read_text())["context"]
    assert (
        context["dtype"] == "float32" and context["device_type"] == "cpu" and context["weights"] == "tiny-random-seed0"
    )
    assert context["generator"]["update_interval"] == 128


def assert_identical(a, b) -> None:
    assert a.retained_ratio.equal(b.retained_ratio)
    assert a.retained_ratio_per_layer.equal(b.retained_ratio_per_layer)
    assert a.task_scores.keys() == b.task_scores.keys()
    assert all(a.task_scores[task].equal(b.task_scores[task]) for task in a.task_scores)
    assert a.reference_scores == b.reference_scores and a.tokens_processed == b.tokens_processed
    per_prompt = [[(r.task, r.index, r.scores, r.retained_ratio) for r in s.prompts] for s in (a, b)]
    assert per_prompt[0] == per_prompt[1]  # metrics.jsonl's candidates/prompt_scores, candidate by candidate


@pytest.mark.slow
@pytest.mark.parametrize("signal", ["task_metric", "answer_likelihood"])
def test_scores_do_not_depend_on_how_the_population_or_the_prompts_are_split(tmp_path, monkeypatch, caplog, signal):
    """8 prompts: a float32 mean over prompts (the old aggregation) changed the last bit with the split. The
    likelihood signal is a float per candidate: splitting the population must not move its last bit."""
    monkeypatch.setenv("NAMM_REFERENCE_CACHE", str(tmp_path / "references"))
    extra = ["task.num_samples=12", "task.context_length=300", "evo.prompts_per_task=8", "evo.validation_prompts=3"]
    cfg = tiny_config(tmp_path, *extra, f"evo.signal={signal}")
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    scorer = TaskScorer(cfg)
    scorer._calibrate()
    population = 0.3 * torch.randn(5, scorer.param_count, generator=torch.Generator().manual_seed(1))
    population[:, -1] += torch.linspace(-0.5, 0.5, 5)  # read-out bias: candidates keep different amounts
    whole = scorer.score(population, TRAIN_SPLIT, 1)
    assert len(whole.prompts) == 8 and len(set(whole.retained_ratio.tolist())) > 1
    split = CandidateScores.concat(
        [scorer.score(population[:2], TRAIN_SPLIT, 1), scorer.score(population[2:], TRAIN_SPLIT, 1)]
    )
    assert_identical(whole, split)

    scorer.population_batches = PopulationBatches(max_rows=2)  # micro-batches of 2, 2 and 1 rows
    assert_identical(whole, scorer.score(population, TRAIN_SPLIT, 1))
    if signal == "answer_likelihood":  # one row per forward: no micro-batches to halve
        return

    generate = scorer.engine.generate  # an injected out-of-memory error above 3 rows halves the batch

    def run_or_oom(prompts, *args, **kwargs):
        if len(prompts) > 3:
            raise torch.OutOfMemoryError("injected")
        return generate(prompts, *args, **kwargs)

    monkeypatch.setattr(scorer.engine, "generate", run_or_oom)
    scorer.population_batches = PopulationBatches(max_rows=None)
    with caplog.at_level(logging.WARNING):
        assert_identical(whole, scorer.score(population, TRAIN_SPLIT, 1))
    halved = [r for r in caplog.records if "out of memory at 5 rows per batch; retrying with 2" in r.getMessage()]
    assert len(halved) == 1 and scorer.population_batches.max_rows == 2

    prompts = scorer.prompts(VALIDATION_SPLIT, 0)
    centre = population[3:4]
    alone = scorer.score(centre, VALIDATION_SPLIT, 0)
    shards = [scorer.score(centre, VALIDATION_SPLIT, 0, prompts[i::2]) for i in range(2)]
    assert_identical(alone, CandidateScores.join_prompts(shards))


@pytest.mark.slow
def test_a_sweep_gives_each_job_its_own_run_and_a_bad_job_fails_alone(tmp_path, monkeypatch):
    """`train.py -m evo.sigma=-1,0.03,0.065` on a tiny model: two runs in two directories, one clear failure."""
    overrides = ["evo.sigma=-1,0.03,0.065", *TINY, "evo.generations=1"]
    done = run_multirun("train.py", overrides, tmp_path, monkeypatch, timeout=900)
    assert done.returncode == 1, done.stderr[-3000:]  # the sweep ran to the end, then said a job failed
    summary = json.loads((tmp_path / "sweep" / "sweep_summary.json").read_text())
    assert [job["status"] for job in summary["jobs"]] == ["failed", "finished", "finished"]
    runs = tmp_path / "runs" / "tiny-llama-passkey"  # runs/<name>/<the job's overrides, hashed when long>/seed0
    finished = [Path(job["out_dir"]) for job in summary["jobs"][1:]]
    assert finished[0] != finished[1] and all(path.parent.parent == runs for path in finished)
    assert all((path / "latest.pt").is_file() and (path / "metrics.jsonl").is_file() for path in finished)
    assert sorted(runs.glob("*/seed0/latest.pt")) == sorted(path / "latest.pt" for path in finished)
    assert "evo.sigma is the initial step size" in summary["jobs"][0]["error"]
    assert "job 0 [failed] evo.sigma=-1" in done.stdout and "2 of 3 job(s) finished" in done.stdout
    assert "Traceback" not in done.stderr


def test_missing_task_data_fails_before_the_model_loads(tmp_path, monkeypatch):
    """task=qasper offline with no task.data_dir: one message naming task.data_dir and the hub file."""
    from namm.evolution.config import ConfigError
    from namm.evolution.trainer import train
    from tasks.training import task_scorer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("NAMM_DATA_CACHE", str(tmp_path / "longbench"))
    monkeypatch.setattr(task_scorer, "load_model", lambda config: pytest.fail("the model was loaded first"))
    cfg = tiny_config(tmp_path, "task=qasper")
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # train() receives the job config, as under @hydra.main
    with pytest.raises(ConfigError, match=r"(?s)task 'qasper' has no data from the hub.*data\.zip.*task\.data_dir="):
        train(cfg)
    with pytest.raises(ConfigError, match=r"training pools of tasks \{'qasper': 0\}"):  # the fixture has 2 lines
        task_scorer.TaskScorer.check_config(tiny_config(tmp_path, "task=qasper", f"task.data_dir={FIXTURES}"))
    fixture = ("task=qasper", f"task.data_dir={FIXTURES}", "evo.validation_prompts=1")  # a training pool of 1
    task_scorer.TaskScorer.check_config(tiny_config(tmp_path, *fixture))
    # a pool of 1 prompt cannot give each generation, nor the distilled start, its 2: refused, not shrunk to the
    # same prompt every time
    for draw, key in (
        ("evo.prompts_per_task=2", r"evo\.prompts_per_task"),
        ("evo.distill.prompts_per_task=2", r"evo\.distill\.prompts_per_task"),
    ):
        extra = (draw, "evo.init=distill") if "distill" in draw else (draw,)
        with pytest.raises(ConfigError, match=rf"(?s)training pools of tasks \{{'qasper': 1\}}.*than the 2 that {key}"):
            task_scorer.TaskScorer.check_config(tiny_config(tmp_path, *fixture, *extra))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("engine.eviction_mode=per_token", "engine: eviction_mode must be one of"),
        ("engine.update_interval=abc", "engine.update_interval: Value 'abc' .* could not be converted to Integer"),
        ("+engine.interval=64", "engine.interval: Key 'interval' not in 'EngineConfig'"),
        ("model.device=tpu", "model.device='tpu' is not a device"),
        ("engine.update_interval=100", "not a multiple of the NAMM's hop"),
        (
            "task.context_length=5000",
            r"task.context_length=5000 \+ \d+ new tokens exceeds tiny-llama's max_context 4096",
        ),
        ("model.max_context=500", r"task.context_length=600 \+ \d+ new tokens exceeds tiny-llama's max_context 500"),
    ],
)
def test_bad_settings_are_config_errors_as_in_evaluate(tmp_path, override, message):
    """The engine and model nodes are read as evaluate.py reads them (one schema each), with the same errors."""
    from namm.errors import ConfigError
    from tasks.training import task_scorer

    with pytest.raises(ConfigError, match=message):
        task_scorer.TaskScorer.check_config(tiny_config(tmp_path, override))


def test_a_longbench_budget_the_model_would_cut_further_fails_before_it_loads(tmp_path, monkeypatch):
    """task.max_prompt_tokens=2000 on a 300-token model: refused with the size prompts would really get."""
    from namm.evolution.config import ConfigError
    from namm.evolution.trainer import train
    from tasks.training import task_scorer

    monkeypatch.setattr(task_scorer, "load_model", lambda config: pytest.fail("the model was loaded first"))
    overrides = ["task=qasper", f"task.data_dir={FIXTURES}", "task.max_prompt_tokens=2000", "model.max_context=300"]
    cfg = tiny_config(tmp_path, *overrides, "evo.validation_prompts=1")
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    with pytest.raises(ConfigError, match=r"qasper: task.max_prompt_tokens=2000 .* would be cut to 172 tokens"):
        train(cfg)


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
        max_batch_rows=None,
        signal=Signal.task_metric,
    )
    assert TaskScorerConfig.from_run_config(tiny_config(tmp_path)) == expected
    liked = TaskScorerConfig.from_run_config(
        tiny_config(tmp_path, "evo.signal=answer_likelihood", "evo.max_batch_rows=2")
    )
    assert (liked.signal, liked.max_batch_rows) == (Signal.answer_likelihood, 2)
    with pytest.raises(ValueError, match="prompts_per_task must be >= 1"):
        dataclasses.replace(expected, prompts_per_task=0)


def test_the_scorers_evo_settings_have_their_defaults_in_evo_config_only():
    """EvoConfig states the defaults once; the scorer's config has none of its own to drift from them."""
    undefaulted = {
        item.name
        for item in dataclasses.fields(TaskScorerConfig)
        if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING
    }
    assert undefaulted == {
        "model",
        "task",
        "prompts_per_task",
        "validation_prompts",
        "seed",
        "max_batch_rows",
        "signal",
    }


def test_keep_all_centre_keeps_everything_and_its_mirror_evicts(scorer, tmp_path):
    cfg = tiny_config(tmp_path)
    centre = initial_centre_keep_all(cfg)
    assert centre.shape == (scorer.param_count,) == (TaskScorer.solution_length(cfg),)
    assert torch.count_nonzero(centre) == 1 and float(centre.max()) == pytest.approx(0.2)  # the read-out bias
    assert torch.equal(TaskScorer.initial_centre(cfg, "zeros", 0.2), torch.zeros(scorer.param_count))
    task = scorer.tasks[0]
    index = scorer.indices(task, TRAIN_SPLIT, 0)[0]
    scorer._calibrate()
    kept, mirrored = scorer._run_population(task, index, torch.stack([centre, -centre]))[0]
    full = scorer.full_engine.generate([list(task.samples[index].prompt_ids)], scorer._generation_settings(task))[0]
    assert kept.update_positions and kept.retained_ratio == 1.0 and kept.token_ids == full.token_ids
    assert mirrored.retained_ratio < 0.2  # the same margin below the threshold evicts all but the newest


def test_budgeted_training_never_exceeds_its_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("NAMM_REFERENCE_CACHE", str(tmp_path / "references"))
    cfg = tiny_config(tmp_path, "evo.objective=budget", "namm.budget_ratio=0.25")
    budgeted = TaskScorer(cfg)
    task = budgeted.tasks[0]
    index = budgeted.indices(task, TRAIN_SPLIT, 0)[0]
    population = torch.randn(3, budgeted.param_count, generator=torch.Generator().manual_seed(1))
    population[0] = initial_centre_keep_all(cfg)  # would keep everything without a budget
    results, _ = budgeted._run_population(task, index, population)
    for result in results:
        assert result.cache_sizes
        for update in result.cache_sizes:
            allowed = math.ceil(0.25 * update["tokens_seen"])
            assert max(update["cache_sizes"]) <= allowed, (update, allowed)
        assert result.retained_ratio < 0.6


def initial_centre_keep_all(cfg) -> torch.Tensor:
    return TaskScorer.initial_centre(cfg, "keep_all", 0.2)


def composed_run_config(tmp_path, *overrides: str):
    """The job config train.py hands to `train` (the `hydra` node set aside, as Hydra does)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    cfg = tiny_config(tmp_path, *overrides)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def test_the_objective_and_the_budget_must_agree(tmp_path):
    from namm.evolution.config import validate_train_config
    from namm.evolution.scorer_protocol import check_scorer

    cfg = composed_run_config(tmp_path, "evo.objective=budget", "namm.budget_ratio=0.5")
    validate_train_config(cfg)
    check_scorer(cfg)  # what train() checks before anything loads


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["evo.objective=budget"],
            "^evo.objective=budget trains under a hard per-KV-head budget: set namm.budget_ratio",
        ),
        (["namm.budget_ratio=0.5"], "use evo.objective=budget instead of memory_penalty, or drop the budget$"),
        (["evo.memory_weight=0"], "memory_penalty needs evo.memory_weight > 0"),
        (  # the one budget rule (namm.budget.Budget.from_keys), as for a policy
            ["evo.objective=budget", "namm.budget_ratio=0.5", "namm.budget_tokens=64"],
            "namm.budget_ratio=0.5 and namm.budget_tokens=64 are both set",
        ),
        # the full key and the fix, never a bare "Budget ratio" or a TypeError traceback
        (
            ["evo.objective=budget", "namm.budget_ratio=2"],
            r"^namm: NAMMConfig: namm.budget_ratio=2.0 is not a ratio in \(0, 1\]; .* \(e.g. namm.budget_ratio=0.5\)",
        ),
        (
            ["evo.objective=budget", "namm.budget_tokens=0"],
            r"namm.budget_tokens=0 is not a positive token count; e.g. namm.budget_tokens=64",
        ),
        (["evo.objective=budget", "namm.budget_ratio=half"], r"^namm.budget_ratio: Value 'half' .* to Float$"),
        (["evo.objective=budget", "namm.budget_ratio=true"], r"^namm.budget_ratio: Value 'True' .* to Float$"),
        (["evo.objective=budget", "namm.budget_tokens=abc"], r"^namm.budget_tokens: Value 'abc' .* to Integer$"),
        (["evo.objective=budget", "namm.budget_tokens=64.5"], r"^namm.budget_tokens: Value '64.5' .* to Integer$"),
    ],
)
def test_bad_budget_settings_fail_before_the_model_loads(tmp_path, monkeypatch, overrides, message):
    from namm.evolution.config import ConfigError
    from namm.evolution.trainer import train

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was reported")

    monkeypatch.setattr("tasks.training.task_scorer.load_model", refuse)
    with pytest.raises(ConfigError, match=message):  # train.py prints a ConfigError alone, no traceback
        train(composed_run_config(tmp_path, *overrides))

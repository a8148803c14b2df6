"""Every config group option and experiment composes (no model is run), and bad values fail at once."""

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException
from omegaconf import open_dict

from namm.evolution.config import ConfigError, register_configs, validate_train_config

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

register_configs()


def options(group: str) -> list[str]:
    folder = CONF / group
    return sorted(path.stem for path in folder.glob("*.yaml")) if folder.is_dir() else []


def compose_train(overrides: list[str]):
    """(job config as train.py receives it, `hydra` node); `${hydra:...}` resolves against the latter."""
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    hydra_node = cfg.hydra
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, hydra_node


def validated(overrides: list[str]):
    return validate_train_config(compose_train(overrides)[0])


def test_default_config_is_the_cpu_demo():
    config = validated([])
    assert config.name == "smollm2-135m-passkey"
    assert config.evo.searcher == "cmaes_separable" and config.evo.popsize == 8 and config.evo.generations == 4
    assert (config.evo.signal.value, config.evo.prompts_per_task, config.evo.validation_prompts) == (
        "answer_likelihood",
        3,
        2,
    )
    assert (config.evo.objective.value, config.evo.memory_weight, config.evo.init.value) == (
        "memory_penalty",
        0.5,
        "distill",
    )
    assert config.evo.distill.target.value == "keydiff_exact"
    assert config.evo.evolve == ["readout_weight", "readout_bias"]  # 27 numbers: what 8 candidates can steer
    assert (config.namm["protect_first"], config.namm["feature_bound"], config.namm["key_novelty"]) == (4, 3, True)
    assert config.out_dir == str(Path.cwd() / "runs" / "smollm2-135m-passkey" / "seed0")
    assert config.scorer["_target_"] == "tasks.training.task_scorer.TaskScorer"


def test_the_demo_leaves_the_reference_namm_and_other_experiments_alone():
    """The demo's settings live in conf/experiment/demo.yaml: the NAMM group keeps the reference's inputs (golden
    parity), `~experiment` gives the schema's plain defaults, and another experiment replaces the demo."""
    plain = validated(["~experiment"])
    assert (plain.evo.signal.value, plain.evo.popsize, plain.evo.prompts_per_task) == ("task_metric", 4, 2)
    assert (plain.namm["protect_first"], plain.namm["feature_bound"], plain.namm["key_novelty"]) == (0, None, False)
    assert plain.evo.init.value == "keep_all" and plain.evo.evolve == []
    assert plain.name == "smollm2-135m-passkey"
    stage1, _ = compose_train(["experiment=stage1"])
    assert (stage1.evo.signal.value, stage1.namm.protect_first, stage1.namm.feature_bound) == ("task_metric", 0, None)


@pytest.mark.parametrize("group", ["model", "task", "namm", "evo", "logger"])
def test_every_option_of_every_group_composes(group):
    for option in options(group):
        overrides = [f"{group}={option}"]
        if group == "evo":
            validated(overrides)  # the typed evo values must also pass their checks
        else:
            cfg, _ = compose_train(overrides)
            assert cfg[group] is not None, option


def test_every_experiment_is_tested():
    assert set(options("experiment")) == {
        "demo",
        "stage1",
        "stage2",
        "stage3",
        "cpu_memory",
        "efficacy",
        "efficacy_keydiff",
    }


def test_the_cpu_memory_experiment_is_what_the_readme_says():
    cfg = validate_train_config(compose_train(["experiment=cpu_memory"])[0])
    assert cfg.name == "cpu-memory" and cfg.task["tasks"] == ["passkey", "niah_single"]
    assert (cfg.evo.objective.value, cfg.evo.memory_weight, cfg.evo.init.value) == ("memory_penalty", 0.5, "keep_all")
    assert (cfg.evo.popsize, cfg.evo.prompts_per_task, cfg.evo.validation_prompts) == (8, 2, 6)
    assert cfg.engine["update_at_prefill_end"] is True and cfg.model["name"] == "smollm2-135m"


def test_the_efficacy_experiment_learns_a_ranking_at_the_baselines_budget_and_layout():
    cfg = validate_train_config(compose_train(["experiment=efficacy"])[0])
    assert cfg.name == "efficacy" and cfg.task["tasks"] == ["niah_prose"]
    assert (cfg.evo.signal.value, cfg.evo.objective.value, cfg.evo.init.value) == (
        "answer_likelihood",
        "budget",
        "distill",
    )
    assert cfg.evo.distill.target.value == "oracle" and cfg.evo.sigma_relative == 0.1
    assert (cfg.namm["budget_ratio"], cfg.namm["key_novelty"], cfg.namm["protect_first"]) == (0.5, True, 4)
    assert (cfg.evo.popsize, cfg.evo.prompts_per_task, cfg.evo.validation_prompts) == (16, 8, 8)
    assert cfg.engine["eviction_mode"] == "per_head" and cfg.engine["update_at_prefill_end"] is False


def test_the_keydiff_efficacy_experiment_is_the_first_with_a_keydiff_start():
    first = validate_train_config(compose_train(["experiment=efficacy"])[0])
    second = validate_train_config(compose_train(["experiment=efficacy_keydiff"])[0])
    assert second.name == "efficacy-keydiff" and second.evo.distill.target.value == "keydiff"
    assert second.evo.generations == 3 and second.namm["key_novelty"] is True
    assert (second.task, second.engine, second.namm) == (first.task, first.engine, first.namm)
    assert replace(second.evo, generations=first.evo.generations, distill=first.evo.distill) == first.evo


@pytest.mark.parametrize("experiment", ["stage1", "stage2", "stage3"])
def test_every_experiment_composes(experiment):
    cfg, _ = compose_train([f"experiment={experiment}"])
    assert cfg.name == f"{experiment}-meta-llama--Llama-3.1-8B-Instruct"  # the model's name, not "hub"
    other, _ = compose_train([f"experiment={experiment}", "model.name=Qwen/Qwen2.5-7B-Instruct"])
    assert other.name == f"{experiment}-Qwen--Qwen2.5-7B-Instruct" and other.out_dir != cfg.out_dir
    assert cfg.evo.popsize == 32 and cfg.evo.sigma == 0.065 and cfg.evo.prompts_per_task == 64
    assert cfg.task.name == f"longbench_curriculum_{experiment[-1]}" and cfg.task.tasks[0] == "passage_retrieval_en"
    assert (cfg.evo.objective.value, cfg.evo.init.value) == ("score", "zeros")  # the reference's objective and start
    assert (cfg.evo.reference_floor_share, cfg.evo.reference_floor) == (0, 1.0)  # and its normalisation


def test_curriculum_stages_chain_through_best_checkpoints():
    stage2, _ = compose_train(["experiment=stage2", "seed=3"])
    stage3, _ = compose_train(["experiment=stage3", "seed=3"])
    assert list(stage2.task.tasks) == ["passage_retrieval_en", "dureader"]
    assert list(stage3.task.tasks) == ["passage_retrieval_en", "dureader", "narrativeqa"]
    stage1, _ = compose_train(["experiment=stage1", "seed=3"])
    assert stage2.init_from == f"{stage1.out_dir}/best.pt"
    assert stage3.init_from == f"{stage2.out_dir}/best.pt"


def test_run_directory_is_deterministic_per_name_and_seed():
    first, hydra_first = compose_train(["seed=1"])
    again, _ = compose_train(["seed=1"])
    other, _ = compose_train(["seed=2"])
    assert first.out_dir == again.out_dir != other.out_dir
    assert first.out_dir.endswith("runs/smollm2-135m-passkey/seed1")
    assert hydra_first.run.dir == first.out_dir


def test_slurm_launcher_composes_with_requeue_settings():
    _, hydra_node = compose_train(["hydra/launcher=slurm"])
    launcher = hydra_node.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.timeout_min > 0 and launcher.max_num_timeout > 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("evo.popsize=abc", "evo.popsize"),
        ("logger.mode=loud", "expected one of"),
        ("evo.generations=1.5", "evo.generations"),
    ],
)
def test_wrong_types_fail_while_composing(override, message):
    with pytest.raises(ConfigCompositionException) as error:
        compose_train([override])
    assert message in str(error.value) + str(error.value.__cause__)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["evo.sigma=-1"], "evo.sigma"),
        (["evo=pgpe", "evo.popsize=7"], "even for pgpe"),
        (["evo.searcher=foo"], "evo.searcher='foo' is not a searcher; choose evo=<name> with one of cmaes_full, "),
        (["evo.eval_interval=0"], "evo.eval_interval"),
        (["resume=sometimes"], "resume must be"),
    ],
)
def test_wrong_values_fail_validation(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validated(overrides)


@pytest.mark.slow
def test_multirun_sweep_runs_each_job_in_its_own_directory(tmp_path):
    """`python train.py -m seed=1,2`: two sequential jobs, two run dirs, two finished offline W&B runs."""
    tests_dir = Path(__file__).parent
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tests_dir), str(REPO)]),
        "HOME": str(tmp_path),
        "WANDB_SILENT": "true",
        "WANDB_MODE": "offline",
    }
    env.pop("WANDB_API_KEY", None)
    command = [
        sys.executable,
        str(REPO / "train.py"),
        "-m",
        "seed=1,2",
        "name=sweep",
        f"out_dir={tmp_path}/runs/sweep/seed${{seed}}",
        f"hydra.sweep.dir={tmp_path}/multirun",
        "scorer._target_=evolution_fake_scorer.FakeScorer",
        "+scorer.dimension=6",
        "evo.generations=2",
        "evo.init=zeros",
        "evo.evolve=[]",
    ]
    result = subprocess.run(command, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    from namm.evolution.checkpoint import load_checkpoint

    run_ids = []
    for seed in (1, 2):
        run_dir = tmp_path / "runs" / "sweep" / f"seed{seed}"
        state = load_checkpoint(run_dir / "latest.pt")
        assert state.generation == 2 and state.config["seed"] == seed
        assert (run_dir / "metrics.jsonl").exists() and (run_dir / ".hydra" / "config.yaml").exists()
        run_ids.append(state.wandb_run_id)
        assert [p.name.endswith(state.wandb_run_id) for p in (run_dir / "wandb").glob("offline-run-*")] == [True]
    assert len(set(run_ids)) == 2  # the second job did not log into the first job's run

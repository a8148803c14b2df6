"""evaluate.py's config and bad-input checks: every error is clear and raised before the model loads."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
from evaluation_helpers import CONF_DIR, TINY, compose_evaluate, evicting_parameters, write_checkpoint
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from namm.errors import ConfigError
from namm.evolution.checkpoint import CheckpointError
from namm.network.config import NAMMConfig
from tasks.evaluation import evaluate, register_configs, validate_evaluate_config
from tasks.evaluation.contenders import plan_contenders, wants_matched_budgets
from tasks.evaluation.namm_source import load_namm_source, newest_checkpoint, resolve_namm_source, zero_namm_source
from tasks.task_data import TaskDataError


@pytest.fixture
def no_model(monkeypatch):
    """Any attempt to load a model fails the test: input errors must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was reported")

    monkeypatch.setattr("tasks.evaluation.pipeline.load_model", refuse)


# -- composition ------------------------------------------------------------------------------------


def test_default_config_composes_and_compares_every_policy(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "best.pt", evicting_parameters())
    config = validate_evaluate_config(compose_evaluate(tmp_path))
    assert config.model["name"] == "smollm2-135m"
    assert config.task["tasks"] == ["passkey"]
    # held-out passkey prompts (training uses seed 42), enough to tell policies apart, minutes on a CPU
    assert (config.task["seed"], config.task["num_samples"], config.task["context_length"]) == (4242, 16, 1024)
    trained, zero = load_namm_source(checkpoint, "best", None), zero_namm_source(None)
    contenders = plan_contenders(config, [("namm", trained)])
    assert [c.label for c in contenders] == [
        "full",
        "namm",
        "expected_attention",
        "h2o",
        "keydiff",
        "knorm",
        "random",
        "snapkv",
        "streaming",
        "tova",
    ]
    assert wants_matched_budgets(config, contenders, [trained])
    assert not wants_matched_budgets(config, contenders, [zero])  # it keeps all: ratio 1.0 is full cache
    assert config.baselines["snapkv"]["options"] == {"window": 32, "kernel_size": 7, "pooling": "max"}  # conf/policy/


def test_default_paths_follow_the_training_run_layout():
    """`python evaluate.py` looks for checkpoints where `python train.py` writes them and resumes in a fixed folder."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("evaluate", overrides=["model=tiny-llama"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    config = validate_evaluate_config(cfg)
    assert config.train_dir == str(Path.cwd() / "runs" / "tiny-llama-passkey")  # train.py: runs/<name>/seed<k>
    assert config.out_dir == str(Path.cwd() / "runs" / "eval" / "tiny-llama-passkey")


def test_evaluation_task_settings_apply_to_passkey_only(tmp_path):
    config = validate_evaluate_config(compose_evaluate(tmp_path, "task=qasper"))
    assert config.task["num_samples"] is None and config.task["seed"] == 42


def test_single_policy_and_its_budget(tmp_path):
    config = validate_evaluate_config(compose_evaluate(tmp_path, "policy=h2o", "policy.budget_ratio=0.3"))
    [contender] = plan_contenders(config, [])
    assert (contender.label, contender.config.budget_ratio, contender.budgeted) == ("h2o", 0.3, True)
    assert not wants_matched_budgets(config, [contender], [])


def test_compare_orders_full_then_namm_and_takes_policy_settings(tmp_path):
    config = validate_evaluate_config(
        compose_evaluate(tmp_path, "compare=[streaming,namm,full]", "policy=streaming", "policy.options.sink_tokens=8")
    )
    contenders = plan_contenders(config, [("namm", zero_namm_source(None))])
    assert [c.label for c in contenders] == ["full", "namm", "streaming"]
    assert contenders[2].config.options == {"sink_tokens": 8}


# -- bad input, before the model loads ----------------------------------------------------------------


def run(tmp_path, *overrides, train_dir=None):
    return evaluate(compose_evaluate(tmp_path / "out", *TINY, *overrides, train_dir=train_dir))


def test_missing_checkpoint(tmp_path, no_model):
    with pytest.raises(CheckpointError, match="does not exist.*checkpoint=zero"):
        run(tmp_path, f"checkpoint={tmp_path / 'nowhere' / 'best.pt'}")


def test_run_directory_without_checkpoints(tmp_path, no_model):
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(CheckpointError, match="holds neither best.pt nor latest.pt"):
        run(tmp_path, f"checkpoint={tmp_path / 'empty-run'}")


def test_checkpoint_of_another_namm_shape(tmp_path, no_model):
    path = write_checkpoint(tmp_path / "bam.pt", evicting_parameters())
    with pytest.raises(ValueError, match=r"NAMM of 4172 parameters \(bam.*asks for .* \(mlp.*Drop the namm= overrides"):
        run(tmp_path, f"checkpoint={path}", "namm=mlp")
    with pytest.raises(ValueError, match="hidden=32.*hidden=16"):
        run(tmp_path, f"checkpoint={path}", "namm=bam", "namm.hidden=16")


def test_checkpoint_whose_vector_does_not_fit_its_own_config(tmp_path, no_model):
    path = write_checkpoint(tmp_path / "short.pt", torch.zeros(100))
    with pytest.raises(CheckpointError, match="holds 100 NAMM parameters but its own namm config describes 4172"):
        run(tmp_path, f"checkpoint={path}")


def test_corrupted_checkpoint(tmp_path, no_model):
    path = write_checkpoint(tmp_path / "best.pt", evicting_parameters())
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="could not be read"):
        run(tmp_path, f"checkpoint={path}")


def test_task_without_data_says_how_to_get_it(tmp_path, no_model):
    (tmp_path / "data").mkdir()
    with pytest.raises(
        TaskDataError,
        match=r"(?s)task .qasper. has no data .*download_longbench.*task.data_dir=<folder with qasper.jsonl>",
    ):
        run(tmp_path, "task=qasper", f"task.data_dir={tmp_path / 'data'}", "checkpoint=zero")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["policy=h2o", "policy.budget_ratio=1.5"], r"^policy.budget_ratio=1.5 is not a ratio in \(0, 1\]; give"),
        (["policy=streaming", "policy.budget_ratio=0"], r"^policy.budget_ratio=0.0 is not a ratio in \(0, 1\]"),
        (
            ["baselines.knorm.budget_ratio=-0.2", "compare=[full,knorm]"],
            r"^baselines.knorm.budget_ratio=-0.2 is not a ratio .*\(e.g. baselines.knorm.budget_ratio=0.5\)",
        ),
        # the key the user typed, in the default comparison too, and the fix (a token count spelled out)
        (
            ["baselines.h2o.budget_ratio=2"],
            (
                r"^baselines.h2o.budget_ratio=2.0 is not a ratio .* \(baselines.h2o.budget_ratio=null "
                r"baselines.h2o.budget_tokens=64\)\.$"
            ),
        ),
        (["policy=h2o", "policy.budget_ratio=null", "policy.budget_tokens=0"], r"^policy.budget_tokens=0 is not a"),
        # wrong types: refused with the full key, never a TypeError from a comparison
        (["policy=h2o", "policy.budget_ratio=half"], r"^policy.budget_ratio: Value 'half' .* converted to Float"),
        (["policy=h2o", "policy.budget_ratio=true"], r"^policy.budget_ratio: Value 'True' .* converted to Float"),
        (
            ["policy=h2o", "policy.budget_ratio=null", "policy.budget_tokens=abc"],
            r"^policy.budget_tokens: Value 'abc' .* converted to Integer",
        ),
        (
            ["compare=[full,h2o]", "baselines.h2o.budget_ratio=null", "baselines.h2o.budget_tokens=64.5"],
            r"^baselines.h2o.budget_tokens: Value '64.5' .* converted to Integer",
        ),
        (
            ["checkpoint=zero", "namm=bam", "namm.budget_ratio=half"],
            r"^namm.budget_ratio: Value 'half' .* converted to Float",
        ),
        (
            ["checkpoint=zero", "namm=bam", "namm.budget_tokens=0"],
            r"^namm: NAMMConfig: namm.budget_tokens=0 is not a positive",
        ),
        (["compare=[full,bogus]"], r"unknown policy \['bogus'\]; available: .*h2o"),
        (["compare=[full,h2o]", "match_budget=true"], "match_budget=true .* the NAMM must run too"),
        (["compare=[full,full]"], r"compare names \['full'\] more than once"),
        (["policy=h2o", "compare=[full,knorm]"], r"policy=h2o is not among compare"),
        (["batch_size=0"], "batch_size must be >= 1"),
        (["answer_depth_bins=-1"], r"answer_depth_bins is a number of depth bins in \[0, 20\] \(0: no table\), got -1"),
        (["answer_depth_bins=21"], r"answer_depth_bins is a number of depth bins in \[0, 20\]"),
        (["budget_tolerance=2"], r"budget_tolerance is a relative gap in \(0, 1\)"),
        (["checkpoint=zero", "engine.update_interval=100"], "not a multiple of the NAMM's hop"),
        (["checkpoint=zero", "engine.eviction_mode=per_token"], r"engine: eviction_mode must be one of"),
        (
            ["checkpoint=zero", "engine.update_interval=abc"],
            r"engine.update_interval: Value 'abc' .* could not be converted to Integer",
        ),
        (["checkpoint=zero", "engine.prefill_chunk=0"], r"engine: prefill_chunk must be positive"),
        (["model.seed=abc"], r"model.seed: Value 'abc'"),
        (["model.device=tpu"], r"model.device='tpu' is not a device"),
        (["compare=[full,h2o]", "checkpoints=[a,b]"], r"checkpoints=\['a', 'b'\] is given but no NAMM runs: add namm"),
        (["policy=h2o", "checkpoints=[a]"], "checkpoints=.* is given but no NAMM runs"),
        (["checkpoint=zero", "checkpoints=[a]"], r"checkpoint=zero and checkpoints=\['a'\] are both given"),
    ],
)
def test_bad_settings(tmp_path, no_model, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run(tmp_path, *overrides)


def test_a_bug_in_planning_keeps_its_own_error(tmp_path, no_model, monkeypatch):
    """Only bad settings become ConfigError (a clean exit); a TypeError of a bug keeps its traceback."""

    def broken(*args, **kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr("tasks.evaluation.pipeline.plan_contenders", broken)
    with pytest.raises(TypeError, match="a bug"):
        run(tmp_path, "checkpoint=zero")


# -- which NAMM -----------------------------------------------------------------------------------------


def test_auto_takes_the_newest_run_and_its_best_checkpoint(tmp_path):
    old = write_checkpoint(tmp_path / "runs" / "seed0" / "best.pt", evicting_parameters(seed=1))
    new = write_checkpoint(tmp_path / "runs" / "seed1" / "latest.pt", evicting_parameters(seed=2))
    write_checkpoint(tmp_path / "runs" / "seed1" / "best.pt", evicting_parameters(seed=3))
    os.utime(old, (1, 1))  # seed0 is older
    assert newest_checkpoint(tmp_path / "runs") == new.parent / "best.pt"
    source = resolve_namm_source("auto", tmp_path / "runs", "best", None)
    assert torch.equal(source.pretrained.namm.parameters, evicting_parameters(seed=3))
    centre = resolve_namm_source("auto", tmp_path / "runs", "center", None)
    assert torch.equal(centre.pretrained.namm.parameters, evicting_parameters(seed=3) * 0.5)


def test_auto_without_runs_falls_back_to_the_zero_namm_and_says_so(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        source = resolve_namm_source("auto", tmp_path / "none", "best", None)
    assert source.is_zero and not source.pretrained.namm.parameters.any()
    assert source.pretrained.namm.parameters.numel() == 4172 and source.pretrained.config == NAMMConfig()
    assert any(
        "No training checkpoint under" in r.getMessage() and "zero-parameter NAMM" in r.getMessage()
        for r in caplog.records
    )


def test_evaluate_py_exits_with_the_message_and_no_traceback(tmp_path):
    import subprocess
    import sys

    command = [sys.executable, str(CONF_DIR.parent / "evaluate.py"), *TINY, f"checkpoint={tmp_path / 'missing.pt'}"]
    done = subprocess.run(command, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "evaluate.py: checkpoint=" in done.stderr and "does not exist" in done.stderr
    assert "Traceback" not in done.stderr


FIXTURES = Path(__file__).resolve().parent / "fixtures" / "longbench"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["task.context_length=5000"],
            (
                r"passkey: task.context_length=5000 \+ \d+ new tokens exceeds tiny-llama's max_context 4096; lower "
                r"task.context_length to at most \d+"
            ),
        ),
        (
            ["task=qasper", f"task.data_dir={FIXTURES}", "task.max_prompt_tokens=2000", "model.max_context=300"],
            (
                r"qasper: task.max_prompt_tokens=2000 \+ 128 new tokens exceeds tiny-llama's max_context 300, so "
                r"prompts would be cut to 172 tokens, not 2000; set task.max_prompt_tokens to at most 172"
            ),
        ),
    ],
    ids=["synthetic too long", "longbench cut further"],
)
def test_prompts_that_do_not_fit_the_model_fail_before_it_loads(tmp_path, no_model, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run(tmp_path, "checkpoint=zero", *overrides)


def test_results_record_the_truncation_applied():
    """results.json's task entry: how many prompts were cut and the longest that ran, not only the budget."""
    from tasks.evaluation.pipeline import prompt_lengths
    from tasks.runner import PreparedTask
    from tasks.task_spec import Sample

    samples = (Sample(0, (1,) * 172, ("a",), truncated=True), Sample(1, (1,) * 90, ("b",)))
    task = PreparedTask(spec=None, settings=None, samples=samples)
    assert prompt_lengths(task) == {"num_samples": 2, "truncated_samples": 1, "longest_prompt_tokens": 172}

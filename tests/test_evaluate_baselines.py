"""The new baselines, allocations and schedules through evaluate.py (tiny-llama) and train.py's config: what
runs is recorded, peak memory follows the schedule, and bad input fails before the model loads."""

from __future__ import annotations

import pytest
from evaluation_helpers import TINY, compose_evaluate, results_by
from test_configs import compose_train
from test_evaluate_run import records_of

from namm.errors import ConfigError
from tasks.evaluation import RESULTS_SCHEMA, SAMPLE_RECORD_SCHEMA, evaluate, pipeline
from tasks.evaluation.schema import validate
from tasks.training.task_scorer import TaskScorerConfig

BYTES_PER_TOKEN = 2 * 2 * 16 * 4 * 2  # tiny-llama: layers x KV heads x head dim x float32 x (key, value)
NEW = ["tova", "expected_attention", "keydiff", "kvzip"]


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was reported")

    monkeypatch.setattr("tasks.evaluation.pipeline.load_model", refuse)


def test_every_new_policy_and_allocation_runs_post_prefill_and_the_run_records_it(tmp_path):
    run_dir = tmp_path / "post"
    document = evaluate(
        compose_evaluate(
            run_dir,
            *TINY,
            "schedule=post_prefill",
            "engine.eviction_mode=per_head",
            f"compare=[full,{','.join(NEW)}]",
            "baselines.keydiff.allocation=adakv",
            "baselines.tova.allocation=pyramid",
            "baselines.kvzip.options.chunk_tokens=256",
        )
    )
    validate(document, RESULTS_SCHEMA)
    assert document["engine"]["schedule"] == "post_prefill"
    allocations = {policy["label"]: policy["allocation"] for policy in document["policies"]}
    assert allocations == {
        "full": "none",
        "tova": "pyramid",
        "expected_attention": "none",
        "keydiff": "adakv",
        "kvzip": "none",
    }
    rows = results_by(document)
    for name in NEW:
        records = records_of(run_dir, name)
        for record in records:
            validate(record, SAMPLE_RECORD_SCHEMA)
            assert record["last_update"] == record["prompt_tokens"]  # one compression, once the prompt is in
            assert record["retained_ratio"] < 0.75
            prompt_bytes = record["prompt_tokens"] * BYTES_PER_TOKEN
            if name == "kvzip":  # its reconstruction tokens were live too: at most one chunk + the repeat prompt
                assert prompt_bytes < record["peak_live_kv_bytes"] <= prompt_bytes + (256 + 64) * BYTES_PER_TOKEN
                assert record["reconstruction_tokens"] > record["prompt_tokens"] > 0
            else:  # the full prompt's cache, as the full cache had it then
                assert record["peak_live_kv_bytes"] == prompt_bytes
                assert record["reconstruction_tokens"] == 0 and record["reconstruction_seconds"] == 0
    assert rows[("kvzip", "passkey")]["reconstruction_seconds"] > 0

    # the prefill schedule bounds the peak: evictions every 128 tokens while the prompt goes in
    evaluate(compose_evaluate(tmp_path / "prefill", *TINY, "compare=[tova]"))
    for post, prefill in zip(records_of(run_dir, "tova"), records_of(tmp_path / "prefill", "tova")):
        assert prefill["peak_live_kv_bytes"] < 0.75 * post["peak_live_kv_bytes"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["compare=[full,kvzip]"],
            r"baselines.kvzip \(kvzip\): policy 'kvzip' compresses once.*set schedule=post_prefill",
        ),
        (["policy=h2o", "policy.allocation=adakv"], r"policy \(h2o\): allocation=adakv.*engine.eviction_mode=per_head"),
        (
            ["compare=[h2o]", "baselines.h2o.allocation=uniform"],
            r"baselines.h2o.*allocation='uniform'.*none, adakv, pyramid",
        ),
        (["schedule=during"], r"engine: schedule must be one of \('prefill', 'post_prefill'\)"),
    ],
)
def test_bad_baseline_settings_fail_before_the_model_loads(tmp_path, no_model, overrides, message):
    with pytest.raises(ConfigError, match=message):
        evaluate(compose_evaluate(tmp_path, *TINY, *overrides))


def test_the_default_comparison_adds_kvzip_only_post_prefill(tmp_path, no_model, monkeypatch):
    planned = {}
    original = pipeline.plan_contenders

    def record(config, namms, engine):
        planned[engine.schedule] = [c.label for c in original(config, namms, engine)]
        raise RuntimeError("planned")

    monkeypatch.setattr(pipeline, "plan_contenders", record)
    for schedule in ("prefill", "post_prefill"):
        with pytest.raises(RuntimeError, match="planned"):
            evaluate(compose_evaluate(tmp_path, *TINY, f"schedule={schedule}", "checkpoint=zero"))
    assert "kvzip" not in planned["prefill"] and set(NEW) <= set(planned["post_prefill"])
    assert set(NEW) - {"kvzip"} <= set(planned["prefill"])


def test_train_reads_the_schedule_into_the_engine():
    assert TaskScorerConfig.from_run_config(compose_train([])[0]).engine.schedule == "prefill"
    cfg = compose_train(["schedule=post_prefill"])[0]
    assert TaskScorerConfig.from_run_config(cfg).engine.schedule == "post_prefill"
    with pytest.raises(ConfigError, match="schedule must be one of"):
        TaskScorerConfig.from_run_config(compose_train(["schedule=during"])[0])

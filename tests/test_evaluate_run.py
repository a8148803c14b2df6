"""End-to-end evaluations on the tiny random models: identities, matched budgets, resume, schema, transfer."""

from __future__ import annotations

import csv
import json
import math
import sys

import jsonschema
import pytest
from evaluation_helpers import (
    CONF_DIR,
    TINY,
    compose_evaluate,
    evicting_parameters,
    results_by,
    sample_lines,
    write_checkpoint,
)
from hydra import compose, initialize_config_dir
from sweep_helpers import run_multirun

from namm.evolution.config import register_configs as register_train_configs
from namm.evolution.trainer import train
from tasks.evaluation import RESULTS_SCHEMA, SAMPLE_RECORD_SCHEMA, evaluate
from tasks.evaluation.policy_runs import TimedEngine
from tasks.evaluation.schema import validate

BASELINES = ["h2o", "streaming", "snapkv", "knorm", "random"]


@pytest.fixture(scope="module")
def evicting_checkpoint(tmp_path_factory):
    """A tiny-llama 'training' checkpoint whose NAMM keeps about half of the cache."""
    return write_checkpoint(tmp_path_factory.mktemp("train") / "best.pt", evicting_parameters(), model="tiny-llama")


def records_of(run_dir, policy):
    [(_, records)] = [
        (name, records) for name, records in sample_lines(run_dir).items() if name.split("/")[1] == policy
    ]
    return records


def test_full_cache_and_zero_namm_give_identical_predictions(tmp_path, evicting_checkpoint):
    document = evaluate(compose_evaluate(tmp_path / "zero", *TINY, "compare=[full,namm]", "checkpoint=zero"))
    full, namm = records_of(tmp_path / "zero", "full"), records_of(tmp_path / "zero", "namm")
    assert [r["prediction"] for r in namm] == [r["prediction"] for r in full]
    assert [r["score"] for r in namm] == [r["score"] for r in full]
    assert all(r["retained_ratio"] == 1.0 and r["last_update"] > 0 for r in namm)  # updates ran, evicted nothing
    rows = results_by(document)
    assert rows[("namm", "passkey")]["score"] == rows[("full", "passkey")]["score"]
    assert document["namms"]["namm"]["kind"] == "zero" and document["namms"]["namm"]["param_count"] == 4172

    # the same comparison is sensitive: a NAMM that evicts changes what the model generates
    evaluate(compose_evaluate(tmp_path / "evicting", *TINY, "compare=[namm]", f"checkpoint={evicting_checkpoint}"))
    evicting = records_of(tmp_path / "evicting", "namm")
    assert max(r["retained_ratio"] for r in evicting) < 0.8
    assert [r["prediction"] for r in evicting] != [r["prediction"] for r in full]


def test_matched_budgets_land_within_two_percent_and_outputs_follow_the_schema(tmp_path, evicting_checkpoint, capsys):
    run_dir = tmp_path / "matched"
    compare = ",".join(["full", "namm", *BASELINES])
    document = evaluate(
        compose_evaluate(
            run_dir,
            *TINY,
            f"compare=[{compare}]",
            f"checkpoint={evicting_checkpoint}",
            "match_budget=true",
            "plots=true",
        )
    )
    rows = results_by(document)
    target = rows[("namm", "passkey")]["prompt_retained_ratio"]  # match_on=prompt_end, the default
    assert 0.2 < target < 0.8
    for baseline in BASELINES:
        row = rows[(baseline, "passkey")]
        assert row["budget_target"] == target
        assert abs(row["prompt_retained_ratio"] - target) <= 0.02 * target, (baseline, row["budget_attempts"])
        assert row["within_tolerance"] is True
        assert row["budget"] < target  # the unevicted tail after the last update makes up the difference
    assert rows[("full", "passkey")]["budget"] is None and rows[("full", "passkey")]["retained_ratio"] == 1.0
    assert document["settings"]["match_budget"] is True

    # results.json: the documented schema, and what changes scores is recorded
    saved = json.loads((run_dir / "results.json").read_text())
    validate(saved, RESULTS_SCHEMA)
    settings = saved["tasks"]["passkey"]
    assert {"max_prompt_tokens", "use_chat_template", "code_sim_backend", "metric"} <= set(settings)
    assert saved["model"]["dtype"] == "float32" and "transformers" in saved["settings"]["versions"]
    for name, records in sample_lines(run_dir).items():
        for record in records:
            validate(record, SAMPLE_RECORD_SCHEMA)
            policy = name.split("/")[1]
            if policy in BASELINES:  # a budgeted policy at the prompt's end: ceil(b x U) per head + the tail
                budget, prompt, last = (
                    rows[(policy, "passkey")]["budget"],
                    record["prompt_tokens"],
                    record["prompt_last_update"],
                )
                kept = max(1, math.ceil(budget * last)) + prompt - last
                assert record["prompt_retained_ratio"] == pytest.approx(kept / prompt, rel=1e-12)
    # memory is live bytes: the final live bytes over the full cache's are each sample's retained ratio
    lines = sample_lines(run_dir)
    full_record = next(records for name, records in lines.items() if name.startswith("samples/full/"))[0]
    bytes_per_token = full_record["final_live_kv_bytes"] / full_record["tokens_seen"]
    for records in lines.values():
        for record in records:
            live_ratio = record["final_live_kv_bytes"] / (record["tokens_seen"] * bytes_per_token)
            assert live_ratio == pytest.approx(record["retained_ratio"], rel=1e-9)
            assert record["final_live_kv_bytes"] <= record["peak_live_kv_bytes"] <= record["batch_peak_storage_bytes"]
    for baseline in BASELINES:
        assert (
            saved["aggregates"][baseline]["mean_peak_live_kv_bytes"]
            < saved["aggregates"]["full"]["mean_peak_live_kv_bytes"]
        )
    with pytest.raises(jsonschema.ValidationError):
        validate({**saved, "results": [{**saved["results"][0], "score": 140.0}]}, RESULTS_SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        validate({key: value for key, value in saved.items() if key != "aggregates"}, RESULTS_SCHEMA)

    # results.csv: one row per (policy, task) and one mean row per policy
    table = list(csv.DictReader((run_dir / "results.csv").open()))
    assert len(table) == 2 * 7 and {row["task"] for row in table} == {"passkey", "mean"}
    assert all(float(row["peak_live_kv_mib"]) > 0 for row in table)
    # plots and the printed table
    for plot in saved["files"]["plots"]:
        assert (run_dir / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "| policy | budget | retained (prompt end) | retained (gen. end) | peak live KV MiB | passkey" in printed
    assert "(matched: end-of-prompt ratio)" in printed and "vs full" in printed and "vs namm" in printed
    assert "peak live KV MiB" in printed


def test_resume_after_a_kill_writes_no_duplicate_samples(tmp_path, monkeypatch):
    overrides = [*TINY, "compare=[full,h2o]", "batch_size=1"]
    straight = evaluate(compose_evaluate(tmp_path / "straight", *overrides))

    calls = {"count": 0, "kill_at": 5}  # full's 3 samples and one of h2o's, then killed
    original = TimedEngine.__call__

    def counting(self, prompts, settings):
        calls["count"] += 1
        if calls["count"] == calls["kill_at"]:
            raise KeyboardInterrupt
        return original(self, prompts, settings)

    monkeypatch.setattr(TimedEngine, "__call__", counting)
    run_dir = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        evaluate(compose_evaluate(run_dir, *overrides))
    assert not (run_dir / "results.json").exists()
    assert [len(records) for records in sample_lines(run_dir).values()] == [3, 1]

    calls.update(count=0, kill_at=-1)
    resumed = evaluate(compose_evaluate(run_dir, *overrides))
    assert calls["count"] == 2  # only h2o's two missing samples ran again
    for name, records in sample_lines(run_dir).items():
        assert sorted(r["index"] for r in records) == [0, 1, 2], name
    for key, row in results_by(straight).items():
        again = results_by(resumed)[key]
        assert (again["score"], again["retained_ratio"]) == (row["score"], row["retained_ratio"])
    straight_predictions = {n: [r["prediction"] for r in rs] for n, rs in sample_lines(tmp_path / "straight").items()}
    assert {
        n: [r["prediction"] for r in sorted(rs, key=lambda r: r["index"])] for n, rs in sample_lines(run_dir).items()
    } == straight_predictions

    # a finished evaluation rerun generates nothing and writes the same results
    calls.update(count=0)
    evaluate(compose_evaluate(run_dir, *overrides))
    assert calls["count"] == 0


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A real one-generation training run on tiny-llama (update interval 128, saved in its config)."""
    root = tmp_path_factory.mktemp("trained")
    overrides = [
        "~experiment", "model=tiny-llama", "task.context_length=400", "task.num_samples=6", "evo.popsize=2",
        "evo.generations=1",
        "evo.validation_prompts=2", "evo.prompts_per_task=1", "logger.mode=disabled", "name=tiny",
        f"out_dir={root / 'run'}", "engine.update_interval=128",
    ]  # fmt: skip
    register_train_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("train", overrides=overrides)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NAMM_REFERENCE_CACHE", str(root / "references"))
        train(cfg)
    return root / "run"


def test_transfer_from_tiny_llama_to_tiny_qwen2(tmp_path, trained_run):
    overrides = [o for o in TINY if not o.startswith(("model=", "engine."))]
    document = evaluate(
        compose_evaluate(
            tmp_path,
            *overrides,
            "model=tiny-qwen2",
            "compare=[full,namm,h2o]",
            f"checkpoint={trained_run / 'latest.pt'}",
            "checkpoint_params=center",  # best.pt may be the start (the all-keep zero vector, validated at generation 0)
        )
    )
    assert document["transfer"] == {"from_model": "tiny-llama", "to_model": "tiny-qwen2"}
    assert document["model"]["name"] == "tiny-qwen2"
    namm = document["namms"]["namm"]
    assert namm["trained_on_model"] == "tiny-llama" and namm["params"] == "center" and namm["generation"] == 1
    assert namm["path"] == str(trained_run / "latest.pt") and namm["normalization"] is True
    assert document["engine"]["update_interval"] == 128  # the schedule the NAMM was evolved with
    rows = results_by(document)
    assert 0.05 < rows[("namm", "passkey")]["retained_ratio"] < 0.9  # the tiny-llama NAMM manages tiny-qwen2's cache
    assert rows[("h2o", "passkey")]["within_tolerance"] is True


class FakeWandb:
    """Records what an evaluation sends to W&B (no network, no wandb service process)."""

    def __init__(self):
        self.logged, self.summary, self.init_kwargs, self.finished = {}, {}, None, False

    def init(self, **kwargs):
        self.init_kwargs = kwargs
        return self

    def log(self, values):
        self.logged.update(values)

    def finish(self):
        self.finished = True

    id = "fake-run"

    @staticmethod
    def Table(columns, data):
        return {"columns": columns, "data": data}

    @staticmethod
    def Image(path):
        return {"image": path}


def test_wandb_gets_the_table_aggregates_and_plots(tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    document = evaluate(
        compose_evaluate(
            tmp_path, *TINY, "compare=[full,streaming]", "plots=true", "logger.mode=offline", "task.num_samples=2"
        )
    )
    assert fake.init_kwargs["mode"] == "offline" and fake.init_kwargs["job_type"] == "evaluation"
    assert fake.init_kwargs["config"]["model"]["name"] == "tiny-llama"
    table = fake.logged["results"]
    assert [row[:2] for row in table["data"]] == [["full", "passkey"], ["streaming", "passkey"]]
    assert fake.summary["streaming/retained_ratio"] == document["aggregates"]["streaming"]["retained_ratio"]
    assert {"score_vs_retained_ratio", "task_scores"} <= set(fake.logged) and fake.finished


def test_full_cache_scores_go_to_the_reference_cache_training_reads(tmp_path, monkeypatch):
    monkeypatch.setenv("NAMM_REFERENCE_CACHE", str(tmp_path / "references"))
    document = evaluate(compose_evaluate(tmp_path / "run", *TINY, "compare=[full]"))
    (full,) = [row for row in document["results"] if row["policy"] == "full"]
    (stored,) = [path for path in (tmp_path / "references").rglob("passkey-*.json") if "settings" not in path.name]
    scores = json.loads(stored.read_text())["lb/passkey"]
    assert len(scores) == full["num_samples"] == 3
    assert 100 * sum(scores.values()) / len(scores) == pytest.approx(full["score"])
    record = json.loads(stored.with_suffix(".settings.json").read_text())
    assert record["context"] == {  # the key training computes for the same model, dtype, device and schedule
        "weights": "tiny-random-seed0",
        "dtype": "float32",
        "device_type": "cpu",
        "generator": {"name": "engine", "update_interval": 128, "prefill_chunk": None},
    }
    assert record["task_settings"]["seed"] == document["tasks"]["passkey"]["seed"]  # the held-out prompts' settings


def test_an_evaluation_sweep_runs_each_job_apart_and_exits_1_when_one_failed(tmp_path, monkeypatch):
    """`evaluate.py -m batch_size=0,2`: the bad job fails alone, the good one writes its results, the sweep exits 1."""
    from pathlib import Path

    tiny = [override for override in TINY if not override.startswith("batch_size")]
    overrides = ["batch_size=0,2", *tiny, "compare=[full]", "name=sweep-test"]
    done = run_multirun("evaluate.py", overrides, tmp_path, monkeypatch, timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]
    summary = json.loads((tmp_path / "sweep" / "sweep_summary.json").read_text())
    assert [job["status"] for job in summary["jobs"]] == ["failed", "finished"]
    assert "batch_size must be >= 1" in summary["jobs"][0]["error"]
    finished = Path(summary["jobs"][1]["out_dir"])
    assert finished.parent == tmp_path / "runs" / "eval" / "sweep-test" and finished.name.startswith("batch_size=2,")
    assert (finished / "results.json").is_file()
    assert "1 of 2 job(s) finished" in done.stdout and "Traceback" not in done.stderr

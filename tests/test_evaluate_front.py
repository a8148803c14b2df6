"""The score-memory front: several NAMMs from a sweep directory, every budgeted baseline at each budget,
one plot per task, a table whose cells carry 95% bootstrap intervals, and honest matched-budget labels."""

from __future__ import annotations

import json

import pytest
from evaluation_helpers import TINY, compose_evaluate, evicting_parameters, results_by, write_checkpoint

from namm.evolution.checkpoint import CheckpointError
from tasks.evaluation.intervals import bootstrap_interval
from tasks.evaluation.pipeline import evaluate
from tasks.evaluation.plots import front_file
from tasks.evaluation.report import budget_text, markdown_table


def test_bootstrap_interval_brackets_the_score_and_is_reproducible():
    assert bootstrap_interval([1.0] * 10) == (100.0, 100.0)  # no spread, no interval
    low, high = bootstrap_interval([1.0] * 15 + [0.0] * 15)
    assert low < 50.0 < high
    # the normal approximation of a 30-sample binomial mean: 50 +- 1.96 x 100 x sqrt(0.25 / 30) = 50 +- 17.9
    assert 50.0 - low == pytest.approx(17.9, abs=3.0) and high - 50.0 == pytest.approx(17.9, abs=3.0)
    assert bootstrap_interval([1.0] * 15 + [0.0] * 15) == (low, high)


def _row(task, ratio, target, within, budget=0.08):
    return {
        "task": task,
        "budget": budget,
        "prompt_retained_ratio": ratio,
        "budget_target": target,
        "within_tolerance": within,
    }


def test_a_baseline_that_cannot_reach_the_namm_ratio_is_not_called_matched():
    assert budget_text([_row("qasper", 0.116, 0.116, True)]) == "0.080 (matched: end-of-prompt ratio)"
    text = budget_text([_row("qasper", 0.154, 0.116, False)])
    assert "matched)" not in text.replace("not matched", "")
    assert text == "0.080 (not matched: qasper: closest 0.154 vs the NAMM's 0.116)"
    assert budget_text([{"budget": None, "budget_target": None}]) == "-"


def test_a_sweep_directory_is_evaluated_as_a_front(tmp_path):
    sweep = tmp_path / "sweep"
    for name, scale in (("weight=0.25", 0.2), ("weight=1.0", 0.4)):
        write_checkpoint(sweep / name / "seed0" / "latest.pt", evicting_parameters(scale=scale))
    out = tmp_path / "out"
    document = evaluate(
        compose_evaluate(
            out,
            *TINY,
            "plots=true",
            "compare=[full,namm,streaming]",
            f"checkpoints=[{sweep}]",
            "checkpoint_params=best",
            "front=true",
            "front_budgets=[0.25,0.75]",
        )
    )
    labels = [policy["label"] for policy in document["policies"]]
    assert labels == ["full", "namm:weight=0.25,seed0", "namm:weight=1.0,seed0", "streaming@0.25", "streaming@0.75"]
    assert set(document["namms"]) == {"namm:weight=0.25,seed0", "namm:weight=1.0,seed0"}
    rows = results_by(document)
    assert (
        rows[("streaming@0.25", "passkey")]["budget"] == 0.25
        and rows[("streaming@0.25", "passkey")]["family"] == "streaming"
    )
    assert rows[("streaming@0.25", "passkey")]["retained_ratio"] < rows[("streaming@0.75", "passkey")]["retained_ratio"]
    assert rows[("full", "passkey")]["retained_ratio"] == 1.0
    # the two NAMMs differ, so they are two points, not one evaluated twice
    namms = [rows[(label, "passkey")]["retained_ratio"] for label in document["namms"]]
    assert namms[0] != namms[1]
    for row in document["results"]:
        low, high = row["score_interval"]
        assert low <= row["score"] <= high
    assert document["settings"]["front_budgets"] == [0.25, 0.75]
    assert front_file("passkey") in document["files"]["plots"] and (out / front_file("passkey")).stat().st_size > 0
    table = markdown_table(document)
    assert "streaming@0.25" in table and "[" in table.splitlines()[2]
    assert json.loads((out / "results.json").read_text())["namms"].keys() == document["namms"].keys()


def test_several_namms_cannot_be_matched(tmp_path):
    for name in ("a", "b"):
        write_checkpoint(tmp_path / name / "latest.pt", evicting_parameters() * (1 if name == "a" else 2))
    with pytest.raises(ValueError, match="match_budget=true matches the baselines to one NAMM.*front=true"):
        evaluate(
            compose_evaluate(
                tmp_path / "out",
                *TINY,
                "compare=[full,namm,h2o]",
                f"checkpoints=[{tmp_path / 'a'},{tmp_path / 'b'}]",
                "match_budget=true",
            )
        )


def test_an_empty_directory_is_not_a_sweep(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no training run"):
        evaluate(compose_evaluate(tmp_path / "out", *TINY, "compare=[namm]", f"checkpoints=[{tmp_path / 'empty'}]"))


def test_front_budgets_are_checked():
    from tasks.evaluation.config import EvaluateConfig

    with pytest.raises(ValueError, match="front_budgets must be budget ratios"):
        EvaluateConfig(front_budgets=[0.0, 0.5])

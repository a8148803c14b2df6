"""Scores by answer depth (tasks/evaluation/answer_depth.py): the generators' depths against where the answer's
tokens land, the bins and their scores against hand-computed values, and the table of a real `evaluate.py` run
with the needle placed by `task.needle_depth`."""

from __future__ import annotations

import dataclasses
import json

import pytest
from evaluation_helpers import TINY, compose_evaluate

from namm.models import ModelConfig, load_model
from tasks.answer_spans import answer_token_spans
from tasks.evaluation import evaluate
from tasks.evaluation.answer_depth import answer_depths, depth_bin, depth_table
from tasks.evaluation.intervals import BootstrapSettings, wilson_interval
from tasks.evaluation.plots import write_plots
from tasks.evaluation.report import markdown_table
from tasks.evaluation.schema import RESULTS_SCHEMA, validate
from tasks.preparation import prepare_tasks
from tasks.task_config import TaskConfig


@pytest.fixture(scope="module")
def tiny():
    return load_model(ModelConfig(name="tiny-llama"))


def prepared(tiny, task: str, samples: int = 6, context: int = 600, **settings):
    return prepare_tasks(TaskConfig(tasks=[task], context_length=context, num_samples=samples, **settings), tiny)[0]


@pytest.mark.parametrize(
    ("depth", "bins", "expected"),
    [(0.0, 4, 0), (0.2499, 4, 0), (0.25, 4, 1), (0.5, 2, 1), (0.57, 100, 57), (0.9999, 4, 3), (1.0, 4, 3)],
)
def test_depth_bins(depth, bins, expected):
    assert depth_bin(depth, bins) == expected


@pytest.mark.parametrize(
    ("task", "snap"),  # a needle goes to the sentence start at or before its depth: prose sentences are long
    [("passkey", 0.0), ("niah_single", 0.1), ("niah_prose", 0.3)],
)
def test_a_deeper_needle_sits_later_in_the_prompt(tiny, task, snap):
    """The generator's depth orders the answers' token positions (an independent reading of the same prompt)
    wherever two depths differ by more than a sentence."""
    samples = prepared(tiny, task).samples
    assert all(sample.answer_depths is not None and len(sample.answer_depths) == 1 for sample in samples)
    pairs = [(a, b) for a in samples for b in samples if b.answer_depths[0] - a.answer_depths[0] > snap]
    assert pairs
    assert all(a.answer_spans[0][0] < b.answer_spans[0][0] for a, b in pairs)


def test_fixed_depth_and_several_answers(tiny):
    assert {s.answer_depths for s in prepared(tiny, "passkey", needle_depth=0.3).samples} == {(0.3,)}
    for sample in prepared(
        tiny, "niah_multivalue", samples=3, context=1500
    ).samples:  # each value at its own depth, in order
        assert len(sample.answer_depths) == len(sample.answers) > 1
        starts = [answer_token_spans(sample.prompt_ids, [answer], tiny.tokenizer)[0][0] for answer in sample.answers]
        assert sorted(range(len(starts)), key=starts.__getitem__) == sorted(
            range(len(starts)), key=sample.answer_depths.__getitem__
        )
    assert answer_depths(prepared(tiny, "niah_multivalue", samples=3, context=1500)) == {}  # no single depth
    assert all(s.answer_depths is None for s in prepared(tiny, "variable_tracking", samples=2, context=1500).samples)


def test_table_by_hand(tiny):
    task = prepared(tiny, "passkey", samples=5)
    depths = [0.1, 0.3, 0.6, 0.95, 0.2]
    samples = [dataclasses.replace(s, answer_depths=(d,)) for s, d in zip(task.samples, depths)]
    samples[4] = dataclasses.replace(samples[4], answers=("1", "2"))  # several answers: no single depth
    task = dataclasses.replace(task, samples=tuple(samples))
    records = {
        "full": [{"index": i, "score": 1.0, "prompt_sha": str(i)} for i in range(5)],
        "recent": [{"index": i, "score": s, "prompt_sha": str(i)} for i, s in enumerate([0.0, 1.0, 1.0, 1.0, 0.0])],
    }
    table = depth_table(task, records, 2, BootstrapSettings())
    assert table.samples == (2, 2) and table.without_depth == 1
    assert [cell.score for cell in table.scores["recent"]] == [50.0, 100.0]
    assert table.scores["recent"][0].interval == wilson_interval(1, 2)
    assert [cell.score for cell in table.scores["full"]] == [100.0, 100.0]
    sparse = depth_table(task, records, 4, BootstrapSettings())
    assert sparse.samples == (1, 1, 1, 1)
    assert [cell.score for cell in sparse.scores["recent"]] == [0.0, 100.0, 100.0, 100.0]
    assert sparse.to_dict()["scores"]["recent"][0] == {"score": 0.0, "interval": list(wilson_interval(0, 1))}
    with pytest.raises(ValueError, match="ran different samples"):
        depth_table(task, {**records, "short": records["full"][:4]}, 2, BootstrapSettings())
    unknown = dataclasses.replace(task, samples=tuple(dataclasses.replace(s, answer_depths=None) for s in samples))
    assert depth_table(unknown, records, 2, BootstrapSettings()) is None  # e.g. a LongBench task


def test_evaluate_writes_the_table(tmp_path):
    run_dir = tmp_path / "depth"
    overrides = [*TINY, "compare=[full,streaming]", "task.needle_depth=0.1"]
    document = evaluate(compose_evaluate(run_dir, *overrides))
    saved = json.loads((run_dir / "results.json").read_text())
    validate(saved, RESULTS_SCHEMA)
    table = saved["answer_depth"]["passkey"]
    assert table["bins"] == 4 and table["samples"] == [3, 0, 0, 0] and table["without_depth"] == 0
    for row in saved["results"]:
        records = [json.loads(line) for line in (run_dir / row["samples_file"]).read_text().splitlines()]
        first, *empty = table["scores"][row["policy"]]
        assert first["score"] == pytest.approx(100 * sum(r["score"] for r in records) / 3)
        assert empty == [None, None, None]
    assert "| full | " in markdown_table(document) and "0-25% (n=3)" in markdown_table(document)
    assert write_plots(saved, tmp_path)[-1] == "answer_depth_passkey.png"
    assert (tmp_path / "answer_depth_passkey.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    off = evaluate(compose_evaluate(tmp_path / "off", *TINY, "compare=[full]", "answer_depth_bins=0"))
    assert off["answer_depth"] == {}

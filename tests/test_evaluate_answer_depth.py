"""Scores by answer depth (tasks/evaluation/answer_depth.py): bins and means against hand-computed values,
the depth against the passkey's byte offset (the tiny models' tokenizer is one token per byte), and the table
in a real `evaluate.py` run against its own sample files."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from evaluation_helpers import TINY, compose_evaluate

from namm.models import ModelConfig, load_model
from tasks.evaluation import evaluate
from tasks.evaluation.answer_depth import answer_depths, depth_bin, depth_table
from tasks.evaluation.report import markdown_table
from tasks.evaluation.schema import RESULTS_SCHEMA, validate
from tasks.preparation import prepare_tasks
from tasks.task_config import TaskConfig, task_config


@pytest.mark.parametrize(
    ("depth", "bins", "expected"), [(0.0, 4, 0), (0.2499, 4, 0), (0.25, 4, 1), (0.5, 2, 1), (0.9999, 4, 3)]
)
def test_depth_bins(depth, bins, expected):
    assert depth_bin(depth, bins) == expected


def test_table_by_hand():
    depths = {0: 0.1, 1: 0.3, 2: 0.6, 3: 0.95}  # sample 4: several answers
    records = {
        "full": [{"index": i, "score": 1.0} for i in range(5)],
        "recent": [{"index": i, "score": s} for i, s in enumerate([0.0, 0.5, 1.0, 1.0, 0.0])],
    }
    table = depth_table(depths, records, bins=2)
    assert table.samples == [2, 2] and table.without_depth == 1
    assert table.scores == {"full": [100.0, 100.0], "recent": [25.0, 100.0]}
    sparse = depth_table(depths, records, bins=4)
    assert sparse.samples == [1, 1, 1, 1]
    assert sparse.scores["recent"] == [0.0, 50.0, 100.0, 100.0]
    assert depth_table({}, records, bins=2) is None


def test_depth_is_where_the_passkey_starts():
    loaded = load_model(ModelConfig(name="tiny-llama"))
    task = prepare_tasks(TaskConfig(tasks=["passkey"], context_length=400, num_samples=3), loaded)[0]
    depths = answer_depths(task, loaded.tokenizer)
    assert sorted(depths) == [sample.index for sample in task.samples]
    for sample in task.samples:
        prompt = bytes(token for token in sample.prompt_ids if token < 256)  # one token per byte
        specials_before = [token >= 256 for token in sample.prompt_ids]
        offset = prompt.index(sample.answers[0].encode())  # the first of the passkey's two occurrences
        position = [i for i, special in enumerate(specials_before) if not special][offset]
        assert depths[sample.index] == position / len(sample.prompt_ids)
    assert answer_depths(SimpleNamespace(settings=SimpleNamespace(data_source="hub:THUDM/LongBench")), None) == {}


def test_evaluate_writes_the_table(tmp_path):
    run_dir = tmp_path / "depth"
    overrides = [*TINY, "compare=[full,streaming]", "answer_depth_bins=2"]
    cfg = compose_evaluate(run_dir, *overrides)
    document = evaluate(cfg)
    saved = json.loads((run_dir / "results.json").read_text())
    validate(saved, RESULTS_SCHEMA)
    table = saved["answer_depth"]["passkey"]
    assert table["bins"] == 2 and sum(table["samples"]) + table["without_depth"] == 3
    loaded = load_model(ModelConfig(name="tiny-llama"))
    depths = answer_depths(prepare_tasks(task_config(cfg.task), loaded)[0], loaded.tokenizer)  # as evaluate does
    assert table["samples"] == [sum(depth_bin(d, 2) == b for d in depths.values()) for b in range(2)]
    for row in saved["results"]:
        records = [json.loads(line) for line in (run_dir / row["samples_file"]).read_text().splitlines()]
        for b in range(2):
            scores = [r["score"] for r in records if r["index"] in depths and depth_bin(depths[r["index"]], 2) == b]
            expected = 100 * sum(scores) / len(scores) if scores else None
            assert table["scores"][row["policy"]][b] == pytest.approx(expected)
    assert "passkey: score by where the answer starts" in markdown_table(document)
    off = evaluate(compose_evaluate(tmp_path / "off", *TINY, "compare=[full]", "answer_depth_bins=0"))
    assert off["answer_depth"] == {}

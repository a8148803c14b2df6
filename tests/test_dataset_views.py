"""Prompts and per-sample evaluation outputs as datasets tables."""

from __future__ import annotations

import pytest
from task_fixtures import byte_tokenizer

from tasks.evaluation.dataset_views import evaluation_samples, prompts_dataset
from tasks.evaluation.sample_store import SampleStore
from tasks.fingerprints import prompt_digest
from tasks.preparation import ModelInfo, prepare_tasks
from tasks.task_config import TaskConfig

MODEL = ModelInfo("byte-model", byte_tokenizer(), max_context=4096, chat_template=False)


def passkey(**settings):
    settings = {"context_length": 300, "num_samples": 2, **settings}
    config = TaskConfig(name="passkey", tasks=["passkey"], **settings)
    [task] = prepare_tasks(config, MODEL)
    return task


def test_prompts_keep_the_samples_and_their_fingerprint_follows_the_settings():
    task = passkey(seed=5)
    table = prompts_dataset(task)
    assert table["index"] == [0, 1]
    assert [tuple(ids) for ids in table["prompt_ids"]] == [sample.prompt_ids for sample in task.samples]
    assert [tuple(answers) for answers in table["answers"]] == [sample.answers for sample in task.samples]
    assert prompts_dataset(passkey(seed=5))._fingerprint == table._fingerprint  # same settings, same table
    assert prompts_dataset(passkey(seed=6))._fingerprint != table._fingerprint
    assert prompts_dataset(passkey(seed=5, context_length=320))._fingerprint != table._fingerprint


def record(index, score, ratio):
    return {
        "index": index,
        "prompt_sha": prompt_digest([index, 1, 2]),
        "prediction": f"The pass key is {index}",
        "answers": [str(index)],
        "score": score,
        "retained_ratio": ratio,
        "retained_ratio_per_layer": [ratio, ratio],
        "prompt_tokens": 300,
        "generated_tokens": 7,
        "tokens_seen": 306,
        "last_update": 256,
        "peak_kv_bytes": 1024,
        "batch_rows": 2,
        "seconds": 0.5,
    }


def test_evaluation_samples_load_every_policy_and_task(tmp_path):
    written = {
        ("namm", "passkey"): [record(0, 100.0, 0.5), record(1, 0.0, 0.4)],
        ("h2o", "passkey"): [record(0, 0.0, 0.5)],
        ("h2o", "repobench-p"): [record(3, 41.5, 0.45)],
    }
    for (policy, task), records in written.items():
        SampleStore(tmp_path / "samples" / policy / f"{task}-0123456789ab.jsonl").append(records)
    table = evaluation_samples(tmp_path, cache_dir=tmp_path / "cache")
    rows = {(row.pop("policy"), row.pop("task"), row["index"]): row for row in table.to_list()}
    expected = {(policy, task, r["index"]): r for (policy, task), records in written.items() for r in records}
    assert rows == expected
    assert table.filter(lambda row: row["policy"] == "namm")["score"] == [100.0, 0.0]


def test_no_samples_says_to_evaluate_first(tmp_path):
    with pytest.raises(FileNotFoundError, match="run evaluate.py first"):
        evaluation_samples(tmp_path)

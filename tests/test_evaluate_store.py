"""The per-sample store that makes evaluations resumable: no sample counted twice, cut lines dropped."""

from __future__ import annotations

import json

from tasks.evaluation.sample_store import SampleStore
from tasks.fingerprints import prompt_digest

DIGESTS = {0: prompt_digest([1, 2, 3]), 1: prompt_digest([4, 5]), 2: prompt_digest([6])}


def record(index, score=1.0):
    """A complete sample record (tasks/evaluation/schema.py's SAMPLE_RECORD_SCHEMA): the store checks every line."""
    return {
        "index": index,
        "prompt_sha": DIGESTS[index],
        "prediction": "42",
        "answers": ["42"],
        "score": score,
        "retained_ratio": 0.5,
        "retained_ratio_per_layer": [0.5, 0.5],
        "prompt_tokens": 3,
        "prompt_retained_ratio": 1.0,
        "prompt_last_update": 0,
        "generated_tokens": 1,
        "tokens_seen": 3,
        "last_update": 0,
        "peak_live_kv_bytes": 100,
        "final_live_kv_bytes": 100,
        "batch_peak_storage_bytes": 200,
        "batch_peak_overhead_bytes": 10,
        "batch_rows": 1,
        "seconds": 0.01,
        "reconstruction_tokens": 0,
        "reconstruction_seconds": 0.0,
    }


def test_append_then_reopen(tmp_path):
    path = tmp_path / "samples" / "h2o" / "passkey-abc.jsonl"
    store = SampleStore(path).open(DIGESTS)
    assert store.missing([0, 1, 2]) == [0, 1, 2]
    store.append([record(0), record(1)])
    store.append([record(1, score=0.0)])  # already stored: not written again
    reopened = SampleStore(path).open(DIGESTS)
    assert reopened.missing([0, 1, 2]) == [2]
    assert [r["score"] for r in reopened.ordered([1, 0])] == [1.0, 1.0]
    assert len(path.read_text().splitlines()) == 2


def test_a_line_cut_by_a_kill_is_dropped_and_the_next_append_starts_clean(tmp_path):
    path = tmp_path / "s.jsonl"
    SampleStore(path).open(DIGESTS).append([record(0)])
    with path.open("a") as file:
        file.write(json.dumps(record(1))[:20])  # killed mid-write
    store = SampleStore(path).open(DIGESTS)
    assert store.missing([0, 1]) == [1]
    store.append([record(1)])
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["index"] for line in lines] == [0, 1]


def test_duplicates_and_records_of_other_prompts_are_ignored(tmp_path):
    path = tmp_path / "s.jsonl"
    stale = {**record(2), "prompt_sha": prompt_digest([9, 9])}
    path.write_text("".join(json.dumps(r) + "\n" for r in (record(0, 0.25), record(0, 0.75), stale)))
    store = SampleStore(path).open(DIGESTS)
    assert store.ordered([0])[0]["score"] == 0.25  # the first one written wins
    assert store.missing([0, 1, 2]) == [1, 2]

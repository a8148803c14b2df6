"""Files read back are checked: a corrupt reference cache or sample store is set aside (kept) and recomputed,
a corrupt sweep status is refused naming the file and the field."""

from __future__ import annotations

import json
import logging

import pytest
from test_evaluate_store import DIGESTS, record

from namm.errors import CorruptFileError
from namm.evolution.sweep import read_job_statuses
from tasks.evaluation.sample_store import SampleStore
from tasks.references import ReferenceCache, ReferenceContext, ReferenceScores
from tasks.task_settings import TaskSettings

SETTINGS = TaskSettings(
    task="passkey",
    model="tiny-llama",
    data_source="synthetic",
    max_prompt_tokens=None,
    use_chat_template=False,
    add_bos=False,
    max_new_tokens=8,
    stop_on_newline=False,
    first_line_cut=False,
    metric="retrieval",
    code_sim_backend="difflib",
    eos_token_ids=(2,),
    newline_token_ids=(10,),
)
CONTEXT = ReferenceContext("tiny-random-seed0", "float32", "cpu", {"name": "engine"})

CORRUPT_CACHES = {
    "garbage": b"\x89PNG\x00\xff not json",
    "truncated": b'{"lb/passkey": {"0": 1.0, "1": 0.',
    "nan score": b'{"lb/passkey": {"0": 1.0, "1": NaN}}',
    "score out of range": b'{"lb/passkey": {"0": 1.0, "1": 3.5}}',
    "a string score": b'{"lb/passkey": {"0": "1.0"}}',
    "not a mapping": b'{"lb/passkey": [1.0, 0.0]}',
}


@pytest.mark.parametrize("content", CORRUPT_CACHES.values(), ids=CORRUPT_CACHES.keys())
def test_a_corrupt_reference_cache_is_set_aside_and_recomputed(tmp_path, caplog, content):
    cache = ReferenceCache(tmp_path, CONTEXT)
    path = cache.path(SETTINGS)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING):
        assert cache.load(SETTINGS).scores == {}  # everything is computed again
    (aside,) = path.parent.glob(f"{path.name}.corrupt-*")
    assert aside.read_bytes() == content and not path.exists()  # kept for inspection, never deleted
    assert str(path) in caplog.text and str(aside) in caplog.text

    fresh = ReferenceScores()
    fresh.put("passkey", 0, 0.5)
    cache.save(SETTINGS, fresh)  # what evaluate.py does with its full-cache scores: no crash, a clean file
    assert ReferenceScores.load(path).scores == {"lb/passkey": {"0": 0.5}}


def test_a_published_reference_file_with_nan_names_the_file_and_field(tmp_path):
    path = tmp_path / "published.json"
    path.write_text('{"lb/qasper": {"0": 0.25, "7": NaN}}')
    with pytest.raises(CorruptFileError, match=r"published\.json: field lb/qasper\.7 is nan, not a finite number"):
        ReferenceScores.load(path)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({**record(1), "score": float("nan")}), "field score is nan"),
        (json.dumps({**record(1), "retained_ratio": "high"}), "field retained_ratio must be of type number"),
        (json.dumps({key: value for key, value in record(1).items() if key != "prompt_sha"}), "prompt_sha"),
    ],
    ids=["garbled", "nan score", "wrong type", "missing field"],
)
def test_a_corrupt_sample_line_is_set_aside_and_its_sample_runs_again(tmp_path, caplog, line, problem):
    path = tmp_path / "samples" / "h2o" / "passkey-abc.jsonl"
    path.parent.mkdir(parents=True)
    good = [json.dumps(record(0)), json.dumps(record(2))]
    original = "\n".join([good[0], line, good[1]]) + "\n"
    path.write_text(original)
    with caplog.at_level(logging.WARNING):
        store = SampleStore(path).open(DIGESTS)
    assert store.missing([0, 1, 2]) == [1]  # the good records are kept, the bad one is run again
    (aside,) = path.parent.glob(f"{path.name}.corrupt-*")
    assert aside.read_text() == original
    assert path.read_text().splitlines() == good
    assert str(aside) in caplog.text and "line 2" in caplog.text and problem in caplog.text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"job": 0, "overrides": [], "out_dir": "/x", "status": "fini', "not valid JSON"),
        ('{"job": 0, "overrides": [], "out_dir": null, "status": "finished", "error": null}', "field out_dir is None"),
    ],
)
def test_a_corrupt_sweep_status_names_the_file_and_field(tmp_path, content, message):
    (tmp_path / "job_status").mkdir()
    (tmp_path / "job_status" / "00000.json").write_text(content)
    with pytest.raises(CorruptFileError, match=rf"00000\.json.*{message}"):
        read_job_statuses(tmp_path)

"""Settings digests keep the names files on disk were written under (tasks.fingerprints)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest

from namm.engine import EngineConfig
from namm.models import ModelConfig
from namm.policies import PolicyConfig
from tasks.evaluation.policy_runs import store_for
from tasks.fingerprints import canonical_json, settings_digest
from tasks.settings import TaskSettings

RESULTS = Path(__file__).resolve().parents[1] / "results" / "cpu-memory-front" / "results.json"


def test_the_digest_is_the_sha256_of_sorted_json_cut_to_length():
    value = {"b": [1, 2], "a": Path("x")}
    expected = hashlib.sha256(b'{"a": "x", "b": [1, 2]}').hexdigest()
    assert canonical_json(value, default=str) == b'{"a": "x", "b": [1, 2]}'
    assert settings_digest(value, 12, default=str) == expected[:12]
    assert settings_digest([3, 1, 2], 16) == hashlib.sha256(json.dumps([3, 1, 2]).encode()).hexdigest()[:16]
    with pytest.raises(TypeError):
        settings_digest(value, 12)  # a Path is not JSON without `default`


@pytest.mark.parametrize(
    ("label", "policy"),
    [
        ("full", PolicyConfig(name="full")),
        ("h2o@0.25", PolicyConfig(name="h2o", budget_ratio=0.25, options={"recent_share": 0.5})),
        ("snapkv@0.1", PolicyConfig(name="snapkv", budget_ratio=0.1, options={"window": 32, "kernel_size": 7})),
    ],
)
def test_sample_stores_keep_the_names_the_committed_evaluation_wrote(label, policy, tmp_path):
    """results/cpu-memory-front was written before `budget` became `budget_ratio`: the same settings must
    name the same sample files, or a resumed evaluation would run every sample again."""
    document = json.loads(RESULTS.read_text())
    if label == "snapkv@0.1":
        policy.options["pooling"] = "max"
    context = SimpleNamespace(
        model_settings=asdict(ModelConfig(name=document["model"]["name"])),
        engine_config=EngineConfig(**document["engine"]),
        run_dir=tmp_path,
    )
    for row in (row for row in document["results"] if row["policy"] == label):
        settings = {key: value for key, value in document["tasks"][row["task"]].items() if key != "num_samples"}
        settings = {key: tuple(value) if isinstance(value, list) else value for key, value in settings.items()}
        task = SimpleNamespace(settings=TaskSettings(**settings), spec=SimpleNamespace(name=row["task"]))
        store = store_for(context, SimpleNamespace(label=label, namm=None), policy, task)
        assert str(store.path.relative_to(tmp_path)) == row["samples_file"]

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
from tasks.task_settings import TaskSettings


def test_the_digest_is_the_sha256_of_sorted_json_cut_to_length():
    value = {"b": [1, 2], "a": Path("x")}
    expected = hashlib.sha256(b'{"a": "x", "b": [1, 2]}').hexdigest()
    assert canonical_json(value, default=str) == b'{"a": "x", "b": [1, 2]}'
    assert settings_digest(value, 12, default=str) == expected[:12]
    assert settings_digest([3, 1, 2], 16) == hashlib.sha256(json.dumps([3, 1, 2]).encode()).hexdigest()[:16]
    with pytest.raises(TypeError):
        settings_digest(value, 12)  # a Path is not JSON without `default`


@pytest.mark.parametrize(
    "policy",
    [
        PolicyConfig(name="full"),
        PolicyConfig(name="h2o", budget_ratio=0.25, options={"recent_share": 0.5}),
        PolicyConfig(name="streaming", budget_tokens=64, allocation="pyramid"),
    ],
)
def test_a_sample_stores_name_is_the_digest_of_its_key_with_the_policy_as_its_fields(policy, tmp_path):
    """The key spells the policy by its dataclass fields (`budget_ratio`, not a former name): the key also
    holds the source digest, which every code change alters, so no older store could be found again anyway."""
    context = SimpleNamespace(
        model_settings=asdict(ModelConfig(name="tiny-llama")),
        score_inputs={"dtype": "float32", "batch_size": 2},
        engine_config=EngineConfig(),
        run_dir=tmp_path,
    )
    settings = TaskSettings(
        "passkey", "tiny-llama", "synthetic", None, True, False, 10, False, False, "m", "difflib", (2,), ()
    )
    task = SimpleNamespace(settings=settings, spec=SimpleNamespace(name="passkey"))
    fields = {
        "name": policy.name,
        "budget_ratio": policy.budget_ratio,
        "budget_tokens": policy.budget_tokens,
        "options": policy.options,
        "allocation": policy.allocation,
    }
    key = {
        "policy": fields,
        "namm": None,
        "engine": asdict(context.engine_config),
        "model": context.model_settings,
        "inputs": context.score_inputs,
        "task": settings.key(),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    store = store_for(context, SimpleNamespace(label="x", namm=None), policy, task)
    assert store.path == tmp_path / "samples" / "x" / f"passkey-{digest}.jsonl"

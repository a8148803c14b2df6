"""Sample stores are keyed on everything that moves a score: a resolved dtype, device, batch size, library
or code version that differs is a new store, never a reuse of old records."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
from task_fixtures import byte_tokenizer

from namm.engine import EngineConfig
from namm.models import ModelConfig, load_model
from namm.policies import PolicyConfig
from tasks.evaluation.contenders import Contender
from tasks.evaluation.policy_runs import EvaluationContext, store_for
from tasks.evaluation.run_identity import score_inputs, source_digest
from tasks.preparation import ModelInfo, prepare_tasks
from tasks.task_config import TaskConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def task():
    model = ModelInfo("byte-model", byte_tokenizer(), max_context=4096, chat_template=False)
    [prepared] = prepare_tasks(TaskConfig(tasks=["passkey"], num_samples=2, context_length=300), model)
    return prepared


def _store_path(loaded, task, tmp_path, batch_size=2, settings=None):
    context = EvaluationContext(
        loaded,
        settings or {"name": "tiny-llama", "dtype": "auto", "device": "auto"},  # the config as written
        score_inputs(loaded, batch_size),
        EngineConfig(128),
        tmp_path,
        batch_size,
        bar=None,
    )
    contender = Contender("full", PolicyConfig(name="full"), budgeted=False)
    return store_for(context, contender, contender.config, task).path


def test_a_dtype_or_batch_size_change_misses_the_store(task, tmp_path):
    loaded = load_model(ModelConfig(name="tiny-llama"))
    inputs = score_inputs(loaded, 2)
    assert inputs["dtype"] == "float32" and inputs["device"] == "cpu" and inputs["weights"] == loaded.weights_id
    assert {"torch", "transformers", "namm"} <= set(inputs["versions"]) and len(inputs["sources"]) == 16
    first = _store_path(loaded, task, tmp_path)
    assert _store_path(loaded, task, tmp_path) == first  # same inputs: the same store (resume works)
    assert _store_path(loaded, task, tmp_path, batch_size=4) != first
    halved = dataclasses.replace(loaded, model=loaded.model.to(torch.bfloat16))
    assert score_inputs(halved, 2)["dtype"] == "bfloat16"
    assert _store_path(halved, task, tmp_path) != first  # `auto` in the config both times, another dtype run


def test_a_source_edit_is_a_new_code_version(tmp_path):
    for package in ("namm", "tasks"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    before = source_digest(tmp_path)
    assert before == source_digest(ROOT)
    path = tmp_path / "tasks" / "metrics.py"
    path.write_text(path.read_text() + "\n# an edit\n")
    assert source_digest.__wrapped__(tmp_path) != before

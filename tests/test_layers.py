"""The import layering CONTRIBUTING.md describes, checked in a fresh interpreter: what a module pulls in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def loaded_after(code: str) -> set[str]:
    """The namm and tasks modules loaded once `code` has run in a fresh interpreter."""
    report = "import json, sys; print(json.dumps([m for m in sys.modules if m.split('.')[0] in ('namm', 'tasks')]))"
    command = [sys.executable, "-c", f"{code}\n{report}"]
    done = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return set(json.loads(done.stdout.splitlines()[-1]))


def under(modules: set[str], *packages: str) -> set[str]:
    return {module for module in modules if any(module == p or module.startswith(f"{p}.") for p in packages)}


def test_budget_is_a_leaf():
    assert loaded_after("import namm.budget") == {"namm", "namm.budget"}


def test_namm_imports_nothing_of_tasks():
    """The training scorer is reached through the `scorer._target_` string, never an import."""
    assert not under(loaded_after("import namm.api, namm.evolution.trainer, namm.pretrained"), "tasks")


TASK_CORE = sorted(f"tasks.{path.stem}" for path in (ROOT / "tasks").glob("*.py") if path.stem != "__init__") + [
    "tasks.synthetic"
]


def test_the_task_core_imports_neither_the_evaluation_nor_the_training_scorer():
    """tasks/ holds the tasks; its two users, tasks/evaluation/ and tasks/training/, sit above it."""
    loaded = loaded_after("import " + ", ".join(TASK_CORE))
    assert set(TASK_CORE) <= loaded
    assert not under(loaded, "tasks.evaluation", "tasks.training")


def test_the_evaluation_and_the_training_scorer_do_not_import_each_other():
    assert not under(loaded_after("import tasks.evaluation, tasks.evaluation.dataset_views"), "tasks.training")
    assert not under(loaded_after("import tasks.training.task_scorer"), "tasks.evaluation")


@pytest.mark.parametrize("code", ["import namm.policies", "import namm.policies; namm.policies.available_policies()"])
def test_policies_import_neither_the_engine_nor_the_models(code):
    loaded = loaded_after(code)
    assert not under(loaded, "namm.engine", "namm.models", "namm.api", "namm.cache", "namm.attention", "tasks")


def test_the_network_imports_no_policy_engine_or_model():
    assert not under(loaded_after("import namm.network"), "namm.policies", "namm.engine", "namm.models", "tasks")


def test_the_engine_imports_no_policy_module_nor_the_api():
    """The engine knows the policy interface, never a policy (nor the NAMM network, nor the top-level API)."""
    loaded = loaded_after("import namm.engine")
    assert under(loaded, "namm.policies") == {"namm.policies", "namm.policies.base", "namm.policies.registry"}
    assert not under(loaded, "namm.network", "namm.api", "namm.evolution", "tasks")

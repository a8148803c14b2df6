"""Every conf/task/*.yaml composes through Hydra and validates against TaskConfig."""

import pytest
from hydra import compose, initialize_config_dir
from task_fixtures import REPO

from tasks.longbench import LONGBENCH_TASKS, SUITES
from tasks.synthetic import SYNTHETIC_SUITES, SYNTHETIC_TASKS
from tasks.task_config import task_config

TASK_DIR = REPO / "conf" / "task"
CHOICES = sorted(path.stem for path in TASK_DIR.glob("*.yaml"))


def compose_task(choice, *overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(overrides=[f"+task={choice}", *overrides]).task


@pytest.fixture(scope="module")
def composed():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return {choice: compose(overrides=[f"+task={choice}"]).task for choice in CHOICES}


def test_every_task_and_suite_has_a_config():
    assert set(CHOICES) == set(LONGBENCH_TASKS) | set(SUITES) | set(SYNTHETIC_TASKS) | set(SYNTHETIC_SUITES)


@pytest.mark.parametrize("choice", CHOICES)
def test_config_composes_and_validates(composed, choice):
    config = task_config(composed[choice])
    assert config.name == choice
    expected = list((SUITES | SYNTHETIC_SUITES).get(choice, [choice]))
    assert config.tasks == expected
    assert (config.num_samples is None) == (choice not in SYNTHETIC_TASKS and choice not in SYNTHETIC_SUITES)


def test_default_training_task_is_passkey_at_1k():
    config = task_config(compose_task("passkey"))
    assert (config.tasks, config.context_length, config.num_samples) == (["passkey"], 1024, 20)


def test_overrides_reach_the_schema():
    config = task_config(compose_task("niah_single", "task.context_length=4096", "task.haystack=needle"))
    assert (config.context_length, config.haystack) == (4096, "needle")
    assert task_config(compose_task("lcc", "task.code_sim_backend=lcs")).code_sim_backend == "lcs"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"tasks": ["qasperr"]}, "Unknown task"),
        ({"code_sim_backend": "levenshtein"}, "code_sim_backend"),
        ({"num_samples": None}, "num_samples"),
        ({"context_lenght": 10}, "context_lenght"),
        ({"context_length": "long"}, "context_length"),
        ({"needle_depth": 1.5}, "needle_depth"),
        ({"haystack": "essay"}, "haystack"),
    ],
)
def test_bad_configs_fail_before_any_work(change, message):
    with pytest.raises(Exception, match=message):
        task_config({"name": "bad", **change})

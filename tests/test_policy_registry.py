"""The registry, the policies' dataclasses and their conf/policy yaml agree; options bind before a policy runs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from namm.policies import BudgetPolicy, LayerView, MemoryPolicy, PolicyConfig, Selection, build_policy, registry
from namm.policies.registry import available_policies, policy_class, policy_options, register_policy
from tasks.evaluation.config import EvaluateConfig
from tasks.evaluation.contenders import plan_contenders

CONF = Path(__file__).resolve().parents[1] / "conf"
CONFIGURED = [name for name in available_policies() if name != "namm"]  # the NAMM's settings: conf/namm/


def defaults(cls: type[MemoryPolicy]) -> dict:
    return {item.name: item.default for item in dataclasses.fields(cls) if item.name in policy_options(cls)}


@pytest.mark.parametrize("name", CONFIGURED)
def test_each_policy_yaml_lists_its_dataclass_options_with_their_defaults(name):
    cls = policy_class(name)
    config = yaml.safe_load((CONF / "policy" / f"{name}.yaml").read_text())
    assert config["name"] == name
    assert config["options"] == defaults(cls)
    assert (config["budget_ratio"] is not None) == issubclass(cls, BudgetPolicy)
    build_policy(PolicyConfig(**config))  # the defaults are valid


def test_every_policy_yaml_and_evaluate_baseline_names_a_registered_policy():
    assert sorted(path.stem for path in (CONF / "policy").glob("*.yaml")) == CONFIGURED
    evaluate = yaml.safe_load((CONF / "evaluate.yaml").read_text())
    baselines = {
        key.split(".", 1)[1]: value
        for entry in evaluate["defaults"]
        if isinstance(entry, dict)
        for key, value in entry.items()
        if key.startswith("policy@baselines.")
    }
    assert baselines == {name: name for name in baselines} and set(baselines) <= set(CONFIGURED)


@dataclass(eq=False)
class KeepOldest(BudgetPolicy):
    """A policy added by a test: one dataclass, registered, plus one yaml."""

    name: ClassVar[str] = "keep_oldest"
    bias: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.bias, float):
            raise TypeError(f"keep_oldest bias must be a float, got {type(self.bias).__name__}")

    def score(self, view: LayerView):
        return self.bias - view.positions.float()


@pytest.fixture()
def with_keep_oldest(monkeypatch, tmp_path):
    """KeepOldest registered (in a copy of the registry) and its yaml in a copy of conf/policy."""
    monkeypatch.setattr(registry, "_POLICIES", dict(registry._POLICIES))
    register_policy(KeepOldest)
    for path in (CONF / "policy").glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "keep_oldest.yaml").write_text(
        "name: keep_oldest\nbudget_ratio: 0.3\nbudget_tokens: null\noptions:\n  bias: 2.0\n"
    )
    monkeypatch.setattr("tasks.evaluation.contenders.POLICY_CONFIGS", tmp_path)


def test_a_new_policy_joins_the_comparison_with_its_own_options(with_keep_oldest):
    contenders = plan_contenders(EvaluateConfig(), [])
    assert "keep_oldest" in [c.label for c in contenders]
    (mine,) = [c for c in contenders if c.label == "keep_oldest"]
    assert mine.budgeted and mine.config == PolicyConfig("keep_oldest", 0.3, None, {"bias": 2.0})


def test_a_policys_own_type_error_is_not_reported_as_an_unknown_option(with_keep_oldest):
    with pytest.raises(TypeError, match="keep_oldest bias must be a float, got str"):
        build_policy(PolicyConfig(name="keep_oldest", budget_ratio=0.5, options={"bias": "2"}))
    with pytest.raises(ValueError, match=r"does not take the options \['bais'\]; its options are \['bias'\]"):
        build_policy(PolicyConfig(name="keep_oldest", options={"bais": 2.0}))


def test_registering_needs_a_dataclass_and_a_free_name(monkeypatch):
    monkeypatch.setattr(registry, "_POLICIES", dict(registry._POLICIES))

    class NotADataclass(MemoryPolicy):
        name: ClassVar[str] = "plain"

        def select(self, view: LayerView) -> Selection:
            raise NotImplementedError

    with pytest.raises(TypeError, match="@dataclass"):
        register_policy(NotADataclass)

    @dataclass(eq=False)
    class Impostor(KeepOldest):
        name: ClassVar[str] = "h2o"

    with pytest.raises(ValueError, match="'h2o' is taken by H2OPolicy"):
        register_policy(Impostor)

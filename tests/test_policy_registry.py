"""The registry, the policies' dataclasses and their conf/policy yaml agree; options bind before a policy runs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from namm.errors import ConfigError
from namm.policies import BudgetPolicy, LayerView, MemoryPolicy, PolicyConfig, Selection, build_policy, registry
from namm.policies.registry import available_policies, policy_class, policy_options, register_policy
from tasks.evaluation.config import EvaluateConfig
from tasks.evaluation.contenders import CHECKOUT_CONF, config_dir, plan_contenders

CONF = Path(__file__).resolve().parents[1] / "conf"
CONFIGURED = [name for name in available_policies() if name != "namm"]  # the NAMM's settings: conf/namm/


@pytest.fixture(autouse=True)
def outside_a_hydra_run(monkeypatch):
    """No Hydra run unless a test starts one (other tests leave their composed config in HydraConfig)."""
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)


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
    (tmp_path / "policy").mkdir()
    for path in (CONF / "policy").glob("*.yaml"):
        (tmp_path / "policy" / path.name).write_text(path.read_text())
    (tmp_path / "policy" / "keep_oldest.yaml").write_text(
        "name: keep_oldest\nbudget_ratio: 0.3\nbudget_tokens: null\noptions:\n  bias: 2.0\n"
    )
    monkeypatch.setattr("tasks.evaluation.contenders.CHECKOUT_CONF", tmp_path)


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


def h2o_ratio() -> float:
    (h2o,) = [c for c in plan_contenders(EvaluateConfig(compare=["h2o"]), []) if c.label == "h2o"]
    return h2o.config.budget_ratio


def test_policy_defaults_come_from_the_conf_the_run_was_composed_from(tmp_path):
    """Installed elsewhere, the packages have no conf/ beside them: a Hydra run reads a policy's defaults from
    its own primary config source, here a copy of conf/policy outside the checkout with h2o at 0.2."""
    (tmp_path / "policy").mkdir()
    h2o = (CONF / "policy" / "h2o.yaml").read_text()
    assert "budget_ratio: 0.5\n" in h2o
    (tmp_path / "policy" / "h2o.yaml").write_text(h2o.replace("budget_ratio: 0.5\n", "budget_ratio: 0.2\n"))
    assert config_dir() == CHECKOUT_CONF == CONF and h2o_ratio() == 0.5  # no Hydra run: the checkout's
    with initialize_config_dir(config_dir=str(tmp_path), version_base=None):
        HydraConfig.instance().set_config(compose(config_name=None, return_hydra_config=True))
    assert config_dir() == tmp_path and h2o_ratio() == 0.2


def test_missing_policy_defaults_name_the_file_and_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr("tasks.evaluation.contenders.CHECKOUT_CONF", tmp_path)
    with pytest.raises(
        ConfigError, match=r"policy 'h2o' has no default settings .*policy/h2o.yaml is missing.*baselines\.h2o"
    ):
        h2o_ratio()

"""The policies an evaluation runs side by side, each with its settings, checked before any model loads."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from namm.budget import Budget
from namm.engine import EngineConfig, check_policy_engine
from namm.errors import ConfigError
from namm.policies import BudgetPolicy, MemoryPolicy, PolicyConfig, available_policies, build_policy, policy_class
from namm.typed_config import typed_config
from tasks.evaluation.config import NAMM_POLICY, EvaluateConfig
from tasks.evaluation.namm_source import NAMMSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Contender:
    """One policy under evaluation. `budgeted`: it keeps a budget per head (matchable to the NAMM's ratio);
    `swept`: a fixed point of the score-memory front (`<policy>@<budget>`), never matched; `namm`: the NAMM
    this contender runs (None for the baselines)."""

    label: str
    config: PolicyConfig
    budgeted: bool
    namm: NAMMSource | None = None
    swept: bool = False

    @property
    def is_namm(self) -> bool:
        return self.namm is not None

    @property
    def matchable(self) -> bool:
        return self.budgeted and not self.swept

    def with_budget(self, ratio: float) -> PolicyConfig:
        """The same policy at another budget ratio (matched budgets)."""
        return dataclasses.replace(self.config, budget_ratio=ratio, budget_tokens=None)

    def describe(self) -> dict[str, Any]:
        return {"label": self.label, **dataclasses.asdict(self.config)}


#: conf/ of the checkout these packages sit in (a run from the checkout, or an editable install)
CHECKOUT_CONF = Path(__file__).resolve().parents[2] / "conf"


def config_dir() -> Path:
    """The conf/ this run's config was composed from: Hydra's primary config source while `python evaluate.py`
    runs (right wherever the packages are installed), else, for a config composed outside a Hydra run
    (tests, notebooks), the checkout's conf/ beside the packages."""
    if HydraConfig.initialized():
        for source in HydraConfig.get().runtime.config_sources:
            if source.provider == "main" and source.schema == "file":
                return Path(source.path)
    return CHECKOUT_CONF


def default_comparison(schedule: str = "prefill") -> list[str]:
    """The full cache, the NAMM, then every other registered policy that runs on `schedule` (a post-prefill
    one such as kvzip joins under schedule=post_prefill): a new policy module is compared by default."""
    others = [name for name in available_policies() if name not in ("full", NAMM_POLICY)]
    runnable = [name for name in others if schedule == "post_prefill" or policy_class(name).runs_during_prefill]
    return ["full", NAMM_POLICY, *runnable]


def contender_names(config: EvaluateConfig, schedule: str = "prefill") -> list[str]:
    """`compare` if given, else the one `policy`, else the default comparison on `schedule`."""
    if config.compare is not None:
        return list(config.compare)
    if config.policy is not None:
        return [config.policy["name"]]
    return default_comparison(schedule)


def _policy_config(values: Any, key: str) -> PolicyConfig:
    """A policy node (`policy`, `baselines.<name>` or a conf/policy yaml) as a `PolicyConfig`: keys and types
    checked by `typed_config`, the budget by `Budget.from_keys`, each error naming the full key."""
    config = typed_config(PolicyConfig, values, key)
    try:
        Budget.from_keys(config.budget_ratio, config.budget_tokens, key)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    return config


def _settings_for(name: str, config: EvaluateConfig) -> tuple[PolicyConfig, str]:
    """A policy's settings: `policy` when it names this policy, else `baselines.<name>`, else the defaults."""
    if config.policy is not None and config.policy.get("name") == name:
        return _policy_config(config.policy, "policy"), "policy"
    baselines = config.baselines or {}
    if name in baselines:
        return _policy_config(baselines[name], f"baselines.{name}"), f"baselines.{name}"
    defaults = config_dir() / "policy" / f"{name}.yaml"
    if not defaults.is_file():
        raise ConfigError(
            f"policy {name!r} has no default settings ({defaults} is missing): add conf/policy/{name}.yaml "
            f"(see CONTRIBUTING.md), or give them as baselines.{name}"
        )
    return _policy_config(OmegaConf.load(defaults), str(defaults)), f"baselines.{name}"


def plan_contenders(
    config: EvaluateConfig, namms: list[tuple[str, NAMMSource]], engine: EngineConfig | None = None
) -> list[Contender]:
    """Full cache first, then the NAMMs (`namms`: label and source; the first one's ratio sets matched
    budgets), then the others in the given order.

    Every baseline is instantiated once here so an unknown name, a budget out of range or a policy the
    `engine` settings cannot run fails now."""
    engine = engine or EngineConfig()
    names = contender_names(config, engine.schedule)
    if config.policy is not None and config.compare is not None and config.policy["name"] not in config.compare:
        raise ConfigError(
            f"policy={config.policy['name']} is not among compare={list(config.compare)}; add it to compare, or "
            "drop compare to evaluate that one policy."
        )
    known = available_policies()
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(f"unknown polic{'y' if len(unknown) == 1 else 'ies'} {unknown}; available: {known}.")
    contenders = []
    for name in sorted(names, key=lambda n: (n != "full", n != NAMM_POLICY)):
        if name == NAMM_POLICY:
            contenders += [
                Contender(label, PolicyConfig(name=name), budgeted=False, namm=source) for label, source in namms
            ]
            continue
        settings, key = _settings_for(name, config)
        if settings.name != name:
            raise ConfigError(f"{key}.name is {settings.name!r}, expected {name!r}.")
        try:
            policy = build_policy(settings)
            check_policy_engine(policy, engine)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"{key} ({name}): {error}") from error
        contenders.append(Contender(name, settings, budgeted=isinstance(policy, BudgetPolicy)))
    return contenders


def front_points(contenders: list[Contender], budgets: list[float], keep_own: bool) -> list[Contender]:
    """The score-memory front: every budgeted baseline also at each budget of `budgets` (`h2o@0.25`), right
    after it; its own entry stays only when `keep_own` (it runs matched to the NAMM)."""
    planned = []
    for contender in contenders:
        if keep_own or not contender.budgeted:
            planned.append(contender)
        if contender.budgeted:
            planned += [
                Contender(f"{contender.label}@{budget:g}", contender.with_budget(budget), budgeted=True, swept=True)
                for budget in sorted(budgets)
            ]
    return planned


def wants_matched_budgets(config: EvaluateConfig, contenders: list[Contender], namms: list[NAMMSource]) -> bool:
    """match_budget=null means: when one trained NAMM and at least one budgeted baseline both run.

    The zero-parameter NAMM keeps every token, so matching it would run every baseline at ratio 1.0 (the
    full cache again); left unmatched, they run at their own budgets and the table says something. Several
    NAMMs have several ratios: their baselines are not matched (run a front instead)."""
    has_budgeted = any(c.budgeted for c in contenders)
    if len(namms) > 1:
        if config.match_budget:
            raise ConfigError(
                f"match_budget=true matches the baselines to one NAMM's retained ratio, but {len(namms)} NAMMs run; "
                "evaluate them with front=true (each baseline at front_budgets), or one checkpoint at a time"
            )
        return False
    namm = namms[0] if namms else None
    if config.match_budget is None:
        if namm is not None and namm.is_zero and has_budgeted:
            log.info("the zero-parameter NAMM keeps every token: baselines run at their own budgets, not matched")
        return namm is not None and not namm.is_zero and has_budgeted
    if config.match_budget and namm is None:
        raise ConfigError(
            "match_budget=true sets each baseline's budget to the NAMM's retained ratio, so the NAMM must run too: "
            "add namm to compare (e.g. compare=[full,namm,h2o]) or set match_budget=false."
        )
    return config.match_budget


def build_contender_policy(contender: Contender, policy_config: PolicyConfig) -> MemoryPolicy:
    return contender.namm.pretrained.policy() if contender.namm is not None else build_policy(policy_config)

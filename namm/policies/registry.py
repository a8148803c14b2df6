"""Policy registry: a policy module registers its class; configs name it (`policy=h2o`)."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any

from namm.policies.base import Budget, BudgetPolicy, MemoryPolicy

_POLICIES: dict[str, type[MemoryPolicy]] = {}


def register_policy(cls: type[MemoryPolicy]) -> type[MemoryPolicy]:
    _POLICIES[cls.name] = cls
    return cls


@dataclass
class PolicyConfig:
    """The `policy` config group: a registered name, a budget for budgeted policies, and extra options."""

    name: str = "full"
    budget: float | None = 0.5  # ratio of tokens seen kept per head, in (0, 1]
    budget_tokens: int | None = None  # or a fixed count; overrides `budget`
    options: dict[str, Any] = field(default_factory=dict)


def available_policies() -> list[str]:
    _import_all()
    return sorted(_POLICIES)


def build_policy(config: PolicyConfig) -> MemoryPolicy:
    """Instantiate the policy a config names; budget errors surface here, before any model work."""
    _import_all()
    if config.name not in _POLICIES:
        raise ValueError(f"unknown policy '{config.name}'; available: {', '.join(sorted(_POLICIES))}.")
    cls = _POLICIES[config.name]
    options = dict(config.options)
    try:
        if issubclass(cls, BudgetPolicy):
            budget = (
                Budget(ratio=None, tokens=config.budget_tokens)
                if config.budget_tokens is not None
                else Budget(config.budget)
            )
            return cls(budget=budget, **options)
        return cls(**options)
    except TypeError as error:  # an option the policy does not take
        raise ValueError(
            f"policy {config.name!r} does not take the options {sorted(options)} ({error}); "
            f"see conf/policy/{config.name}.yaml for the ones it has"
        ) from error


def _import_all() -> None:
    import namm.policies as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in ("base", "registry"):
            importlib.import_module(f"namm.policies.{module.name}")

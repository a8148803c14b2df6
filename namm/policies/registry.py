"""Policy registry: a policy module registers its dataclass once; configs name it (`policy=h2o`).

A config's `options` are checked against the dataclass's init fields before the policy is built, so an unknown
option is refused by name and any error the policy itself raises (its `__post_init__` checks, a real
TypeError) reaches the caller unchanged.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from namm.allocation import check_allocation
from namm.budget import Budget
from namm.policies.base import BudgetPolicy, MemoryPolicy

_POLICIES: dict[str, type[MemoryPolicy]] = {}

PolicyClass = TypeVar("PolicyClass", bound=type[MemoryPolicy])


def register_policy(cls: PolicyClass) -> PolicyClass:
    """Class decorator (above `@dataclass(eq=False)`): make the policy buildable by its `name`."""
    if "__dataclass_fields__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__}: decorate it with @dataclass(eq=False) below @register_policy")
    if _POLICIES.get(cls.name, cls) is not cls:
        raise ValueError(f"policy name {cls.name!r} is taken by {_POLICIES[cls.name].__qualname__}")
    _POLICIES[cls.name] = cls
    return cls


@dataclass
class PolicyConfig:
    """The `policy` config group: a registered name, a budget for budgeted policies, and extra options."""

    name: str = "full"
    budget_ratio: float | None = None  # ratio of tokens seen kept per head, in (0, 1]
    budget_tokens: int | None = None  # or a fixed count; at most one of the two (`Budget.from_keys`)
    options: dict[str, Any] = field(default_factory=dict)
    allocation: str = "none"  # how a budgeted policy shares its budget: none | adakv | pyramid (namm/allocation.py)

    @property
    def budget(self) -> Budget | None:
        """The budget the two keys give (None: neither set); both set is an error naming them."""
        return Budget.from_keys(self.budget_ratio, self.budget_tokens, "policy")


def available_policies() -> list[str]:
    _import_all()
    return sorted(_POLICIES)


def policy_class(name: str) -> type[MemoryPolicy]:
    _import_all()
    if name not in _POLICIES:
        raise ValueError(f"unknown policy '{name}'; available: {', '.join(sorted(_POLICIES))}.")
    return _POLICIES[name]


def policy_options(cls: type[MemoryPolicy]) -> list[str]:
    """The options a config may set (`policy.options`): the dataclass's init fields (and init-only
    variables) but the budget and its allocation, read from the `__init__` the dataclass generated."""
    return [name for name in inspect.signature(cls).parameters if name not in ("budget", "allocation")]


def build_policy(config: PolicyConfig) -> MemoryPolicy:
    """Instantiate the policy a config names; budget and option errors surface here, before any model work."""
    cls = policy_class(config.name)
    options = dict(config.options)
    known = policy_options(cls)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(
            f"policy {config.name!r} does not take the options {unknown}; its options are {sorted(known)} "
            f"(defaults in conf/policy/{config.name}.yaml)"
        )
    check_allocation(config.allocation)
    budget = config.budget
    if issubclass(cls, BudgetPolicy):
        if budget is None:
            raise ValueError(
                f"policy {config.name!r} keeps a budget per KV head: set policy.budget_ratio (e.g. 0.5) or "
                "policy.budget_tokens"
            )
        return cls(budget=budget, allocation=config.allocation, **options)
    if config.allocation != "none":
        raise ValueError(
            f"policy {config.name!r} keeps no budget, so it has none to allocate: drop allocation={config.allocation!r}."
        )
    return cls(**options)


def _import_all() -> None:
    """Import every module of this package, so each policy registers itself."""
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if module.name not in ("base", "registry"):
            importlib.import_module(f"{__package__}.{module.name}")

"""Memory policies: the NAMM and the hand-designed baselines, all on the engine's schedule."""

from namm.policies.base import Budget, BudgetPolicy, LayerView, MemoryPolicy, Selection
from namm.policies.registry import PolicyConfig, available_policies, build_policy, register_policy

__all__ = [
    "Budget",
    "BudgetPolicy",
    "LayerView",
    "MemoryPolicy",
    "PolicyConfig",
    "Selection",
    "available_policies",
    "build_policy",
    "register_policy",
]

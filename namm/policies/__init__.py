"""Memory policies: the NAMM and the hand-designed baselines, all on the engine's schedule."""

from namm.budget import Budget
from namm.policies.base import BudgetPolicy, LayerView, MemoryPolicy, Selection
from namm.policies.registry import PolicyConfig, available_policies, build_policy, policy_class, register_policy

__all__ = [
    "Budget",
    "BudgetPolicy",
    "LayerView",
    "MemoryPolicy",
    "PolicyConfig",
    "Selection",
    "available_policies",
    "build_policy",
    "policy_class",
    "register_policy",
]

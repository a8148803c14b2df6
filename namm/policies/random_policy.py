"""Random eviction: a seeded control that any useful policy must beat at the same budget.

A token's draw is a hash of (seed, layer, KV head, token position, tokens seen at the update), not the next
number of a shared generator: a row draws the same numbers alone or in any batch, at any batch row, and
every update draws afresh. The hash is 31-bit integer arithmetic, exact on every device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from namm.policies.base import BudgetPolicy, LayerView
from namm.policies.registry import register_policy

MASK_31 = (1 << 31) - 1


def mix31(values: torch.Tensor) -> torch.Tensor:
    """A 31-bit integer avalanche (xor-shift-multiply rounds); products stay below 2**62, so int64 never wraps."""
    values = ((values ^ (values >> 15)) * 0x2C1B3C6D) & MASK_31
    values = ((values ^ (values >> 12)) * 0x297A2D39) & MASK_31
    return values ^ (values >> 15)


def hashed_uniform(*keys: torch.Tensor | int) -> torch.Tensor:
    """Uniform floats in [0, 1) on a 2**-24 grid, one per element of the broadcast keys."""
    state = torch.as_tensor(0, dtype=torch.int64)
    for key in keys:
        state = mix31((state ^ torch.as_tensor(key, dtype=torch.int64)) & MASK_31)
    return (state >> 7).float() / (1 << 24)


@register_policy
@dataclass(eq=False)
class RandomPolicy(BudgetPolicy):
    name: ClassVar[str] = "random"

    seed: int = 0  # one of the hash's keys: another seed draws other tokens

    def score(self, view: LayerView) -> torch.Tensor:
        heads = torch.arange(view.positions.shape[1], device=view.positions.device).view(1, -1, 1)
        seen = view.tokens_seen.view(-1, 1, 1)
        return hashed_uniform(self.seed, view.layer_idx, heads, view.positions, seen)

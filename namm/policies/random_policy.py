"""Random eviction: a seeded control that any useful policy must beat at the same budget."""

from __future__ import annotations

from typing import ClassVar

import torch

from namm.policies.base import Budget, BudgetPolicy, LayerView
from namm.policies.registry import register_policy


@register_policy
class RandomPolicy(BudgetPolicy):
    name: ClassVar[str] = "random"

    def __init__(self, budget: Budget, seed: int = 0) -> None:
        super().__init__(budget)
        self.seed = seed

    def reset(self, batch_size: int, num_layers: int, num_kv_heads: int, device: torch.device) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)

    def score(self, view: LayerView) -> torch.Tensor:
        return torch.rand(view.valid.shape, generator=self.generator).to(view.valid.device)

"""Key-norm (Devoto et al. 2024, "L2"): keep the tokens whose keys have the lowest L2 norm."""

from __future__ import annotations

from typing import ClassVar

import torch

from namm.policies.base import BudgetPolicy, LayerView
from namm.policies.registry import register_policy


@register_policy
class KeyNormPolicy(BudgetPolicy):
    name: ClassVar[str] = "knorm"

    def score(self, view: LayerView) -> torch.Tensor:
        return -view.keys.float().norm(dim=-1)

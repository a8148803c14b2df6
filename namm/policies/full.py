"""Full cache: keeps every token (the reference every other policy is compared with)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from namm.policies.base import LayerView, MemoryPolicy, Selection
from namm.policies.registry import register_policy


@register_policy
@dataclass(eq=False)
class FullCachePolicy(MemoryPolicy):
    name: ClassVar[str] = "full"
    evicts: ClassVar[bool] = False

    def select(self, view: LayerView) -> Selection:
        scores = torch.zeros(view.valid.shape, device=view.valid.device).masked_fill(~view.valid, float("-inf"))
        return Selection(scores=scores, keep=view.valid.clone())

"""KeyDiff (Park et al. 2025): keep the keys least similar to the head's mean key (query-agnostic).

A token's score is minus the cosine similarity of its key to the anchor, the mean of the head's unit-norm live
keys: keys that point where most keys point carry the least distinct information. It needs no attention and
no query, so it runs during prefill at no extra cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from namm.policies.base import BudgetPolicy, LayerView
from namm.policies.registry import register_policy


@register_policy
@dataclass(eq=False)
class KeyDiffPolicy(BudgetPolicy):
    name: ClassVar[str] = "keydiff"

    def score(self, view: LayerView) -> torch.Tensor:
        unit = F.normalize(view.keys.float(), dim=-1) * view.valid[..., None]
        anchor = F.normalize(unit.sum(dim=2, keepdim=True), dim=-1)  # (R, H, 1, D): the direction of the mean
        return -(unit * anchor).sum(dim=-1)

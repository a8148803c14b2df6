"""KeyDiff (Park et al. 2025): keep the keys least similar to the head's mean key (query-agnostic).

A token's score is minus the cosine similarity of its key to the anchor, the mean of the head's unit-norm live
keys: keys that point where most keys point carry the least distinct information. It needs no attention and
no query, so it runs during prefill at no extra cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from namm.key_novelty import key_novelty
from namm.policies.base import BudgetPolicy, LayerView
from namm.policies.registry import register_policy


@register_policy
@dataclass(eq=False)
class KeyDiffPolicy(BudgetPolicy):
    name: ClassVar[str] = "keydiff"

    def score(self, view: LayerView) -> torch.Tensor:
        return key_novelty(view.keys, view.valid)

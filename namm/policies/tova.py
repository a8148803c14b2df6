"""TOVA (Oren et al. 2024, "Transformers are Multi-State RNNs"): keep the tokens the newest query attends to most.

The paper evicts, at every step, the token with the lowest attention from the current query, averaged over
the layer's heads, so every head of a layer keeps the same tokens. Here an update keeps the budget's
best by the newest query's attention (the tokens it ranked lowest are evicted together); `scope=layer`
averages over every query head of the layer (the paper), `scope=head` keeps each KV head's own best by its
GQA group's mean (a per-head variant, for allocation=adakv).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from namm.policies.base import BudgetPolicy, LayerView
from namm.policies.registry import register_policy

SCOPES = ("layer", "head")


def layer_mean_by_token(scores: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(R, H, S): each slot gets the mean over the layer's H heads of the scores its token has in each head
    (zero in a head that no longer holds it), matched by position, since heads may hold tokens in other slots."""
    rows, heads, slots = scores.shape
    width = int(positions.max()) + 2  # the last column collects invalid slots
    index = positions.masked_fill(~valid, width - 1).view(rows, heads * slots)
    totals = torch.zeros(rows, width, dtype=scores.dtype, device=scores.device)
    totals.scatter_add_(1, index, scores.masked_fill(~valid, 0.0).view(rows, heads * slots))
    return (totals.gather(1, index) / heads).view(rows, heads, slots)


@register_policy
@dataclass(eq=False)
class TOVAPolicy(BudgetPolicy):
    name: ClassVar[str] = "tova"
    needs_attention: ClassVar[bool] = True

    scope: str = "layer"  # layer: mean over the layer's heads (the paper) | head: each KV head's GQA group mean

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scope not in SCOPES:
            raise ValueError(f"tova policy.options.scope must be one of {', '.join(SCOPES)}, got {self.scope!r}.")

    def score(self, view: LayerView) -> torch.Tensor:
        newest = view.recent_attention(1)[:, :, 0]  # (R, H, S): the GQA group means of the newest query
        if self.scope == "head":
            return newest
        return layer_mean_by_token(newest, view.positions, view.valid)

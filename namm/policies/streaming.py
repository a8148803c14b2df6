"""StreamingLLM (Xiao et al. 2023): keep the first `sink_tokens` tokens and the most recent ones."""

from __future__ import annotations

from typing import ClassVar

import torch

from namm.policies.base import Budget, BudgetPolicy, LayerView
from namm.policies.registry import register_policy


@register_policy
class StreamingPolicy(BudgetPolicy):
    name: ClassVar[str] = "streaming"

    def __init__(self, budget: Budget, sink_tokens: int = 4) -> None:
        super().__init__(budget)
        if sink_tokens < 0:
            raise ValueError(f"sink_tokens must be >= 0, got {sink_tokens}.")
        self.sink_tokens = sink_tokens
        self.require_budget_for(sink_tokens + 1, f"{sink_tokens} attention sinks and the newest token", "sink_tokens")

    def score(self, view: LayerView) -> torch.Tensor:
        return view.positions.float()  # recency

    def protected(self, view: LayerView) -> torch.Tensor:
        return view.positions < self.sink_tokens

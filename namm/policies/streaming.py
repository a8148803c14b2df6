"""StreamingLLM (Xiao et al. 2023): keep the first `sink_tokens` tokens and the most recent ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from namm.policies.base import BudgetPolicy, LayerView
from namm.policies.registry import register_policy


@register_policy
@dataclass(eq=False)
class StreamingPolicy(BudgetPolicy):
    name: ClassVar[str] = "streaming"

    sink_tokens: int = 4  # the first tokens, always kept (attention sinks)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sink_tokens < 0:
            raise ValueError(f"streaming policy.options.sink_tokens must be >= 0, got {self.sink_tokens}.")
        sinks = self.sink_tokens
        self.require_budget_for(sinks + 1, f"{sinks} attention sinks and the newest token", "sink_tokens")

    def score(self, view: LayerView) -> torch.Tensor:
        return view.positions.float()  # recency

    def protected(self, view: LayerView) -> torch.Tensor:
        return view.positions < self.sink_tokens

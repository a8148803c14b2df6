"""H2O (Zhang et al. 2023): keep the heavy hitters, the tokens that received the most attention so far,
plus a window of the most recent tokens (the paper splits its budget equally between the two).

Attention received is accumulated over every query since the token arrived (the rows recorded since
each update), per KV head, and re-gathered when tokens are evicted. The recent window matters: a token
that just arrived has had few queries to attend to it, so pure accumulated attention evicts new
information before anything could ask about it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from namm.policies.base import BudgetPolicy, LayerView
from namm.policies.registry import register_policy


@register_policy
@dataclass(eq=False)
class H2OPolicy(BudgetPolicy):
    name: ClassVar[str] = "h2o"
    needs_attention: ClassVar[bool] = True

    recent_share: float = 0.5  # the budget's share for the newest tokens (the paper: 0.5)
    received: dict[int, torch.Tensor] = field(init=False, default_factory=dict, repr=False)  # per layer (B, H, S)
    batch_size: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.recent_share <= 1.0:
            raise ValueError(
                "h2o policy.options.recent_share must be in [0, 1] (the budget's share for the newest tokens), "
                f"got {self.recent_share}."
            )

    def reset(self, batch_size: int, num_layers: int, num_kv_heads: int, device: torch.device) -> None:
        self.received = {}
        self.batch_size = batch_size

    def score(self, view: LayerView) -> torch.Tensor:
        slots = view.valid.shape[-1]
        state = self.received.get(view.layer_idx)
        if state is None:
            state = torch.zeros(
                self.batch_size, view.valid.shape[1], slots, dtype=torch.float32, device=view.valid.device
            )
        if state.shape[-1] < slots:
            state = torch.nn.functional.pad(state, (0, slots - state.shape[-1]))
        self.received[view.layer_idx] = state
        total = state[view.rows, :, :slots] + view.attention_received()
        state[view.rows, :, :slots] = total
        return total

    def protected(self, view: LayerView) -> torch.Tensor:
        """The recent window: its share of the budget, never more than the budget itself."""
        recent = torch.floor(self.budget.keep_counts(view.tokens_seen).double() * self.recent_share).long()
        return view.positions >= (view.tokens_seen - recent).view(-1, 1, 1)

    def state_bytes(self) -> int:
        return sum(state.numel() * state.element_size() for state in self.received.values())

    def reindex(self, layer_idx: int, rows: torch.Tensor, index: torch.Tensor, valid: torch.Tensor) -> None:
        state = self.received[layer_idx]
        moved = state[rows].gather(2, index).masked_fill(~valid, 0.0)
        block = torch.zeros_like(state[rows])
        block[:, :, : moved.shape[-1]] = moved
        state[rows] = block

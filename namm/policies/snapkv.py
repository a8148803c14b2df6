"""SnapKV-style (Li et al. 2024): keep the tokens the last `window` queries attend to, pooled over neighbours.

At each update the newest `window` queries vote (attention summed over them, per KV head), votes are
max-pooled over `kernel_size` neighbouring slots so whole phrases survive, and the window itself is kept.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from namm.policies.base import Budget, BudgetPolicy, LayerView
from namm.policies.registry import register_policy


@register_policy
class SnapKVPolicy(BudgetPolicy):
    name: ClassVar[str] = "snapkv"
    needs_attention: ClassVar[bool] = True

    def __init__(self, budget: Budget, window: int = 32, kernel_size: int = 7) -> None:
        super().__init__(budget)
        if window < 1 or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"snapkv needs window >= 1 and an odd kernel_size >= 1, got {window}, {kernel_size}.")
        self.window, self.kernel_size = window, kernel_size

    def score(self, view: LayerView) -> torch.Tensor:
        window = min(self.window, view.num_new_tokens)
        votes = view.recent_attention(window).sum(dim=2)
        rows, heads, slots = votes.shape
        # pool over live tokens in positional order, so gaps left by eviction do not separate neighbours
        order = torch.argsort((~view.valid).to(torch.int8), dim=-1, stable=True)
        compact = votes.gather(-1, order).view(rows * heads, 1, slots)
        pooled_compact = F.max_pool1d(compact, self.kernel_size, stride=1, padding=self.kernel_size // 2)
        pooled = torch.empty_like(votes).scatter_(-1, order, pooled_compact.view(rows, heads, slots))
        in_window = view.positions >= (view.tokens_seen - window).view(-1, 1, 1)
        return pooled.masked_fill(in_window, float("inf"))

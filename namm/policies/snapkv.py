"""SnapKV (Li et al. 2024): keep the prefix tokens the last `window` queries attend to, plus the window itself.

At each update the newest `window` queries (the observation window) vote: their attention is summed per
KV head over the prefix, the live tokens older than the window. Votes are pooled over `kernel_size`
neighbouring prefix tokens so whole phrases survive; the window is always kept, so its own votes are not
pooled onto the tokens just before it (at the prefix's edge pooling pads, as SnapKV's code does: -inf
for max, zeros for average). Defaults: window 32 with max pooling over 7 tokens, the LongBench settings in
the scripts of KVCache-Factory (the PyramidKV authors' harness, a common ground for comparing with SnapKV);
the SnapKV repository's own defaults are window 32, kernel 5, average pooling (`pooling=avg kernel_size=5`).
Unlike the paper, which compresses once after the prompt, the engine applies the rule at every update;
votes are the GQA group's mean attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from namm.policies.base import BudgetPolicy, LayerView
from namm.policies.registry import register_policy

POOLING_PADDING = {"max": float("-inf"), "avg": 0.0}


@register_policy
@dataclass(eq=False)
class SnapKVPolicy(BudgetPolicy):
    name: ClassVar[str] = "snapkv"
    needs_attention: ClassVar[bool] = True

    window: int = 32  # the newest queries that vote (the observation window), always kept
    kernel_size: int = 7  # votes pooled over this many neighbouring prefix tokens (odd)
    pooling: str = "max"  # max | avg

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window < 1 or self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(
                "snapkv needs policy.options.window >= 1 and an odd policy.options.kernel_size >= 1, got "
                f"{self.window}, {self.kernel_size}."
            )
        if self.pooling not in POOLING_PADDING:
            raise ValueError(
                f"snapkv policy.options.pooling must be one of {', '.join(POOLING_PADDING)}, got {self.pooling!r}."
            )
        self.require_budget_for(self.window, f"its observation window of {self.window} tokens", "window")

    def observed(self, view: LayerView) -> int:
        """The observation window at this update: at most the queries recorded since the last one."""
        return min(self.window, view.num_new_tokens)

    def protected(self, view: LayerView) -> torch.Tensor:
        return view.positions >= (view.tokens_seen - self.observed(view)).view(-1, 1, 1)

    def score(self, view: LayerView) -> torch.Tensor:
        votes = view.recent_attention(self.observed(view)).sum(dim=2)
        rows, heads, slots = votes.shape
        prefix = view.valid & ~self.protected(view)
        # pool the live prefix in positional order, so eviction gaps do not separate neighbours; what is not
        # prefix (the window, invalid slots) is moved past its end and holds the padding value
        order = torch.argsort((~prefix).to(torch.int8), dim=-1, stable=True)
        compact = votes.masked_fill(~prefix, POOLING_PADDING[self.pooling]).gather(-1, order)
        pool = F.max_pool1d if self.pooling == "max" else F.avg_pool1d
        pooled = pool(compact.view(rows * heads, 1, slots), self.kernel_size, stride=1, padding=self.kernel_size // 2)
        return torch.empty_like(votes).scatter_(-1, order, pooled.view(rows, heads, slots))

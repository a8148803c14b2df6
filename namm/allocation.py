"""How a score-based policy's budget is shared out: per head as given, across a layer's KV heads (AdaKV) or
across layers (PyramidKV). A leaf (torch and namm.budget only), like the selection rules it builds on.

Every allocation keeps the same total as the uniform one: per row, (KV heads x budget) tokens per layer, and
(layers x KV heads x budget) tokens over the model. Each row is allocated on its own, so which rows share a
batch cannot change a row's result.
"""

from __future__ import annotations

import torch

from namm.budget import top_k_keep

#: `policy.allocation`: none (every head keeps the budget), adakv (a layer's total shared across its KV heads
#: by pooled scores), pyramid (per-layer budgets decreasing linearly with depth)
ALLOCATIONS = ("none", "adakv", "pyramid")
#: AdaKV's safeguard (Feng et al. 2024, alpha = 0.2): every head keeps at least this share of the uniform
#: budget, its own best tokens; the rest of the layer's total goes to the best scores of any head
ADAKV_SAFEGUARD = 0.2
#: PyramidKV's beta (Cai et al. 2024, their default 20): the top layer keeps budget / beta, the bottom layer
#: 2 * budget - budget / beta, the layers between on a straight line, so the mean stays the budget
PYRAMID_BETA = 20.0


def check_allocation(allocation: str) -> None:
    if allocation not in ALLOCATIONS:
        raise ValueError(
            f"unknown policy.allocation={allocation!r}; use one of {', '.join(ALLOCATIONS)} "
            "(in compare: baselines.<name>.allocation=...)."
        )


def largest_remainder(shares: torch.Tensor, totals: torch.Tensor) -> torch.Tensor:
    """(R, N) int64 counts proportional to `shares` (R, N) that sum to `totals` (R,) exactly: floors, then
    one more for the largest remainders (ties: the lower index)."""
    floors = shares.floor()
    missing = (totals - floors.sum(dim=-1).long()).clamp(min=0)
    remainder = shares - floors
    order = remainder.argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(
        -1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order)
    )
    return floors.long() + (rank < missing[:, None]).long()


def pyramid_budgets(budget: torch.Tensor, seen: torch.Tensor, num_layers: int, beta: float = PYRAMID_BETA):
    """(R, layers) int64 per-head budgets, decreasing linearly from the first layer to the last, summing to
    layers x `budget` (R,) per row. The slope is flattened where the first layer would keep more than the
    `seen` (R,) tokens a head can hold (the total still fits) and where the last would keep none (every head
    keeps at least its newest token)."""
    if num_layers == 1:
        return budget[:, None].clone()
    base = budget.double()
    amplitude = torch.minimum(base * (1 - 1 / beta), seen.double() - base).clamp(max=base - 1).clamp(min=0)
    depth = torch.linspace(1.0, -1.0, num_layers, dtype=torch.float64, device=budget.device)  # first +1, last -1
    shares = base[:, None] + amplitude[:, None] * depth[None]
    return largest_remainder(shares, budget * num_layers)


def adakv_keep(
    scores: torch.Tensor, valid: torch.Tensor, budget: torch.Tensor, safeguard: float = ADAKV_SAFEGUARD
) -> torch.Tensor:
    """(R, H, S) bool: each row keeps H x `budget[r]` tokens over its KV heads together. Every head first
    keeps its floor(safeguard x budget) best tokens; the rest of the total goes to the best remaining scores
    of any head (top-k over all heads' scores concatenated; ties: the lower head, then the older token)."""
    rows, heads, slots = scores.shape
    guaranteed = top_k_keep(scores, valid, torch.floor(budget.double() * safeguard).long())
    rest = budget * heads - guaranteed.sum(dim=(1, 2))
    pooled = top_k_keep(
        scores.masked_fill(guaranteed, float("-inf")).reshape(rows, 1, heads * slots),
        (valid & ~guaranteed).reshape(rows, 1, heads * slots),
        rest,
    )
    return guaranteed | pooled.view(rows, heads, slots)

"""Which tokens a NAMM keeps: score >= threshold (or a hard top-k budget), newest token always kept."""

from __future__ import annotations

import torch

from namm.budget import PROTECTED_SCORE, top_k_keep
from namm.network.config import NAMMConfig


def newest_positions(positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(R, H, 1) the newest cached position of each row and head (-1 if the head holds nothing)."""
    return positions.masked_fill(~valid, -1).amax(dim=-1, keepdim=True)


def ranking_scores(
    scores: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor, config: NAMMConfig
) -> torch.Tensor:
    """Scores with the newest token forced to +inf (when `keep_newest`), the first `protect_first` positions
    to the largest finite float (kept before any scored token, after the newest) and invalid slots at -inf."""
    ranked = scores.float()
    if config.protect_first:
        ranked = ranked.masked_fill(valid & (positions < config.protect_first), PROTECTED_SCORE)
    if config.keep_newest:
        ranked = ranked.masked_fill(valid & (positions == newest_positions(positions, valid)), float("inf"))
    return ranked.masked_fill(~valid, float("-inf"))


def keep_mask(ranked: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor, config: NAMMConfig) -> torch.Tensor:
    """(R, H, S) bool from `ranking_scores`: the threshold rule, or each head's top-k under a budget."""
    budget = config.budget
    if budget is None:
        return (ranked >= config.threshold) & valid
    tokens_seen = newest_positions(positions, valid).amax(dim=1).view(-1) + 1
    return top_k_keep(ranked, valid, budget.keep_counts(tokens_seen))

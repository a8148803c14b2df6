"""Spearman rank correlation, for the diagnostics that ask whether two rankings agree (a policy's scores against
the attention it predicts, a generation's candidates on two halves of its prompts)."""

from __future__ import annotations

import torch


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks (0-based, float64) along the last dimension; tied values share the mean of their ranks."""
    values = values.double()
    order = values.argsort(dim=-1, stable=True)
    ranks = torch.empty_like(values)
    ranks.scatter_(-1, order, torch.arange(values.shape[-1], dtype=torch.float64).expand_as(values).contiguous())
    flat_values, flat_ranks = values.reshape(-1, values.shape[-1]), ranks.reshape(-1, values.shape[-1])
    for row_values, row_ranks in zip(flat_values, flat_ranks):
        unique, inverse = row_values.unique(return_inverse=True)
        if len(unique) < len(row_values):  # ties: each gets its group's mean rank
            means = torch.zeros(len(unique), dtype=torch.float64).index_add_(0, inverse, row_ranks)
            means /= torch.bincount(inverse, minlength=len(unique))
            row_ranks.copy_(means[inverse])
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman correlation along the last dimension (NaN where either side is constant)."""
    ranks_a, ranks_b = average_ranks(a), average_ranks(b)
    ranks_a = ranks_a - ranks_a.mean(dim=-1, keepdim=True)
    ranks_b = ranks_b - ranks_b.mean(dim=-1, keepdim=True)
    return (ranks_a * ranks_b).sum(dim=-1) / (ranks_a.norm(dim=-1) * ranks_b.norm(dim=-1))

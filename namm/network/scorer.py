"""Token scorers: the backward attention memory (BAM) of the reference, and a per-token MLP.

Both map per-token features (R, H, S, F) to scores (R, H, S) with per-row weights (R, ...), so each
batch row can carry a different candidate; all products are batched matmuls over rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from namm.network.config import NAMMConfig


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (R, M, in) @ weight (R, in, out) + bias (R, out), one matmul per row."""
    if bias is None:
        return torch.bmm(x, weight)
    return torch.baddbmm(bias[:, None, :], x, weight)


def newest_first_order(positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(R, H, S) slot permutation: valid slots by descending position, then the invalid ones."""
    key = positions.masked_fill(~valid, -1)
    return torch.argsort(key, dim=-1, descending=True, stable=True)


def bam_scores(
    features: torch.Tensor,
    positions: torch.Tensor,
    valid: torch.Tensor,
    weights: dict[str, torch.Tensor],
    config: NAMMConfig,
) -> torch.Tensor:
    """Backward attention: token i attends to itself and every newer token, then x (1 + m) + r -> score.

    Ordering each head's tokens newest first turns the backward mask into an ordinary causal one, so
    the scorer is a single causal SDPA call (flash-eligible, no materialised mask); invalid slots are
    sorted last, where no valid token can see them.
    """
    rows, heads, slots, dims = features.shape
    order = newest_first_order(positions, valid)
    x = features.gather(2, order[..., None].expand(-1, -1, -1, dims)).reshape(rows, heads * slots, dims)

    qkv = _linear(x, weights["qkv_weight"], weights.get("qkv_bias"))
    head_dim = config.hidden // config.heads

    def split_heads(part: torch.Tensor) -> torch.Tensor:
        return (
            part.reshape(rows, heads, slots, config.heads, head_dim)
            .transpose(2, 3)
            .reshape(rows * heads, config.heads, slots, head_dim)
        )

    q, k, v = (split_heads(part) for part in qkv.split(config.hidden, dim=-1))
    attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    attended = attended.reshape(rows, heads, config.heads, slots, head_dim).transpose(2, 3)
    mixed = _linear(
        attended.reshape(rows, heads * slots, config.hidden), weights["out_weight"], weights.get("out_bias")
    )
    additive, multiplicative = mixed.split(dims, dim=-1)
    residual = x * (1.0 + multiplicative) + additive
    sorted_scores = _linear(residual, weights["readout_weight"], weights["readout_bias"]).reshape(rows, heads, slots)
    return torch.empty_like(sorted_scores).scatter_(2, order, sorted_scores)


def mlp_scores(features: torch.Tensor, weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each token on its own: relu(x W1 + b1) w2 + b2."""
    rows, heads, slots, dims = features.shape
    x = features.reshape(rows, heads * slots, dims)
    hidden = torch.relu(_linear(x, weights["hidden_weight"], weights["hidden_bias"]))
    return _linear(hidden, weights["readout_weight"], weights["readout_bias"]).reshape(rows, heads, slots)


def token_scores(
    features: torch.Tensor,
    positions: torch.Tensor,
    valid: torch.Tensor,
    weights: dict[str, torch.Tensor],
    config: NAMMConfig,
) -> torch.Tensor:
    """(R, H, S) float32 scores from the configured scorer."""
    if config.scorer == "bam":
        return bam_scores(features, positions, valid, weights, config)
    return mlp_scores(features, weights)

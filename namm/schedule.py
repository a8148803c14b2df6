"""Where forwards must end so every row of a batch is updated exactly at its own schedule.

A row is updated after the forward that brings its count of real tokens to a multiple of the update
interval. A forward that crossed such a boundary would let the tokens after it attend to a cache the
policy has not pruned yet, so every multi-token input is cut at each row's boundaries (and at
`limit` tokens). The engine's prefill and transformers' `generate()` (whatever chunks it sends) use
this one rule.
"""

from __future__ import annotations

import torch


def chunk_ends(real: torch.Tensor, tokens_seen: torch.Tensor, interval: int, limit: int | None = None) -> list[int]:
    """Exclusive end columns of the forwards that process `real` (B, L) after `tokens_seen` (B,) tokens.

    Cuts after every real column that brings its row's count to a multiple of `interval`, then cuts each
    segment into pieces of at most `limit` columns (default: `interval`). The last end is always L.
    """
    width = real.shape[1]
    counts = tokens_seen[:, None].to(real.device) + real.long().cumsum(dim=1)
    boundary = real & (counts % interval == 0)
    ends = sorted({width, *(boundary.any(dim=0).nonzero().flatten() + 1).tolist()})
    step = limit or interval
    result, start = [], 0
    for end in ends:
        result.extend(range(start + step, end, step))
        result.append(end)
        start = end
    return result


def chunk_positions(real: torch.Tensor, tokens_seen: torch.Tensor) -> torch.Tensor:
    """(B, L) absolute positions of the columns of `real` after `tokens_seen` tokens; padding gets the
    position of the next real token (clamped at 0), which attention masks out anyway."""
    return (tokens_seen[:, None].to(real.device) + real.long().cumsum(dim=1) - real.long()).clamp(min=0)

"""Attention rows handed over one chunk of (row, KV head) pairs at a time, so nobody holds all of them.

The float32 rows of one layer's update are (R, H, n, S): 4 GiB at 32k slots, 8 rows, 8 KV heads and 512
queries. The NAMM consumes them pair by pair (a pair's spectrogram needs only its own rows), so the engine
computes them chunk by chunk and memory stays bounded by one chunk. Each pair's rows are computed the same
way whatever chunk it falls in: chunking changes no value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ChunkedRows:
    """(R, H, n, S) attention rows as chunks over the R * H pairs flattened row-major (pair r * H + h).

    Each chunk is a slice of pairs (contiguous, or with step H for one KV head of consecutive rows) and a
    function computing its (pairs, n, S) float32 rows; call it when the rows are needed and drop them after.
    """

    shape: tuple[int, int, int, int]
    chunks: tuple[tuple[slice, Callable[[], torch.Tensor]], ...]

    @classmethod
    def whole(cls, attention: torch.Tensor) -> ChunkedRows:
        """Rows already in hand: one chunk, a view."""
        rows, heads, queries, slots = attention.shape
        flat = attention.reshape(rows * heads, queries, slots)
        return cls((rows, heads, queries, slots), ((slice(0, rows * heads), lambda: flat),))

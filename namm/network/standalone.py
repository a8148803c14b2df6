"""A NAMM on raw tensors, without a language model: feed a KV cache and its attention, get it compacted.

`KVCacheManager` keeps the per-token state between updates, so repeated calls with the cache it
returned plus the newly appended tokens reproduce what the NAMM does inside a transformer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from namm.budget import per_layer_max_keep_whole_batch
from namm.network.config import NAMMConfig
from namm.network.namm import NAMM
from namm.network.spectrogram import SpectrogramState


@dataclass
class CacheUpdate:
    """Result of one update. B rows, H KV heads, N slots before and K after, D head dim."""

    keys: torch.Tensor  # (B, H, K, D) the kept keys, in their original (positional) order
    values: torch.Tensor  # (B, H, K, D)
    positions: torch.Tensor  # (B, H, K) absolute positions of the kept tokens
    retained_index: torch.Tensor  # (B, H, K) slot of each kept token in the input cache
    scores: torch.Tensor  # (B, H, N) the NAMM's scores (the newest token not forced)
    selected: torch.Tensor  # (B, H, N) bool: the NAMM's own per-head decision (score >= threshold, newest)
    keep: torch.Tensor  # (B, H, N) bool: what was kept (every head topped up to the largest count)
    features: torch.Tensor  # (B, H, N, F) the scorer's input
    spectrogram: torch.Tensor  # (B, H, N, bins) the EMA spectrogram before normalisation
    retention_rate: float  # kept tokens / tokens before the update
    mean_score: float  # mean score over the cached tokens


class KVCacheManager:
    """Runs a NAMM on one layer's KV cache, update after update, and compacts the cache.

    Every head keeps as many tokens as its most retentive head (the reference's rule), each head its
    own best-scoring ones, so the compacted cache stays a dense (B, H, K, D) tensor.
    """

    def __init__(self, namm: NAMM | NAMMConfig | None = None, parameters: torch.Tensor | None = None) -> None:
        self.namm = namm if isinstance(namm, NAMM) else NAMM(namm, parameters)
        if isinstance(namm, NAMM) and parameters is not None:
            self.namm.set_parameters(parameters)
        self.state: SpectrogramState | None = None

    def reset(self) -> None:
        """Start a new sequence: forget the carried-over attention and EMA state."""
        self.state = None

    def update(
        self, keys: torch.Tensor, values: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor
    ) -> CacheUpdate:
        """Score and compact.

        keys, values: (B, H, N, D): the cache returned by the previous update followed by the new tokens.
        attention: (B, H, n, N) attention of the n new queries on the N cached tokens (zeros for keys
            a query could not see). positions: (B, H, N) or (B, N) absolute token positions.
        """
        if positions.dim() == 2:
            positions = positions[:, None, :].expand(-1, keys.shape[1], -1)
        if keys.shape[:3] != positions.shape or values.shape[:3] != positions.shape:
            raise ValueError(
                f"keys {tuple(keys.shape)}, values {tuple(values.shape)} and positions {tuple(positions.shape)} "
                "must agree on (B, H, N)."
            )
        output = self.namm(attention, positions, state=self.state, keys=keys)
        valid = torch.ones_like(output.keep)
        keep = per_layer_max_keep_whole_batch(output.ranked, output.keep, valid)
        kept = int(keep.sum(dim=-1).amax())
        index = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)[..., :kept]
        self.state = output.state.gather(index, torch.ones_like(index, dtype=torch.bool))

        def take(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.gather(2, index[..., None].expand(-1, -1, -1, tensor.shape[-1]))

        return CacheUpdate(
            keys=take(keys),
            values=take(values),
            positions=positions.gather(2, index),
            retained_index=index,
            scores=output.scores,
            selected=output.keep,
            keep=keep,
            features=output.features,
            spectrogram=output.state.ema,
            retention_rate=float(keep.float().mean()),
            mean_score=float(output.scores.mean()),
        )

"""The fixed sinusoidal code of a token's age (newest cached position minus its own position).

The table is built in float64 and stored as float32, like the reference, so codes agree bit for bit;
it grows by doubling when a longer context needs more rows.
"""

from __future__ import annotations

import torch

from namm.network.config import NAMMConfig

INITIAL_ROWS = 32769  # the reference's table size (32K context + 1)


class RecencyCode:
    """Maps integer ages r >= 0 to [sin(r f_i) for i < d/2] ++ [cos(r f_i) for i < d/2], f_i = max_freq^(-2i/d)."""

    def __init__(self, config: NAMMConfig) -> None:
        self.dims = config.recency_dims
        self.max_freq = config.max_freq
        self.offset = config.start_recency_from
        self._tables: dict[torch.device, torch.Tensor] = {}

    def frequencies(self) -> torch.Tensor:
        """(d/2,) float64 angular frequencies."""
        exponents = torch.arange(0, self.dims, 2, dtype=torch.float64) / self.dims
        return 1.0 / (self.max_freq**exponents)

    def _table(self, rows: int, device: torch.device) -> torch.Tensor:
        table = self._tables.get(device)
        if table is None or table.shape[0] < rows:
            size = INITIAL_ROWS if table is None else table.shape[0]
            while size < rows:
                size *= 2
            angles = torch.arange(size, dtype=torch.float64)[:, None] * self.frequencies()[None, :]
            table = torch.cat([angles.sin(), angles.cos()], dim=1).float().to(device)
            self._tables[device] = table
        return table

    def __call__(self, ages: torch.Tensor) -> torch.Tensor:
        """(...,) int64 ages -> (..., dims) float32; negative ages (invalid slots) give zeros."""
        if self.dims == 0:
            return ages.new_zeros(*ages.shape, 0, dtype=torch.float32)
        shifted = ages + self.offset
        table = self._table(int(shifted.max()) + 1 if shifted.numel() else 1, ages.device)
        codes = table[shifted.clamp(min=0)]
        return codes.masked_fill((ages < 0)[..., None], 0.0)

"""KeyDiff's query-free signal (a leaf: torch only), shared by the keydiff policy and the NAMM's optional input.

A key's novelty is 1 - its cosine similarity to the anchor, the direction of the mean of its head's unit-norm
live keys: keys that point where most keys point carry the least distinct information.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def key_novelty(keys: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(R, H, S) float32 in [0, 2] from keys (R, H, S, D) and valid (R, H, S); invalid slots are ignored for the
    anchor (their own value is meaningless)."""
    unit = F.normalize(keys.float(), dim=-1) * valid[..., None]
    anchor = F.normalize(unit.sum(dim=2, keepdim=True), dim=-1)  # (R, H, 1, D): the direction of the mean
    return 1.0 - (unit * anchor).sum(dim=-1)

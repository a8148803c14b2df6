"""Key-norm (Devoto et al. 2024, "L2"): keep the tokens whose keys have the lowest L2 norm.

Norms are rounded to 12 significant bits before ranking. Identical tokens give keys of equal norm (RoPE is
a rotation), but the stored post-RoPE keys carry float rounding, and a batched forward rounds differently
from a forward alone (padding changes how SDPA blocks its sums, ~1e-6 at layer 1 of the tiny models); the
rounding makes such ties compare equal so they fall to position, as every score tie does. Norms closer than
1 part in 4096 count as equal.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from namm.policies.base import BudgetPolicy, LayerView
from namm.policies.registry import register_policy

SIGNIFICANT_BITS = 12


def round_significant(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Round to `bits` significant binary digits (exact, elementwise: the same on every batch shape and CPU)."""
    mantissa, exponent = torch.frexp(values)
    return torch.ldexp(torch.round(mantissa * 2**bits) / 2**bits, exponent)


@register_policy
class KeyNormPolicy(BudgetPolicy):
    name: ClassVar[str] = "knorm"

    def score(self, view: LayerView) -> torch.Tensor:
        return -round_significant(view.keys.float().norm(dim=-1), SIGNIFICANT_BITS)

"""Key-norm (Devoto et al. 2024, "L2"): keep the tokens whose keys have the lowest L2 norm.

Norms are rounded to 12 significant bits before ranking. Identical tokens give keys of equal norm (RoPE is
a rotation), but the stored post-RoPE keys carry float rounding, and a batched forward rounds differently
from a forward alone (other shapes and kernels: layer-1 keys of the tiny models differ by ~2e-6); the
rounding makes such ties compare equal so they fall to position, as every score tie does. The price: norms
within 1 part in 2**12-2**13 of each other may count as equal; the guard is not absolute either, since two
near-equal norms straddling a rounding boundary still fall on its two sides.
"""

from __future__ import annotations

from dataclasses import dataclass
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
@dataclass(eq=False)
class KeyNormPolicy(BudgetPolicy):
    name: ClassVar[str] = "knorm"

    def score(self, view: LayerView) -> torch.Tensor:
        return -round_significant(view.keys.float().norm(dim=-1), SIGNIFICANT_BITS)

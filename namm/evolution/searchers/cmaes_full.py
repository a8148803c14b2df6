"""CMA-ES with a full covariance, as the reference: d^2 memory (~70 MB at d=4172), a Cholesky factorisation
every few generations. Everything but the covariance's shape is the separable variant's."""

from __future__ import annotations

from typing import ClassVar

from namm.evolution.searchers.cmaes_separable import CMAESSeparable
from namm.evolution.searchers.registry import register_searcher


@register_searcher
class CMAESFull(CMAESSeparable):
    name: ClassVar[str] = "cmaes_full"
    separable: ClassVar[bool] = False

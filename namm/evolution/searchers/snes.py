"""Separable natural evolution strategies: a diagonal Gaussian (one stdev per parameter)."""

from __future__ import annotations

from typing import ClassVar

from evotorch.algorithms import SNES

from namm.evolution.searchers.gaussian import GaussianSearcher
from namm.evolution.searchers.registry import register_searcher


@register_searcher
class SNESSearcher(GaussianSearcher):
    name: ClassVar[str] = "snes"
    algorithm_class = SNES

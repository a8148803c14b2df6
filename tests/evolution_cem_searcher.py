"""A searcher added as CONTRIBUTING.md's "Add a searcher" says, kept as a test fixture: the cross-entropy method.

In the package it would be namm/evolution/searchers/cem.py plus conf/evo/cem.yaml (`searcher: cem`); here a
test imports it, which registers it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from evotorch.algorithms import CEM

from namm.evolution.searchers.gaussian import GaussianSearcher
from namm.evolution.searchers.registry import register_searcher

if TYPE_CHECKING:
    from evotorch import Problem

    from namm.evolution.config import EvoConfig
    from namm.evolution.searchers.base import Searcher


@register_searcher
class CEMSearcher(GaussianSearcher):
    """CEM: the next distribution is fitted to the best half of the population."""

    name: ClassVar[str] = "cem"
    algorithm_class = CEM

    @classmethod
    def config_problems(cls, evo: EvoConfig) -> list[str]:
        if evo.popsize < 4:
            return [f"evo.popsize must be >= 4 for cem (it refits to the best half), got {evo.popsize}"]
        return []

    @classmethod
    def build(cls, problem: Problem, evo: EvoConfig, centre: torch.Tensor) -> Searcher:
        return cls(CEM(problem, stdev_init=evo.sigma, popsize=evo.popsize, center_init=centre, parenthood_ratio=0.5))

"""PGPE with symmetric sampling and the ClipUp optimizer: absolute learning rates, both required."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from evotorch.algorithms import PGPE

from namm.evolution.searchers.gaussian import GaussianSearcher
from namm.evolution.searchers.registry import register_searcher

if TYPE_CHECKING:
    from namm.evolution.config import EvoConfig


@register_searcher
class PGPESearcher(GaussianSearcher):
    name: ClassVar[str] = "pgpe"
    algorithm_class = PGPE

    @classmethod
    def config_problems(cls, evo: EvoConfig) -> list[str]:
        problems = []
        if evo.popsize % 2:
            problems.append(f"evo.popsize must be even for pgpe (symmetric sampling), got {evo.popsize}")
        for name in ("center_learning_rate", "stdev_learning_rate"):
            if getattr(evo, name) is None:
                problems.append(f"evo.{name} is required by pgpe (see conf/evo/pgpe.yaml)")
        return problems

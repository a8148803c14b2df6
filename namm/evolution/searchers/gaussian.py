"""What SNES, XNES and PGPE share: EvoTorch's Gaussian searchers, their learning rates and their state.

Their state is a distribution, an optional optimizer (PGPE's ClipUp velocity) and the last evaluated
population, whose gradient they follow at the start of the next step; EvoTorch keeps all three private, so
they go through `evotorch_internals`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from evotorch.algorithms.distributed.gaussian import GaussianSearchAlgorithm

from namm.evolution.searchers import evotorch_internals as internals
from namm.evolution.searchers.base import Searcher

if TYPE_CHECKING:
    from evotorch import Problem

    from namm.evolution.config import EvoConfig


class GaussianSearcher(Searcher):
    """A searcher backed by one of EvoTorch's `GaussianSearchAlgorithm` classes (`algorithm_class`)."""

    algorithm_class: ClassVar[type[GaussianSearchAlgorithm]]
    algorithm: GaussianSearchAlgorithm

    @classmethod
    def build(cls, problem: Problem, evo: EvoConfig, centre: torch.Tensor) -> Searcher:
        learning_rates = {
            key: value
            for key, value in (
                ("center_learning_rate", evo.center_learning_rate),
                ("stdev_learning_rate", evo.stdev_learning_rate),
            )
            if value is not None  # None: EvoTorch's default
        }
        return cls(
            cls.algorithm_class(
                problem, stdev_init=evo.sigma, popsize=evo.popsize, center_init=centre, **learning_rates
            )
        )

    def centre(self) -> torch.Tensor:
        return internals.plain(self.algorithm.status["center"])

    def sigma(self) -> torch.Tensor:
        return internals.plain(self.algorithm.status["stdev"])

    def step_size(self) -> float:
        return float(self.sigma().mean())

    def stdevs(self) -> torch.Tensor:
        """Each parameter's standard deviation (SNES, PGPE: the sigma vector itself)."""
        return self.sigma()

    def spread(self) -> dict[str, float]:
        stdevs = self.stdevs()
        return {"search/stdev_min": float(stdevs.min()), "search/stdev_max": float(stdevs.max())}

    def _distribution_state(self) -> dict[str, Any]:
        return {"distribution": internals.distribution_parameters(self.algorithm)}

    def _load_distribution(self, state: dict[str, Any], centre: torch.Tensor | None) -> None:
        parameters = dict(state["distribution"])
        if centre is not None:
            parameters["mu"] = internals.plain(centre)
        internals.replace_distribution(self.algorithm, parameters)

    @staticmethod
    def _saved_centre(state: dict[str, Any]) -> torch.Tensor:
        return state["distribution"]["mu"]

    def _progress_state(self) -> dict[str, Any]:
        population = self.algorithm.population
        return {
            "clipup_velocity": internals.clipup_velocity(self.algorithm),
            "first_iter": internals.first_population_pending(self.algorithm),
            "population_values": None if population is None else internals.plain(population.values),
            "population_evals": None if population is None else internals.plain(population.evals),
        }

    def _load_progress(self, state: dict[str, Any]) -> None:
        internals.set_clipup_velocity(self.algorithm, state["clipup_velocity"])
        internals.set_first_population_pending(self.algorithm, state["first_iter"])
        internals.set_population(self.algorithm, state["population_values"], state["population_evals"])

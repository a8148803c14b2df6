"""CMA-ES with a diagonal covariance (the default): O(d) per update, suits the ~4k-parameter NAMM.

Its whole state is public on EvoTorch's CMAES: mean, step size, covariance (or its diagonal), its square root
and the two evolution paths.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from evotorch.algorithms import CMAES

from namm.evolution.searchers.base import Searcher
from namm.evolution.searchers.evotorch_internals import plain
from namm.evolution.searchers.registry import register_searcher

if TYPE_CHECKING:
    from evotorch import Problem

    from namm.evolution.config import EvoConfig

CMAES_FIELDS = ("m", "sigma", "C", "A", "p_sigma", "p_c")


def _copy(value: Any) -> Any:
    return plain(value) if isinstance(value, torch.Tensor) else value  # the paths start as the float 0.0


@register_searcher
class CMAESSeparable(Searcher):
    name: ClassVar[str] = "cmaes_separable"
    separable: ClassVar[bool] = True
    algorithm: CMAES

    @classmethod
    def build(cls, problem: Problem, evo: EvoConfig, centre: torch.Tensor) -> Searcher:
        with warnings.catch_warnings():  # EvoTorch's CMAES builds its weights with torch.tensor(tensor)
            warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning)
            return cls(
                CMAES(problem, stdev_init=evo.sigma, popsize=evo.popsize, center_init=centre, separable=cls.separable)
            )

    def centre(self) -> torch.Tensor:
        return plain(self.algorithm.m)

    def sigma(self) -> torch.Tensor:
        return plain(self.algorithm.sigma)

    def step_size(self) -> float:
        """sigma times the mean square root of C's diagonal."""
        covariance = self.algorithm.C
        diagonal = covariance if self.separable else torch.diagonal(covariance)
        return float(self.algorithm.sigma * diagonal.sqrt().mean())

    def spread(self) -> dict[str, float]:
        """sigma and the range of C's diagonal (which stays near 1 while the search learns nothing)."""
        covariance = self.algorithm.C
        diagonal = covariance if self.separable else torch.diagonal(covariance)
        return {
            "search/sigma": float(self.algorithm.sigma),
            "search/covariance_diagonal_min": float(diagonal.min()),
            "search/covariance_diagonal_max": float(diagonal.max()),
        }

    def _distribution_state(self) -> dict[str, Any]:
        return {field: _copy(getattr(self.algorithm, field)) for field in CMAES_FIELDS}

    def _load_distribution(self, state: dict[str, Any], centre: torch.Tensor | None) -> None:
        for field in CMAES_FIELDS:
            setattr(self.algorithm, field, _copy(state[field]))
        if centre is not None:
            self.algorithm.m = plain(centre)

    @staticmethod
    def _saved_centre(state: dict[str, Any]) -> torch.Tensor:
        return state["m"]

"""What every searcher offers the trainer: build, step, read the distribution, save and restore its state.

A `Searcher` wraps one EvoTorch algorithm. Its state dict holds everything needed to continue the search
bit-exactly (the RNG states are saved separately, by the trainer); `start_from` begins a new run (a curriculum
stage) from a saved distribution: step size, covariance and paths carry over, the step counter, optimizer
momentum and pending population do not.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from evotorch.algorithms import SearchAlgorithm

from namm.errors import ConfigError
from namm.evolution.searchers.evotorch_internals import set_step_count

if TYPE_CHECKING:
    from evotorch import Problem

    from namm.evolution.config import EvoConfig


class Searcher(ABC):
    """One search algorithm, selected by `evo.searcher=<name>` (see `register_searcher`)."""

    name: ClassVar[str]

    def __init__(self, algorithm: SearchAlgorithm) -> None:
        self.algorithm = algorithm

    @classmethod
    def config_problems(cls, evo: EvoConfig) -> list[str]:
        """What is wrong with `evo` for this searcher (one sentence each, naming the key); [] when nothing."""
        return []

    @classmethod
    @abstractmethod
    def build(cls, problem: Problem, evo: EvoConfig, centre: torch.Tensor) -> Searcher:
        """A new search centred at `centre` (float32), initial step size `evo.sigma`, population `evo.popsize`."""

    @abstractmethod
    def centre(self) -> torch.Tensor:
        """The mean of the search distribution (what validation scores and checkpoints export), a copy."""

    @abstractmethod
    def sigma(self) -> torch.Tensor:
        """The step-size parameter as the algorithm stores it (scalar, vector or matrix), a copy."""

    @abstractmethod
    def step_size(self) -> float:
        """One number for the logs: the mean standard deviation of the search distribution."""

    def spread(self) -> dict[str, float]:
        """The step size as the algorithm holds it, for the per-generation record (`search/...` keys); a
        searcher that says nothing beyond `step_size` returns {}."""
        return {}

    @abstractmethod
    def _distribution_state(self) -> dict[str, Any]:
        """The distribution: what `start_from` carries into a new run."""

    @abstractmethod
    def _load_distribution(self, state: dict[str, Any], centre: torch.Tensor | None) -> None:
        """Restore `_distribution_state`, with the mean replaced by `centre` when given."""

    @staticmethod
    @abstractmethod
    def _saved_centre(state: dict[str, Any]) -> torch.Tensor:
        """The mean held in a state dict (to check it fits this problem)."""

    def _progress_state(self) -> dict[str, Any]:
        """What a step carries into the next beyond the distribution (momentum, the last population)."""
        return {}

    def _load_progress(self, state: dict[str, Any]) -> None:
        """Restore `_progress_state`."""

    def step(self) -> None:
        self.algorithm.step()

    @property
    def steps(self) -> int:
        return self.algorithm.step_count

    def state_dict(self) -> dict[str, Any]:
        return {
            "searcher": self.name,
            "steps_count": self.steps,
            **self._distribution_state(),
            **self._progress_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the saved search: the next step is the one the saved run would have taken."""
        self._check_compatible(state)
        set_step_count(self.algorithm, state["steps_count"])
        self._load_distribution(state, None)
        self._load_progress(state)

    def start_from(self, state: dict[str, Any], centre: torch.Tensor) -> None:
        """A new search with the saved distribution, centred at `centre`."""
        self._check_compatible(state)
        self._load_distribution(state, centre)

    def _check_compatible(self, state: dict[str, Any]) -> None:
        if state["searcher"] != self.name:
            raise ConfigError(f"the checkpoint holds a {state['searcher']} searcher but evo={self.name} is configured")
        length = self.algorithm.problem.solution_length
        centre = self._saved_centre(state)
        if centre.shape != (length,):
            raise ConfigError(f"the checkpoint's centre has {centre.shape[0]} parameters, this run has {length}")

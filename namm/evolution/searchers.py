"""EvoTorch searchers by name, and their explicit state dicts (EvoTorch 0.6.1 has no save/load).

CMA-ES keeps its whole state in a few attributes (mean, step size, covariance or its diagonal, its
square root, two evolution paths, the step counter). The Gaussian searchers (SNES, XNES, PGPE) keep a
distribution, an optional optimizer (PGPE's ClipUp velocity) and the last evaluated population,
whose gradient they follow at the start of the next step.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from evotorch import SolutionBatch
from evotorch.algorithms import CMAES, PGPE, SNES, XNES, SearchAlgorithm
from evotorch.algorithms.distributed.gaussian import GaussianSearchAlgorithm
from evotorch.optimizers import ClipUp

from namm.evolution.config import ConfigError, EvoConfig, Searcher
from namm.evolution.problem import EvolutionProblem

_CMAES_FIELDS = ("m", "sigma", "C", "A", "p_sigma", "p_c")


def build_searcher(problem: EvolutionProblem, evo: EvoConfig, centre: torch.Tensor) -> SearchAlgorithm:
    """The configured searcher, centred at `centre`, with initial step size `evo.sigma`."""
    centre = centre.to(torch.float32)
    if evo.searcher in (Searcher.cmaes_separable, Searcher.cmaes_full):
        with warnings.catch_warnings():  # EvoTorch's CMAES builds its weights with torch.tensor(tensor)
            warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning)
            return CMAES(
                problem,
                stdev_init=evo.sigma,
                popsize=evo.popsize,
                center_init=centre,
                separable=evo.searcher == Searcher.cmaes_separable,
            )
    learning_rates = {
        key: value
        for key, value in (
            ("center_learning_rate", evo.center_learning_rate),
            ("stdev_learning_rate", evo.stdev_learning_rate),
        )
        if value is not None
    }
    searcher_class = {Searcher.snes: SNES, Searcher.xnes: XNES, Searcher.pgpe: PGPE}[evo.searcher]
    return searcher_class(problem, stdev_init=evo.sigma, popsize=evo.popsize, center_init=centre, **learning_rates)


def searcher_centre(searcher: SearchAlgorithm) -> torch.Tensor:
    """The mean of the search distribution (what validation scores and checkpoints export)."""
    return _clone(searcher.m if isinstance(searcher, CMAES) else searcher._distribution.mu)


def step_size(searcher: SearchAlgorithm) -> float:
    """One number for the logs: CMA-ES sigma times the mean sqrt of C's diagonal; else the mean stdev."""
    if isinstance(searcher, CMAES):
        diagonal = searcher.C if searcher.separable else torch.diagonal(searcher.C)
        return float(searcher.sigma * diagonal.sqrt().mean())
    sigma = searcher._distribution.sigma
    stdevs = sigma if sigma.dim() == 1 else (sigma.T @ sigma).diagonal().sqrt()  # XNES: A, covariance A^T A
    return float(stdevs.mean())


def search_spread(searcher: SearchAlgorithm) -> dict[str, float]:
    """The step size as the searcher holds it, for the per-generation record: CMA-ES's sigma and the range
    of its covariance diagonal (which stays near 1 while it learns nothing); the others' stdev range."""
    if isinstance(searcher, CMAES):
        diagonal = searcher.C if searcher.separable else torch.diagonal(searcher.C)
        return {
            "search/sigma": float(searcher.sigma),
            "search/covariance_diagonal_min": float(diagonal.min()),
            "search/covariance_diagonal_max": float(diagonal.max()),
        }
    sigma = searcher._distribution.sigma
    stdevs = sigma if sigma.dim() == 1 else (sigma.T @ sigma).diagonal().sqrt()
    return {"search/stdev_min": float(stdevs.min()), "search/stdev_max": float(stdevs.max())}


def searcher_sigma(searcher: SearchAlgorithm) -> torch.Tensor:
    """The step-size parameter as the searcher stores it (CMA-ES: scalar; SNES/PGPE: vector; XNES: matrix)."""
    return _clone(searcher.sigma if isinstance(searcher, CMAES) else searcher._distribution.sigma)


def _clone(value: Any) -> Any:
    """A plain-tensor copy (EvoTorch hands out ReadOnlyTensor views, which weights-only loading rejects)."""
    return value.detach().clone().as_subclass(torch.Tensor) if isinstance(value, torch.Tensor) else value


def searcher_state(searcher: SearchAlgorithm, name: Searcher) -> dict[str, Any]:
    """Everything needed to continue the search bit-exactly (RNG states are saved separately)."""
    state: dict[str, Any] = {"searcher": name.value, "steps_count": searcher._steps_count}
    if isinstance(searcher, CMAES):
        state.update({field: _clone(getattr(searcher, field)) for field in _CMAES_FIELDS})
        return state
    if not isinstance(searcher, GaussianSearchAlgorithm):
        raise TypeError(f"no state dict for {type(searcher).__name__}")
    distribution = searcher._distribution
    state["distribution"] = {k: _clone(v) for k, v in distribution.parameters.items() if isinstance(v, torch.Tensor)}
    optimizer = searcher._optimizer
    if optimizer is not None and not isinstance(optimizer, ClipUp):
        raise TypeError(f"no state dict for the {type(optimizer).__name__} optimizer")
    state["clipup_velocity"] = None if optimizer is None else _clone(optimizer._velocity)
    state["first_iter"] = searcher._first_iter
    population = searcher._population
    state["population_values"] = None if population is None else _clone(population.values)
    state["population_evals"] = None if population is None else _clone(population.evals)
    return state


def _check_compatible(searcher: SearchAlgorithm, state: dict[str, Any], name: Searcher) -> None:
    if state["searcher"] != name.value:
        raise ConfigError(f"the checkpoint holds a {state['searcher']} searcher but evo={name.value} is configured")
    length = searcher.problem.solution_length
    centre = state["m"] if "m" in state else state["distribution"]["mu"]
    if centre.shape != (length,):
        raise ConfigError(f"the checkpoint's centre has {centre.shape[0]} parameters, this run has {length}")


def load_searcher_state(searcher: SearchAlgorithm, state: dict[str, Any], name: Searcher) -> None:
    """Restore `searcher_state` so the next step is the one the saved run would have taken."""
    _check_compatible(searcher, state, name)
    searcher._steps_count = int(state["steps_count"])
    if isinstance(searcher, CMAES):
        for field in _CMAES_FIELDS:
            setattr(searcher, field, _clone(state[field]))
        return
    searcher._distribution = searcher._distribution.modified_copy(**state["distribution"])
    if state["clipup_velocity"] is not None:
        searcher._optimizer._velocity = state["clipup_velocity"].clone()
    searcher._first_iter = bool(state["first_iter"])
    if state["population_values"] is None:
        searcher._population = None
    else:
        population = SolutionBatch(searcher.problem, popsize=len(state["population_values"]), empty=True)
        population.set_values(state["population_values"].clone())
        population.set_evals(state["population_evals"].clone())
        searcher._population = population


def start_from_distribution(
    searcher: SearchAlgorithm, state: dict[str, Any], name: Searcher, centre: torch.Tensor
) -> None:
    """Start a new run (curriculum stage) from a saved search distribution, centred at `centre`: step
    size, covariance and evolution paths carry over; the step counter, optimizer momentum and pending
    population do not."""
    _check_compatible(searcher, state, name)
    if isinstance(searcher, CMAES):
        for field in _CMAES_FIELDS:
            setattr(searcher, field, _clone(state[field]))
        searcher.m = _clone(centre)
        return
    searcher._distribution = searcher._distribution.modified_copy(**{**state["distribution"], "mu": _clone(centre)})

"""The one module that touches EvoTorch's private attributes, for what its public API cannot do.

EvoTorch (pinned to 0.6.1 in pyproject.toml) has no state save/load. CMA-ES keeps its state in public
attributes (`m`, `sigma`, `C`, `A`, `p_sigma`, `p_c`) and every searcher reports its centre and stdev through the
public `status`; what a bit-exact resume also needs is private: the step counter (only readable, as
`step_count`), a Gaussian searcher's distribution, ClipUp's velocity, whether the first population is still to
be sampled, and the last evaluated population (only readable, as `population`), whose gradient the next step
follows. `PRIVATE_ATTRIBUTES` lists every name used here; tests/test_evolution_searchers.py checks they exist,
so an EvoTorch upgrade that renames one fails that test instead of a resumed run.
"""

from __future__ import annotations

import torch
from evotorch import SolutionBatch
from evotorch.algorithms import SearchAlgorithm
from evotorch.algorithms.distributed.gaussian import GaussianSearchAlgorithm
from evotorch.optimizers import ClipUp

PRIVATE_ATTRIBUTES: dict[type, tuple[str, ...]] = {
    SearchAlgorithm: ("_steps_count",),
    GaussianSearchAlgorithm: ("_distribution", "_optimizer", "_first_iter", "_population"),
    ClipUp: ("_velocity",),
}


def plain(value: torch.Tensor) -> torch.Tensor:
    """A plain-tensor copy (EvoTorch hands out ReadOnlyTensor views, which weights-only loading rejects)."""
    return value.detach().clone().as_subclass(torch.Tensor)


def set_step_count(algorithm: SearchAlgorithm, count: int) -> None:
    algorithm._steps_count = int(count)


def distribution_parameters(algorithm: GaussianSearchAlgorithm) -> dict[str, torch.Tensor]:
    """The tensors that define the search distribution (mu, sigma and what the distribution derives from them)."""
    parameters = algorithm._distribution.parameters
    return {key: plain(value) for key, value in parameters.items() if isinstance(value, torch.Tensor)}


def replace_distribution(algorithm: GaussianSearchAlgorithm, parameters: dict[str, torch.Tensor]) -> None:
    algorithm._distribution = algorithm._distribution.modified_copy(**parameters)
    algorithm.clear_status()  # the public status caches the old centre and stdev


def clipup_velocity(algorithm: GaussianSearchAlgorithm) -> torch.Tensor | None:
    """ClipUp's momentum (PGPE); None without an optimizer. Other optimizers are refused: no state for them."""
    optimizer = algorithm._optimizer
    if optimizer is None:
        return None
    if not isinstance(optimizer, ClipUp):
        raise TypeError(f"no state dict for the {type(optimizer).__name__} optimizer")
    return plain(optimizer._velocity)


def set_clipup_velocity(algorithm: GaussianSearchAlgorithm, velocity: torch.Tensor | None) -> None:
    if velocity is not None:
        algorithm._optimizer._velocity = velocity.clone()


def first_population_pending(algorithm: GaussianSearchAlgorithm) -> bool:
    return bool(algorithm._first_iter)


def set_first_population_pending(algorithm: GaussianSearchAlgorithm, pending: bool) -> None:
    algorithm._first_iter = bool(pending)


def set_population(algorithm: GaussianSearchAlgorithm, values: torch.Tensor | None, evals: torch.Tensor | None) -> None:
    """The last evaluated population (None: none yet), as `algorithm.population` returns it."""
    if values is None:
        algorithm._population = None
        return
    population = SolutionBatch(algorithm.problem, popsize=len(values), empty=True)
    population.set_values(values.clone())
    population.set_evals(evals.clone())
    algorithm._population = population
